"""Data loaders for what users have: FER-2013 csv, the folder layout, FER+ votes, the dev npz.

Every loader returns `Splits`: a dict from split name ("train", "val", "test") to `FaceSet`
(48x48 uint8 grey faces with FER-2013 label indices), in that order.

Bad rows and files follow `on_error`: "stop" raises `DataError` naming the file (and line) and
what is wrong; "skip" leaves them out and counts them in `FaceSet.skipped` / `skip_reasons`.
`load_dataset` picks the right loader for a path. `pack_npz` writes an npz with its faces as lossless WebP
files (about 70% of the bytes; `load_npz` reads it as the original), for a machine with a limit on what it is sent.
"""

from __future__ import annotations

import csv
import hashlib
import re
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from fer_app.config import CLASSES

SIDE = 48
N_PIXELS = SIDE * SIDE
#: How many skip messages a FaceSet keeps.
MAX_SKIP_REASONS = 5
#: Split names in the order loaders return them.
SPLIT_ORDER = ("train", "val", "test")
#: Lower-case split / folder / fer2013 `Usage` names -> our split name.
SPLIT_SYNONYMS: dict[str, str] = {
    "train": "train", "training": "train",
    "val": "val", "valid": "val", "validation": "val", "publictest": "val",
    "test": "test", "testing": "test", "privatetest": "test",
}
#: Lower-case class folder names -> our class name (in `CLASSES`).
CLASS_SYNONYMS: dict[str, str] = {
    "angry": "angry", "anger": "angry", "mad": "angry",
    "disgust": "disgust", "disgusted": "disgust", "disgusting": "disgust",
    "fear": "fear", "fearful": "fear", "scared": "fear", "afraid": "fear",
    "happy": "happy", "happiness": "happy", "joy": "happy",
    "sad": "sad", "sadness": "sad",
    "surprise": "surprise", "surprised": "surprise",
    "neutral": "neutral", "neutrality": "neutral",
}
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".webp"})
#: Kaggle fer2013.csv columns; a file without `Usage` (Kaggle's train.csv) is all Training.
FER2013_COLUMNS = ("emotion", "pixels", "Usage")
FER2013_DEFAULTS = {"Usage": "Training"}
#: FER+ vote columns of fer2013new.csv in our order: `CLASSES`, then the three that are never a label.
FERPLUS_VOTE_COLUMNS = ("anger", "disgust", "fear", "happiness", "sadness", "surprise", "neutral",
                        "contempt", "unknown", "NF")
FERPLUS_COLUMNS = ("Usage", "Image name", *FERPLUS_VOTE_COLUMNS)
#: split_for_validation refuses smaller sets.
MIN_IMAGES_TO_SPLIT = 10
_INTEGER = re.compile(r"[+-]?[0-9]+")
#: A packed npz holds `<key>` (N, 48, 48) uint8 as `<key>` + PACKED_BYTES (the WebP files end to end),
#: `<key>` + PACKED_ENDS (where each file ends) and `<key>` + PACKED_SHAPE (the array's shape).
PACKED_BYTES, PACKED_ENDS, PACKED_SHAPE = "_webp", "_webp_ends", "_webp_shape"


class DataError(ValueError):
    """A data set that cannot be read; the message names the file (and line) and what is wrong."""


@dataclass
class FaceSet:
    """Faces of one split: images (N, 48, 48) uint8, labels (N,) int64 in `CLASSES` order.

    soft_labels, when present, are (N, 7) float32 rows summing to 1 (e.g. FER+ vote shares).
    skipped counts bad rows that were skipped while loading (with the first few reasons).
    excluded counts rows left out on purpose (FER+ faces without a clear 7-class majority).
    """

    images: np.ndarray
    labels: np.ndarray
    soft_labels: np.ndarray | None = None
    source: str = ""
    skipped: int = 0
    skip_reasons: list[str] = field(default_factory=list)
    excluded: int = 0

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def class_counts(self) -> dict[str, int]:
        counts = np.bincount(self.labels, minlength=len(CLASSES))
        return {c: int(n) for c, n in zip(CLASSES, counts)}

    def fingerprint(self) -> str:
        """Content hash (images + labels), used to key caches."""
        h = hashlib.sha256()
        h.update(np.ascontiguousarray(self.images).tobytes())
        h.update(np.ascontiguousarray(self.labels).astype(np.int64).tobytes())
        return h.hexdigest()[:16]


Splits = dict[str, FaceSet]


# ----------------------------------------------------------------------------- public loaders

def load_npz(path: str | Path) -> Splits:
    """The development npz in ../shared/data (keys train_x, train_y, val_x, val_y, ...)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    d = _unpacked(np.load(path), path)
    out: Splits = {}
    for split in ("train", "val", "test"):
        if f"{split}_x" not in d:
            continue
        soft = None
        if f"{split}_ferplus_votes" in d:
            votes = d[f"{split}_ferplus_votes"][:, : len(CLASSES)].astype(np.float32)
            total = votes.sum(1, keepdims=True)
            soft = np.where(total > 0, votes / np.maximum(total, 1), np.nan).astype(np.float32)
        out[split] = FaceSet(images=d[f"{split}_x"], labels=d[f"{split}_y"].astype(np.int64), soft_labels=soft,
                             source=f"{path}:{split}")
    if not out:
        raise DataError(f"{path}: no train_x/val_x arrays; is this the fer2013-trainval.npz?")
    return out


@dataclass
class PackReport:
    """What `pack_npz` wrote: the faces packed, and the file's size against the original's."""

    path: Path
    faces: int
    bytes_before: int
    bytes_after: int


def pack_npz(src: str | Path, dest: str | Path, progress: Callable[[int, int], None] | None = None) -> PackReport:
    """Write the npz `src` to `dest` with every (N, 48, 48) uint8 array as one lossless WebP file a face (each
    decoded and checked against the original as it is written); the other arrays as they are, compressed.
    `load_npz` (and so every command) reads `dest` as it reads `src`; `progress(done, total)` counts faces."""
    src, dest = Path(src), Path(dest)
    if not src.is_file():
        raise DataError(f"{src}: no such file")
    with np.load(src) as d:  # each access of an npz's array reads it again: once each
        arrays = {k: d[k] for k in d.files}
    faces = {k: v for k, v in arrays.items() if v.dtype == np.uint8 and v.shape[1:] == (SIDE, SIDE)}
    if not faces:
        raise DataError(f"{src}: no (N, {SIDE}, {SIDE}) uint8 face arrays to pack")
    total, done = sum(len(v) for v in faces.values()), 0
    out = {k: v for k, v in arrays.items() if k not in faces}
    for key, images in faces.items():
        files = []
        for image in images:
            ok, webp = cv2.imencode(".webp", image, [cv2.IMWRITE_WEBP_QUALITY, 101])  # above 100: lossless
            if not ok or not np.array_equal(_decode_face(webp), image):
                raise DataError(f"{src}:{key}: face {len(files)} does not survive lossless WebP here")
            files.append(webp.reshape(-1))
            done += 1
            if progress and (done % 1024 == 0 or done == total):
                progress(done, total)
        out[key + PACKED_BYTES] = np.concatenate(files)
        out[key + PACKED_ENDS] = np.cumsum([len(f) for f in files]).astype(np.int64)
        out[key + PACKED_SHAPE] = np.asarray(images.shape, np.int64)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with open(dest, "wb") as f:  # a file object: np.savez_compressed would add .npz to another suffix
        np.savez_compressed(f, **out)
    return PackReport(dest, total, src.stat().st_size, dest.stat().st_size)


def _decode_face(webp: np.ndarray) -> np.ndarray | None:
    return cv2.imdecode(webp, cv2.IMREAD_GRAYSCALE)


def _unpacked(d: Mapping[str, np.ndarray], path: Path) -> dict[str, np.ndarray]:
    """The arrays of an npz by name, packed faces (`pack_npz`) decoded back into their arrays."""
    keys = list(getattr(d, "files", d))
    out = {k: d[k] for k in keys if not k.endswith((PACKED_BYTES, PACKED_ENDS, PACKED_SHAPE))}
    for key in (k[: -len(PACKED_BYTES)] for k in keys if k.endswith(PACKED_BYTES)):
        data, ends, shape = d[key + PACKED_BYTES], d[key + PACKED_ENDS], tuple(d[key + PACKED_SHAPE])
        images = np.empty(shape, np.uint8)
        for i, (start, end) in enumerate(zip(np.concatenate([[0], ends[:-1]]), ends)):
            face = _decode_face(data[start:end])
            if face is None or face.shape != shape[1:]:
                raise DataError(f"{path}:{key}: packed face {i} does not decode to {shape[1:]}")
            images[i] = face
        out[key] = images
    return out


def load_fer2013_csv(path: str | Path, splits: Sequence[str] | None = None, on_error: str = "stop") -> Splits:
    """Kaggle's fer2013.csv (`emotion,pixels,Usage`): Training -> train, PublicTest -> val, PrivateTest -> test.

    `splits` keeps only those splits (our names or Usage names, any case). Rows of other splits
    are not parsed. A row with an unknown Usage is reported like a bad row (counted in the first split).
    """
    path = Path(path)
    problems = _Problems(on_error)
    wanted = _wanted_splits(splits)
    kept, _ = _read_fer2013(path, wanted, problems)
    out = {split: rows.faceset(f"{path}:{split}") for split, rows in kept.items()}
    return _finish(out, path, wanted, problems)


def load_folders(root: str | Path, on_error: str = "stop") -> Splits:
    """The folder layout `root/train/<class>/*.png` + `root/test/<class>/*.png` (or `val/`, ...).

    Class folder names may be synonyms in any case (see `CLASS_SYNONYMS`). Class folders directly
    under `root` make one "train" split. Images are read grey and resized to 48x48 (INTER_AREA).
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: no such folder")
    problems = _Problems(on_error)
    out: Splits = {}
    for split, folder in _split_folders(root, problems).items():
        rows = _Rows()
        for class_folder, label in _class_folders(folder, split, problems):
            for file in _image_files(class_folder):
                image = _read_image(file)
                if image is None:
                    problems.report(split, f"{file}: not a readable image")
                else:
                    rows.add(image, label)
        if rows.labels:
            out[split] = rows.faceset(f"{folder}")
    return _finish(out, root, None, problems)


def load_ferplus(ferplus_csv: str | Path, fer2013_csv: str | Path, soft: bool = False, on_error: str = "stop",
                 splits: Sequence[str] | None = None) -> Splits:
    """FER-2013 pixels with FER+ majority labels (fer2013new.csv, aligned row by row with fer2013.csv).

    Votes of 1 are dropped and the winner needs more than half of the remaining votes; faces
    without such a winner, or whose winner is contempt / unknown / not-a-face, or without votes,
    are left out and counted in `FaceSet.excluded`. `soft=True` adds the 7-class vote shares.
    """
    ferplus_csv, fer2013_csv = Path(ferplus_csv), Path(fer2013_csv)
    problems = _Problems(on_error)
    wanted = _wanted_splits(splits)
    kept, n_rows = _read_fer2013(fer2013_csv, wanted, problems)
    ferplus_rows = list(_csv_records(ferplus_csv, FERPLUS_COLUMNS))
    if len(ferplus_rows) != n_rows:
        raise DataError(f"{ferplus_csv} has {len(ferplus_rows)} rows but {fer2013_csv} has {n_rows}; "
                        "FER+ rows must match fer2013.csv row by row")
    out: Splits = {}
    for split, rows in kept.items():
        votes = np.zeros((len(rows.labels), len(FERPLUS_VOTE_COLUMNS)), np.int64)
        valid = np.ones(len(rows.labels), bool)
        for i, row in enumerate(rows.rows):
            line, values = ferplus_rows[row]
            try:
                votes[i] = _parse_ferplus_votes(values, split)
            except ValueError as e:
                problems.report(split, f"{ferplus_csv} line {line}: {e}")
                valid[i] = False
        labels = _ferplus_majority(votes)
        keep = valid & (labels >= 0)
        if not keep.any():
            continue
        images = np.stack([image for image, k in zip(rows.images, keep) if k])
        shares = _vote_shares(votes[keep]) if soft else None
        out[split] = FaceSet(images=images, labels=labels[keep], soft_labels=shares, source=f"{ferplus_csv}:{split}",
                             excluded=int((valid & (labels < 0)).sum()))
    return _finish(out, ferplus_csv, wanted, problems)


def load_dataset(path: str | Path, *, ferplus: str | Path | None = None, splits: Sequence[str] | None = None,
                 on_error: str = "stop", soft: bool = False) -> Splits:
    """Load whatever `path` is: an .npz, a folder layout, or fer2013.csv (with FER+ votes when `ferplus` is given)."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file or folder")
    kind = _detect_kind(path)
    if ferplus is not None and kind != "fer2013":
        raise DataError(f"{path}: FER+ votes ({ferplus}) go with Kaggle's fer2013.csv only")
    if soft and ferplus is None and kind != "npz":
        raise DataError(f"{path}: soft labels need FER+ votes; pass ferplus=fer2013new.csv")
    if kind == "fer2013" and ferplus is not None:
        return load_ferplus(ferplus, path, soft=soft, on_error=on_error, splits=splits)
    if kind == "fer2013":
        return load_fer2013_csv(path, splits=splits, on_error=on_error)
    out = load_folders(path, on_error=on_error) if kind == "folders" else load_npz(path)
    return _select(out, _wanted_splits(splits), path)


def _detect_kind(path: Path) -> str:
    """Which loader fits an existing path: "folders", "npz" or "fer2013"; DataError for anything else."""
    if path.is_dir():
        return "folders"
    if path.suffix.lower() == ".npz":
        return "npz"
    header = _csv_header(path)
    if {"emotion", "pixels"} <= set(header):
        return "fer2013"
    if header[:2] == ["usage", "image name"]:
        raise DataError(f"{path} holds FER+ votes (fer2013new.csv), not images: load Kaggle's fer2013.csv "
                        "and pass this file as ferplus")
    raise DataError(f"{path}: not a data set this app reads (expected an .npz, a folder of class folders, "
                    "or fer2013.csv with columns emotion,pixels,Usage)")


def stratified_val_mask(labels: np.ndarray, fraction: float, seed: int, too_few: str,
                        counts_text: object) -> np.ndarray:
    """Which rows go to val: about `fraction` of each class, at least one on each side of every class
    present. `too_few` and `counts_text` word the DataError for data too small to split."""
    if not 0 < fraction < 1:
        raise ValueError(f"fraction must be between 0 and 1, not {fraction}")
    counts = np.bincount(labels, minlength=len(CLASSES))
    if len(labels) < MIN_IMAGES_TO_SPLIT or (counts == 1).any():
        raise DataError(f"{too_few} to split off a validation set "
                        f"(need {MIN_IMAGES_TO_SPLIT}+ and 2+ per class; have {counts_text})")
    rng = np.random.default_rng(seed)
    is_val = np.zeros(len(labels), bool)
    for label in np.flatnonzero(counts):
        members = np.flatnonzero(labels == label)
        n_val = min(max(round(len(members) * fraction), 1), len(members) - 1)
        is_val[rng.choice(members, n_val, replace=False)] = True
    return is_val


def split_for_validation(faces: FaceSet, fraction: float, seed: int) -> tuple[FaceSet, FaceSet]:
    """Stratified (train, val) split of `faces`, with about `fraction` of each class in val.

    Every class present keeps at least one face on each side. Skip counts stay with train.
    """
    is_val = stratified_val_mask(faces.labels, fraction, seed, f"{faces.source or 'data'}: too few faces",
                                 faces.class_counts())
    train, val = _subset(faces, ~is_val, "train part"), _subset(faces, is_val, "val part")
    train.skipped, train.skip_reasons = faces.skipped, list(faces.skip_reasons)
    return train, val


def twins_in(faces: FaceSet, other: FaceSet) -> np.ndarray:
    """(N,) bool: which images of `faces` have a pixel-identical image in `other` (FER-2013's val has
    about 280 such twins in train: a score on them measures memory, not generalisation)."""
    seen = {image.tobytes() for image in np.ascontiguousarray(other.images)}
    return np.array([image.tobytes() in seen for image in np.ascontiguousarray(faces.images)], dtype=bool)


# ----------------------------------------------------------------------------- shared helpers

class _Problems:
    """Bad rows and files: raised at once with on_error="stop", counted per split with "skip"."""

    def __init__(self, on_error: str) -> None:
        if on_error not in ("stop", "skip"):
            raise ValueError(f"on_error must be 'stop' or 'skip', not {on_error!r}")
        self.skip = on_error == "skip"
        self.counts: dict[str | None, int] = {}
        self.reasons: dict[str | None, list[str]] = {}

    def report(self, split: str | None, message: str, count: int = 1) -> None:
        """`count` bad items of `split` (None: split unknown) that `message` describes."""
        if not self.skip:
            raise DataError(message)
        self.counts[split] = self.counts.get(split, 0) + count
        reasons = self.reasons.setdefault(split, [])
        if len(reasons) < MAX_SKIP_REASONS:
            reasons.append(message)

    def attach(self, out: Splits) -> None:
        """Store the counts on the FaceSets of `out`; those of splits not in `out` go to its first split."""
        if not out:
            return
        for split, count in self.counts.items():
            faces = out[split] if split in out else next(iter(out.values()))
            faces.skipped += count
            room = MAX_SKIP_REASONS - len(faces.skip_reasons)
            faces.skip_reasons.extend(self.reasons[split][:room])

    def summary(self) -> str:
        total = sum(self.counts.values())
        first = next((r[0] for r in self.reasons.values() if r), "")
        return f" ({total} bad items skipped; first: {first})" if total else ""


@dataclass
class _Rows:
    """Faces collected for one split, with their 0-based data-row numbers when read from a csv."""

    images: list[np.ndarray] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    rows: list[int] = field(default_factory=list)

    def add(self, image: np.ndarray, label: int, row: int = -1) -> None:
        self.images.append(image)
        self.labels.append(label)
        self.rows.append(row)

    def faceset(self, source: str) -> FaceSet:
        return FaceSet(images=np.stack(self.images), labels=np.array(self.labels, np.int64), source=source)


def _wanted_splits(splits: Sequence[str] | None) -> set[str] | None:
    """Our names for the requested splits (None: all)."""
    if splits is None:
        return None
    if isinstance(splits, str):
        splits = [splits]
    unknown = [s for s in splits if s.strip().lower() not in SPLIT_SYNONYMS]
    if unknown:
        raise DataError(f"unknown split name(s) {unknown}; use train, val or test "
                        "(or Training, PublicTest, PrivateTest)")
    return {SPLIT_SYNONYMS[s.strip().lower()] for s in splits}


def _select(out: Splits, wanted: set[str] | None, where: Path) -> Splits:
    """`out` in SPLIT_ORDER, restricted to `wanted`; DataError when a wanted split is missing."""
    missing = sorted((wanted or set()) - set(out))
    if missing:
        raise DataError(f"{where}: no {', '.join(missing)} split (it has: {', '.join(out) or 'none'})")
    return {s: out[s] for s in SPLIT_ORDER if s in out and (wanted is None or s in wanted)}


def _finish(out: Splits, where: Path, wanted: set[str] | None, problems: _Problems) -> Splits:
    """Attach skip counts, refuse an empty result, order and check the splits."""
    if not out:
        which = f" in split(s) {', '.join(sorted(wanted))}" if wanted else ""
        raise DataError(f"{where}: no usable faces{which}{problems.summary()}")
    problems.attach(out)
    return _select(out, wanted, where)


def _subset(faces: FaceSet, mask: np.ndarray, part: str) -> FaceSet:
    soft = None if faces.soft_labels is None else faces.soft_labels[mask]
    return FaceSet(images=faces.images[mask], labels=faces.labels[mask], soft_labels=soft,
                   source=f"{faces.source} ({part})")


# ----------------------------------------------------------------------------- csv files

def _csv_header(path: Path) -> list[str]:
    """Lower-case column names of a csv file's first line."""
    _, header = next(_open_csv(path), (1, []))
    return [c.strip().lower() for c in header]


def _open_csv(path: Path) -> Iterator[tuple[int, list[str]]]:
    """(1-based line number, row) of a csv file; read errors become DataError naming the file (and line)."""
    reader = None
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            for row in reader:
                yield reader.line_num, row
    except FileNotFoundError as e:
        raise DataError(f"{path}: no such file") from e
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot be read as a csv text file ({e})") from e
    except csv.Error as e:
        raise DataError(f"{path} line {reader.line_num if reader else 1}: not valid csv ({e})") from e


def _csv_records(path: Path, columns: Sequence[str], defaults: dict[str, str] | None = None
                 ) -> Iterator[tuple[int, list[str] | None]]:
    """(line number, values of `columns`) for each non-blank data row; values None when the row is too short.

    Columns are matched case-insensitively; a missing column is an error unless `defaults` gives its value.
    """
    defaults = defaults or {}
    rows = _open_csv(path)
    _, header = next(rows, (1, []))
    header = [c.strip().lower() for c in header]
    missing = [c for c in columns if c.lower() not in header and c not in defaults]
    if missing:
        raise DataError(f"{path}: missing column(s) {', '.join(missing)} (header: {','.join(header) or 'empty'})")
    index = [header.index(c.lower()) if c.lower() in header else None for c in columns]
    width = max(i for i in index if i is not None) + 1
    for line, row in rows:
        if not row:
            continue
        if len(row) < width:
            yield line, None
        else:
            yield line, [row[i] if i is not None else defaults[c] for i, c in zip(index, columns)]


def _read_fer2013(path: Path, wanted: set[str] | None, problems: _Problems) -> tuple[dict[str, _Rows], int]:
    """Good rows of fer2013.csv per split (only `wanted` splits are parsed) and the number of data rows."""
    kept: dict[str, _Rows] = {}
    n_rows = 0
    for line, values in _csv_records(path, FER2013_COLUMNS, FER2013_DEFAULTS):
        n_rows += 1
        where = f"{path} line {line}"
        if values is None:
            problems.report(None, f"{where}: missing column(s); expected {','.join(FER2013_COLUMNS)}")
            continue
        emotion, pixels, usage = values
        split = SPLIT_SYNONYMS.get(usage.strip().lower())
        if split is None:
            problems.report(None, f"{where}: unknown Usage {usage!r}; expected Training, PublicTest or PrivateTest")
            continue
        if wanted is not None and split not in wanted:
            continue
        try:
            label = _parse_label(emotion)
            image = _parse_pixels(pixels)
        except ValueError as e:
            problems.report(split, f"{where}: {e}")
            continue
        kept.setdefault(split, _Rows()).add(image, label, n_rows - 1)
    return kept, n_rows


def _parse_label(text: str) -> int:
    """A FER-2013 label 0..6; ValueError saying what is wrong."""
    if not _INTEGER.fullmatch(text.strip()):
        raise ValueError(f"emotion {text!r} is not an integer label")
    label = int(text)
    if not 0 <= label < len(CLASSES):
        raise ValueError(f"emotion {label} is not a label 0..{len(CLASSES) - 1}")
    return label


def _parse_pixels(text: str) -> np.ndarray:
    """48x48 uint8 image from 2304 space-separated integers 0..255; ValueError saying what is wrong."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", DeprecationWarning)  # older numpy only warns on a bad token
            values = np.fromstring(text, dtype=np.int64, sep=" ")
    except (ValueError, DeprecationWarning):
        values = None
    if values is None or values.size != N_PIXELS or values.min() < 0 or values.max() > 255:
        raise ValueError(_explain_bad_pixels(text))
    return values.astype(np.uint8).reshape(SIDE, SIDE)


def _explain_bad_pixels(text: str) -> str:
    """What is wrong with a pixels field that failed the fast parse (slow, for bad rows only)."""
    tokens = text.split()
    for i, token in enumerate(tokens, 1):
        if not _INTEGER.fullmatch(token):
            return f"pixel {i} is {token!r}, not an integer"
    if len(tokens) != N_PIXELS:
        return f"pixels has {len(tokens)} values, expected {N_PIXELS} (48x48)"
    for i, token in enumerate(tokens, 1):
        if not 0 <= int(token) <= 255:
            return f"pixel {i} is {token}, outside 0..255"
    return f"pixels cannot be parsed: {text[:40]!r}..."


def _parse_ferplus_votes(values: list[str] | None, split: str) -> np.ndarray:
    """Vote counts of a fer2013new.csv row in FERPLUS_VOTE_COLUMNS order (all 0 without an image name)."""
    if values is None:
        raise ValueError(f"missing column(s); expected {','.join(FERPLUS_COLUMNS)}")
    usage, name, *counts = values
    if SPLIT_SYNONYMS.get(usage.strip().lower()) != split:
        raise ValueError(f"Usage {usage!r} does not match the fer2013.csv row ({split}); are the files aligned?")
    bad = [c for c in counts if not _INTEGER.fullmatch(c.strip()) or int(c) < 0]
    if bad:
        raise ValueError(f"vote count {bad[0]!r} is not a non-negative integer")
    votes = np.array([int(c) for c in counts], np.int64)
    return votes if name.strip() else np.zeros_like(votes)


def _ferplus_majority(votes: np.ndarray) -> np.ndarray:
    """FER+ majority label per row in CLASSES order, or -1 when the row has no 7-class majority.

    Votes of 1 are dropped; the winner needs more than half of the remaining votes.
    """
    votes = np.where(votes == 1, 0, votes)
    winner = votes.argmax(1)
    clear = votes.max(1) * 2 > votes.sum(1)
    return np.where(clear & (winner < len(CLASSES)), winner, -1)


def _vote_shares(votes: np.ndarray) -> np.ndarray:
    """Shares of the 7 classes' votes (votes of 1 dropped), rows summing to 1."""
    votes = np.where(votes == 1, 0, votes)[:, : len(CLASSES)].astype(np.float32)
    return votes / votes.sum(1, keepdims=True)


# ----------------------------------------------------------------------------- image folders

def _subfolders(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith((".", "__")))


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir()
                  if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".") and p.is_file())


def _count_images(folder: Path) -> int:
    return sum(1 for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)


def _split_folders(root: Path, problems: _Problems) -> dict[str, Path]:
    """Split name -> folder; `root` itself as "train" when it holds class folders directly."""
    folders: dict[str, Path] = {}
    others = []
    for folder in _subfolders(root):
        split = SPLIT_SYNONYMS.get(folder.name.lower())
        if split is None:
            others.append(folder)
        elif split in folders:
            raise DataError(f"{root}: both {folders[split].name}/ and {folder.name}/ are the {split} split")
        else:
            folders[split] = folder
    if not folders:
        if any(f.name.lower() in CLASS_SYNONYMS for f in others):
            return {"train": root}
        raise DataError(f"{root}: no train/ or test/ folder and no class folders ({', '.join(CLASSES)}) in it")
    for folder in others:
        problems.report(None, f"{folder}: not a split folder (train, val, test)", _count_images(folder))
    return folders


def _class_folders(folder: Path, split: str, problems: _Problems) -> list[tuple[Path, int]]:
    """(class folder, label) pairs of a split folder; unknown class folders are reported."""
    found = []
    for sub in _subfolders(folder):
        name = CLASS_SYNONYMS.get(sub.name.lower())
        if name is None:
            problems.report(split, f"{sub}: unknown class folder {sub.name!r}; expected one of {', '.join(CLASSES)}",
                            _count_images(sub))
        else:
            found.append((sub, CLASSES.index(name)))
    return found


def _read_image(file: Path) -> np.ndarray | None:
    """A 48x48 grey image, or None when the file cannot be decoded."""
    try:
        data = np.fromfile(file, dtype=np.uint8)  # imdecode, unlike imread, copes with any path
    except OSError:
        return None
    image = cv2.imdecode(data, cv2.IMREAD_GRAYSCALE) if data.size else None
    if image is not None and image.shape != (SIDE, SIDE):
        image = cv2.resize(image, (SIDE, SIDE), interpolation=cv2.INTER_AREA)
    return image
