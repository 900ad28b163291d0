"""Test-time augmentation: zoomed and mirrored views in the classifier, and choosing the views on val."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import make_faces
from fer_app.cli import main
from fer_app.evaluate import evaluate
from fer_app.model import ModelError, load_model, zoom
from fer_app.modelcard import TTA_TITLE, VALIDATION_TITLE
from fer_app.training import TrainConfig, build_model
from fer_app.tta import CONFIG_KEY, select_tta, view_logits
from test_cli import write_fer2013_csv


def test_zoom_keeps_the_centre_and_scales_the_content():
    x = torch.zeros(1, 1, 48, 48)
    x[..., 16:32, 16:32] = 1.0  # a 16 px square in the middle
    assert torch.allclose(zoom(x, 1.0), x, atol=1e-6)
    out = zoom(x, 0.5)
    assert out.shape == x.shape and out[0, 0, 24, 24] == 1.0
    assert out.sum().item() == pytest.approx(x.sum().item() / 4, rel=0.05)  # a quarter of the area
    assert zoom(x, 2.0).sum().item() == pytest.approx(x.sum().item() * 4, rel=0.05)


def test_predictions_average_the_models_views(tiny_model: Path, tiny_splits):
    model = load_model(tiny_model, runtime="torch")
    pixels = model.encoder.preprocess(list(tiny_splits["val"].images[:6]))

    def probs(x):
        return torch.softmax(model(x), 1)

    assert model.tta_flip and model.tta_zooms == () and model.tta_views == 2
    mirror = (probs(pixels) + probs(pixels.flip(-1))) / 2
    assert torch.allclose(model.predict_pixels(pixels), mirror, atol=1e-6)

    model.tta_zooms = (0.9,)
    assert model.tta_views == 4
    views = [pixels, zoom(pixels, 0.9), pixels.flip(-1), zoom(pixels, 0.9).flip(-1)]
    expected = sum(probs(v) for v in views) / 4
    assert torch.allclose(model.predict_pixels(pixels), expected, atol=1e-5)
    assert torch.allclose(model.predict_pixels(pixels, tta=False), probs(pixels), atol=1e-6)

    model.tta_flip = False
    assert model.tta_views == 2
    assert torch.allclose(model.predict_pixels(pixels), (probs(pixels) + probs(zoom(pixels, 0.9))) / 2, atol=1e-5)
    model.tta_zooms = ()
    assert torch.allclose(model.predict_pixels(pixels), probs(pixels), atol=1e-6)  # no views of its own
    assert torch.allclose(model.predict_pixels(pixels, tta=True), mirror, atol=1e-6)  # forced: the mirror


def test_view_logits_are_the_models_views_one_at_a_time(tiny_model: Path, tiny_splits):
    model = load_model(tiny_model, runtime="torch").eval()
    model.tta_zooms = (0.9,)
    pixels = model.encoder.preprocess(list(tiny_splits["val"].images[:7]))
    views = [view_logits(model, pixels, z, f, batch=3) for f in (False, True) for z in (None, 0.9)]  # view's order
    for index, logits in enumerate(views):
        with torch.inference_mode():
            assert np.allclose(logits, model(model.view(pixels, index)).numpy(), atol=1e-5)
    probs = np.mean([torch.softmax(torch.from_numpy(v), 1).numpy() for v in views], axis=0)
    assert np.allclose(probs, model.predict_pixels(pixels).numpy(), atol=1e-5)
    assert not np.allclose(views[0], views[2], atol=1e-3)  # the mirror is another view


def test_candidates_are_scored_as_the_model_would_run(tiny_model: Path, tiny_splits):
    val = tiny_splits["val"]
    report = select_tta(tiny_model, val, candidates=[(), (0.9,), (1.1,), (0.9, 1.1)], max_views=4, write=False)
    assert [c.zooms for c in report.candidates] == [(), (0.9,), (1.1,)]  # (0.9, 1.1) is 6 views with the mirror
    model = load_model(tiny_model, runtime="torch")
    for candidate in report.candidates:
        model.tta_zooms = candidate.zooms
        measured = evaluate(model, val)
        assert candidate.accuracy == pytest.approx(measured["accuracy"], abs=1e-4)
        assert candidate.macro_f1 == pytest.approx(measured["macro_f1"], abs=1e-4)


def test_select_tta_writes_the_choice_and_its_metrics(tiny_model: Path, tiny_splits, monkeypatch):
    import fer_app.tta as tta

    val = tiny_splits["val"]
    real = tta.score_candidates

    def zoom_09_is_best(model, faces, candidates, **kwargs):  # real scores, but (0.9,) made right everywhere
        scores = real(model, faces, candidates, **kwargs)
        scores[(0.9,)] = np.eye(7, dtype=np.float32)[faces.labels]
        return scores

    monkeypatch.setattr(tta, "score_candidates", zoom_09_is_best)
    card = tiny_model / "README.md"
    card.write_text(f"# tiny\n\n## Model\n- test-time augmentation: old line\n\n{VALIDATION_TITLE}\nold\n\n"
                    "## Limitations\nsome\n")
    twins = np.arange(len(val)) < 3  # the first three: as if they had twins in train
    report = select_tta(tiny_model, val, candidates=[(), (0.9,)], twins=twins)
    assert report.chosen == (0.9,) and report.changed and report.before == ()

    cfg = json.loads((tiny_model / "config.json").read_text())
    assert cfg["tta_zooms"] == [0.9] and cfg[CONFIG_KEY]["n"] == len(val) and cfg[CONFIG_KEY]["chosen"] == [0.9]
    assert cfg["metrics"]["val"]["accuracy"] == 1.0 and cfg["metrics"]["val"]["n"] == len(val)
    assert cfg["metrics"]["val"]["without_twins"]["twins"] == 3
    assert cfg["metrics"]["val"]["without_twins"]["n"] == len(val) - 3
    assert load_model(tiny_model, runtime="torch").tta_zooms == (0.9,)
    text = card.read_text()
    assert text.count(TTA_TITLE) == 1 and text.index(TTA_TITLE) < text.index("## Limitations")
    assert "accuracy = 1.0000" in text and "old\n" not in text and "old line" not in text
    assert f"without the 3 with a pixel-identical twin in train: n = {len(val) - 3}" in text
    assert "zoomed views [0.9]" in text and "| [0.9] | 4 | 100.00% |" in text


def test_select_tta_keeps_the_model_unless_a_candidate_is_clearly_better(tiny_model: Path, tiny_splits):
    (tiny_model / "README.md").write_text("# tiny\n\n## Model\n- test-time augmentation: old line\n")
    report = select_tta(tiny_model, tiny_splits["val"], min_gain=2.0)  # no accuracy gain can reach 2.0
    assert report.chosen == () and not report.changed and report.recorded  # its first choice: recorded
    cfg = json.loads((tiny_model / "config.json").read_text())
    assert cfg["tta_zooms"] == [] and cfg[CONFIG_KEY]["chosen"] == [] and len(cfg[CONFIG_KEY]["candidates"]) > 1
    assert "## Test-time augmentation" in (tiny_model / "README.md").read_text()
    config = (tiny_model / "config.json").read_text()
    again = select_tta(tiny_model, tiny_splits["val"], min_gain=2.0)
    assert not again.changed and not again.recorded  # chosen and recorded already: nothing rewritten
    assert select_tta(tiny_model, tiny_splits["val"], max_views=2).candidates[0].zooms == ()  # only the mirror fits
    assert not select_tta(tiny_model, tiny_splits["val"], min_gain=-1.0, write=False).changed
    assert (tiny_model / "config.json").read_text() == config


def test_bad_tta_zooms_in_a_config_name_the_file(tiny_model: Path):
    path = tiny_model / "config.json"
    cfg = json.loads(path.read_text())
    path.write_text(json.dumps(dict(cfg, tta_zooms=[0.1])))
    with pytest.raises(ModelError, match="config.json: tta_zooms"):
        load_model(tiny_model)


def test_a_model_started_from_another_does_not_inherit_its_views_or_int8_file(tiny_model: Path, tiny_splits):
    path = tiny_model / "config.json"
    cfg = json.loads(path.read_text())
    path.write_text(json.dumps(dict(cfg, tta_zooms=[0.9], quantized={"weights_sha256": "x"})))
    model = build_model(TrainConfig(init_from=str(tiny_model)), tiny_splits)
    assert model.tta_zooms == () and "quantized" not in model.meta and model.config()["tta_zooms"] == []


def test_cli_tta(tiny_model: Path, tmp_path: Path, capsys):
    data = write_fer2013_csv(tmp_path / "fer2013.csv", {"train": make_faces(2, 1), "val": make_faces(4, 2)})
    assert main(["tta", "tiny", str(data), "--dry-run", "--json", "--zooms", "0.9", "--zooms", "0.95", "1.05"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert [c["zooms"] for c in report["candidates"]] == [[], [0.9]] and not report["changed"]
    assert main(["tta", "tiny", str(data), "--max-views", "6", "--zooms", "0.95", "1.05"]) == 0
    out = capsys.readouterr().out
    assert "[0.95, 1.05]" in out and "accuracy" in out
    assert main(["tta", "tiny", str(tmp_path / "missing.csv")]) == 1
    assert "missing.csv" in capsys.readouterr().err
