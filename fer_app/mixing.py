"""Training data beyond one file: sources mixed with weights, uploaded zips, previews before training.

- `Source` + `load_sources`: load each data set (whatever `load_dataset` reads, or a .zip of the
  folder layout), give each one without a val split its own (stratified, *before* mixing, so that
  copies of a face never land on both sides), then `mix` them.
- `mix`: a weight repeats (> 1) or subsamples (< 1) a source's train faces, per class. Val and
  test faces are never repeated (only subsampled when the weight is < 1), so metrics count each
  face once.
- `extract_zip` / `extract_upload`: unpack an uploaded zip of the folder layout, refusing paths
  that leave the folder, absolute paths, links, paths too deep or names too long, a name that is both
  a file and a folder, and archives with too many entries or too large files; every problem is a
  `DataError` naming the zip.
- `preview` / `sample_grid`: counts per class and split, warnings, and a grid of sample faces.
"""

from __future__ import annotations

import hashlib
import io
import math
import os
import re
import shutil
import stat
import zipfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import cv2
import numpy as np

from fer_app import config
from fer_app.config import CLASSES
from fer_app.data import (
    CLASS_SYNONYMS,
    MAX_SKIP_REASONS,
    SIDE,
    SPLIT_ORDER,
    SPLIT_SYNONYMS,
    DataError,
    FaceSet,
    Splits,
    load_dataset,
    split_for_validation,
)

#: preview() warns about classes with fewer faces than this in a split.
MIN_FACES_PER_CLASS = 20
#: Limits on an uploaded zip (FER-2013 as images is about 36k files, 60 MB).
MAX_ZIP_FILES = 100_000  # entries of any kind: files, folders, links
MAX_ZIP_BYTES = 2 * 1024 ** 3
#: Deepest path (folders) and longest names accepted in a zip (the layout needs 3 levels; file systems
#: allow 255 bytes per name).
MAX_ZIP_DEPTH = 32
MAX_ZIP_NAME_BYTES = 255
MAX_ZIP_PATH_BYTES = 1024
_WINDOWS_DRIVE = re.compile(r"^[A-Za-z]:")


# ---------------------------------------------------------------- mixing


@dataclass(frozen=True)
class Source:
    """One data set to train on: a path `load_dataset` reads (or a .zip of the folder layout), and its weight."""

    path: Path
    weight: float = 1.0
    ferplus: Path | None = None     # FER+ fer2013new.csv, when `path` is the matching fer2013.csv

    @classmethod
    def parse(cls, spec: str) -> Source:
        """`PATH` or `PATH:WEIGHT` (as in the CLI's `--mix`)."""
        path, sep, weight = spec.rpartition(":")
        if sep and path:
            try:
                return cls(Path(path), float(weight))
            except ValueError:
                pass
        return cls(Path(spec))


def check_weight(weight: float) -> float:
    if not (isinstance(weight, (int, float)) and math.isfinite(weight) and weight > 0):
        raise ValueError(f"a data weight must be a positive number, not {weight!r}")
    return float(weight)


def with_val(splits: Splits, fraction: float = 0.1, seed: int = 0) -> Splits:
    """`splits` with a val split: when it has none, a stratified `fraction` of train is held out.

    A data set without a train split (e.g. only test/) is used as train.
    """
    if "train" in splits and "val" in splits:
        return splits
    out = dict(splits) if "train" in splits else {"train": next(iter(splits.values()))}
    out["train"], out["val"] = split_for_validation(out["train"], fraction, seed)
    return {s: out[s] for s in SPLIT_ORDER if s in out}


def load_source(source: Source, *, val_fraction: float = 0.1, seed: int = 0, on_error: str = "stop") -> Splits:
    """One source's splits, with a val split (see `with_val`); a .zip is unpacked first (`extract_upload`)."""
    path = Path(source.path)
    if path.suffix.lower() == ".zip" and path.is_file():
        path = extract_upload(path.read_bytes(), name=str(path))
    return with_val(load_dataset(path, ferplus=source.ferplus, on_error=on_error), val_fraction, seed)


def load_sources(sources: Sequence[Source], *, val_fraction: float = 0.1, seed: int = 0,
                 on_error: str = "stop") -> Splits:
    """Every source loaded (`load_source`) and mixed by weight (`mix`)."""
    if not sources:
        raise DataError("no data source given")
    loaded = [(load_source(s, val_fraction=val_fraction, seed=seed, on_error=on_error), check_weight(s.weight))
              for s in sources]
    return mix(loaded, seed=seed)


def mix(sources: Sequence[tuple[Splits, float]], *, seed: int = 0) -> Splits:
    """One `Splits` from several, each weighted: train faces repeated or subsampled per class by the weight.

    Val and test faces are subsampled when the weight is below 1 but never repeated. A source with
    weight 1 is taken as is (same faces, same order), so one source alone comes back unchanged.
    """
    if not sources:
        raise DataError("nothing to mix: no data sources")
    rng = np.random.default_rng(seed)
    out: Splits = {}
    for split in SPLIT_ORDER:
        parts = [_weighted(s[split], check_weight(w) if split == "train" else min(check_weight(w), 1.0), rng)
                 for s, w in sources if split in s and len(s[split])]
        if parts:
            out[split] = parts[0] if len(parts) == 1 else _concat(parts)
    if not out:
        raise DataError("nothing to mix: every source is empty")
    return out


def _weighted(faces: FaceSet, weight: float, rng: np.random.Generator) -> FaceSet:
    """`faces` with each class's faces repeated / subsampled to about `weight` times their number (1+ kept)."""
    if weight == 1.0:
        return faces
    chosen = []
    for label in np.unique(faces.labels):
        members = np.flatnonzero(faces.labels == label)
        wanted = max(1, round(len(members) * weight))
        repeats, rest = divmod(wanted, len(members))
        chosen += [np.tile(members, repeats), rng.choice(members, rest, replace=False)]
    index = np.sort(np.concatenate(chosen))
    soft = None if faces.soft_labels is None else faces.soft_labels[index]
    return FaceSet(images=faces.images[index], labels=faces.labels[index], soft_labels=soft,
                   source=f"{faces.source} x{weight:g}", skipped=faces.skipped, skip_reasons=list(faces.skip_reasons),
                   excluded=faces.excluded)


def _concat(parts: Sequence[FaceSet]) -> FaceSet:
    soft = None
    if all(p.soft_labels is not None for p in parts):
        soft = np.concatenate([p.soft_labels for p in parts])  # type: ignore[misc]
    reasons = [r for p in parts for r in p.skip_reasons][:MAX_SKIP_REASONS]
    return FaceSet(images=np.concatenate([p.images for p in parts]), labels=np.concatenate([p.labels for p in parts]),
                   soft_labels=soft, source=" + ".join(p.source for p in parts),
                   skipped=sum(p.skipped for p in parts), skip_reasons=reasons,
                   excluded=sum(p.excluded for p in parts))


def data_stamp(path: str | Path) -> float:
    """A cheap change stamp for caching a loaded data set: the latest mtime of the path and of the
    folders two levels below it (split and class folders change when files are added or removed)."""
    path = Path(path)
    if not path.exists():
        return 0.0
    if path.is_file():
        return path.stat().st_mtime
    folders = [path, *(p for p in path.glob("*") if p.is_dir()), *(p for p in path.glob("*/*") if p.is_dir())]
    return max(p.stat().st_mtime for p in folders)


# ---------------------------------------------------------------- zip uploads


def extract_upload(data: bytes, root: Path | None = None, *, name: str = "the upload") -> Path:
    """An uploaded zip unpacked (once per content) under APP_HOME/uploads/<hash>; the layout folder in it.

    name: how messages call the zip (its file name)."""
    dest = (root or config.APP_HOME / "uploads") / hashlib.sha256(data).hexdigest()[:16]
    if dest.is_dir():  # unpacked before: folders appear there complete and checked (see extract_zip)
        return _layout_root(dest, name)
    return extract_zip(data, dest, name=name)


def extract_zip(data: bytes, dest: str | Path, *, max_files: int = MAX_ZIP_FILES,
                max_bytes: int = MAX_ZIP_BYTES, name: str = "the upload") -> Path:
    """Unpack a zip of the folder layout into `dest` (new or empty); the folder `load_folders` reads.

    The layout (train/<class>/*.png and test/<class>/*.png, or <class>/*.png) may sit at the top of
    the zip or under one top folder. Raises DataError naming the zip (`name`), leaving nothing behind,
    for: not a zip, a path leaving the folder or absolute, a link, an encrypted file, a path deeper than
    MAX_ZIP_DEPTH or a name too long, a name that is a file and a folder, more than `max_files` entries
    (files and folders) or `max_bytes` unpacked, a damaged archive, or a zip that is not the layout.
    """
    dest = Path(dest)
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise ValueError(f"{dest}: exists and is not an empty folder")
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, zlib.error, EOFError, ValueError, OSError) as exc:
        raise DataError(f"{name} is not a zip archive ({exc})") from None
    with archive:
        members = _safe_members(archive, max_files, max_bytes, name)
        tmp = dest.parent / f".{dest.name}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        try:
            _unpack(archive, members, tmp, max_bytes, name)
            root = _layout_root(tmp, name)
            os.replace(tmp, dest)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return dest / root.relative_to(tmp)


def _safe_members(archive: zipfile.ZipFile, max_files: int, max_bytes: int, name: str = "the upload"
                  ) -> list[tuple[zipfile.ZipInfo, tuple[str, ...]]]:
    """(entry, path parts) of the files to unpack; DataError for any unsafe entry or a too large archive."""
    entries = archive.infolist()
    if len(entries) > max_files:  # every entry counts: folders are as costly to list and create as files
        raise DataError(f"{name} holds {len(entries)} entries (files and folders); at most {max_files} are accepted")
    members, folders = [], set()
    for info in entries:
        path = info.filename.replace("\\", "/")
        if path.startswith("/") or _WINDOWS_DRIVE.match(path):
            raise DataError(f"{name} holds an absolute path ({info.filename!r}); refused")
        parts = PurePosixPath(path).parts
        if ".." in parts:
            raise DataError(f"{name} holds a path that leaves its folder ({info.filename!r}); refused")
        if stat.S_ISLNK(info.external_attr >> 16):
            raise DataError(f"{name} holds a link ({info.filename!r}); refused")
        if info.flag_bits & 0x1:
            raise DataError(f"{name} holds an encrypted file ({info.filename!r}); refused")
        if len(parts) > MAX_ZIP_DEPTH:
            raise DataError(f"{name} holds a path {len(parts)} levels deep ({_shorten(info.filename)}); "
                            f"at most {MAX_ZIP_DEPTH} are accepted")
        if len(path.encode()) > MAX_ZIP_PATH_BYTES or any(len(p.encode()) > MAX_ZIP_NAME_BYTES for p in parts):
            raise DataError(f"{name} holds a name too long for a file system ({_shorten(info.filename)}); names "
                            f"up to {MAX_ZIP_NAME_BYTES} bytes, paths up to {MAX_ZIP_PATH_BYTES}, are accepted")
        folders.update(parts[:i] for i in range(1, len(parts) + (1 if info.is_dir() else 0)))
        if info.is_dir() or not parts or parts[0] == "__MACOSX" or parts[-1].startswith("."):
            continue
        members.append((info, parts))
    clash = next((parts for _, parts in members if parts in folders), None)
    if clash is not None:
        raise DataError(f"{name} holds {'/'.join(clash)!r} both as a file and as a folder; refused")
    if sum(info.file_size for info, _ in members) > max_bytes:
        raise DataError(f"{name} unpacks to more than {max_bytes / 1024 ** 2:.0f} MB; refused")
    return members


def _shorten(text: str, limit: int = 80) -> str:
    return repr(text) if len(text) <= limit else repr(text[:limit]) + f"... ({len(text)} characters)"


def _unpack(archive: zipfile.ZipFile, members: list[tuple[zipfile.ZipInfo, tuple[str, ...]]], folder: Path,
            max_bytes: int, name: str = "the upload") -> None:
    """Write the members under `folder`, counting the bytes really unpacked (headers may lie)."""
    written = 0
    info = None
    try:
        for info, parts in members:
            target = folder.joinpath(*parts)
            target.parent.mkdir(parents=True, exist_ok=True)
            with archive.open(info) as src, open(target, "wb") as out:
                while chunk := src.read(1 << 20):
                    written += len(chunk)
                    if written > max_bytes:
                        raise DataError(f"{name} unpacks to more than {max_bytes / 1024 ** 2:.0f} MB; refused")
                    out.write(chunk)
    except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError) as exc:
        raise DataError(f"{name} is damaged or uses an unsupported compression ({exc})") from None
    except (OSError, RecursionError) as exc:  # what the checks above did not foresee: still about the zip
        what = f" {_shorten(info.filename)}" if info is not None else ""
        reason = getattr(exc, "strerror", None) or type(exc).__name__
        raise DataError(f"{name}: cannot unpack{what} ({reason})") from None


def _layout_root(folder: Path, name: str = "the upload") -> Path:
    """The folder layout's root: `folder`, or its one top folder; DataError saying what the zip holds otherwise."""
    def is_layout(root: Path) -> bool:
        names = {p.name.lower() for p in root.iterdir() if p.is_dir()}
        return bool(names & (set(SPLIT_SYNONYMS) | set(CLASS_SYNONYMS)))

    entries = sorted(p for p in folder.iterdir() if not p.name.startswith((".", "__")))
    if is_layout(folder):
        return folder
    subfolders = [p for p in entries if p.is_dir()]
    if len(subfolders) == 1 and is_layout(subfolders[0]):
        return subfolders[0]
    holds = ", ".join(p.name + ("/" if p.is_dir() else "") for p in entries[:8]) or "nothing"
    raise DataError(f"{name} is not the folder layout: expected train/<class>/*.png and test/<class>/*.png "
                    f"(or <class>/*.png), classes {', '.join(CLASSES)}, at its top or under one folder; "
                    f"it holds: {holds}{' ...' if len(entries) > 8 else ''}")


# ---------------------------------------------------------------- preview


def preview(splits: Splits) -> dict:
    """What the data holds, before training.

    Keys: "counts" {split: {class: n}}, "totals" {split: n}, "sources" {split: source},
    "warnings" [str] (empty or small classes, a missing val split, skipped and excluded faces),
    "skipped" (bad rows/files left out while loading) and "skip_reasons" (the first few, with file and line).
    """
    counts = {split: faces.class_counts() for split, faces in splits.items()}
    warnings = []
    for split, per_class in counts.items():
        empty = [c for c, n in per_class.items() if n == 0]
        few = [f"{c} ({n})" for c, n in per_class.items() if 0 < n < MIN_FACES_PER_CLASS]
        if empty:
            warnings.append(f"{split}: no faces of {', '.join(empty)}; the model cannot learn or be checked on them")
        if few:
            warnings.append(f"{split}: fewer than {MIN_FACES_PER_CLASS} faces of {', '.join(few)}; "
                            "their accuracy will be unreliable")
    if "val" not in splits:
        warnings.append("no val split: training needs one to pick the best epoch")
    skipped = sum(f.skipped for f in splits.values())
    reasons = [r for f in splits.values() for r in f.skip_reasons][:MAX_SKIP_REASONS]
    if skipped:
        warnings.append(f"{skipped} bad rows or files were skipped (unknown class names, unreadable images, "
                        f"bad values); first: {reasons[0] if reasons else '?'}")
    excluded = sum(f.excluded for f in splits.values())
    if excluded:
        warnings.append(f"{excluded} faces without a clear FER+ majority label were left out")
    return {"counts": counts, "totals": {s: len(f) for s, f in splits.items()},
            "sources": {s: f.source for s, f in splits.items()}, "warnings": warnings,
            "skipped": skipped, "skip_reasons": reasons}


def sample_grid(faces: FaceSet, per_class: int = 6, *, scale: int = 2, seed: int = 0) -> np.ndarray:
    """A grey image: one row per class (named on the left) of up to `per_class` random faces of that class."""
    rng = np.random.default_rng(seed)
    cell, gap, label_width = SIDE * scale, 4, 110
    grid = np.full((len(CLASSES) * (cell + gap) + gap, label_width + per_class * (cell + gap) + gap), 255, np.uint8)
    for row, name in enumerate(CLASSES):
        y = gap + row * (cell + gap)
        members = np.flatnonzero(faces.labels == row)
        picked = rng.choice(members, min(per_class, len(members)), replace=False) if len(members) else []
        cv2.putText(grid, f"{name} ({len(members)})", (4, y + cell // 2 + 5), cv2.FONT_HERSHEY_SIMPLEX, 0.45, 0, 1,
                    cv2.LINE_AA)
        for col in range(per_class):
            x = label_width + gap + col * (cell + gap)
            if col < len(picked):
                face = cv2.resize(faces.images[picked[col]], (cell, cell), interpolation=cv2.INTER_NEAREST)
            else:
                face = np.full((cell, cell), 225, np.uint8)  # an empty cell: fewer faces than per_class
            grid[y:y + cell, x:x + cell] = face
    return grid
