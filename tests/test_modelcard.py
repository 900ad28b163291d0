"""The model card: a fine-tune's settings line leaves out the shape settings its saved model fixes; the training
line names the machine the run trained on, as its record kept it, and its resumes."""

from __future__ import annotations

import json
from dataclasses import asdict

from conftest import TINY_COMPACT
from fer_app import runtimes
from fer_app.model import read_config
from fer_app.modelcard import host_text, render_card, settings_line
from fer_app.training import TrainConfig, train


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


def test_the_card_names_the_machine_the_run_trained_on(models_dir, tiny_splits, tmp_path, monkeypatch):
    """The hours of a run hold for its CPU: the record keeps that CPU, and a card rendered later, on another
    machine, still shows it (not the renderer's)."""
    result = train(TrainConfig(**TINY_COMPACT), tiny_splits, name="tiny", workdir=tmp_path / "w")
    host = read_config(result.saved_to)["training"]["host"]
    assert host["cpu"] == runtimes.cpu_info() and host["torch"]
    monkeypatch.setattr(runtimes, "cpu_info", lambda: {"model": "Another CPU", "flags": ["avx2"]})
    card = render_card("tiny", read_config(result.saved_to), "cmd")
    assert host_text(host) in card and str(host["cpu"]["model"]) in card and "Another CPU" not in card


def test_a_record_without_its_machine_says_so() -> None:
    card = render_card("old", {"encoder": {"type": "compact"}, "head": {"kind": "linear"},
                               "training": {"config": {}, "epochs_run": 1, "device": "CPU (2 logical cores)"}}, "c")
    assert "CPU (2 logical cores); CPU and torch version not recorded" in card
    flagless = {"cpu": {"model": "Old CPU", "machine": "x86_64", "flags": [], "cores": 4}, "torch": "2.13.0"}
    assert host_text(flagless) == "Old CPU, 4 physical cores (none of AVX2, AVX-512, AMX), torch 2.13.0"


def test_the_card_names_a_runs_resumes_and_a_setting_changed_on_one() -> None:
    training = {"config": _saved(TrainConfig(swa_epochs=16)), "epochs_run": 300, "resumed_after_epochs": [52, 252],
                "changed_on_resume": [{"after_epoch": 252, "setting": "swa_epochs", "was": 0, "now": 16}]}
    card = render_card("long", {"encoder": {"type": "compact"}, "head": {"kind": "linear"}, "training": training}, "c")
    said = "resumed from its checkpoint after epochs 52, 252; `swa_epochs` 0 -> 16 on the resume after epoch 252"
    assert said in card
    plain = render_card("short", {"encoder": {"type": "compact"}, "head": {"kind": "linear"},
                                  "training": {"config": {}, "epochs_run": 3}}, "c")
    assert "resumed" not in plain
