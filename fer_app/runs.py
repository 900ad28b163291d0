"""A model's table of training runs: every run behind it, shipped or not, with its recipe and val figures.

Each saved model's config.json holds `runs`, a list of rows (`RunRecord`): the runs of the models it
started from (`--init-from`) and learned from (`--teacher`), then its own. A run that shipped nothing
(a tried recipe that lost on val) is added with `python -m fer_app runs MODEL --add FOLDER`: from the
model it saved elsewhere (`--models-dir`), or from its work folder's checkpoint (a run with no model; its
hours then lack the final evaluation). The model card renders the table (`runs_section`).

Val figures are the run's own model selection figures: its best epoch on val, as trained (the face and
its mirror image), so runs compare on one footing; TTA views chosen afterwards are in the card's TTA section.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path

RUNS_TITLE = "## Training runs"
#: Settings that change how fast a run goes, not what it learns: left out of a recipe.
_NOT_RECIPE = ("device", "precision", "threads", "clip_source")


@dataclass(frozen=True)
class RunRecord:
    """One training run: what it did (recipe, command), how long, and its best epoch's val figures."""

    model: str | None          # the model it saved (None: a run that shipped nothing)
    recipe: str                # its settings that differ from the engine's defaults
    epochs: int                # epochs run
    best_epoch: int
    hours: float
    device: str
    val_accuracy: float | None
    val_macro_f1: float | None
    command: str | None = None
    swa_epochs: int = 0        # > 0: the val figures are of the weight mean of this many last epochs (`--swa-epochs`)

    @classmethod
    def from_dict(cls, d: dict) -> RunRecord:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    @property
    def key(self) -> tuple:
        """Identity for de-duplication: the same run reached through two parents is one row."""
        return self.model, self.recipe, self.epochs, self.best_epoch, self.val_accuracy


def recipe(config: dict) -> str:
    """`key=value` for each training setting that differs from `TrainConfig`'s default, in its field order."""
    from fer_app.training import TrainConfig

    defaults = json.loads(json.dumps(asdict(TrainConfig())))
    changed = [f"{k}={_short(v)}" for k, v in config.items()
               if k in defaults and k not in _NOT_RECIPE and defaults[k] != v]
    return ", ".join(changed) or "defaults"


def _short(value) -> str:
    if isinstance(value, list):
        return "[" + " ".join(str(v) for v in value) + "]"
    return str(value)


def record(training: dict, model: str | None) -> RunRecord:
    """The row of one run from its training record: config.json's `training`, or a checkpoint's state
    (which has `epoch` where a saved model has `epochs_run`)."""
    history = training.get("history", [])
    best = int(training.get("best_epoch", 0))
    row = next((h for h in history if h.get("epoch") == best), None)
    swa = training.get("swa") or {}
    if swa.get("chosen"):  # the weight mean beat every epoch on val and is what the run saved
        row = {"val_accuracy": swa["val_accuracy"], "val_macro_f1": swa["val_macro_f1"]}
    return RunRecord(
        model=model, recipe=recipe(training.get("config", {})),
        epochs=int(training.get("epochs_run", training.get("epoch", len(history)))), best_epoch=best,
        hours=round(float(training.get("seconds", 0.0)) / 3600, 2), device=str(training.get("device", "?")),
        val_accuracy=None if row is None else round(float(row["val_accuracy"]), 4),
        val_macro_f1=None if row is None else round(float(row["val_macro_f1"]), 4),
        command=training.get("command"), swa_epochs=int(swa["epochs_averaged"]) if swa.get("chosen") else 0)


def runs_of(config: dict) -> list[RunRecord]:
    """A saved model's runs: its `runs` list, or (a model saved before runs were kept) its own training run."""
    if config.get("runs"):
        return [RunRecord.from_dict(r) for r in config["runs"]]
    if config.get("training"):
        return [record(config["training"], config.get("name"))]
    return []


def merged(*lists: list[RunRecord]) -> list[RunRecord]:
    """The rows of several lists in order, each run once."""
    seen, out = set(), []
    for rows in lists:
        for r in rows:
            if r.key not in seen:
                seen.add(r.key)
                out.append(r)
    return out


def ancestors(sources: list[str]) -> list[RunRecord]:
    """The runs behind saved models (names or folders) and targets files (`fer_app.targets`): those a new run
    starts from or learns from."""
    from fer_app.model import CONFIG_FILE, model_dir
    from fer_app.targets import is_targets_file, targets_file_meta

    lists = []
    for name in sources:
        path = model_dir(name) / CONFIG_FILE
        if is_targets_file(name) and Path(name).is_file():  # gone by the end of a long run: its rows are lost only
            lists.append([RunRecord.from_dict(r) for r in json.loads(targets_file_meta(name).get("runs", "[]"))])
        elif path.is_file():
            lists.append(runs_of(json.loads(path.read_text())))
    return merged(*lists)


def from_folder(folder: str | Path) -> RunRecord:
    """The row of a run that shipped nothing: from the model it saved (a model folder: its own run, as
    recorded when it was saved) or from its work folder's checkpoint (a run that saved no model, or still going)."""
    from fer_app.model import CONFIG_FILE, read_config
    from fer_app.training import read_checkpoint_meta

    folder = Path(folder)
    if (folder / CONFIG_FILE).is_file():
        training = read_config(folder).get("training")
        if not training:
            raise ValueError(f"{folder}: a model without a training record (an ensemble or a soup: not a run)")
        return record(training, None)
    path = folder / "checkpoint.safetensors"
    if not path.is_file():
        raise FileNotFoundError(f"{folder}: neither a model ({CONFIG_FILE}) nor a training work folder "
                                "(checkpoint.safetensors)")
    return record(read_checkpoint_meta(path), None)


def runs_section(rows: list[RunRecord]) -> str:
    """The model card's table of runs (Markdown, starting with its `## ` heading)."""
    lines = [RUNS_TITLE,
             "Every run behind this model, shipped or not. Val figures are each run's best epoch, as trained "
             "(the face and its mirror image), or the weight mean of its last epochs where that scored higher "
             "(`swa_epochs`, shown as \"mean of N\"); `recipe` lists the settings that differ from the engine's "
             "defaults.", "",
             "| # | model | recipe | epochs (best) | hours | device | val accuracy | val macro-F1 |",
             "|---|---|---|---|---|---|---|---|"]
    for i, r in enumerate(rows, 1):
        acc = "–" if r.val_accuracy is None else f"{r.val_accuracy:.2%}"
        f1 = "–" if r.val_macro_f1 is None else f"{r.val_macro_f1:.3f}"
        best = f"mean of {r.swa_epochs}" if r.swa_epochs else r.best_epoch
        lines.append(f"| {i} | {r.model or '(not shipped)'} | {r.recipe} | {r.epochs} ({best}) | "
                     f"{r.hours:.2f} | {r.device} | {acc} | {f1} |")
    return "\n".join(lines) + "\n"


def add_run(folder: Path, row: RunRecord) -> list[RunRecord]:
    """Append a run to a saved model's table (config.json and card); returns the table."""
    from fer_app.model import CARD_FILE, read_config, write_config
    from fer_app.modelcard import with_section

    folder = Path(folder)
    cfg = read_config(folder)
    rows = merged(runs_of(cfg), [row])
    cfg["runs"] = [asdict(r) for r in rows]
    card = folder / CARD_FILE
    if card.is_file():
        card.write_text(with_section(card.read_text(), runs_section(rows)))
    write_config(folder, cfg)  # config last
    return rows
