"""Ensembles of saved models: several compact models combined into one saved model, in one of two ways.

- The mean of their logits (`combine`): the members' encoders run side by side
  (`fer_app.encoders.ensemble.EnsembleEncoder`) and one linear head averages their logits, each member's
  head scaled by 1/N in its own block of columns. It costs N networks per view: for photos and the CLI.
- The mean of their weights (`average`, a "weight soup"): members of one shape and one lineage (fine-tuned
  from one another) averaged tensor by tensor, BatchNorm statistics too. One network: the compute of one.

Either result is an ordinary model folder: `load_model`, TTA (`python -m fer_app tta`), `evaluate --card`
and `--teacher` work on it as on any model.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import torch

from fer_app import runs
from fer_app.config import ENSEMBLE_MEANS
from fer_app.encoders.compact import CompactEncoder
from fer_app.encoders.ensemble import EnsembleEncoder
from fer_app.heads import Head
from fer_app.model import DIGEST_KEY, Classifier, ModelError, load_model, save_model
from fer_app.modelcard import render_card


def combine(models: Sequence[Classifier], *, name: str = "") -> Classifier:
    """One classifier whose logits are the mean of the members' logits (members: compact encoders with
    linear heads, the same classes). Its TTA views are the first member's; `fer_app.tta` chooses them anew."""
    if len(models) < 2:
        raise ModelError(f"an ensemble needs at least 2 models, got {len(models)}")
    for m in models:
        if not isinstance(m.encoder, CompactEncoder) or m.head.kind != "linear":
            raise ModelError(f"{m.name}: ensemble members must be compact models with a linear head (this one: "
                             f"{m.encoder.encoder_id} encoder, {m.head.kind} head)")
        if m.classes != models[0].classes:
            raise ModelError(f"{m.name}: classes {m.classes} differ from {models[0].name}'s {models[0].classes}")
    try:
        encoder = EnsembleEncoder([copy.deepcopy(m.encoder) for m in models])
    except ValueError as exc:
        raise ModelError(str(exc)) from None
    head = Head(encoder.embed_dim, len(models[0].classes), "linear")
    n = len(models)
    with torch.no_grad():
        head.net[-1].weight.copy_(torch.cat([m.head.net[-1].weight for m in models], dim=1) / n)
        head.net[-1].bias.copy_(torch.stack([m.head.net[-1].bias for m in models]).mean(0))
    return Classifier(encoder, head, name=name, classes=models[0].classes, tta_flip=models[0].tta_flip,
                      tta_zooms=models[0].tta_zooms).eval()


def member(ensemble: Classifier, index: int, others: Sequence[Classifier], *, name: str = "") -> Classifier:
    """Member `index` (from 0) of a logit-mean ensemble (`combine`) as a model of its own, exactly: its encoder
    and its block of the head come out as they went in, but the ensemble keeps only the mean of the members'
    head biases, so `others`, the rest of the members in order, give theirs: the missing bias is N times the mean
    less the others'. Each of `others` is checked against its place in the ensemble (encoder tensors and head
    block): a wrong or changed model is refused by name. Its TTA views are the ensemble's, for `fer_app.tta`."""
    encoder = ensemble.encoder
    if not isinstance(encoder, EnsembleEncoder) or ensemble.head.kind != "linear":
        raise ModelError(f"{ensemble.name}: not a logit-mean ensemble (encoder {encoder.encoder_id}, "
                         f"head {ensemble.head.kind})")
    n = len(encoder.members)
    if not 0 <= index < n:
        raise ModelError(f"{ensemble.name} has {n} members; index {index} is not one of 0..{n - 1}")
    if len(others) != n - 1:
        raise ModelError(f"member {index} of {ensemble.name} needs the other {n - 1} members, got {len(others)}")
    weight, bias = ensemble.head.net[-1].weight.detach(), ensemble.head.net[-1].bias.detach()
    edges = [0, *itertools.accumulate(m.embed_dim for m in encoder.members)]
    blocks = [weight[:, edges[i]:edges[i + 1]] * n for i in range(n)]
    known = [i for i in range(n) if i != index]
    for i, other in zip(known, others):
        state, kept = other.encoder.state_dict(), encoder.members[i].state_dict()
        same = state.keys() == kept.keys() and all(torch.equal(state[k], kept[k]) for k in kept) \
            and other.head.kind == "linear" and other.head.net[-1].weight.shape == blocks[i].shape \
            and torch.allclose(other.head.net[-1].weight, blocks[i], rtol=1e-5, atol=1e-6)
        if not same:
            raise ModelError(f"{other.name} is not member {i} of {ensemble.name} (its weights differ)")
    head = Head(encoder.members[index].embed_dim, len(ensemble.classes), "linear")
    with torch.no_grad():
        head.net[-1].weight.copy_(blocks[index])
        head.net[-1].bias.copy_(bias * n - sum(o.head.net[-1].bias.detach() for o in others))
    return Classifier(copy.deepcopy(encoder.members[index]), head, name=name, classes=ensemble.classes,
                      tta_flip=ensemble.tta_flip, tta_zooms=ensemble.tta_zooms).eval()


def average(models: Sequence[Classifier], *, name: str = "") -> Classifier:
    """One network of the members' shape whose every floating-point tensor (weights, BatchNorm statistics) is
    the members' mean: a weight soup. Meaningful for members of one lineage (fine-tuned from one another);
    its TTA views are the first member's, for `fer_app.tta` to choose anew."""
    if len(models) < 2:
        raise ModelError(f"a weight average needs at least 2 models, got {len(models)}")
    first = models[0]
    for m in models[1:]:  # one encoder config, head kind and class list: the same tensors, the same shapes
        if m.config()["encoder"] != first.config()["encoder"] or m.head.kind != first.head.kind \
                or m.classes != first.classes:
            raise ModelError(f"{m.name}: a weight average needs members of one shape (encoder, head, classes) "
                             f"as {first.name}")
    states = [m.state_dict() for m in models]
    soup = Classifier(copy.deepcopy(first.encoder), copy.deepcopy(first.head), name=name, classes=first.classes,
                      tta_flip=first.tta_flip, tta_zooms=first.tta_zooms)
    soup.load_state_dict({k: torch.stack([s[k] for s in states]).mean(0) if v.is_floating_point() else v
                          for k, v in states[0].items()})
    return soup.eval()


def save_ensemble(members: Sequence[str], name: str, *, mean: str = "logits", models_dir: Path | None = None,
                  overwrite: bool = False, command: str = "") -> Path:
    """Combine the saved models `members` (names or folders) by the `mean` of their logits or of their weights
    (`config.ENSEMBLE_MEANS`) and save the result as models/`name`, with its card: the members (their val
    figures and weights' sha256) and the table of their runs."""
    if mean not in _MODES:
        raise ValueError(f"mean must be one of {ENSEMBLE_MEANS}, got {mean!r}")
    make, combined, description = _MODES[mean]
    models = [load_model(m, models_dir=models_dir, runtime="torch") for m in members]
    model = make(models, name=name)
    configs = [{**m.meta, "name": m.name} for m in models]  # what load_model read of each config.json
    mean_flag = "" if mean == ENSEMBLE_MEANS[0] else f" --mean {mean}"  # the default needs no flag
    command = command or f"python -m fer_app ensemble {name} {' '.join(members)}{mean_flag}"
    entry = {"combine": combined,
             "members": [{"name": c["name"], DIGEST_KEY: c.get(DIGEST_KEY),
                          "val_accuracy": c.get("metrics", {}).get("val", {}).get("accuracy")} for c in configs],
             # the ensemble steps behind it: a member that is itself an ensemble (a soup) keeps its own command
             "steps": [s for c in configs for s in c.get("ensemble", {}).get("steps", [])] + [command]}
    model.meta = {"description": description.format(n=len(models), names=", ".join(c["name"] for c in configs)),
                  "ensemble": entry,
                  "runs": [asdict(r) for r in runs.merged(*(runs.runs_of(c) for c in configs))]}
    return save_model(model, name, models_dir=models_dir, overwrite=overwrite,
                      card=render_card(name, model.config(), command))


#: Each `config.ENSEMBLE_MEANS` mode: how the members become one model, the card's "combined as" and the
#: model's description ({n} members, their {names}).
_MODES = {
    "logits": (combine, "mean of the members' logits",
               "Ensemble of {n} compact models ({names}): the mean of their logits. The compute of its members "
               "together; for photos."),
    "weights": (average, "mean of the members' weights and BatchNorm statistics",
                "Uniform weight average of {n} compact models of one lineage ({names}); the compute of one."),
}
assert tuple(_MODES) == ENSEMBLE_MEANS
