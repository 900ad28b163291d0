"""Training targets beyond the hard label: FER+ vote shares, an ensemble's soft predictions
(knowledge distillation) and mixup.

Every option turns a batch's labels into distributions and the loss into a soft-target cross-entropy:

    loss = (1 - kd_weight) * CE(student, base) + kd_weight * T^2 * CE(student / T, teacher sharpened by T)

`base` is the one-hot label with label smoothing, or the face's FER+ vote shares (`soft_targets="ferplus"`);
`teacher` is the mean probability of the teacher models on the face (computed once per run on the
unaugmented faces, with each teacher's own test-time views, and cached in the run's work folder). Mixup
blends two faces and their targets by a Beta(alpha, alpha) draw. Each sample keeps its class weight (mixed
with mixup). With none of the options the engine keeps its plain cross-entropy.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from fer_app.config import CLASSES
from fer_app.data import FaceSet

SOFT_TARGETS = ("none", "ferplus")


def smoothed_one_hot(labels: torch.Tensor, smoothing: float, num_classes: int = len(CLASSES)) -> torch.Tensor:
    """(N, C) one-hot rows with label smoothing as `F.cross_entropy` applies it: 1 - s + s / C on the label."""
    out = torch.full((len(labels), num_classes), smoothing / num_classes, dtype=torch.float32, device=labels.device)
    out.scatter_(1, labels.long().reshape(-1, 1), 1 - smoothing + smoothing / num_classes)
    return out


def base_targets(faces: FaceSet, soft: str, smoothing: float) -> torch.Tensor:
    """(N, C) targets before distillation: FER+ vote shares with `soft="ferplus"` (faces without votes: the
    smoothed label), else the smoothed one-hot label."""
    if soft not in SOFT_TARGETS:
        raise ValueError(f"soft targets must be one of {', '.join(SOFT_TARGETS)} (got {soft!r})")
    labels = torch.from_numpy(np.asarray(faces.labels, np.int64))
    out = smoothed_one_hot(labels, smoothing)
    if soft == "ferplus":
        if faces.soft_labels is None:
            raise ValueError(f"{faces.source or 'the train split'} has no FER+ votes for --soft-targets ferplus "
                             "(the dev npz has them; or give --ferplus fer2013new.csv)")
        shares = torch.from_numpy(np.asarray(faces.soft_labels, np.float32))
        voted = torch.isfinite(shares).all(1) & (shares.sum(1) > 0)
        out[voted] = shares[voted] / shares[voted].sum(1, keepdim=True)
    return out


def sharpen(probs: torch.Tensor, temperature: float) -> torch.Tensor:
    """Probabilities at another temperature: p^(1/T), renormalised (softmax(logits / T) for one model)."""
    logp = torch.log(probs.clamp_min(1e-8)) / temperature
    return torch.softmax(logp, 1)


def teacher_targets(teachers: Sequence[str], faces: FaceSet, cache_dir: Path, *,
                    load: Callable[[str], object] | None = None, batch_size: int = 256,
                    report: Callable[[int, int], None] | None = None) -> torch.Tensor:
    """(N, C) mean probabilities of the `teachers` (model names or folders) on `faces`, each with its own
    test-time views; cached in `cache_dir`, keyed by the teachers' weights and the faces."""
    from fer_app.model import WEIGHTS_FILE, file_sha256, load_model, model_dir

    if not teachers:
        raise ValueError("no teacher models given")
    digest = hashlib.sha256(faces.fingerprint().encode())
    for name in teachers:
        weights = model_dir(name) / WEIGHTS_FILE
        digest.update(file_sha256(weights).encode() if weights.is_file() else str(name).encode())
    path = Path(cache_dir) / f"teachers-{digest.hexdigest()[:20]}.safetensors"
    if path.is_file():
        try:
            return load_file(str(path))["probs"]
        except Exception:  # noqa: BLE001 - a damaged cache is rebuilt, never trusted
            path.unlink(missing_ok=True)
    from fer_app.evaluate import predict_faces

    load = load or (lambda name: load_model(name, runtime="torch"))
    total = np.zeros((len(faces), len(CLASSES)), np.float64)
    for k, name in enumerate(teachers):
        each = (lambda done, n, k=k: report(k * n + done, len(teachers) * n)) if report else None
        total += predict_faces(load(name), faces, batch_size, each)
    probs = torch.from_numpy((total / len(teachers)).astype(np.float32))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    save_file({"probs": probs.contiguous()}, str(tmp))
    os.replace(tmp, path)
    return probs


def mixup(x: torch.Tensor, targets: Sequence[torch.Tensor | None], weights: torch.Tensor, alpha: float,
          gen: torch.Generator) -> tuple[torch.Tensor, list[torch.Tensor | None], torch.Tensor]:
    """Each sample blended with another of the batch (a random permutation) by one Beta(alpha, alpha) draw
    `lam`: inputs, every target tensor and the sample weights alike (`lam` of the sample's own)."""
    lam = float(torch.distributions.Beta(alpha, alpha).sample()) if alpha > 0 else 1.0
    # the Beta draw uses the global RNG (seeded per epoch); the permutation uses the augmentation generator
    perm = torch.randperm(len(x), generator=gen).to(x.device)
    mixed = [None if t is None else lam * t + (1 - lam) * t[perm] for t in targets]
    return lam * x + (1 - lam) * x[perm], mixed, lam * weights + (1 - lam) * weights[perm]


def soft_loss(logits: torch.Tensor, base: torch.Tensor, teacher: torch.Tensor | None, weights: torch.Tensor,
              kd_weight: float, temperature: float) -> torch.Tensor:
    """The weighted soft-target loss of the module docstring; `weights` per sample, normalised by their sum
    (as `F.cross_entropy` with class weights does)."""
    per = -(base * F.log_softmax(logits, 1)).sum(1)
    if teacher is not None and kd_weight > 0:
        soft = sharpen(teacher, temperature)
        kd = -(soft * F.log_softmax(logits / temperature, 1)).sum(1) * temperature ** 2
        per = (1 - kd_weight) * per + kd_weight * kd
    return (per * weights).sum() / weights.sum().clamp_min(1e-12)
