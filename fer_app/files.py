"""Tensor files written atomically: a safetensors file goes to a name of this process's own beside its target,
then is renamed over it, so a reader (or a kill) finds the old file or the new one, never half of one; and
read back as caches, where a missing or damaged file means "compute it again"."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file


def save_tensors_atomically(path: Path, tensors: dict[str, torch.Tensor], *,
                            metadata: dict[str, str] | None = None, mode: int | None = None) -> None:
    """Write `tensors` (and the header `metadata`) to `path` in one rename; `mode`: the file's permission bits
    (safetensors writes 0600), e.g. those of the folder's other files."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    save_file(tensors, str(tmp), metadata=metadata)
    if mode is not None:
        os.chmod(tmp, mode)
    os.replace(tmp, path)


def load_cached_tensor(path: Path, name: str) -> torch.Tensor | None:
    """The tensor `name` of the cache file at `path`, or None when the file is missing or damaged (never trusted:
    the caller computes it again and its atomic save replaces the file)."""
    if not Path(path).is_file():
        return None
    try:
        return load_file(str(path))[name]
    except Exception:  # noqa: BLE001 - a damaged cache is rebuilt, never trusted
        return None
