"""Static int8 quantization of compact models: the shipped file, its check on each machine under "auto",
staleness, the gate, the bundled model's file, the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import BUNDLED, make_faces
from fer_app.cli import main
from fer_app.evaluate import evaluate
from fer_app.model import ModelError, load_model, save_model
from fer_app.modelcard import QUANTIZED_TITLE
from fer_app import runtimes
from fer_app.quantize import (CONFIG_KEY, DEFAULT_CALIBRATION, ONNX_INT8_STATIC, QUANTIZED_FILE, QuantizeError,
                              calibration_sample, quantize_model)
from fer_app.runtimes import SAFE_WEIGHT_MAX, weight_range
from test_cli import write_fer2013_csv


def _runtime(model) -> str:
    return getattr(model.encoder, "runtime", "torch")


def test_calibration_sample_is_stratified_and_reproducible():
    faces = make_faces(30, seed=3)
    sample = calibration_sample(faces, 70)
    assert len(sample) == 70
    np.testing.assert_array_equal(sample, calibration_sample(faces, 70))
    assert len(calibration_sample(faces, 10_000)) == len(faces)
    assert len(calibration_sample(faces, 7)) == 7  # one of each of the 7 classes
    one_class = type(faces)(images=faces.images[faces.labels == 3], labels=faces.labels[faces.labels == 3])
    assert len(calibration_sample(one_class, 3)) == 3
    empty = calibration_sample(type(faces)(images=faces.images[:0], labels=faces.labels[:0]), 5)
    assert empty.shape == (0, 48, 48) and empty.dtype == np.uint8


def test_quantized_model_is_used_under_auto_and_agrees(tiny_model: Path, tiny_splits):
    torch_model = load_model(tiny_model, runtime="torch")
    (tiny_model / "README.md").write_text("# tiny\n\n## Validation metrics\n...\n\n## Limitations\nsome\n")
    report = quantize_model(tiny_model, tiny_splits["train"], tiny_splits["val"], min_agreement=0.0, threads=1)
    assert (tiny_model / QUANTIZED_FILE).stat().st_size > 1000
    train = tiny_splits["train"]
    assert report.file == QUANTIZED_FILE and "static" in report.method
    assert report.calibration == {"n": len(calibration_sample(train, DEFAULT_CALIBRATION)), "source": train.source,
                                  "per_class": "equal"}
    assert report.weight_range == list(weight_range(tiny_model / QUANTIZED_FILE))
    reference = runtimes.read_reference(tiny_model)  # the gate checked on the batch it ships
    modes = {p.name: p.stat().st_mode & 0o777 for p in tiny_model.iterdir()}
    assert modes[runtimes.REFERENCE_FILE] == modes[QUANTIZED_FILE] == modes["config.json"]  # not safetensors' 0600
    assert report.reference_check["passed"] and report.reference_check["n"] == len(reference.crops.crops)
    assert report.reference_check["crops"].startswith(f"{len(reference.crops.crops)} reference crops")
    assert report.val["source"] == tiny_splits["val"].source and report.val["n"] == len(tiny_splits["val"])
    saved = json.loads((tiny_model / "config.json").read_text())[CONFIG_KEY]
    assert saved == json.loads(json.dumps(report.to_dict()))
    assert report.val["accuracy_fp32"] == pytest.approx(evaluate(torch_model, tiny_splits["val"])["accuracy"], abs=1e-4)

    auto = runtimes.runtime_choice(load_model(tiny_model).encoder)  # checked and timed on this machine
    assert auto.candidates[ONNX_INT8_STATIC]["check"]["passed"]
    timed = {r: v["ms_per_face"] for r, v in auto.candidates.items() if "ms_per_face" in v}
    assert auto.runtime == (ONNX_INT8_STATIC if timed[ONNX_INT8_STATIC] < timed["torch"] * 0.95 else "torch")
    model = load_model(tiny_model, runtime=ONNX_INT8_STATIC)
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
    again = quantize_model(tiny_model, tiny_splits["train"], None, threads=1)  # again: the section is replaced
    assert again.val is None and json.loads((tiny_model / "config.json").read_text())[CONFIG_KEY]["val"] is None
    assert (tiny_model / "README.md").read_text().count(QUANTIZED_TITLE) == 1


def test_pinned_runtime_wins_over_the_shipped_file(tiny_model: Path, tiny_splits, monkeypatch):
    quantize_model(tiny_model, tiny_splits["train"], None, threads=1)
    monkeypatch.setenv("FER_APP_RUNTIME", "torch")
    model = load_model(tiny_model)
    assert _runtime(model) == "torch" and runtimes.runtime_choice(model.encoder).how == "pinned"


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
    assert ONNX_INT8_STATIC not in runtimes.runtime_choice(load_model(tiny_model).encoder).candidates
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


# ------------------------------------------------------------------ the check on the machine that loads the file

def _fast_int8(monkeypatch, factor: float = 0.5) -> None:
    """Time int8 at `factor` x torch, whatever this machine measures (the choice, not the clock, is tested)."""
    def score(encoder, pixels, repeats=5):
        return factor if runtimes.runtime_name(encoder) == ONNX_INT8_STATIC else 1.0
    monkeypatch.setattr(runtimes, "speed_score", score)


def corrupt_scales(path: Path, seed: int = 0) -> None:
    """Multiply the weight scales of the int8 file's DequantizeLinear nodes by random factors in [0.2, 3]:
    a file that still loads and runs, but computes something else (like a kernel that saturates)."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    inits = {i.name: i for i in model.graph.initializer}
    rng = np.random.default_rng(seed)
    for node in model.graph.node:
        if node.op_type == "DequantizeLinear" and node.input[0] in inits and \
                numpy_helper.to_array(inits[node.input[0]]).dtype == np.int8:
            scale = inits[node.input[1]]
            values = numpy_helper.to_array(scale)
            scale.CopyFrom(numpy_helper.from_array((values * rng.uniform(0.2, 3, values.shape)).astype(values.dtype),
                                                   scale.name))
    onnx.save(model, str(path))


def test_auto_picks_the_int8_file_where_it_passes_and_is_faster(tiny_model: Path, tiny_splits, monkeypatch):
    quantize_model(tiny_model, tiny_splits["train"], None, threads=1)
    _fast_int8(monkeypatch, 0.5)
    choice = runtimes.runtime_choice(load_model(tiny_model, threads=1).encoder)
    assert choice.runtime == ONNX_INT8_STATIC and choice.how == "auto" and "fastest passing" in choice.reason


def test_auto_keeps_torch_where_int8_is_not_worth_it(tiny_model: Path, tiny_splits, monkeypatch):
    quantize_model(tiny_model, tiny_splits["train"], None, threads=1)
    _fast_int8(monkeypatch, 1 - runtimes.AUTO_MIN_GAIN / 2)  # faster, but within the noise margin
    assert _runtime(load_model(tiny_model, threads=1)) == "torch"


def test_a_wrong_int8_file_is_detected_and_skipped(tiny_model: Path, tiny_splits, monkeypatch, capsys):
    quantize_model(tiny_model, tiny_splits["train"], None, threads=1)
    corrupt_scales(tiny_model / QUANTIZED_FILE)
    _fast_int8(monkeypatch, 0.1)  # however fast it is
    model = load_model(tiny_model, threads=1)
    choice = runtimes.runtime_choice(model.encoder)
    assert choice.runtime == "torch" and "refused: onnx-int8-static" in choice.reason
    check = choice.candidates[ONNX_INT8_STATIC]["check"]
    assert not check["passed"] and check["n"] == 100  # the shipped reference batch
    err = capsys.readouterr().err
    assert "refusing onnx-int8-static: FAILS" in err and "top-1 agreement" in err


def test_the_stored_verdict_follows_the_file_the_libraries_and_the_cpu(tiny_model: Path, tiny_splits, monkeypatch):
    quantize_model(tiny_model, tiny_splits["train"], None, threads=1)
    _fast_int8(monkeypatch, 0.5)
    assert runtimes.runtime_choice(load_model(tiny_model, threads=1).encoder).how == "auto"
    assert runtimes.runtime_choice(load_model(tiny_model, threads=1).encoder).how == "stored"  # later loads: no check
    cache = tiny_model.parent / ".onnx-cache"
    assert len(list(cache.glob("auto-*.json"))) == 1

    corrupt_scales(tiny_model / QUANTIZED_FILE)  # another file under the same name
    choice = runtimes.runtime_choice(load_model(tiny_model, threads=1).encoder)
    assert choice.how == "auto" and choice.runtime == "torch"

    real_versions = runtimes.versions
    monkeypatch.setattr(runtimes, "versions", lambda *m: {**real_versions(*m), "onnxruntime": "0.0-other"})
    assert runtimes.runtime_choice(load_model(tiny_model, threads=1).encoder).how == "auto"
    real_cpu = runtimes.cpu_info
    other = ["avx2"] if real_cpu()["flags"] != ["avx2"] else ["avx2", "avx512f", "avx512_vnni"]  # another kind
    monkeypatch.setattr(runtimes, "cpu_info", lambda: {**real_cpu(), "flags": other})
    assert runtimes.runtime_choice(load_model(tiny_model, threads=1).encoder).how == "auto"
    assert len(list(cache.glob("auto-*.json"))) == 4


def test_the_gate_measures_agreement_with_fp32_at_its_threshold(tiny_model: Path, tiny_splits):
    val = tiny_splits["val"]
    wrong = type(val)(images=val.images, labels=(val.labels + 1) % 7, source="wrong labels")
    fp32 = load_model(tiny_model, runtime="torch").predict_proba(list(val.images)).argmax(1)
    report = quantize_model(tiny_model, tiny_splits["train"], wrong, min_agreement=0.0, threads=1)
    int8 = load_model(tiny_model, runtime=ONNX_INT8_STATIC).predict_proba(list(val.images)).argmax(1)
    assert report.val["agreement"] == pytest.approx(float((fp32 == int8).mean()), abs=1e-4)
    assert report.val["accuracy_fp32"] == pytest.approx(float((fp32 == wrong.labels).mean()), abs=1e-4)
    assert report.val["agreement"] > report.val["accuracy_int8"]  # against fp32, not against the labels
    kept = quantize_model(tiny_model, tiny_splits["train"], wrong, min_agreement=report.val["agreement"], threads=1)
    assert kept.val["agreement"] == report.val["agreement"]  # inclusive threshold
    with pytest.raises(QuantizeError, match="agrees with fp32"):
        quantize_model(tiny_model, tiny_splits["train"], wrong, min_agreement=report.val["agreement"] + 1e-3,
                       threads=1)


def test_the_gate_without_val_checks_the_reference_batch(tiny_model: Path, tiny_splits, monkeypatch):
    import fer_app.quantize as quantize

    real = quantize.quantize_encoder

    def broken(model, calibration, target):
        method = real(model, calibration, target)
        corrupt_scales(target)
        return method

    monkeypatch.setattr(quantize, "quantize_encoder", broken)
    with pytest.raises(QuantizeError, match="fails the accuracy check on the reference batch"):
        quantize_model(tiny_model, tiny_splits["train"], None, threads=1)
    assert not (tiny_model / QUANTIZED_FILE).exists() and not (tiny_model / runtimes.REFERENCE_FILE).exists()


@pytest.mark.parametrize("span", [(-SAFE_WEIGHT_MAX - 1, 10), (-10, SAFE_WEIGHT_MAX + 1)])
def test_the_gate_refuses_int8_weights_beyond_the_safe_range(tiny_model: Path, tiny_splits, monkeypatch, span):
    import fer_app.quantize as quantize

    seen = []

    def measured(path: Path) -> tuple[int, int]:  # the range of the file just written, as if it were this
        seen.append((path, path.is_file()))
        return span

    monkeypatch.setattr(quantize, "weight_range", measured)
    with pytest.raises(QuantizeError, match=f"beyond \\+-{SAFE_WEIGHT_MAX}.*not kept"):
        quantize_model(tiny_model, tiny_splits["train"], None, threads=1)
    assert seen == [(tiny_model / "encoder.int8.tmp", True)]  # the new file, before it is kept
    assert not (tiny_model / QUANTIZED_FILE).exists() and not (tiny_model / runtimes.REFERENCE_FILE).exists()


def test_quantize_needs_calibration_faces_and_takes_one(tiny_model: Path, tiny_splits):
    train = tiny_splits["train"]
    none = type(train)(images=train.images[:0], labels=train.labels[:0], source="nothing")
    with pytest.raises(QuantizeError, match="no calibration faces"):
        quantize_model(tiny_model, none, None, threads=1)
    one = type(train)(images=train.images[:1], labels=train.labels[:1], source="one face")
    try:  # one face is calibration, if a poor one: kept, or refused by the accuracy check, never "no faces"
        assert quantize_model(tiny_model, one, None, threads=1).calibration["n"] == 1
    except QuantizeError as exc:
        assert "fails the accuracy check" in str(exc)


# ------------------------------------------------------------------ the bundled model's files


def test_the_bundled_int8_file_is_fresh_portable_and_gated():
    from fer_app.model import read_config, shipped_problem

    cfg = read_config(BUNDLED)
    assert shipped_problem(BUNDLED, cfg) is None  # made from these weights
    low, high = weight_range(BUNDLED / QUANTIZED_FILE)
    assert -SAFE_WEIGHT_MAX <= low and high <= SAFE_WEIGHT_MAX  # 7-bit: no VPMADDUBSW saturation without VNNI
    assert cfg[CONFIG_KEY]["weight_range"] == [low, high]
    assert cfg[CONFIG_KEY]["val"]["agreement"] >= 0.99 and cfg[CONFIG_KEY]["reference_check"]["passed"]


def test_the_bundled_reference_batch_matches_the_weights():
    model = load_model(BUNDLED, runtime="torch")
    reference = runtimes.read_reference(BUNDLED)
    assert reference is not None and len(reference.crops.crops) == 100
    here = runtimes.embed(model.encoder, reference.crops.crops)
    assert reference.stale_reason(model.encoder, here) is None
    for p in model.encoder.parameters():  # other weights: the batch is stale, and says so
        p.data.mul_(1.01)
        break
    assert "other weights" in reference.stale_reason(model.encoder)


def test_the_bundled_int8_file_agrees_with_fp32_on_the_reference_batch():
    from fer_app.model import runtime_files, read_config

    shipped, reference = runtime_files(BUNDLED, read_config(BUNDLED))
    model = load_model(BUNDLED, runtime="torch")
    int8 = runtimes.load_runtime(model.encoder, ONNX_INT8_STATIC, threads=1, shipped=shipped, progress=None)
    result = runtimes.AccuracyCheck(model.encoder, reference.crops, model.head)(int8)
    assert result.passed and result.cosine_mean >= 0.999, result.summary()
