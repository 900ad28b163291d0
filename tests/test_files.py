"""fer_app.files: safetensors files replaced in one rename, with the permission bits asked for; caches read back."""

from __future__ import annotations

import os

import pytest
import torch
from safetensors import safe_open

import fer_app.files as files
from fer_app.files import load_cached_tensor, save_tensors_atomically


def test_the_file_is_replaced_whole_with_its_header_and_mode(tmp_path):
    path = tmp_path / "t.safetensors"
    save_tensors_atomically(path, {"a": torch.zeros(2)})
    save_tensors_atomically(path, {"a": torch.arange(3.0)}, metadata={"k": "v"}, mode=0o644)
    with safe_open(str(path), "pt") as f:
        assert f.metadata() == {"k": "v"} and torch.equal(f.get_tensor("a"), torch.arange(3.0))
    assert path.stat().st_mode & 0o777 == 0o644  # safetensors alone writes 0600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.safetensors"]  # no temporary file left


def test_a_write_that_dies_leaves_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "t.safetensors"
    save_tensors_atomically(path, {"a": torch.ones(2)})

    def dies(tensors, filename, metadata=None):
        open(filename, "wb").write(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(files, "save_file", dies)
    with pytest.raises(OSError):
        save_tensors_atomically(path, {"a": torch.zeros(2)})
    with safe_open(str(path), "pt") as f:
        assert torch.equal(f.get_tensor("a"), torch.ones(2))
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(f".{os.getpid()}.tmp")]  # the caller's to clear


def test_load_cached_tensor_reads_good_files_and_refuses_missing_or_damaged_ones(tmp_path):
    path = tmp_path / "cache.safetensors"
    assert load_cached_tensor(path, "probs") is None
    save_tensors_atomically(path, {"probs": torch.arange(6.0).reshape(2, 3)})
    assert load_cached_tensor(path, "probs").equal(torch.arange(6.0).reshape(2, 3))
    assert load_cached_tensor(path, "views") is None  # another cache's name
    path.write_bytes(b"torn")
    assert load_cached_tensor(path, "probs") is None
