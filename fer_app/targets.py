"""Training targets beyond the hard label: FER+ vote shares, an ensemble's soft predictions
(knowledge distillation), mixup and CutMix.

Every option turns a batch's labels into distributions and the loss into a soft-target cross-entropy:

    loss = (1 - kd_weight) * CE(student, base) + kd_weight * T^2 * CE(student / T, teacher sharpened by T)

`base` is the one-hot label with label smoothing, or the face's FER+ vote shares (`soft_targets="ferplus"`),
alone or blended with the smoothed label (`ferplus_weight` < 1);
`teacher` is the mean probability of the teacher models on the face: by default computed once per run on
the unaugmented faces, with each teacher's own test-time views, and cached in the run's work folder (or read
from a targets file, `export_teacher_targets`, for a machine that lacks the teachers); with
`kd_online` (consistent teaching), computed every step on the batch exactly as the student sees it
(augmented, mixed), at the cost of the teachers' forward pass per step (`online_teachers`). Mixup
blends two faces and their targets by a Beta(alpha, alpha) draw; CutMix pastes a box of another face and
blends the targets by the box's area. Each sample keeps its class weight (blended alike). With none of
the options the engine keeps its plain cross-entropy.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file

from fer_app.config import CLASSES
from fer_app.data import FaceSet
from fer_app.files import load_cached_tensor, save_tensors_atomically

SOFT_TARGETS = ("none", "ferplus")
#: A teacher given as a file of its targets (`export_teacher_targets`) rather than a model.
TARGETS_SUFFIX = ".safetensors"


def smoothed_one_hot(labels: torch.Tensor, smoothing: float, num_classes: int = len(CLASSES)) -> torch.Tensor:
    """(N, C) one-hot rows with label smoothing as `F.cross_entropy` applies it: 1 - s + s / C on the label."""
    out = torch.full((len(labels), num_classes), smoothing / num_classes, dtype=torch.float32, device=labels.device)
    out.scatter_(1, labels.long().reshape(-1, 1), 1 - smoothing + smoothing / num_classes)
    return out


def base_targets(faces: FaceSet, soft: str, smoothing: float, ferplus_weight: float = 1.0) -> torch.Tensor:
    """(N, C) targets before distillation: with `soft="ferplus"`, `ferplus_weight` x the FER+ vote shares +
    the rest x the smoothed label (faces without votes: the smoothed label alone), else the smoothed label."""
    if soft not in SOFT_TARGETS:
        raise ValueError(f"soft targets must be one of {', '.join(SOFT_TARGETS)} (got {soft!r})")
    if not 0.0 < ferplus_weight <= 1.0:
        raise ValueError(f"ferplus_weight must be in (0, 1] (got {ferplus_weight})")
    labels = torch.from_numpy(np.asarray(faces.labels, np.int64))
    out = smoothed_one_hot(labels, smoothing)
    if soft == "ferplus":
        if faces.soft_labels is None:
            raise ValueError(f"{faces.source or 'the train split'} has no FER+ votes for --soft-targets ferplus "
                             "(the dev npz has them; or give --ferplus fer2013new.csv)")
        shares = torch.from_numpy(np.asarray(faces.soft_labels, np.float32))
        voted = torch.isfinite(shares).all(1) & (shares.sum(1) > 0)
        shares = shares[voted] / shares[voted].sum(1, keepdim=True)
        out[voted] = ferplus_weight * shares + (1.0 - ferplus_weight) * out[voted]
    return out


def sharpen(probs: torch.Tensor, temperature: float) -> torch.Tensor:
    """Probabilities at another temperature: p^(1/T), renormalised (softmax(logits / T) for one model)."""
    logp = torch.log(probs.clamp_min(1e-8)) / temperature
    return torch.softmax(logp, 1)


def teacher_targets(teachers: Sequence[str], faces: FaceSet, cache_dir: Path, *,
                    load: Callable[[str], object] | None = None, batch_size: int = 256,
                    report: Callable[[int, int], None] | None = None) -> torch.Tensor:
    """(N, C) mean probabilities of the `teachers` on `faces`, cached in `cache_dir` (`teacher_shares`); the mean
    in `teachers-<key>.safetensors`, keyed by the teachers' weights (or targets files) and the faces."""
    faces_key = faces.fingerprint().encode()
    keys = _teacher_keys(teachers)
    path = Path(cache_dir) / f"teachers-{hashlib.sha256(faces_key + b''.join(keys)).hexdigest()[:20]}.safetensors"
    if (probs := load_cached_tensor(path, "probs")) is not None:
        return probs
    shares = teacher_shares(teachers, faces, cache_dir, load=load, batch_size=batch_size, report=report)
    probs = torch.stack(shares).double().mean(0).float()
    save_tensors_atomically(path, {"probs": probs.contiguous()})
    return probs


def teacher_shares(teachers: Sequence[str], faces: FaceSet, cache_dir: Path, *,
                   load: Callable[[str], object] | None = None, batch_size: int = 256,
                   report: Callable[[int, int], None] | None = None) -> list[torch.Tensor]:
    """Each teacher's (N, C) probabilities on `faces`, with its own test-time views. A teacher is a model (name or
    folder) or a targets file (`export_teacher_targets`), whose every teacher counts as one here. A model's share is
    cached in `cache_dir` (`teacher-<key>.safetensors`) as soon as it is computed, so a run stopped part way
    through (a session's end) computes only the teachers it lacks; `report(done, total)` counts the faces of those
    alone, so its pace is theirs."""
    from fer_app.evaluate import predict_faces
    from fer_app.model import load_model

    if not teachers:
        raise ValueError("no teacher models given")
    faces_key = faces.fingerprint().encode()
    keys = _teacher_keys(teachers)
    cache_dir = Path(cache_dir)
    load = load or (lambda name: load_model(name, runtime="torch"))
    owns = [cache_dir / f"teacher-{hashlib.sha256(faces_key + key).hexdigest()[:20]}.safetensors" for key in keys]
    found: list[list[torch.Tensor] | None] = [
        read_teacher_targets(name, faces) if is_targets_file(name) else _one(load_cached_tensor(own, "probs"))
        for name, own in zip(teachers, owns)]
    missing = [i for i, share in enumerate(found) if share is None]
    for k, i in enumerate(missing):  # progress counts only the teachers computed now, so its ETA is their pace
        each = (lambda done, n, k=k: report(k * n + done, len(missing) * n)) if report else None
        share = torch.from_numpy(np.asarray(predict_faces(load(teachers[i]), faces, batch_size, each), np.float32))
        owns[i].parent.mkdir(parents=True, exist_ok=True)
        save_tensors_atomically(owns[i], {"probs": share.contiguous()})
        found[i] = [share]
    return [share for shares in found for share in shares]


def is_targets_file(name: str | Path) -> bool:
    """Whether a teacher is given as a targets file (`export_teacher_targets`) rather than a model: by its suffix,
    so a missing file is refused as such (`targets_file_meta`), not looked for as a model."""
    return Path(name).suffix == TARGETS_SUFFIX


def export_teacher_targets(teachers: Sequence[str], faces: FaceSet, path: Path, cache_dir: Path, *,
                           load: Callable[[str], object] | None = None,
                           report: Callable[[int, int], None] | None = None) -> Path:
    """Write each teacher's probabilities on `faces` to one file at `path` (a few MB for FER-2013's train split),
    with the faces' fingerprint and the teachers' table of runs: a training run given the file as a teacher
    (`train --teacher FILE`) learns as from the teachers themselves, on a machine that has neither their weights
    nor the time to run them (a GPU that is sent at most 64 MiB)."""
    from fer_app import runs

    if Path(path).suffix != TARGETS_SUFFIX:
        raise ValueError(f"{path}: a targets file must end in {TARGETS_SUFFIX}")
    shares = teacher_shares(teachers, faces, cache_dir, load=load, report=report)
    names = [n for name in teachers for n in (_file_teachers(name) if is_targets_file(name) else [str(name)])]
    rows = [asdict(r) for r in runs.ancestors(list(teachers))]
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    save_tensors_atomically(Path(path), {"shares": torch.stack(shares).contiguous()}, metadata={
        "faces": faces.fingerprint(), "source": faces.source, "teachers": json.dumps(names), "runs": json.dumps(rows)})
    return Path(path)


def read_teacher_targets(path: str | Path, faces: FaceSet) -> list[torch.Tensor]:
    """The teachers' probabilities in a targets file, one (N, C) tensor each; ValueError when the file was made
    on other faces than `faces` (another data set, split or order)."""
    meta = targets_file_meta(path)
    if meta.get("faces") != faces.fingerprint():
        raise ValueError(f"{path}: its teachers' targets are for other faces ({meta.get('source') or 'unknown'}, "
                         f"fingerprint {meta.get('faces')}), not {faces.source or 'these'} ({faces.fingerprint()}); "
                         "write it again with `python -m fer_app targets` on this data")
    shares = load_file(str(path))["shares"]
    if shares.dim() != 3 or shares.shape[1:] != (len(faces), len(CLASSES)):
        raise ValueError(f"{path}: shares of shape {tuple(shares.shape)}, not (teachers, {len(faces)}, "
                         f"{len(CLASSES)})")
    return list(shares.float())


def targets_file_meta(path: str | Path) -> dict[str, str]:
    """The header of a targets file: faces (fingerprint), source, teachers (JSON list), runs (JSON list)."""
    try:
        with safe_open(str(path), "pt") as f:
            return dict(f.metadata() or {})
    except Exception as e:  # noqa: BLE001 - named in the message
        raise ValueError(f"{path}: not a targets file this app wrote ({e})") from e


def _file_teachers(path: str | Path) -> list[str]:
    return json.loads(targets_file_meta(path).get("teachers", "[]"))


def _one(share: torch.Tensor | None) -> list[torch.Tensor] | None:
    return None if share is None else [share]


def _teacher_keys(teachers: Sequence[str]) -> list[bytes]:
    """What identifies each teacher's predictions: the sha256 of its weights (or targets file), else its name."""
    from fer_app.model import WEIGHTS_FILE, file_sha256, model_dir

    keys = []
    for name in teachers:
        weights = Path(name) if is_targets_file(name) else model_dir(name) / WEIGHTS_FILE
        keys.append(file_sha256(weights).encode() if weights.is_file() else str(name).encode())
    return keys


def online_teachers(teachers: Sequence[str], normalize: Callable[[torch.Tensor], torch.Tensor], *,
                    load: Callable[[str], torch.nn.Module] | None = None) -> list[torch.nn.Module]:
    """The `teachers` (model names or folders) as networks that can take the student's own training batches:
    each must turn faces into the same pixels as the student (`normalize`: same input size, channels and
    normalisation, checked on a probe batch), else ValueError; the cached targets take any teacher."""
    from fer_app.model import load_model

    if not teachers:
        raise ValueError("no teacher models given")
    load = load or (lambda name: load_model(name, runtime="torch"))
    if files := [str(name) for name in teachers if is_targets_file(name)]:
        raise ValueError(f"{', '.join(files)}: a targets file teaches from its cached targets (without "
                         "--kd-online), not online")
    probe = torch.arange(2 * 48 * 48, dtype=torch.int64).remainder(256).to(torch.uint8).view(2, 48, 48)
    want = normalize(probe)
    nets = []
    for name in teachers:
        net = load(name)
        got = net.encoder.normalize(probe)
        why = (f"pixels {tuple(got.shape)[1:]}, the student's {tuple(want.shape)[1:]}" if got.shape != want.shape
               else "another normalisation (mean, std)" if not torch.allclose(got, want, atol=1e-5) else None)
        if why:
            raise ValueError(f"teacher {name}: its input is not the student's ({why}); it can teach from its "
                             "cached predictions (without --kd-online), not online")
        nets.append(net.eval())
    return nets


def blend(x: torch.Tensor, targets: Sequence[torch.Tensor | None], weights: torch.Tensor, gen: torch.Generator, *,
          mixup: float = 0.0, cutmix: float = 0.0) -> tuple[torch.Tensor, list[torch.Tensor | None], torch.Tensor]:
    """Each sample blended with another of the batch (a random permutation) by one Beta(alpha, alpha) draw
    `lam`, its inputs, every target tensor and its sample weight alike (`lam` of the sample's own).

    Mixup (`mixup` = alpha) mixes whole inputs. CutMix (`cutmix` = alpha; images (N, C, H, W) only) pastes
    the other sample's pixels in a box of about 1 - lam of the image at a random centre (clipped at the
    border), and `lam` becomes the share of the image the sample kept. With both on, each batch takes one
    of the two (a fair coin); with neither, the batch is returned as it is.
    """
    if mixup <= 0 and cutmix <= 0:
        return x, list(targets), weights
    cut = cutmix > 0 and (mixup <= 0 or bool(torch.rand((), generator=gen) < 0.5))
    alpha = cutmix if cut else mixup
    # the Beta draw uses the global RNG (seeded per epoch); the permutation and the box use the augmentation generator
    lam = float(torch.distributions.Beta(alpha, alpha).sample())
    perm = torch.randperm(len(x), generator=gen).to(x.device)
    if cut:
        x, lam = _paste_box(x, x[perm], lam, gen)
    else:
        x = lam * x + (1 - lam) * x[perm]
    mixed = [None if t is None else lam * t + (1 - lam) * t[perm] for t in targets]
    return x, mixed, lam * weights + (1 - lam) * weights[perm]


def _paste_box(x: torch.Tensor, other: torch.Tensor, lam: float, gen: torch.Generator) -> tuple[torch.Tensor, float]:
    """`x` with a box of `other` pasted in (sides sqrt(1 - lam) of the image's, a random centre, clipped at the
    border); returns it and the share of each image left as it was."""
    if x.dim() != 4:
        raise ValueError(f"CutMix needs images (N, C, H, W), not a batch of shape {tuple(x.shape)}")
    height, width = x.shape[-2:]
    side = math.sqrt(max(0.0, 1.0 - lam))
    cy, cx = int(torch.randint(0, height, (), generator=gen)), int(torch.randint(0, width, (), generator=gen))
    half_h, half_w = round(height * side) // 2, round(width * side) // 2
    y0, y1 = max(0, cy - half_h), min(height, cy + half_h)
    x0, x1 = max(0, cx - half_w), min(width, cx + half_w)
    out = x.clone()
    out[..., y0:y1, x0:x1] = other[..., y0:y1, x0:x1]
    return out, 1.0 - (y1 - y0) * (x1 - x0) / (height * width)


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
