#!/usr/bin/env python3
"""Run a model's shipped int8 encoder on an emulated CPU of another kind and check it like `auto` does.

    apt-get install qemu-user                      # once (Debian's qemu-user, 7.2 emulates AVX2)
    .venv/bin/python scripts/int8_on_emulated_cpu.py [MODEL_DIR] [--cpu EPYC-v1] [--int8 FILE]
    .venv/bin/python scripts/int8_on_emulated_cpu.py --cpu native --int8 OLD_FILE   # on this CPU, no qemu

The int8 kernels ONNX Runtime picks depend on the CPU (u8s8 without VNNI: VPMADDUBSW, whose int16
pair sums saturate), so a file must be checked on each kind of CPU. This runs the int8 file on the
model's reference batch under `qemu-x86_64 -cpu CPU` (default EPYC-v1: first-generation Zen, AVX2,
no AVX-512, no VNNI), slowly (about 0.3 s per face), then compares the embeddings with the torch
fp32 embeddings stored in the batch: mean cosine and the head's top-1 agreement, the thresholds of
`fer_app.runtimes.AccuracyCheck`. `--cpu native` runs the same check on this machine's own CPU
without qemu: on a real AVX2-only CPU, the measurement the emulation stands in for.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CHILD = """
import sys, numpy as np, onnxruntime as ort
from safetensors.numpy import load_file
ref = load_file(sys.argv[1]); mean, std = float(sys.argv[4]), float(sys.argv[5])
x = ((ref["crops"].astype(np.float32) / 255.0 - mean) / std)[:, None]
s = ort.InferenceSession(sys.argv[2], providers=["CPUExecutionProvider"])
np.save(sys.argv[3], s.run(None, {s.get_inputs()[0].name: x})[0])
"""


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", nargs="?", default=None,
                   help="a model folder (default the shipped default model, config.DEFAULT_MODEL)")
    p.add_argument("--cpu", default="EPYC-v1",
                   help="qemu CPU model (qemu-x86_64 -cpu help), or 'native': this CPU, no emulation")
    p.add_argument("--int8", default=None, help="the int8 file to run (default the model's encoder.int8.onnx)")
    args = p.parse_args()
    sys.path.insert(0, str(ROOT))
    import numpy as np
    import torch

    from fer_app import runtimes
    from fer_app.config import DEFAULT_MODEL
    from fer_app.model import QUANTIZED_FILE, load_model

    folder = Path(args.model) if args.model else ROOT / "models" / DEFAULT_MODEL
    reference = runtimes.read_reference(folder)
    if reference is None:
        sys.exit(f"error: {folder}: no {runtimes.REFERENCE_FILE} (python -m fer_app quantize makes one)")
    model = load_model(folder, runtime="torch")
    cfg = model.encoder.config()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "emb.npy"
        emulate = [] if args.cpu == "native" else ["qemu-x86_64", "-cpu", args.cpu]
        cmd = [*emulate, sys.executable, "-c", CHILD, str(reference.path),
               str(args.int8 or folder / QUANTIZED_FILE), str(out), str(cfg.get("mean", 0.5)),
               str(cfg.get("std", 0.25))]
        subprocess.run(cmd, check=True, stderr=subprocess.DEVNULL)
        got = torch.from_numpy(np.load(out))
    with torch.inference_mode():
        cosine = torch.nn.functional.cosine_similarity(got, reference.embeddings, dim=1)
        top1 = float((model.head(got).argmax(1) == model.head(reference.embeddings).argmax(1)).float().mean())
    passed = float(cosine.mean()) >= runtimes.COSINE_MIN and top1 >= runtimes.TOP1_MIN
    where = "this CPU (no emulation)" if args.cpu == "native" else f"an emulated {args.cpu}"
    print(f"{args.int8 or folder / QUANTIZED_FILE} on {where}, {len(got)} reference crops: "
          f"cosine mean {float(cosine.mean()):.4f} (min {float(cosine.min()):.4f}), top-1 agreement {top1:.1%} "
          f"with torch fp32 -> {'passes' if passed else 'FAILS'}")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
