"""A measurement, not a feature: the uniform weight average ("soup", `fer_app.ensemble.average`) of saved
compact models of one shape that share a lineage (one fine-tuned from the other), scored on val with the
first model's TTA views.

Prints each member's and the soup's val accuracy / macro-F1, all and without the train twins: the soup with
its BatchNorm statistics averaged (what `python -m fer_app ensemble NAME MODELS --mean weights` saves), then
with them recomputed on the train faces (one pass, each face and its mirror image, no augmentation).
With --greedy, a greedy soup instead (Wortsman et al., 2022): starting from the first model, each next one
joins the soup only when the soup's val accuracy does not fall (list the models best first); the members'
own scores and the recomputed statistics are then skipped, and the uniform soup of all is scored beside it.

    PYTHONPATH=. .venv/bin/python scripts/weight_soup.py compact-fer2013-ft runs/acc/models/ft-cutmix
    PYTHONPATH=. .venv/bin/python scripts/weight_soup.py --greedy BEST SECOND THIRD ...
"""

from __future__ import annotations

import argparse

import torch

from fer_app.data import FaceSet, load_npz, twins_in
from fer_app.ensemble import average
from fer_app.evaluate import evaluate
from fer_app.model import Classifier, load_model
from fer_app.training import refresh_batchnorm


def recompute_batchnorm(model: Classifier, train: FaceSet, batch: int = 512) -> None:
    """Replace the encoder's BatchNorm running statistics by their mean over `train` (the engine's
    `refresh_batchnorm`, as `--swa-epochs` does it)."""
    refresh_batchnorm(model.encoder, (torch.from_numpy(train.images[i:i + batch]) for i in range(0, len(train), batch)),
                      model.encoder.normalize)
    model.eval()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="+", help="saved models (names or folders) of one shape and lineage")
    ap.add_argument("--data", default="../shared/data/fer2013-trainval.npz")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--greedy", action="store_true", help="a greedy soup of the models, taken in the order given")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    splits = load_npz(args.data)
    train, val = splits["train"], splits["val"]
    twins = twins_in(val, train)
    models = [load_model(m, runtime="torch") for m in args.models]

    def show(model: Classifier, label: str) -> float:
        r = evaluate(model, val, twins=twins)
        rest = r.get("without_twins", {})
        print(f"{label:<40} {r['accuracy']:.2%} / {r['macro_f1']:.3f}   without twins "
              f"{rest.get('accuracy', float('nan')):.2%} / {rest.get('macro_f1', float('nan')):.3f}", flush=True)
        return r["accuracy"]

    if args.greedy:
        chosen, best, trial = [0], show(models[0], f"soup of [{args.models[0]}]"), [0]
        for i in range(1, len(models)):
            trial = chosen + [i]
            acc = show(average([models[j] for j in trial]), f"  + {args.models[i]}")
            if acc >= best:
                chosen, best = trial, acc
        print("greedy soup:", " ".join(args.models[j] for j in chosen))
        if len(trial) < len(models):  # the last soup scored was not all of them
            show(average(models), "uniform soup of all, for comparison")
        return
    for name, m in zip(args.models, models):
        show(m, name)
    soup = average(models)
    show(soup, "soup, BN statistics averaged")
    recompute_batchnorm(soup, train)
    show(soup, "soup, BN statistics recomputed on train")


if __name__ == "__main__":
    main()
