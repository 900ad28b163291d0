"""Streamed data (fer_app.streaming): a folder layout or a CSV of paths read batch by batch by
DataLoader workers trains exactly as the same folder loaded in memory; bad entries are named or
skipped; the index held in memory is a few bytes per file."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from conftest import TINY_COMPACT, make_faces
from fer_app.config import CLASSES
from fer_app.data import DataError, load_folders
from fer_app.streaming import StreamingSet, is_streamable, load_streaming
from fer_app.training import TrainConfig, train


def write_layout(root, splits, big_every: int = 3):
    """The folder layout of `splits` as PNGs; every `big_every`-th image at 96x96 (resized back on reading)."""
    for split, faces in splits.items():
        for i, (image, label) in enumerate(zip(faces.images, faces.labels)):
            folder = root / split / CLASSES[label]
            folder.mkdir(parents=True, exist_ok=True)
            if i % big_every == 0:
                image = cv2.resize(image, (96, 96), interpolation=cv2.INTER_NEAREST)
            cv2.imwrite(str(folder / f"{i:05d}.png"), image)
    return root


@pytest.fixture(scope="module")
def layout(tmp_path_factory):
    return write_layout(tmp_path_factory.mktemp("stream"), {"train": make_faces(24, seed=1),
                                                            "val": make_faces(8, seed=2)})


def test_streamed_folder_trains_as_the_same_folder_in_memory(layout, models_dir, tmp_path):
    streamed, in_memory = load_streaming(layout), load_folders(layout)
    assert isinstance(streamed["train"], StreamingSet) and not hasattr(streamed["train"], "images")
    for split in ("train", "val"):
        assert streamed[split].class_counts() == in_memory[split].class_counts()
    cfg = TrainConfig(**TINY_COMPACT)
    # The streamed run with 2 DataLoader worker processes runs in a fresh interpreter, as `python -m fer_app
    # train --stream` does: worker processes started from this test process would inherit the threads and
    # the altered __main__ that earlier tests (live pipelines, Streamlit's AppTest) leave behind.
    script = (f"import json, sys; sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
              "from conftest import TINY_COMPACT\nfrom fer_app.streaming import load_streaming\n"
              "from fer_app.training import TrainConfig, train\n"
              f"a = train(TrainConfig(**TINY_COMPACT), load_streaming({str(layout)!r}), "
              f"workdir={str(tmp_path / 's')!r}, "
              "workers=2, name='streamed')\n"
              "print(json.dumps({'loss': [h.train_loss for h in a.history], 'accuracy': a.report['accuracy'], "
              "'streamed': a.model.meta['training']['data']['streamed']}))\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "FER_APP_MODELS": str(models_dir)}, cwd=Path(__file__).parent.parent)
    assert done.returncode == 0, done.stderr[-2000:]
    a = json.loads(done.stdout.strip().splitlines()[-1])
    b = train(cfg, in_memory, workdir=tmp_path / "m")
    # the same pixels (decoded and resized the same way), the same batches: the same run
    assert a["loss"] == pytest.approx([h.train_loss for h in b.history], rel=1e-5)
    assert a["accuracy"] == pytest.approx(b.report["accuracy"]) and a["accuracy"] > 0.5
    assert a["streamed"] is True
    assert (models_dir / "streamed" / "model.safetensors").is_file()


def test_csv_of_paths_and_labels(layout, models_dir, tmp_path):
    rows = ["path,label,split"]
    for split in ("train", "val"):
        for k, file in enumerate(sorted((layout / split).rglob("*.png"))):
            label = CLASSES.index(file.parent.name)
            rows.append(f"{file},{label if k % 2 else file.parent.name.upper()},{split}")  # index or name
    csv = tmp_path / "faces.csv"
    csv.write_text("\n".join(rows) + "\n")
    assert is_streamable(csv) and is_streamable(layout) and not is_streamable(tmp_path / "missing.csv")
    splits = load_streaming(csv)
    assert {s: len(f) for s, f in splits.items()} == {"train": 168, "val": 56}

    # a missing file is named with its line, or skipped and counted
    (tmp_path / "gone").mkdir()
    csv.write_text("\n".join(rows + ["gone/x.png,happy,train"]) + "\n")
    with pytest.raises(DataError, match=r"faces.csv line 226: .*x.png: no such file"):
        load_streaming(csv)
    assert load_streaming(csv, on_error="skip")["train"].skipped == 1

    # a file that exists but is not an image: found when a batch reads it
    (tmp_path / "bad.png").write_bytes(b"not a png")
    csv.write_text("\n".join(rows + ["bad.png,sad,train"]) + "\n")
    cfg = TrainConfig(**{**TINY_COMPACT, "epochs": 1})
    with pytest.raises(DataError, match=r"bad.png: not a readable image"):
        train(cfg, load_streaming(csv), workdir=tmp_path / "stop", workers=0)
    result = train(cfg, load_streaming(csv, on_error="skip"), workdir=tmp_path / "skip", workers=0)
    assert result.model.meta["training"]["data"]["unreadable_skipped"] == 1  # one epoch: read once


def test_the_index_is_a_few_bytes_per_file():
    """What stays in memory (and what each worker gets): packed paths and labels, no object per file."""
    n = 50_000
    paths = [f"/data/affectnet/train/{CLASSES[i % 7]}/{i:08d}.jpg" for i in range(n)]
    faces = StreamingSet(paths, np.arange(n) % 7, "synthetic")
    per_file = sum(v.nbytes for v in vars(faces).values() if isinstance(v, np.ndarray)) / n
    assert per_file < 2 * len(paths[0]) + 16  # the path's bytes, an offset and a label
    assert len(pickle.dumps(faces)) < n * (len(paths[0]) + 32)
    assert faces.path(12_345) == paths[12_345] and faces.labels[12_345] == 12_345 % 7


def test_streamed_data_needs_full_mode(layout, tmp_path):
    from fer_app.training import TrainingError

    with pytest.raises(TrainingError, match="head mode"):
        train(TrainConfig(mode="head", init_from="x", threads=1), load_streaming(layout), workdir=tmp_path)
