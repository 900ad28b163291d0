"""A tool, not a feature: take one member back out of a saved logit-mean ensemble, exactly, as a model of its own.

A member trained on a machine that was later lost survives inside an ensemble that was committed (the stills
ensemble keeps `teacher-wide`); `fer_app.ensemble.member` gives it back: its encoder and its block of the head as
they went in, its head bias from the ensemble's mean bias and the other members' (which must be saved: they are
checked against their places in the ensemble). The script also checks, on the val faces, that the ensemble's
logits are the mean of the members' (the taken-out one and the others) before it saves anything. The new model
keeps the ensemble's views (choose its own with `python -m fer_app tta`) and the rows of its own runs.

    PYTHONPATH=. .venv/bin/python scripts/ensemble_member.py models/compact-fer2013-ensemble 1 \
        --others models/compact-fer2013-soup --name teacher-wide --models-dir runs/acc/models
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from fer_app.data import load_npz
from fer_app.ensemble import member
from fer_app.model import load_model, save_model
from fer_app.modelcard import render_card


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("ensemble", help="a saved logit-mean ensemble (name or folder)")
    ap.add_argument("index", type=int, help="the member to take out, from 0, in the ensemble's order")
    ap.add_argument("--others", nargs="+", required=True, metavar="MODEL",
                    help="the other members, saved, in the ensemble's order")
    ap.add_argument("--name", required=True, help="the new model's name")
    ap.add_argument("--models-dir", type=Path, default=None)
    ap.add_argument("--data", default="../shared/data/fer2013-trainval.npz", help="its val faces check the result")
    ap.add_argument("--overwrite", action="store_true")
    args = ap.parse_args()
    ensemble = load_model(args.ensemble, runtime="torch").eval()
    others = [load_model(m, runtime="torch").eval() for m in args.others]
    model = member(ensemble, args.index, others, name=args.name)
    pixels = ensemble.encoder.preprocess(list(load_npz(args.data)["val"].images))
    with torch.inference_mode():
        parts = [*others[:args.index], model, *others[args.index:]]
        gap = (ensemble(pixels) - torch.stack([m(pixels) for m in parts]).mean(0)).abs().max().item()
    print(f"val faces: the ensemble's logits less the mean of its members' (this one taken out): at most {gap:.2e}")
    if gap > 1e-3:
        sys.exit("not an exact reconstruction: nothing saved")
    source = ensemble.meta.get("ensemble", {}).get("members", [])
    own = source[args.index]["name"] if args.index < len(source) else None
    command = "PYTHONPATH=. python " + " ".join(sys.argv)
    model.meta = {"description": f"Member {args.index} ({own or 'unnamed'}) of the ensemble {ensemble.name}, taken "
                                 f"back out exactly (scripts/ensemble_member.py). Its own network and compute.",
                  "runs": [r for r in ensemble.meta.get("runs", []) if own and r.get("model") == own]}
    folder = save_model(model, args.name, models_dir=args.models_dir, overwrite=args.overwrite,
                        card=render_card(args.name, model.config(), command))
    print(f"saved {folder}")


if __name__ == "__main__":
    main()
