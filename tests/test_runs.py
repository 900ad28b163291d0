"""fer_app.runs: a model's table of training runs, kept through --init-from and --teacher, and runs added
from a work folder (tiny data)."""

from __future__ import annotations

import json

import pytest

from conftest import TINY_COMPACT
from fer_app.cli import main
from fer_app.model import CARD_FILE, CONFIG_FILE, read_config
from fer_app.modelcard import render_card
from fer_app.runs import RunRecord, from_folder, merged, recipe, record, runs_of, runs_section
from fer_app.training import TrainConfig, train


def test_recipe_names_only_what_differs_from_the_defaults():
    cfg = json.loads(json.dumps(TrainConfig().__dict__ | {"widths": [40, 80], "epochs": 66, "threads": 2}))
    assert recipe(cfg) == "widths=[40 80], epochs=66"  # threads is how fast, not what it learns
    assert recipe(json.loads(json.dumps(TrainConfig().__dict__))) == "defaults"
    cfg = json.loads(json.dumps(TrainConfig(teachers=("a", "b"), kd_weight=0.7).__dict__))
    assert recipe(cfg) == "teachers=[a b], kd_weight=0.7"


def test_record_takes_the_best_epochs_val_figures():
    history = [{"epoch": 1, "val_accuracy": 0.5, "val_macro_f1": 0.4},
               {"epoch": 2, "val_accuracy": 0.61234, "val_macro_f1": 0.55557},
               {"epoch": 3, "val_accuracy": 0.6, "val_macro_f1": 0.58}]
    training = {"config": {}, "history": history, "best_epoch": 2, "epochs_run": 3, "seconds": 5400,
                "device": "CPU", "command": "python -m fer_app train x"}
    r = record(training, "m")
    assert (r.model, r.epochs, r.best_epoch, r.hours, r.val_accuracy, r.val_macro_f1, r.command) == \
        ("m", 3, 2, 1.5, 0.6123, 0.5556, "python -m fer_app train x")
    checkpoint_state = {k: v for k, v in training.items() if k != "epochs_run"} | {"epoch": 3}
    assert record(checkpoint_state, None).epochs == 3  # a checkpoint says "epoch"
    assert record({"history": [], "best_epoch": 0}, None).val_accuracy is None
    swa = {"epochs_averaged": 2, "val_accuracy": 0.63, "val_macro_f1": 0.57}
    kept = record(training | {"swa": swa | {"chosen": True}}, "m")
    assert (kept.val_accuracy, kept.val_macro_f1, kept.swa_epochs) == (0.63, 0.57, 2)
    assert "| 3 (mean of 2) |" in runs_section([kept])
    assert record(training | {"swa": swa | {"chosen": False}}, "m").val_accuracy == 0.6123


def test_merged_keeps_order_and_drops_repeats():
    a = RunRecord("a", "r", 3, 2, 0.1, "CPU", 0.5, 0.4)
    b = RunRecord("b", "r2", 3, 3, 0.1, "CPU", 0.6, 0.5)
    assert merged([a, b], [a], [b, a]) == [a, b]


def test_runs_follow_init_from_and_teachers_into_the_card(models_dir, tiny_splits, tmp_path, capsys):
    train(TrainConfig(**TINY_COMPACT), tiny_splits, name="parent", workdir=tmp_path / "p",
          extra_meta={"command": "python -m fer_app train parent"})
    train(TrainConfig(**{**TINY_COMPACT, "seed": 1}), tiny_splits, name="teacher", workdir=tmp_path / "t")
    assert [r.model for r in runs_of(read_config(models_dir / "parent"))] == ["parent"]
    cfg = TrainConfig(**{**TINY_COMPACT, "epochs": 2}, init_from="parent", teachers=("teacher", "parent"))
    child = train(cfg, tiny_splits, name="child", workdir=tmp_path / "c",
                  extra_meta={"command": "python -m fer_app train child"},
                  card=lambda r: render_card("child", r.model.config(), "python -m fer_app train child"))
    rows = runs_of(read_config(child.saved_to))
    assert [r.model for r in rows] == ["parent", "teacher", "child"]  # the parent once, though it is a teacher too
    assert rows[-1].epochs == 2 and rows[-1].val_accuracy == round(
        max(h.val_accuracy for h in child.history), 4)
    assert "init_from=parent" in rows[-1].recipe and "teachers=[teacher parent]" in rows[-1].recipe
    # a run that shipped nothing, added from its work folder
    train(TrainConfig(**{**TINY_COMPACT, "epochs": 1, "lr": 0.01}), tiny_splits, workdir=tmp_path / "tried")
    assert main(["runs", str(child.saved_to), "--add", str(tmp_path / "tried")]) == 0
    rows = runs_of(read_config(child.saved_to))
    assert len(rows) == 4 and rows[-1].model is None and "epochs=1, batch_size=16, lr=0.01" in rows[-1].recipe
    assert rows[-1].device.startswith("CPU")
    card = (child.saved_to / CARD_FILE).read_text()
    assert card.count("## Training runs") == 1 and "| 4 | (not shipped) |" in card
    capsys.readouterr()
    assert main(["runs", str(child.saved_to), "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)) == 4
    assert (child.saved_to / CONFIG_FILE).is_file() and not (child.saved_to / (CONFIG_FILE + ".tmp")).exists()


def test_card_lists_the_commands_that_made_the_model(models_dir, tiny_splits, tmp_path):
    train(TrainConfig(**TINY_COMPACT), tiny_splits, name="parent", workdir=tmp_path / "p",
          extra_meta={"command": "python -m fer_app train PARENT"})
    child = train(TrainConfig(**{**TINY_COMPACT, "epochs": 1}, init_from="parent"), tiny_splits, name="child",
                  workdir=tmp_path / "c", extra_meta={"command": "python -m fer_app train CHILD"})
    card = render_card("child", child.model.config(), "python -m fer_app train CHILD")
    block = card.split("## Reproduce\n```\n")[1].split("```")[0].splitlines()
    assert block == ["python -m fer_app train PARENT", "python -m fer_app train CHILD"]
    assert runs_section(runs_of(child.model.config())) in card


def test_a_run_added_from_the_model_it_saved_has_its_recorded_hours(models_dir, tiny_splits, tmp_path):
    """A tried run saved elsewhere (`--models-dir`) is added from its model: the hours as recorded at the save
    (the checkpoint's lack the final evaluation), and it stays "(not shipped)"."""
    shipped = train(TrainConfig(**TINY_COMPACT), tiny_splits, name="shipped", workdir=tmp_path / "s")
    tried = train(TrainConfig(**{**TINY_COMPACT, "seed": 3}), tiny_splits, name="tried", workdir=tmp_path / "t",
                  models_dir=tmp_path / "elsewhere")
    row = from_folder(tried.saved_to)
    assert row.model is None and row.hours == round(read_config(tried.saved_to)["training"]["seconds"] / 3600, 2)
    assert row.val_accuracy == round(max(h.val_accuracy for h in tried.history), 4) and "seed=3" in row.recipe
    assert main(["runs", str(shipped.saved_to), "--add", str(tried.saved_to)]) == 0
    assert runs_of(read_config(shipped.saved_to))[-1] == row


def test_adding_a_model_without_a_training_record_is_an_error(models_dir, tiny_splits, tmp_path):
    tried = train(TrainConfig(**TINY_COMPACT), tiny_splits, name="tried", workdir=tmp_path / "t")
    cfg = read_config(tried.saved_to)
    del cfg["training"]  # as a soup or an ensemble has none
    (tried.saved_to / CONFIG_FILE).write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="without a training record"):
        from_folder(tried.saved_to)


def test_adding_a_folder_without_a_checkpoint_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="neither a model"):
        from_folder(tmp_path)
