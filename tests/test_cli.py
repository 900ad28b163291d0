"""The command line end to end: predict, evaluate, train, models; exit codes and one-line errors."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from conftest import make_faces
from fer_app.cli import main
from fer_app.modelcard import VALIDATION_TITLE

ASSETS = Path(__file__).resolve().parent.parent / "assets"


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def write_fer2013_csv(path: Path, splits: dict[str, np.ndarray | object]) -> Path:
    usage = {"train": "Training", "val": "PublicTest", "test": "PrivateTest"}
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["emotion", "pixels", "Usage"])
        for split, faces in splits.items():
            for img, y in zip(faces.images, faces.labels):
                w.writerow([int(y), " ".join(map(str, img.reshape(-1))), usage[split]])
    return path


def test_predict_astronaut(capsys, tiny_model):
    code, out, _ = run(capsys, "predict", str(ASSETS / "astronaut.png"), "--model", str(tiny_model), "--json")
    assert code == 0
    res = json.loads(out)["results"][0]
    assert len(res["faces"]) == 1
    face = res["faces"][0]
    x, y, w, h = face["box"]
    assert 150 < x + w / 2 < 280 and 50 < y + h / 2 < 200  # her face, in the upper middle of the photo
    assert set(face["probabilities"]) == {"angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"}
    assert abs(sum(face["probabilities"].values()) - 1) < 1e-3
    code, out, _ = run(capsys, "predict", str(ASSETS / "astronaut.png"), "--model", str(tiny_model))
    assert code == 0 and "1 face(s)" in out and "box=" in out


def test_predict_no_face_is_empty_not_error(capsys, tiny_model, tmp_path):
    import cv2

    blank = tmp_path / "wall.png"
    cv2.imwrite(str(blank), np.full((200, 300, 3), 200, np.uint8))
    code, out, _ = run(capsys, "predict", str(blank), "--model", str(tiny_model), "--json")
    assert code == 0 and json.loads(out)["results"][0]["faces"] == []


@pytest.mark.parametrize("content", [None, b"this is not an image", b"\x89PNG\r\n\x1a\n\x00\x00"])
def test_predict_bad_image_one_line(capsys, tiny_model, tmp_path, content):
    path = tmp_path / "photo.jpg"
    if content is not None:
        path.write_bytes(content)
    code, _, err = run(capsys, "predict", str(path), "--model", str(tiny_model))
    assert code == 1
    assert err.count("\n") == 1 and "photo.jpg" in err and "Traceback" not in err


def test_predict_corrupt_model(capsys, tiny_model):
    (tiny_model / "model.safetensors").write_bytes(b"junk")
    code, _, err = run(capsys, "predict", str(ASSETS / "astronaut.png"), "--model", str(tiny_model))
    assert code == 1 and "model.safetensors" in err and err.count("\n") == 1


def test_evaluate_json(capsys, tiny_model, tmp_path):
    data = write_fer2013_csv(tmp_path / "fer2013.csv", {"train": make_faces(2, 5), "test": make_faces(6, 6)})
    code, out, _ = run(capsys, "evaluate", str(data), "--split", "PrivateTest", "--model", str(tiny_model), "--json")
    assert code == 0
    rep = json.loads(out)
    assert {"accuracy", "macro_f1", "per_class", "confusion", "n"} <= set(rep)
    assert rep["n"] == 42 and np.asarray(rep["confusion"]).sum() == 42
    assert rep["accuracy"] > 0.5
    code, out, _ = run(capsys, "evaluate", str(data), "--split", "test", "--model", str(tiny_model))
    assert code == 0 and "macro-F1" in out and "confusion" in out


def test_evaluate_missing_split_and_bad_rows(capsys, tiny_model, tmp_path):
    data = write_fer2013_csv(tmp_path / "fer2013.csv", {"train": make_faces(2, 5)})
    code, _, err = run(capsys, "evaluate", str(data), "--split", "PrivateTest", "--model", str(tiny_model))
    assert code == 1 and "PrivateTest" in err
    with open(data, "a") as f:
        f.write("3,1 2 3,PrivateTest\n")
    code, _, err = run(capsys, "evaluate", str(data), "--model", str(tiny_model))
    assert code == 1 and "fer2013.csv" in err and "line" in err
    code, out, _ = run(capsys, "evaluate", str(data), "--model", str(tiny_model), "--on-error", "skip",
                       "--split", "train")
    assert code == 0


def test_evaluate_reports_val_without_its_train_twins_and_writes_the_card(capsys, tiny_model, tmp_path):
    train, val = make_faces(2, 5), make_faces(3, 6)
    val.images[:4] = train.images[:4]  # four val faces with a pixel-identical twin in train
    data = write_fer2013_csv(tmp_path / "fer2013.csv", {"train": train, "val": val})
    code, out, _ = run(capsys, "evaluate", str(data), "--split", "val", "--model", str(tiny_model), "--json")
    rep = json.loads(out)
    assert code == 0 and rep["n"] == 21
    assert rep["without_twins"]["twins"] == 4 and rep["without_twins"]["n"] == 17
    code, out, _ = run(capsys, "evaluate", str(data), "--split", "train", "--model", str(tiny_model), "--json")
    assert code == 0 and "without_twins" not in json.loads(out)  # train is what twins are looked up in

    card = tiny_model / "README.md"
    card.write_text(f"# tiny\n\n{VALIDATION_TITLE}\nold\n\n## Limitations\nsome\n")
    code, _, err = run(capsys, "evaluate", str(data), "--split", "val", "--model", str(tiny_model), "--card")
    assert code == 1 and "--runtime torch" in err  # auto could run int8: the card's figures are fp32's
    code, out, _ = run(capsys, "evaluate", str(data), "--split", "val", "--model", str(tiny_model), "--card",
                       "--runtime", "torch")
    assert code == 0
    cfg = json.loads((tiny_model / "config.json").read_text())
    assert cfg["metrics"]["val"]["n"] == 21 and cfg["metrics"]["val"]["without_twins"]["n"] == 17
    assert "model" not in cfg["metrics"]["val"]  # the metrics only, not the command's extras
    text = card.read_text()
    assert "without the 4 with a pixel-identical twin in train: n = 17" in text and "old\n" not in text
    assert text.index(VALIDATION_TITLE) < text.index("## Limitations")


def test_train_cli_saves_model_with_card(capsys, models_dir, tmp_path):
    data = write_fer2013_csv(tmp_path / "fer2013.csv", {"train": make_faces(12, 1), "val": make_faces(4, 2)})
    code, out, err = run(capsys, "train", str(data), "--name", "cli-model", "--widths", "8", "16", "--convs", "1", "1",
                         "--epochs", "2", "--batch-size", "16", "--no-augment", "--workdir", str(tmp_path / "w"))
    assert code == 0, err
    assert "epoch 2/2" in err and "saved to" in out
    card = (models_dir / "cli-model" / "README.md").read_text()
    assert "python -m fer_app train" in card and "--epochs 2" in card and "confusion" in card
    code, out, _ = run(capsys, "models")
    assert "cli-model" in out
    code, _, err = run(capsys, "train", str(data), "--name", "cli-model", "--epochs", "1")
    assert code == 1 and "exists" in err


def test_help_and_usage_errors(capsys):
    for cmd in ("predict", "evaluate", "train"):
        with pytest.raises(SystemExit) as exc:
            main([cmd, "--help"])
        assert exc.value.code == 0
    with pytest.raises(SystemExit) as exc:
        main(["predict"])
    assert exc.value.code == 2
