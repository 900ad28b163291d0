"""Torch ms per face (predict_proba with all of each model's TTA views) of several models, interleaved in one
process, with the CPU it ran on: the side-by-side check that a new model costs no more than the bundled one.

    PYTHONPATH=. .venv/bin/python scripts/compare_models_ms.py compact-fer2013 compact-fer2013-ft
"""

from __future__ import annotations

import argparse
import subprocess
import time

import numpy as np
import torch

from fer_app.config import PROJECT_ROOT
from fer_app.model import load_model


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("models", nargs="+")
    p.add_argument("--data", default=str(PROJECT_ROOT.parent / "shared" / "data" / "fer2013-trainval.npz"))
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--rounds", type=int, default=30)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    print(subprocess.run("lscpu | grep -E 'Model name|Flags'", shell=True, capture_output=True, text=True).stdout)
    crops = list(np.load(args.data)["val_x"][:args.batch])
    models = [load_model(n, runtime="torch") for n in args.models]
    for m in models:  # warm-up
        m.predict_proba(crops)
    times: dict[str, list[float]] = {m.name: [] for m in models}
    for _ in range(args.rounds):
        for m in models:
            t = time.perf_counter()
            m.predict_proba(crops)
            times[m.name].append((time.perf_counter() - t) / len(crops) * 1000)
    for m in models:
        views = (len(m.tta_zooms) + 1) * (2 if m.tta_flip else 1)
        print(f"{m.name}: {views} views, {sum(p.numel() for p in m.parameters())} parameters, torch ms per face "
              f"(batch {args.batch}, all views) median {np.median(times[m.name]):.2f}, "
              f"p95 {np.percentile(times[m.name], 95):.2f}")


if __name__ == "__main__":
    main()
