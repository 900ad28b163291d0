"""A measurement, not a feature: every logit-mean ensemble of some saved models, with its TTA views, on val.

What `python -m fer_app ensemble NAME MODELS` then `python -m fer_app tta NAME DATA` would score, for every
subset of MODELS at once, without saving a model per subset: each model's val logits are computed once per view
(the face and each zoom of `fer_app.tta.CANDIDATES`, each mirrored when the model's views are) and cached
under --cache, keyed by the sha256 of its weights file and of the val faces. A subset's logits per view are
its members' mean (`fer_app.ensemble.combine`), its probabilities the mean over the views of their softmax
(`Classifier.predict_pixels`; each view's logits from `fer_app.tta.view_logits`); its views are chosen as
`select_tta` chooses them for the new model (the most accurate zoom set within 4 views, ties to fewer views,
taken only when it beats the first member's views by `MIN_GAIN`).

Prints one line per subset, best first: views, val accuracy / macro-F1, the same without the train twins,
recall of fear, disgust and sad; with --against (some of MODELS, e.g. the shipped ensemble's members), each
subset's lead over that one face by face (`fer_app.metrics.paired_comparison`: faces gained and lost, McNemar's
z). The best of many subsets is chosen on val and scored on it: read a lead of a few faces, or |z| under 2, as
noise, and prefer the rule fixed in advance (all members) unless a subset wins clearly.

    PYTHONPATH=. .venv/bin/python scripts/ensemble_search.py models/compact-fer2013-soup \
        runs/acc/models/teacher-wide runs/acc/models/wide-ft-mixup [--min-members 2] [--top 20] \
        [--against models/compact-fer2013-soup runs/acc/models/teacher-wide]
"""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path

import numpy as np
import torch

from fer_app.config import CLASSES
from fer_app.data import load_npz, twins_in
from fer_app.metrics import classification_report, paired_comparison
from fer_app.model import load_model, model_dir
from fer_app.runtimes import arrays_digest, file_digest
from fer_app.tta import CANDIDATES, MAX_VIEWS, MIN_GAIN, view_logits

CLASSES_OF_INTEREST = ("fear", "disgust", "sad")  # issue #12: report these recalls first


def model_logits(name: str, images: np.ndarray, zooms: list[float | None], cache: Path
                 ) -> tuple[dict[tuple[float | None, bool], np.ndarray], bool, tuple[float, ...]]:
    """{(zoom, mirrored): (N, classes) logits} of one saved model on `images`, cached by its weights and the
    faces; its mirroring and zooms."""
    model = load_model(name, runtime="torch").eval()
    folder = model_dir(name)
    key = f"{folder.name}-{file_digest(folder / 'model.safetensors')[:16]}-{arrays_digest([images])[:12]}"
    file = cache / f"{key}.npz"
    flips = (False, True) if model.tta_flip else (False,)
    wanted = [(z, f) for z in zooms for f in flips]
    stored = dict(np.load(file)) if file.exists() else {}
    out = {}
    pixels = None
    for z, f in wanted:
        label = f"{z}-{int(f)}"
        if label not in stored:
            if pixels is None:
                pixels = model.encoder.preprocess(list(images))
            stored[label] = view_logits(model, pixels, z, f)
            print(f"  {folder.name}: view zoom={z} mirrored={f} computed", flush=True)
        out[(z, f)] = stored[label]
    cache.mkdir(parents=True, exist_ok=True)
    np.savez(file, **stored)
    return out, model.tta_flip, tuple(model.tta_zooms)


def softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="+", help="saved models (names or folders), compact, linear heads")
    ap.add_argument("--data", default="../shared/data/fer2013-trainval.npz")
    ap.add_argument("--cache", default="runs/acc/logits", help="folder for the cached val logits")
    ap.add_argument("--min-members", type=int, default=1)
    ap.add_argument("--top", type=int, default=30, help="lines printed")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--against", nargs="+", default=[], metavar="MODEL",
                    help="some of MODELS: the ensemble each subset is compared with face by face")
    args = ap.parse_args()
    if not set(args.against) <= set(args.models):
        ap.error("--against takes some of the MODELS listed")
    if args.threads:
        torch.set_num_threads(args.threads)
    splits = load_npz(args.data)
    val = splits["val"]
    twins = twins_in(val, splits["train"])
    zooms: list[float | None] = [None, *sorted({z for c in CANDIDATES for z in c})]
    logits, flips, own_zooms = {}, set(), {}
    for name in args.models:
        logits[name], flip, own_zooms[name] = model_logits(name, val.images, zooms, Path(args.cache))
        flips.add(flip)
    if len(flips) != 1:
        raise SystemExit("the models differ in mirroring; an ensemble takes its first member's views")
    flip = flips.pop()
    mirrored = (False, True) if flip else (False,)
    candidates = [c for c in CANDIDATES if (1 + len(c)) * len(mirrored) <= MAX_VIEWS]

    def score(subset: tuple[str, ...]) -> tuple[tuple[float, ...], dict, np.ndarray]:
        """The subset's views (chosen as `select_tta` chooses), its report and its predicted classes."""
        probs = {(z, f): softmax(np.mean([logits[m][(z, f)] for m in subset], axis=0))
                 for z in zooms for f in mirrored}
        scored = {}
        for c in dict.fromkeys([own_zooms[subset[0]], *candidates]):  # the first member's views, then the rest
            predicted = np.mean([probs[(z, f)] for z in (None, *c) for f in mirrored], axis=0).argmax(1)
            scored[c] = classification_report(val.labels, predicted, CLASSES, twins), predicted
        best = max(scored, key=lambda c: (round(scored[c][0]["accuracy"], 4), -len(c)))
        current = own_zooms[subset[0]]
        if round(scored[best][0]["accuracy"], 4) < round(scored[current][0]["accuracy"], 4) + MIN_GAIN:
            best = current  # as select_tta: a change of views must gain MIN_GAIN
        return (best, *scored[best])

    rows = [(subset, *score(subset)) for k in range(max(1, args.min_members), len(args.models) + 1)
            for subset in itertools.combinations(args.models, k)]
    rows.sort(key=lambda row: round(row[2]["accuracy"], 4), reverse=True)  # stable: ties keep fewer members first
    against = tuple(m for m in args.models if m in args.against)  # in MODELS' order, as its row would be scored
    reference = score(against)[2] if against else None
    print(f"val: {len(val)} faces ({int(twins.sum())} with a train twin); views chosen on val per subset")
    for subset, c, r, predicted in rows[:args.top]:
        rest = r["without_twins"]
        recall = " ".join(f"{cls} {r['per_class'][cls]['recall']:.3f}" for cls in CLASSES_OF_INTEREST)
        names = " + ".join(Path(m).name for m in subset)
        lead = "" if reference is None else f" | vs --against {paired_comparison(val.labels, predicted, reference)}"
        print(f"{r['accuracy']:.2%} / {r['macro_f1']:.3f} | without twins {rest['accuracy']:.2%} / "
              f"{rest['macro_f1']:.3f} | zooms {list(c)} | {recall} | {names}{lead}")


if __name__ == "__main__":
    main()
