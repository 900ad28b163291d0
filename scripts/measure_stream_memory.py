"""Resident memory of one streamed training epoch against the folder's size (issue: data larger than memory).

    python scripts/measure_stream_memory.py --counts 5000 50000 [--root /tmp/fer-stream] [--in-memory]

For each count N, generates (once) N small grey PNGs (64x64, resized to 48x48 when read) in the
folder layout under ROOT/N/train/<class>/ plus the same 700 val images for every N, then runs
`python -m fer_app train ROOT/N --stream --epochs 1 --workers 2 ...` (the tiny compact net, so
the epoch is short) and samples, every 0.1 s, the training process's RSS and the PSS of it and
its DataLoader workers together (PSS shares the pages they share, so the sum is not counted
twice). Prints one line per run: peak RSS of the main process, peak PSS of the process tree, wall
time. `--in-memory` runs the same without --stream, for comparison. Generate under /tmp, never
in the repository.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import psutil

CLASSES = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
ROOT = Path(__file__).resolve().parent.parent


def generate(folder: Path, n: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    for label, name in enumerate(CLASSES):
        (folder / name).mkdir(parents=True, exist_ok=True)
    for i in range(n):
        label = i % len(CLASSES)
        image = (20 + 25 * label + rng.integers(0, 40, (64, 64))).astype(np.uint8)
        cv2.imwrite(str(folder / CLASSES[label] / f"{i:07d}.png"), image)


def prepare(root: Path, n: int) -> Path:
    data = root / str(n)
    done = data / ".complete"
    if not done.exists():
        generate(data / "train", n, seed=n)
        generate(data / "val", 700, seed=1)
        done.write_text("ok")
    return data


def measure(data: Path, stream: bool, workers: int) -> tuple[float, float, float]:
    cmd = [sys.executable, "-m", "fer_app", "train", str(data), "--epochs", "1", "--widths", "8", "16",
           "--convs", "1", "1", "--batch-size", "128", "--threads", "1", "--precision", "fp32", "--no-augment",
           "--workdir", str(data.parent / f"run-{data.name}-{'stream' if stream else 'memory'}")]
    cmd += ["--stream", "--workers", str(workers)] if stream else []
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    main = psutil.Process(proc.pid)
    peak_rss = peak_pss = 0
    while proc.poll() is None:
        try:
            peak_rss = max(peak_rss, main.memory_info().rss)
            pss = 0
            for p in [main, *main.children(recursive=True)]:
                try:
                    pss += p.memory_full_info().pss
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    pass
            peak_pss = max(peak_pss, pss)
        except psutil.NoSuchProcess:
            break
        time.sleep(0.1)
    err = proc.stderr.read()
    if proc.returncode != 0:
        raise SystemExit(f"training failed:\n{err[-2000:]}")
    return peak_rss / 2**20, peak_pss / 2**20, time.perf_counter() - started


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--counts", type=int, nargs="+", default=[5000, 50000])
    ap.add_argument("--root", type=Path, default=Path("/tmp/fer-stream"))
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--in-memory", action="store_true", help="also train each folder loaded in memory")
    args = ap.parse_args()
    print(f"{'images':>8} {'mode':>9} {'peak RSS main':>14} {'peak PSS all':>13} {'wall':>7}")
    for n in args.counts:
        data = prepare(args.root, n)
        for stream in (True, False) if args.in_memory else (True,):
            rss, pss, wall = measure(data, stream, args.workers)
            print(f"{n:>8} {'streamed' if stream else 'in memory':>9} {rss:>11.0f} MB {pss:>10.0f} MB {wall:>6.1f}s",
                  flush=True)


if __name__ == "__main__":
    main()
