"""Data larger than memory: image files streamed through a DataLoader, decoded and resized as batches need them.

`load_streaming(PATH)` indexes the folder layout (`train/<class>/*`, `val/`, `test/`: the same rules
as `fer_app.data.load_folders`) or a CSV of image paths and labels (`path,label[,split]`; paths
relative to the CSV's folder; labels 0..6 or class names, synonyms accepted; split defaults to
train) without reading any image. Each split becomes a `StreamingSet`: a torch `Dataset` whose
items are read, decoded grey and resized to 48x48 (INTER_AREA, as the in-memory loader does) in
the DataLoader's worker processes. What stays in memory is the index: the paths packed in one
byte array (about their length in bytes: ~3 MB for 50,000 files) and a label byte per file, so
the resident memory does not grow with the images' size or number beyond that; the workers share
the index copy-on-write (numpy arrays, no per-item Python objects to touch).

An unreadable file comes back with label -1; the engine stops naming the file (on_error "stop")
or skips and counts it ("skip"). FER-2013's csv and the .npz keep the fast in-memory path
(`fer_app.data`).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from fer_app.config import CLASSES
from fer_app.data import (CLASS_SYNONYMS, IMAGE_SUFFIXES, SPLIT_ORDER, SPLIT_SYNONYMS,
                          DataError, _class_folders, _csv_records, _Problems, _read_image, _split_folders,
                          stratified_val_mask)

#: Columns of a CSV of image paths and labels (split optional).
CSV_COLUMNS = ("path", "label", "split")
#: Images decoded to estimate the compact encoder's input mean/std.
STATS_SAMPLE = 2048


class StreamingSet(Dataset):
    """Image files of one split; item i is (48x48 uint8 tensor, label, i), label -1 when unreadable.

    Has what the engine reads of a `FaceSet` (labels, source, class_counts, fingerprint, skipped)
    but no `images`: they are read when asked for.
    """

    def __init__(self, paths: list[str], labels: np.ndarray, source: str = "", on_error: str = "stop") -> None:
        encoded = [os.fsencode(p) for p in paths]
        self._offsets = np.zeros(len(encoded) + 1, np.int64)
        np.cumsum([len(b) for b in encoded], out=self._offsets[1:])
        self._blob = np.frombuffer(b"".join(encoded), np.uint8).copy()
        self.labels = np.asarray(labels, np.int64)
        self.source, self.on_error = source, on_error
        self.soft_labels = None
        self.skipped, self.skip_reasons, self.excluded = 0, [], 0

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def path(self, i: int) -> str:
        return os.fsdecode(self._blob[self._offsets[i]:self._offsets[i + 1]].tobytes())

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, int]:
        image = _read_image(Path(self.path(i)))
        if image is None:
            return torch.zeros((48, 48), dtype=torch.uint8), -1, i
        return torch.from_numpy(np.ascontiguousarray(image)), int(self.labels[i]), i

    def class_counts(self) -> dict[str, int]:
        counts = np.bincount(self.labels, minlength=len(CLASSES))
        return {c: int(n) for c, n in zip(CLASSES, counts)}

    def fingerprint(self) -> str:
        """Hash of the paths and labels (not of the files' contents, which are never all read)."""
        h = hashlib.sha256(self._blob.tobytes())
        h.update(self._offsets.tobytes())
        h.update(self.labels.tobytes())
        return h.hexdigest()[:16]

    def subset(self, index: np.ndarray, part: str) -> StreamingSet:
        out = StreamingSet([self.path(int(i)) for i in index], self.labels[index], f"{self.source} ({part})",
                           self.on_error)
        return out

    def sample_images(self, count: int = STATS_SAMPLE) -> np.ndarray:
        """Up to `count` decoded images, evenly spread over the set (readable ones only)."""
        pick = np.unique(np.linspace(0, len(self) - 1, min(count, len(self))).astype(np.int64))
        images = [img for img in (_read_image(Path(self.path(int(i)))) for i in pick) if img is not None]
        return np.stack(images) if images else np.zeros((0, 48, 48), np.uint8)


def worker_init(_worker_id: int) -> None:
    """DataLoader workers decode with one OpenCV thread each (the workers are the parallelism)."""
    import cv2

    cv2.setNumThreads(1)


def is_streamable(path: str | Path) -> bool:
    """Whether `path` is something `load_streaming` reads: a folder, or a CSV with path and label columns."""
    path = Path(path)
    if path.is_dir():
        return True
    if path.suffix.lower() != ".csv" or not path.is_file():
        return False
    try:
        first = next(iter(open(path, encoding="utf-8-sig")), "")
    except (OSError, UnicodeDecodeError):
        return False
    return {"path", "label"} <= {c.strip().lower() for c in first.split(",")}


def load_streaming(path: str | Path, *, val_fraction: float = 0.1, seed: int = 0,
                   on_error: str = "stop") -> dict[str, StreamingSet]:
    """Index a folder layout or a CSV of paths + labels into streamed splits, with a val split
    (a stratified `val_fraction` of train when there is none, as `fer_app.mixing.with_val` does)."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file or folder")
    if path.is_dir():
        splits = _scan_folders(path, on_error)
    elif is_streamable(path):
        splits = _scan_csv(path, on_error)
    else:
        raise DataError(f"{path}: streaming reads a folder of class folders or a CSV with columns path,label[,split]")
    if not splits:
        raise DataError(f"{path}: no images found")
    if "val" not in splits:
        train = splits["train"] if "train" in splits else next(iter(splits.values()))
        splits["train"], splits["val"] = _split_off_val(train, val_fraction, seed)
    return {s: splits[s] for s in SPLIT_ORDER if s in splits}


def _scan_folders(root: Path, on_error: str) -> dict[str, StreamingSet]:
    problems = _Problems(on_error)
    out: dict[str, StreamingSet] = {}
    for split, folder in _split_folders(root, problems).items():
        paths: list[str] = []
        labels: list[int] = []
        for class_folder, label in _class_folders(folder, split, problems):
            with os.scandir(class_folder) as entries:
                names = sorted(e.name for e in entries if not e.name.startswith(".") and
                               os.path.splitext(e.name)[1].lower() in IMAGE_SUFFIXES and e.is_file())
            base = str(class_folder)
            paths.extend(os.path.join(base, n) for n in names)
            labels.extend([label] * len(names))
        if paths:
            out[split] = StreamingSet(paths, np.array(labels, np.int64), str(folder), on_error)
            out[split].skipped = problems.counts.get(split, 0)
    return out


def _scan_csv(path: Path, on_error: str) -> dict[str, StreamingSet]:
    problems = _Problems(on_error)
    base = path.parent
    rows: dict[str, tuple[list[str], list[int]]] = {}
    for line, values in _csv_records(path, CSV_COLUMNS, {"split": "train"}):
        where = f"{path} line {line}"
        if values is None:
            problems.report(None, f"{where}: missing column(s); expected {','.join(CSV_COLUMNS)}")
            continue
        file, label_text, split_text = (v.strip() for v in values)
        split = SPLIT_SYNONYMS.get(split_text.lower())
        label = _parse_label(label_text)
        if split is None:
            problems.report(None, f"{where}: unknown split {split_text!r}; expected train, val or test")
            continue
        if label is None:
            problems.report(split, f"{where}: label {label_text!r} is not 0..6 or a class name ({', '.join(CLASSES)})")
            continue
        full = file if os.path.isabs(file) else os.path.join(base, file)
        if not os.path.isfile(full):
            problems.report(split, f"{where}: {full}: no such file")
            continue
        paths, labels = rows.setdefault(split, ([], []))
        paths.append(full)
        labels.append(label)
    out = {s: StreamingSet(p, np.array(lab, np.int64), f"{path}:{s}", on_error) for s, (p, lab) in rows.items()}
    for split, count in problems.counts.items():
        if out:
            (out.get(split) or next(iter(out.values()))).skipped += count
    return out


def _parse_label(text: str) -> int | None:
    if text.isdigit():
        return int(text) if int(text) < len(CLASSES) else None
    name = CLASS_SYNONYMS.get(text.lower())
    return CLASSES.index(name) if name else None


def _split_off_val(faces: StreamingSet, fraction: float, seed: int) -> tuple[StreamingSet, StreamingSet]:
    """Stratified (train, val) of a streamed set; every class present keeps a file on each side."""
    is_val = stratified_val_mask(faces.labels, fraction, seed, f"{faces.source}: too few images", faces.class_counts())
    train, val = faces.subset(np.flatnonzero(~is_val), "train part"), faces.subset(np.flatnonzero(is_val), "val part")
    train.skipped = faces.skipped
    return train, val
