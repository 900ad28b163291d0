#!/usr/bin/env python3
"""CPU time per frame of the video engine on real footage, by OpenCV, inference and torch threads.

    PYTHONPATH=. .venv/bin/python scripts/thread_cost.py [--configs 2,2,2 2,2,1 1,1,1]
    PYTHONPATH=. .venv/bin/python scripts/thread_cost.py --clip

Each configuration runs in its own process (OpenCV's and ONNX Runtime's pools are set up once per
process). TORCH is `fer_app.runtimes.AROUND_ENCODER_THREADS`, torch's threads around an encoder in
ONNX Runtime, for the preprocessing, the TTA views' resampling and the head (the model sets it on
each call; the app uses 1, chosen with this script). It runs the video CLI's engine
(`fer_app.bench_footage.run_frames`) over ../shared/media's `woman2.mp4` and the 3-face composite
of real clips, with the bundled model as `auto` loads it.
It prints the FPS (decoding excluded) and the process's CPU time per frame (user + system, from
`getrusage`). On a machine whose cores are shared with a browser, CPU per frame is what the other
processes lose. `--clip` times CLIP instead (the full-size architecture, random weights, in ONNX Runtime
int8 on 2 threads, with a head): `predict_proba` in ms a face at batch 1 and 8 with 1 and 2 torch
threads around it, alternating. Run it on an otherwise idle machine; it prints the CPU's flags first.
"""
from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def child(opencv_threads: int, inference_threads: int, torch_threads: int) -> None:
    import cv2

    cv2.setNumThreads(opencv_threads)
    sys.path.insert(0, str(ROOT))
    from fer_app import runtimes
    from fer_app.bench_footage import MEDIA_DIR, ONE_FACE_CLIP, _settings, composite_frames, read_frames, run_frames
    from fer_app.model import load_model

    runtimes.AROUND_ENCODER_THREADS = torch_threads  # what each prediction sets, around the int8 encoder
    model = load_model("compact-fer2013", threads=inference_threads)
    if runtimes.runtime_name(model.encoder) in (runtimes.TORCH, runtimes.TORCH_INT8):
        print(f"note: auto chose {runtimes.runtime_name(model.encoder)} here, so TORCH has no effect", flush=True)
    one = read_frames(MEDIA_DIR / ONE_FACE_CLIP)
    run_frames(model, one[:30], _settings())  # warm-up
    for name, frames in ((ONE_FACE_CLIP, one), ("3-face composite", list(composite_frames(150)))):
        before, start = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        out = run_frames(model, frames, _settings())
        after, wall = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter() - start
        cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        print(f"{opencv_threads:>14} {inference_threads:>17} {torch_threads:>13}  {name:18s} {out['fps']:6.1f} "
              f"{1000 * cpu / len(frames):14.1f} {cpu / wall:6.2f}  {out['frames_with_faces']}/{len(frames)}",
              flush=True)


def clip(repeats: int = 6) -> None:
    import statistics

    sys.path.insert(0, str(ROOT))
    from fer_app import runtimes
    from fer_app.bench import random_clip_encoder
    from fer_app.heads import Head
    from fer_app.model import Classifier

    encoder = random_clip_encoder()
    model = Classifier(runtimes.load_runtime(encoder, runtimes.ONNX_INT8, threads=2, progress=None),
                       Head(encoder.embed_dim, 7), threads=2).eval()
    crops = runtimes.astronaut_crops()[:8]
    print("batch  torch threads  ms a face (median)  CPU ms a face")
    for batch in (1, 8):
        calls = max(2, 16 // batch)
        for _ in range(3):
            model.predict_proba(crops[:batch], tta=False)  # warm-up
        times: dict[int, list[tuple[float, float]]] = {1: [], 2: []}
        for _ in range(repeats):
            for count in times:
                runtimes.AROUND_ENCODER_THREADS = count
                start, cpu = time.perf_counter(), time.process_time()
                for _ in range(calls):
                    model.predict_proba(crops[:batch], tta=False)
                per_face = 1e3 / (calls * batch)
                times[count].append(((time.perf_counter() - start) * per_face, (time.process_time() - cpu) * per_face))
        for count, rows in times.items():
            print(f"{batch:>5} {count:>14} {statistics.median(r[0] for r in rows):19.1f} "
                  f"{statistics.median(r[1] for r in rows):14.1f}", flush=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configs", nargs="+", default=["2,2,2", "2,2,1", "1,2,1", "1,1,1"],
                   help="OPENCV,INFERENCE,TORCH thread counts, one process each")
    p.add_argument("--clip", action="store_true", help="time CLIP in onnx-int8 with 1 and 2 torch threads instead")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child(*map(int, args.child.split(",")))
        return 0
    sys.path.insert(0, str(ROOT))
    from fer_app import runtimes

    print(f"machine: {runtimes.cpu_text(runtimes.cpu_info())}")  # the bench's own line: model, cores, ISA flags
    if args.clip:
        clip()
        return 0
    print("OpenCV threads  inference threads torch threads  footage               FPS  CPU ms a frame  cores  faces")
    for config in args.configs:
        subprocess.run([sys.executable, __file__, "--child", config], check=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
