"""The model card's settings line: a fine-tune's card leaves out the shape settings its saved model fixes."""

from __future__ import annotations

from fer_app.modelcard import render_card, settings_line
import json
from dataclasses import asdict

from fer_app.training import TrainConfig


def _saved(cfg: TrainConfig) -> dict:
    """A run's settings as config.json keeps them (`training.config`)."""
    return json.loads(json.dumps(asdict(cfg)))


def test_a_run_from_scratch_shows_its_shape() -> None:
    config = _saved(TrainConfig(widths=(40, 80, 160, 320)))
    line = settings_line(config)
    assert "'widths': [40, 80, 160, 320]" in line and "'encoder': 'compact'" in line


def test_a_fine_tune_leaves_out_the_shape_it_did_not_use() -> None:
    config = _saved(TrainConfig(init_from="models/teacher-wide-s13", lr=0.01))
    line = settings_line(config)
    assert "widths" not in line and "convs_per_stage" not in line and "'encoder'" not in line
    assert "'init_from': 'models/teacher-wide-s13'" in line and "'lr': 0.01" in line
    card = render_card("ft", {"encoder": {"type": "compact", "widths": [64, 128, 256, 512]},
                              "head": {"kind": "linear"}, "training": {"config": config, "epochs_run": 1}}, "cmd")
    assert line in card and "widths=[64, 128, 256, 512]" in card
    assert "[32, 64, 128, 256]" not in card  # the command line's default shape, which the fine-tune never built
