"""Static int8 quantization of compact models: the shipped file, its use under "auto", staleness, the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import make_faces
from fer_app.cli import main
from fer_app.evaluate import evaluate
from fer_app.model import ModelError, load_model, save_model
from fer_app.modelcard import QUANTIZED_TITLE
from fer_app.quantize import (CONFIG_KEY, ONNX_INT8_STATIC, QUANTIZED_FILE, QuantizeError, calibration_sample,
                              quantize_model)
from test_cli import write_fer2013_csv


def _runtime(model) -> str:
    return getattr(model.encoder, "runtime", "torch")


def test_calibration_sample_is_stratified_and_reproducible():
    faces = make_faces(30, seed=3)
    sample = calibration_sample(faces, 70)
    assert len(sample) == 70
    np.testing.assert_array_equal(sample, calibration_sample(faces, 70))
    assert len(calibration_sample(faces, 10_000)) == len(faces)


def test_quantized_model_is_used_under_auto_and_agrees(tiny_model: Path, tiny_splits):
    torch_model = load_model(tiny_model, runtime="torch")
    (tiny_model / "README.md").write_text("# tiny\n\n## Validation metrics\n...\n\n## Limitations\nsome\n")
    report = quantize_model(tiny_model, tiny_splits["train"], tiny_splits["val"], min_agreement=0.0, threads=1)
    assert (tiny_model / QUANTIZED_FILE).stat().st_size > 1000
    saved = json.loads((tiny_model / "config.json").read_text())[CONFIG_KEY]
    assert saved == json.loads(json.dumps(report.to_dict()))
    assert report.val["accuracy_fp32"] == pytest.approx(evaluate(torch_model, tiny_splits["val"])["accuracy"], abs=1e-4)

    model = load_model(tiny_model)  # auto
    assert _runtime(model) == ONNX_INT8_STATIC
    assert report.val["accuracy_int8"] == pytest.approx(evaluate(model, tiny_splits["val"])["accuracy"], abs=1e-4)
    crops = list(tiny_splits["val"].images[:20])
    p_int8, p_fp32 = model.predict_proba(crops), torch_model.predict_proba(crops)
    assert p_int8.shape == (20, 7) and np.allclose(p_int8.sum(1), 1, atol=1e-5)
    assert np.abs(p_int8 - p_fp32).max() < 0.15  # close, not equal: int8 weights and activations
    assert (p_int8.argmax(1) == p_fp32.argmax(1)).mean() >= 0.8
    assert _runtime(load_model(tiny_model, runtime="torch")) == "torch"
    assert _runtime(load_model(tiny_model, runtime=ONNX_INT8_STATIC)) == ONNX_INT8_STATIC
    card = (tiny_model / "README.md").read_text()
    assert card.count(QUANTIZED_TITLE) == 1 and f"int8 {report.val['accuracy_int8']:.2%}" in card
    assert card.index(QUANTIZED_TITLE) < card.index("## Limitations")
    quantize_model(tiny_model, tiny_splits["train"], None, threads=1)  # again: the section is replaced
    assert (tiny_model / "README.md").read_text().count(QUANTIZED_TITLE) == 1


def test_pinned_runtime_wins_over_the_shipped_file(tiny_model: Path, tiny_splits, monkeypatch):
    quantize_model(tiny_model, tiny_splits["train"], None, threads=1)
    monkeypatch.setenv("FER_APP_RUNTIME", "torch")
    assert _runtime(load_model(tiny_model)) == "torch"


def test_stale_or_missing_file_falls_back_or_says_why(tiny_model: Path, tiny_splits, capsys):
    with pytest.raises(ModelError, match="no encoder.int8.onnx.*quantize"):
        load_model(tiny_model, runtime=ONNX_INT8_STATIC)
    quantize_model(tiny_model, tiny_splits["train"], None, threads=1)
    model = load_model(tiny_model, runtime="torch")
    for p in model.parameters():  # new weights under the same name: the int8 file no longer matches
        p.data.mul_(0.5)
    config = json.loads((tiny_model / "config.json").read_text())
    save_model(model, "tiny", overwrite=True)
    (tiny_model / QUANTIZED_FILE).write_bytes(b"")  # save_model rewrote the folder; put a file back
    config_now = json.loads((tiny_model / "config.json").read_text())
    config_now[CONFIG_KEY] = config[CONFIG_KEY]
    (tiny_model / "config.json").write_text(json.dumps(config_now))
    assert _runtime(load_model(tiny_model)) == "torch"
    assert "other weights" in capsys.readouterr().err
    with pytest.raises(ModelError, match="other weights"):
        load_model(tiny_model, runtime=ONNX_INT8_STATIC)


def test_low_agreement_is_not_kept(tiny_model: Path, tiny_splits):
    before = (tiny_model / "config.json").read_text()
    with pytest.raises(QuantizeError, match="agrees with fp32"):
        quantize_model(tiny_model, tiny_splits["train"], tiny_splits["val"], min_agreement=1.01, threads=1)
    assert not (tiny_model / QUANTIZED_FILE).exists()
    assert (tiny_model / "config.json").read_text() == before
    assert sorted(p.name for p in tiny_model.iterdir() if p.suffix == ".tmp") == []


def test_cli_quantize(tiny_model: Path, tmp_path: Path, capsys):
    data = write_fer2013_csv(tmp_path / "fer2013.csv", {"train": make_faces(12, 1), "val": make_faces(4, 2)})
    assert main(["quantize", "tiny", str(data), "--calibration", "40", "--threads", "1", "--json",
                 "--min-agreement", "0"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["calibration"]["n"] == 35 and report["val"]["n"] == 28
    assert (tiny_model / QUANTIZED_FILE).is_file()


def test_cli_quantize_refuses_a_missing_model_and_low_agreement(tiny_model: Path, tmp_path: Path, capsys):
    data = write_fer2013_csv(tmp_path / "fer2013.csv", {"train": make_faces(2, 1), "val": make_faces(2, 2)})
    assert main(["quantize", "nope", str(data)]) == 1
    assert "no model" in capsys.readouterr().err
    assert main(["quantize", "tiny", str(data), "--min-agreement", "1.01", "--threads", "1"]) == 1
    err = capsys.readouterr().err
    assert "not kept" in err and len(err.strip().splitlines()) == 1


def test_bench_times_the_shipped_int8_encoder(tiny_model: Path, tiny_splits):
    from fer_app.bench import bench_compact

    quantize_model(tiny_model, tiny_splits["train"], None, threads=1)
    report = bench_compact("tiny", [1, 2], repeats=2)
    assert report["int8"]["runtime"] == ONNX_INT8_STATIC
    assert [t["batch"] for t in report["int8"]["predict_proba"]] == [1, 2]
    assert all(t["median_ms"] > 0 for t in report["int8"]["forward"])
