"""A measurement, not a feature: the uniform weight average ("soup") of saved compact models of one shape
that share a lineage (one fine-tuned from the other), scored on val with the first model's TTA views.

The soup is one network (the same compute as each member). Its BatchNorm statistics are averaged first,
then recomputed on the train faces (one pass, each face and its mirror image, no augmentation).
Prints each member's and the soup's val accuracy / macro-F1, all and without the train twins; --save NAME
keeps the soup (BN statistics averaged) as models/NAME with a card and its members' table of runs
(then `python -m fer_app tta NAME DATA` chooses its views and writes its val metrics).

    PYTHONPATH=. .venv/bin/python scripts/weight_soup.py compact-fer2013-ft runs/acc/models/ft-cutmix
"""

from __future__ import annotations

import argparse
import copy
import shlex
import sys
from dataclasses import asdict

import torch

from fer_app import runs
from fer_app.data import FaceSet, load_npz, twins_in
from fer_app.evaluate import evaluate
from fer_app.model import DIGEST_KEY, Classifier, load_model, save_model
from fer_app.modelcard import render_card


def average(models: list[Classifier]) -> Classifier:
    """The first model with every floating-point tensor (weights, BN statistics) the members' mean."""
    soup = copy.deepcopy(models[0])
    states = [m.state_dict() for m in models]
    mean = {k: torch.stack([s[k] for s in states]).mean(0) if v.is_floating_point() else v
            for k, v in states[0].items()}
    soup.load_state_dict(mean)
    return soup.eval()


def recompute_batchnorm(model: Classifier, train: FaceSet, batch: int = 512) -> None:
    """Replace the encoder's BatchNorm running statistics by their cumulative mean over `train`."""
    enc = model.encoder
    for mod in enc.modules():
        if isinstance(mod, torch.nn.modules.batchnorm._BatchNorm):
            mod.reset_running_stats()
            mod.momentum = None
    enc.train()
    with torch.no_grad():
        for i in range(0, len(train), batch):
            x = enc.normalize(torch.from_numpy(train.images[i:i + batch]))
            enc(x)
            enc(x.flip(-1))
    model.eval()


def save(soup: Classifier, models: list[Classifier], name: str) -> None:
    """models/`name`: the soup's weights, a card naming its members, and the members' runs merged."""
    soup.name = name
    configs = [{**m.meta, "name": m.name} for m in models]
    soup.meta = {"description": f"Uniform weight average of {len(models)} compact models of one lineage "
                                f"({', '.join(c['name'] for c in configs)}); the compute of one.",
                 "soup": {"combine": "mean of the members' weights and BatchNorm statistics",
                          "members": [{"name": c["name"], DIGEST_KEY: c.get(DIGEST_KEY)} for c in configs]},
                 "runs": [asdict(r) for r in runs.merged(*(runs.runs_of(c) for c in configs))]}
    command = "PYTHONPATH=. python " + " ".join(shlex.quote(a) for a in sys.argv)
    print("saved to", save_model(soup, name, card=render_card(name, soup.config(), command)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="+", help="saved models (names or folders) of one shape and lineage")
    ap.add_argument("--data", default="../shared/data/fer2013-trainval.npz")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--save", metavar="NAME", help="save the soup (BN statistics averaged) as models/NAME")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    splits = load_npz(args.data)
    train, val = splits["train"], splits["val"]
    twins = twins_in(val, train)
    models = [load_model(m, runtime="torch") for m in args.models]

    def show(model: Classifier, label: str) -> None:
        r = evaluate(model, val, twins=twins)
        rest = r.get("without_twins", {})
        print(f"{label:<40} {r['accuracy']:.2%} / {r['macro_f1']:.3f}   without twins "
              f"{rest.get('accuracy', float('nan')):.2%} / {rest.get('macro_f1', float('nan')):.3f}", flush=True)

    for name, m in zip(args.models, models):
        show(m, name)
    soup = average(models)
    show(soup, "soup, BN statistics averaged")
    if args.save:
        save(soup, models, args.save)
    recompute_batchnorm(soup, train)
    show(soup, "soup, BN statistics recomputed on train")


if __name__ == "__main__":
    main()
