"""The training engine: a model end to end (the compact CNN, or a full fine-tune of CLIP ViT-B/32),
or a head on frozen (cached) embeddings.

One engine for the CLI and the training page. Full training feeds the network 48x48 grey faces
through the encoder's `normalize` (per batch, on the device: CLIP's is 224 px, 3 channels), then
augments them on the device. It picks the device (CUDA, MPS, CPU), seeds every
random draw, writes a checkpoint each epoch into a work folder (resumable with `resume=True`),
stops early on val, reports progress through a callback, and saves the best model atomically:
an interrupted, stopped or diverged run never overwrites a good model.

Under torchrun (`fer_app.distributed`) the same loop runs in every process with the network in
`DistributedDataParallel`: each epoch's order is one permutation sharded across ranks (torch's
`DistributedSampler`), so N processes with a global batch B see the batches one process with B
sees; val is sharded and its counts summed; rank 0 alone reports, checkpoints and saves. Data
in memory (`FaceSet`) is indexed directly; streamed data (`fer_app.streaming.StreamingSet`) comes
through a DataLoader with worker processes. On CUDA: AMP (bf16, or fp16 with a gradient scaler),
in-memory faces moved to the GPU once, streamed batches from pinned memory, channels-last.
Soft targets (FER+ vote shares, distillation from saved teacher models, mixup, CutMix: `fer_app.targets`)
replace the plain cross-entropy when asked for, for data in memory.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

from fer_app import distributed, runs, runtimes, targets
from fer_app.augment import AugmentConfig, augment
from fer_app.config import APP_HOME, CLASSES, MODELS_DIR
from fer_app.data import DataError, FaceSet, Splits
from fer_app.encoders.compact import CompactEncoder
from fer_app.files import load_cached_tensor, save_tensors_atomically
from fer_app.heads import Head
from fer_app.metrics import classification_report, confusion_png
from fer_app.model import Classifier, ModelError, build_encoder, load_model, save_model
from fer_app.targets import SOFT_TARGETS


class TrainingError(RuntimeError):
    """Training could not go on (diverged, bad data); checkpoints and saved models are left intact."""


@dataclass
class TrainConfig:
    """Everything that defines a run; saved with the checkpoint and in the model config."""

    encoder: str = "compact"            # "compact" or "clip-vit-b32"
    mode: str = "full"                  # "full": encoder + head (compact, CLIP fine-tune); "head": head only, frozen
    head: str = "linear"                # "linear" or "mlp"
    init_from: str | None = None        # start from a saved model (name or folder) instead of scratch
    widths: tuple[int, ...] = (32, 64, 128, 256)
    convs_per_stage: tuple[int, ...] = (1, 2, 2, 2)
    epochs: int = 40
    batch_size: int = 128
    optimizer: str = "sgd"              # "sgd" (nesterov) or "adamw"
    lr: float = 0.05                    # peak; a pretrained encoder trains at ENCODER_LR_SCALE of it (CLIP: 0.1)
    weight_decay: float = 5e-4
    schedule: str = "onecycle"          # "onecycle", "cosine" or "constant"
    label_smoothing: float = 0.1
    balance: str = "sqrt"               # class weights: "none", "sqrt" (1/sqrt(n)) or "inverse" (1/n)
    augment: bool = True
    tta_flip: bool = True               # predict on the face and its mirror image, average
    patience: int = 0                   # early stopping: epochs without val improvement (0 = off)
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"             # "fp32", "bf16"/"fp16" (autocast) or "auto": bf16 where the hardware
    #                                     has it, fp16 on other CUDA GPUs, else fp32
    threads: int = 0                    # CPU threads (0 = torch's default)
    clip_source: str | None = None
    # soft targets (fer_app.targets): FER+ vote shares, distillation from saved models, mixup, CutMix
    soft_targets: str = "none"          # "none" or "ferplus" (the train faces' FER+ vote shares)
    ferplus_weight: float = 1.0         # with "ferplus": the votes' share of the base target, the rest the label
    teachers: tuple[str, ...] = ()      # saved models whose mean probabilities are soft targets
    kd_weight: float = 0.5              # share of the loss given to the teachers' targets
    kd_temperature: float = 2.0         # distillation temperature
    kd_online: bool = False             # the teachers see each batch as the student does (augmented, mixed)
    mixup: float = 0.0                  # mixup's Beta(alpha, alpha); 0 = off
    cutmix: float = 0.0                 # CutMix's Beta(alpha, alpha); 0 = off (with mixup: a coin per batch)
    # the share of train faces shown as the app frames them: pasted into real scenes, found by the Haar
    # cascade and cut from its box (`fer_app.robustness.haar_views`, made once per run); 0 = off
    haar_views: float = 0.0
    # stochastic weight averaging (Izmailov et al., 2018): the mean of the weights at the end of each of the last
    # N epochs, its BatchNorm statistics measured anew, scored on val as one more candidate beside the best
    # epoch; 0 = off
    swa_epochs: int = 0

    def __post_init__(self) -> None:
        self.widths, self.convs_per_stage = tuple(self.widths), tuple(self.convs_per_stage)
        self.teachers = tuple(str(t) for t in self.teachers)
        choices = {"encoder": ("compact", "clip-vit-b32"), "mode": ("full", "head"), "head": ("linear", "mlp"),
                   "optimizer": ("sgd", "adamw"), "schedule": ("onecycle", "cosine", "constant"),
                   "balance": ("none", "sqrt", "inverse"), "precision": ("auto", "fp32", "bf16", "fp16")}
        for key, allowed in choices.items():
            if getattr(self, key) not in allowed:
                raise ValueError(f"{key} must be one of {', '.join(allowed)} (got {getattr(self, key)!r})")
        if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0:
            raise ValueError("epochs, batch_size and lr must be positive")
        if self.soft_targets not in SOFT_TARGETS:
            raise ValueError(f"soft_targets must be one of {', '.join(SOFT_TARGETS)} (got {self.soft_targets!r})")
        if not 0.0 < self.ferplus_weight <= 1.0 or (self.ferplus_weight != 1.0 and self.soft_targets != "ferplus"):
            raise ValueError(f"ferplus_weight must be in (0, 1] and goes with soft_targets 'ferplus' "
                             f"(got {self.ferplus_weight})")
        if not 0.0 <= self.kd_weight <= 1.0 or self.kd_temperature <= 0 or self.mixup < 0 or self.cutmix < 0:
            raise ValueError("kd_weight must be in [0, 1], kd_temperature > 0, mixup and cutmix >= 0")
        if not 0.0 <= self.haar_views <= 1.0:
            raise ValueError(f"haar_views must be in [0, 1] (got {self.haar_views})")
        if not 0 <= self.swa_epochs <= self.epochs:
            raise ValueError(f"swa_epochs must be in [0, epochs] (got {self.swa_epochs})")
        if self.kd_online and (not self.teachers or self.mode != "full"):
            raise ValueError("kd_online needs teachers and a full run (mode full): the teachers see the faces")

    @property
    def soft(self) -> bool:
        """Whether the run trains on soft targets (`fer_app.targets`) instead of plain cross-entropy."""
        return self.soft_targets != "none" or bool(self.teachers) or self.mixup > 0 or self.cutmix > 0


@dataclass
class EpochStats:
    epoch: int
    epochs: int
    train_loss: float
    train_accuracy: float
    val_loss: float
    val_accuracy: float
    val_macro_f1: float
    lr: float
    seconds: float
    best: bool


@dataclass
class Progress:
    """What a callback sees during a run: phase ("embed", "train"), step counters and the latest numbers.

    `elapsed` is this phase's time in this process, and `steps_before` the steps (of all epochs) done before
    that clock started, by an earlier process of a resumed run: the ETA is the pace of this process's own
    steps, not the run's total time over its total steps (which would count the phases before the epochs,
    and sessions past, against the steps of this one).
    """

    phase: str
    epoch: int
    epochs: int
    step: int
    steps: int
    loss: float = math.nan
    lr: float = 0.0
    elapsed: float = 0.0
    history: list[EpochStats] = field(default_factory=list)
    steps_before: int = 0

    @property
    def done(self) -> int:
        """Steps done, of all epochs."""
        return (self.epoch - 1) * self.steps + self.step

    @property
    def fraction(self) -> float:
        return self.done / max(1, self.epochs * self.steps)

    @property
    def eta(self) -> float:
        """Seconds left at this process's pace; nan before its first step."""
        paced = self.done - self.steps_before
        return self.elapsed * (self.epochs * self.steps - self.done) / paced if paced > 0 else math.nan


class Callback:
    """Override what you need; `should_stop` is polled every batch (a Stop button)."""

    def on_progress(self, progress: Progress) -> None: ...

    def on_epoch(self, stats: EpochStats, progress: Progress) -> None: ...

    def should_stop(self) -> bool:
        return False


def phase_reporter(phase: str, callback: Callback) -> Callable[[int, int], None]:
    """A (done, total) progress function for one phase before (or outside) the epochs: embeddings, teachers'
    targets, Haar views, a calibration's steps; the phase's own clock starts now."""
    began = time.perf_counter()

    def report(done: int, total: int) -> None:
        callback.on_progress(Progress(phase, 1, 1, done, max(total, 1), elapsed=time.perf_counter() - began))

    return report


@dataclass
class TrainResult:
    model: Classifier
    history: list[EpochStats]
    report: dict                      # classification report on val for the best epoch
    saved_to: Path | None
    stopped_early: bool
    seconds: float
    device: str


def pick_device(preference: str = "auto") -> torch.device:
    if preference != "auto":
        return torch.device(preference)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"CUDA ({torch.cuda.get_device_name(device)})"
    if device.type == "mps":
        return "MPS (Apple GPU)"
    return f"CPU ({os.cpu_count()} logical cores, {torch.get_num_threads()} threads)"


def use_bf16(precision: str, device: torch.device) -> bool:
    """Whether to train under bf16 autocast: asked for, or "auto" on hardware with native bf16 math
    (CUDA GPUs that support it; CPUs with AVX512-BF16 or AMX, where it is about twice as fast as fp32)."""
    if precision != "auto":
        return precision == "bf16"
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        probe = getattr(torch.cpu, "_is_avx512_bf16_supported", None)
        amx = getattr(torch.cpu, "_is_amx_tile_supported", None)
        return bool((probe and probe()) or (amx and amx()))
    return False


def amp_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of a run (None: fp32). "auto": bf16 where `use_bf16` says so, fp16 on other CUDA
    GPUs (with a gradient scaler), fp32 elsewhere. fp16 runs on the CPU too (slowly; the tests use it)."""
    if precision == "fp16" or (precision == "auto" and device.type == "cuda" and not use_bf16("auto", device)):
        return torch.float16
    return torch.bfloat16 if use_bf16(precision, device) else None


PRECISION_NAMES = {None: "fp32", torch.bfloat16: "bf16 autocast", torch.float16: "fp16 autocast"}


def class_weights(labels: np.ndarray, balance: str, num_classes: int = len(CLASSES)) -> torch.Tensor:
    """Loss weights against class imbalance, normalised so the average sample weight is 1."""
    counts = np.bincount(labels, minlength=num_classes).astype(float)
    power = {"none": 0.0, "sqrt": 0.5, "inverse": 1.0}[balance]
    w = np.where(counts > 0, np.maximum(counts, 1) ** -power, 0.0)
    w = w * counts.sum() / max((w * counts).sum(), 1e-12)
    return torch.tensor(w, dtype=torch.float32)


#: Pretrained encoders fully fine-tuned at this fraction of the learning rate (the head gets all of it).
ENCODER_LR_SCALE: dict[str, float] = {"clip-vit-b32": 0.1}
#: Floats per evaluation batch, at most (512 compact faces; about 220 CLIP faces of 3x224x224).
EVAL_FLOATS = 1 << 25
#: Steps between the training loop's reads of the loss on the host, by device type. A read waits for the kernels
#: queued on the device, so on a GPU the host stops launching ahead of it every read; on the CPU it costs nothing.
#: A non-finite loss is caught at the next read and always before the epoch's val and checkpoint.
HOST_READ_EVERY: dict[str, int] = {"cpu": 1, "other": 16}


def lr_at(cfg: TrainConfig, step: int, total: int) -> float:
    """Learning rate at a global step: one-cycle (warm-up then cosine), cosine, or constant."""
    t = step / max(1, total)
    if cfg.schedule == "constant":
        return cfg.lr
    if cfg.schedule == "onecycle":
        warm = 0.15
        if t < warm:
            return cfg.lr * (0.1 + 0.9 * t / warm)
        t = (t - warm) / (1 - warm)
    return cfg.lr * (0.002 + 0.998 * 0.5 * (1 + math.cos(math.pi * t)))


# ---------------------------------------------------------------- model building


def build_model(cfg: TrainConfig, splits: Splits) -> Classifier:
    """The model a run starts from: a saved model (init_from), or a fresh compact net, or CLIP + a new head."""
    if cfg.init_from:
        model = load_model(cfg.init_from, clip_source=cfg.clip_source, runtime="torch")  # trainable torch modules
        if cfg.head != model.head.kind or model.head.kind == "zero-shot":  # a new head (zero-shot has no weights)
            model.head = Head(model.encoder.embed_dim, len(CLASSES), cfg.head, dropout=0.2)
        model.tta_flip = cfg.tta_flip
        # What was chosen or built for the old weights doesn't carry over to the new ones.
        model.tta_zooms = ()
        for key in ("quantized", "tta_selection"):
            model.meta.pop(key, None)
        _mark_fine_tuned(model, cfg)
        return model
    if cfg.encoder == "compact":
        train_set = splits["train"]
        images = train_set.images if hasattr(train_set, "images") else train_set.sample_images()  # streamed
        mean, std = float(images.mean() / 255), float(images.std() / 255)
        encoder = CompactEncoder(cfg.widths, cfg.convs_per_stage, mean=round(mean, 4), std=round(std, 4))
    else:
        encoder = build_encoder({"type": cfg.encoder, "source": cfg.clip_source})
    head = Head(encoder.embed_dim, len(CLASSES), cfg.head, dropout=0.0 if cfg.mode == "full" else 0.2)
    return _mark_fine_tuned(Classifier(encoder, head, tta_flip=cfg.tta_flip), cfg)


def _mark_fine_tuned(model: Classifier, cfg: TrainConfig) -> Classifier:
    """A pretrained encoder trained in full mode owns its weights from now on (they are saved with the model)."""
    if cfg.mode == "full" and hasattr(model.encoder, "fine_tuned"):
        model.encoder.fine_tuned = True  # type: ignore[union-attr]
    return model


def param_groups(model: Classifier, cfg: TrainConfig) -> list[dict]:
    """The optimizer's parameter groups; `lr_scale` scales the schedule's learning rate per group.

    Full mode trains a pretrained encoder (CLIP) at ENCODER_LR_SCALE of the head's rate; the compact
    CNN has one group. Head mode: the head alone.
    """
    if cfg.mode == "head":
        return [{"params": list(model.head.parameters())}]
    scale = ENCODER_LR_SCALE.get(model.encoder.encoder_id, 1.0)
    if scale == 1.0:
        return [{"params": list(model.parameters())}]
    return [{"params": list(model.encoder.parameters()), "lr_scale": scale},
            {"params": list(model.head.parameters()), "lr_scale": 1.0}]


# ---------------------------------------------------------------- embeddings cache (head mode)


def module_fingerprint(module: nn.Module) -> str:
    import hashlib

    h = hashlib.sha256()
    for k, v in module.state_dict().items():
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def compute_embeddings(model: Classifier, faces: FaceSet, device: torch.device, batch_size: int = 256,
                       report: Callable[[int, int], None] | None = None) -> torch.Tensor:
    """Embeddings of every face (N, D) with the frozen encoder, in batches."""
    enc = model.encoder.to(device).eval()
    out = []
    n = len(faces)
    with torch.inference_mode():
        for i in range(0, n, batch_size):
            pixels = enc.preprocess(list(faces.images[i:i + batch_size])).to(device)
            out.append(enc(pixels).float().cpu())
            if report:
                report(min(i + batch_size, n), n)
    return torch.cat(out) if out else torch.zeros((0, enc.embed_dim))


def cached_embeddings(model: Classifier, faces: FaceSet, device: torch.device, cache_dir: Path,
                      report: Callable[[int, int], None] | None = None) -> torch.Tensor:
    """Embeddings from the on-disk cache keyed by encoder weights and data, computed once."""
    key = f"{model.encoder.encoder_id}-{module_fingerprint(model.encoder)}-{faces.fingerprint()}"
    path = cache_dir / f"{key}.safetensors"
    if (emb := load_cached_tensor(path, "embeddings")) is not None:
        return emb
    emb = compute_embeddings(model, faces, device, report=report)
    cache_dir.mkdir(parents=True, exist_ok=True)
    save_tensors_atomically(path, {"embeddings": emb.contiguous()})
    return emb


# ---------------------------------------------------------------- checkpoints


#: The checkpoint's JSON state is stored in its safetensors header under this key.
CHECKPOINT_META_KEY = "fer_app.checkpoint"


def tensors_digest(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 of named tensors (names, dtypes, shapes and bytes, in name order)."""
    import hashlib

    h = hashlib.sha256()
    for k in sorted(tensors):
        v = tensors[k].detach().cpu().contiguous()
        h.update(f"{k}|{v.dtype}|{tuple(v.shape)}|".encode())
        h.update(v.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _save_checkpoint(path: Path, model: nn.Module, opt: torch.optim.Optimizer, state: dict,
                     scaler: torch.amp.GradScaler | None = None, swa: dict[str, torch.Tensor] | None = None) -> None:
    """One file, replaced in one rename: model and optimizer tensors, the running weight mean (`swa`, when
    averaging), and the JSON state (epoch, history, optimizer scalars, the digest of the tensors) in its header.
    A kill leaves the old file or the new one."""
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    tensors.update({f"swa.{k}": v.contiguous() for k, v in (swa or {}).items()})
    opt_state = opt.state_dict()
    scalars = {}
    for idx, st in opt_state["state"].items():
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"opt.{idx}.{k}"] = v.detach().cpu().contiguous()
            else:
                scalars[f"{idx}.{k}"] = v
    meta = {**state, "opt_scalars": scalars, "opt_param_groups": opt_state["param_groups"],
            "scaler": scaler.state_dict() if scaler is not None and scaler.is_enabled() else None,
            "tensors_sha256": tensors_digest(tensors)}
    save_tensors_atomically(path, tensors, metadata={CHECKPOINT_META_KEY: json.dumps(meta)})


def read_checkpoint_meta(path: Path) -> dict:
    """The JSON state in a checkpoint's header (cheap: the tensors are not read); TrainingError when unreadable."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as f:
            header = f.metadata() or {}
    except Exception as exc:  # noqa: BLE001
        raise TrainingError(f"{path}: checkpoint unreadable ({exc}); delete it to start over") from None
    if CHECKPOINT_META_KEY not in header:
        raise TrainingError(f"{path}: not a checkpoint of this version (its state is in a separate "
                            f"{path.with_suffix('.json').name}, which may not match its tensors); "
                            "start a new run or delete it")
    return json.loads(header[CHECKPOINT_META_KEY])


def _load_checkpoint(path: Path, model: nn.Module, opt: torch.optim.Optimizer,
                     scaler: torch.amp.GradScaler | None = None) -> tuple[dict, dict[str, torch.Tensor]]:
    """Restore model, optimizer and scaler from `path`; return its JSON state and the running weight mean."""
    meta = read_checkpoint_meta(path)
    try:
        tensors = load_file(str(path))
    except Exception as exc:  # noqa: BLE001
        raise TrainingError(f"{path}: checkpoint unreadable ({exc}); delete it to start over") from None
    if tensors_digest(tensors) != meta.get("tensors_sha256"):
        raise TrainingError(f"{path}: the checkpoint's tensors do not match its recorded digest (damaged); "
                            "delete it to start over")
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    state: dict = {}
    for k, v in tensors.items():
        if k.startswith("opt."):
            _, idx, name = k.split(".", 2)
            state.setdefault(int(idx), {})[name] = v
    for k, v in meta["opt_scalars"].items():
        idx, name = k.split(".", 1)
        state.setdefault(int(idx), {})[name] = v
    opt.load_state_dict({"state": state, "param_groups": meta["opt_param_groups"]})
    if scaler is not None and meta.get("scaler"):
        scaler.load_state_dict(meta["scaler"])
    return meta, {k[4:]: v for k, v in tensors.items() if k.startswith("swa.")}


# ---------------------------------------------------------------- the loop


def _shard_order(n: int, ctx: distributed.Context, seed: int, epoch: int) -> torch.Tensor:
    """This rank's indices of the epoch's permutation of n items: torch's `DistributedSampler` (one
    permutation seeded by seed + epoch for all ranks, padded to a multiple of the world size, every
    world_size-th index), so the union of the ranks' k-th batches is one process's k-th batch."""
    from torch.utils.data import DistributedSampler

    sampler = DistributedSampler(range(n), num_replicas=ctx.world_size, rank=ctx.rank, shuffle=True, seed=seed)
    sampler.set_epoch(epoch)
    return torch.tensor(list(sampler), dtype=torch.int64)


class _InMemory:
    """Faces (uint8) or embeddings held in one tensor, batched by index; on CUDA moved to the GPU once
    (FER-2013's 28k faces are 66 MB), so a batch is an index on the device. With `views` (another view
    of every face, same shape) a train batch shows each face's view instead with probability `share`."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, device: torch.device, ctx: distributed.Context,
                 soft: torch.Tensor | None = None, views: torch.Tensor | None = None, share: float = 0.0) -> None:
        self.x, self.y, self.device, self.ctx, self.soft = x, y, device, ctx, soft
        self.views, self.share = views, share
        if device.type == "cuda":
            self.x, self.y = x.to(device), y.to(device)
            self.soft = None if soft is None else soft.to(device)
            self.views = None if views is None else views.to(device)

    def steps(self, batch_size: int) -> int:
        return math.ceil(math.ceil(len(self.y) / self.ctx.world_size) / batch_size)

    def _take(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, None, torch.Tensor | None]:
        """A batch: inputs, labels, no mask (all rows good), soft targets (None without)."""
        idx = idx.to(self.x.device)
        soft = None if self.soft is None else self.soft[idx].to(self.device)
        return self.x[idx].to(self.device), self.y[idx].to(self.device), None, soft

    def train_batches(self, batch_size: int, seed: int, epoch: int, gen: torch.Generator | None = None):
        for idx in _shard_order(len(self.y), self.ctx, seed, epoch).split(batch_size):
            xb, yb, mask, soft = self._take(idx)
            if self.views is not None and self.share > 0 and gen is not None:
                pick = (torch.rand(len(idx), generator=gen) < self.share).to(self.device)
                views = self.views[idx.to(self.views.device)].to(self.device)
                xb = torch.where(pick.view(-1, *([1] * (xb.dim() - 1))), views, xb)
            yield xb, yb, mask, soft

    def eval_batches(self, batch_size: int):
        for idx in torch.tensor(distributed.shard(len(self.y), self.ctx), dtype=torch.int64).split(batch_size):
            yield self._take(idx)


class _Streamed:
    """A `StreamingSet` through a DataLoader: worker processes decode and resize, batches come from
    pinned memory on CUDA. At most workers x prefetch batches are in flight: memory stays bounded."""

    def __init__(self, dataset, device: torch.device, ctx: distributed.Context, workers: int) -> None:
        self.dataset, self.device, self.ctx, self.workers = dataset, device, ctx, workers
        self.pin = device.type == "cuda"
        self._train = None
        self.bad = 0

    def _loader(self, sampler, batch_size: int, persistent: bool):
        from torch.utils.data import DataLoader

        from fer_app.streaming import worker_init

        # its own generator: starting the workers must not draw from the global RNG (dropout's, seeded per epoch)
        return DataLoader(self.dataset, batch_size=batch_size, sampler=sampler, num_workers=self.workers,
                          pin_memory=self.pin, worker_init_fn=worker_init if self.workers else None,
                          generator=torch.Generator().manual_seed(0),
                          persistent_workers=persistent and self.workers > 0,
                          prefetch_factor=2 if self.workers else None,
                          # never fork a process that has threads running (ONNX Runtime, OpenMP, a live
                          # pipeline's worker): a forked worker can inherit a held lock and hang for ever
                          multiprocessing_context="forkserver" if self.workers else None)

    def steps(self, batch_size: int) -> int:
        return math.ceil(math.ceil(len(self.dataset) / self.ctx.world_size) / batch_size)

    def _checked(self, batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, None]:
        """Batch on the device; unreadable files (label -1) stop the run naming the file, or are masked
        out of the loss and metrics ("skip"; the mask is returned, None when all are good)."""
        xb, yb, idx = batch
        bad = yb < 0
        mask = None
        if bool(bad.any()):
            first = self.dataset.path(int(idx[bad][0]))
            if self.dataset.on_error != "skip":
                raise DataError(f"{first}: not a readable image")
            self.bad += int(bad.sum())
            mask = (~bad).to(self.device)
            yb = yb.clamp_min(0)
        return (xb.to(self.device, non_blocking=self.pin), yb.to(self.device, non_blocking=self.pin), mask, None)

    def train_batches(self, batch_size: int, seed: int, epoch: int, gen: torch.Generator | None = None):
        from torch.utils.data import DistributedSampler

        if self._train is None:
            sampler = DistributedSampler(self.dataset, num_replicas=self.ctx.world_size, rank=self.ctx.rank,
                                         shuffle=True, seed=seed)
            self._train = (sampler, self._loader(sampler, batch_size, persistent=True))
        sampler, loader = self._train
        sampler.set_epoch(epoch)
        for batch in loader:
            yield self._checked(batch)

    def eval_batches(self, batch_size: int):
        for batch in self._loader(list(distributed.shard(len(self.dataset), self.ctx)), batch_size, False):
            yield self._checked(batch)


def _report_from_confusion(confusion: np.ndarray) -> dict:
    """`classification_report` of the labels a confusion matrix (rows true, columns predicted) counts."""
    k = confusion.shape[0]
    y_true = np.repeat(np.repeat(np.arange(k), k), confusion.reshape(-1))
    y_pred = np.repeat(np.tile(np.arange(k), k), confusion.reshape(-1))
    return classification_report(y_true, y_pred)


def _evaluate(forward: Callable[[torch.Tensor], torch.Tensor], batches, ctx: distributed.Context, tta_flip: bool,
              prepare: Callable[[torch.Tensor], torch.Tensor] | None = None) -> tuple[float, dict]:
    """Mean loss and classification report over this rank's share of val, summed over all ranks (the
    confusion counts and loss sums: exact whatever the number of ranks). `prepare` turns each batch,
    on the device, into the network's input (the encoder's `normalize` in full mode: val is never
    normalised whole)."""
    k = len(CLASSES)
    loss_sum = torch.zeros((), dtype=torch.float64)
    confusion = torch.zeros(k * k, dtype=torch.float64)
    with torch.inference_mode():
        for xb, yb, mask, _ in batches:
            if prepare is not None:
                xb = prepare(xb)
            probs = torch.softmax(forward(xb), 1)
            if tta_flip and xb.dim() == 4:
                probs = (probs + torch.softmax(forward(xb.flip(-1)), 1)) / 2
            nll = F.nll_loss(torch.log(probs + 1e-8), yb, reduction="none")
            pred = probs.argmax(1)
            if mask is not None:
                nll, pred, yb = nll[mask], pred[mask], yb[mask]
            loss_sum += nll.double().sum().cpu()
            confusion += torch.bincount((yb * k + pred).cpu(), minlength=k * k).double()
    totals = distributed.sum_across(ctx, torch.cat([loss_sum.reshape(1), confusion]))
    counts = totals[1:].round().long().numpy().reshape(k, k)
    return float(totals[0]) / max(1, int(counts.sum())), _report_from_confusion(counts)


def _check_finite(loss_sum: torch.Tensor, epoch: int, batch: int, ckpt: Path) -> None:
    """TrainingError when the epoch's loss sum so far is not finite (read on the host: waits for the device)."""
    if not bool(torch.isfinite(loss_sum)):
        raise TrainingError(f"training diverged at epoch {epoch}, by batch {batch + 1} (loss {float(loss_sum)}); "
                            f"try a lower learning rate. The last checkpoint ({ckpt}) and saved models are intact.")


def _step_loss(logits: torch.Tensor, yb: torch.Tensor, mask: torch.Tensor | None, weights: torch.Tensor,
               label_smoothing: float) -> torch.Tensor:
    if mask is None:
        return F.cross_entropy(logits, yb, weight=weights, label_smoothing=label_smoothing)
    per = F.cross_entropy(logits, yb, weight=weights, label_smoothing=label_smoothing, reduction="none")
    return (per * mask).sum() / (weights[yb] * mask).sum().clamp_min(1e-12)


def _soft_targets(cfg: TrainConfig, train_set: FaceSet, workdir: Path, ctx: distributed.Context,
                  callback: Callback) -> torch.Tensor:
    """(N, C) or (N, 2C) soft targets of the train faces: base, then the teachers' (rank 0 computes and
    caches them in the work folder; the other ranks read its cache)."""
    base = targets.base_targets(train_set, cfg.soft_targets, cfg.label_smoothing, cfg.ferplus_weight)
    if not cfg.teachers or cfg.kd_online:  # online teachers give their targets batch by batch
        return base
    if not ctx.is_main:
        distributed.barrier(ctx)
    teach = targets.teacher_targets(cfg.teachers, train_set, workdir,
                                    report=phase_reporter("teachers", callback))
    if ctx.is_main:
        distributed.barrier(ctx)
    return torch.cat([base, teach], 1)


def _haar_views(train_set: FaceSet, workdir: Path, ctx: distributed.Context, callback: Callback,
                seed: int) -> torch.Tensor:
    """The train faces as the app frames them (`fer_app.robustness.haar_views`), cached in the work folder,
    keyed by the faces, the backgrounds, the detector, the crop margin and the seed (rank 0 makes them)."""
    import hashlib

    from fer_app import robustness
    from fer_app.config import VIDEO_DETECTOR, DetectorConfig

    backgrounds = robustness.real_backgrounds()
    digest = hashlib.sha256(f"{train_set.fingerprint()} {VIDEO_DETECTOR} {DetectorConfig.margin} {seed}".encode())
    for image in backgrounds:
        digest.update(np.ascontiguousarray(image).tobytes())
    path = workdir / f"haar-views-{digest.hexdigest()[:20]}.safetensors"
    if not ctx.is_main:
        distributed.barrier(ctx)
    views = load_cached_tensor(path, "views")
    if views is None or tuple(views.shape) != tuple(train_set.images.shape):
        images, found = robustness.haar_views(train_set, backgrounds=backgrounds, seed=seed,
                                              progress=phase_reporter("haar-views", callback))
        views = torch.from_numpy(images)
        if ctx.is_main:
            save_tensors_atomically(path, {"views": views.contiguous(), "found": torch.from_numpy(found)})
    if ctx.is_main:
        distributed.barrier(ctx)
    return views


def _accumulate_mean(mean: dict[str, torch.Tensor], state: dict[str, torch.Tensor], count: int) -> int:
    """Fold `state` into `mean`, the running mean of `count` earlier states (in place; integer tensors such as
    BatchNorm's batch counter take the latest value); return the new count."""
    count += 1
    for k, v in state.items():
        v = v.detach().to("cpu", torch.float32 if v.is_floating_point() else v.dtype).contiguous()
        if k in mean and v.is_floating_point():
            mean[k] += (v - mean[k]) / count
        else:
            mean[k] = v.clone()
    return count


def refresh_batchnorm(net: nn.Module, batches: Iterable[torch.Tensor],
                      prepare: Callable[[torch.Tensor], torch.Tensor] | None = None) -> None:
    """Replace `net`'s BatchNorm running statistics by their mean over `batches` (each image and its mirror
    image, no augmentation; in fp32): the statistics of averaged weights, which no one batch ever saw
    (SWA's `update_bn`). `prepare` turns each batch into the network's input. Nets without BatchNorm are
    left as they are."""
    norms = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a cumulative mean over the batches
    was_training = net.training
    net.train()
    with torch.no_grad():
        for xb in batches:
            if prepare is not None:
                xb = prepare(xb)
            if xb.dim() == 4:
                xb = xb.contiguous(memory_format=torch.channels_last)
                net(xb.flip(-1))
            net(xb)
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
    net.train(was_training)


def _batchnorm_mean_across_ranks(net: nn.Module, ctx: distributed.Context) -> None:
    """Under torchrun each rank measured its share of train (`refresh_batchnorm`): all take the ranks' mean."""
    if not ctx.distributed:
        return
    for m in net.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            for stat in (m.running_mean, m.running_var):
                stat.copy_(distributed.sum_across(ctx, stat.double()).to(stat) / ctx.world_size)


def _settable_on_resume(saved: dict, now: dict, epochs_done: int) -> set[str]:
    """The settings a resume may give new values: the weight mean's length (`swa_epochs`) while no epoch run so
    far lies in the old or the new window, as the mean only reads the weights and never steers the training, so
    the run stays the one its recorded settings would make from scratch. Every other setting must match."""
    window = max(saved.get("swa_epochs", 0), now.get("swa_epochs", 0))
    return {"swa_epochs"} if epochs_done <= now["epochs"] - window else set()


def _best_file(workdir: Path, epoch: int) -> Path:
    return workdir / f"best-{epoch:04d}.safetensors"


def _refuse_conflicts(cfg: TrainConfig, streamed: bool) -> None:
    """The one list of settings that cannot go together (raises TrainingError with the first that applies)."""
    head = cfg.mode == "head"
    conflicts = (
        (streamed and cfg.soft,
         "soft targets (FER+ votes, teachers, mixup, CutMix) need the data in memory, not streamed"),
        (cfg.haar_views > 0 and (streamed or head),
         "Haar views (--haar-views) are made from faces held in memory and train the whole network: not with "
         "streamed data or in head mode"),
        (cfg.cutmix > 0 and head,
         "CutMix (--cutmix) pastes parts of images; head mode trains on embeddings (mixup works there)"),
        (streamed and head,
         "head mode trains on cached embeddings of data held in memory; streamed data trains in full mode"),
    )
    for applies, why in conflicts:
        if applies:
            raise TrainingError(why)


def train(cfg: TrainConfig, splits: Splits, *, name: str | None = None, workdir: Path | None = None,
          resume: bool = False, callback: Callback | None = None, models_dir: Path | None = None,
          overwrite: bool = False, card: Callable[[TrainResult], str] | None = None,
          extra_meta: dict | None = None, workers: int = 2) -> TrainResult:
    """Train per `cfg` on splits["train"], select on splits["val"]; save the best as models/<name> if given.

    Splits hold `FaceSet`s (in memory) or `fer_app.streaming.StreamingSet`s (streamed through a
    DataLoader with `workers` worker processes). Under torchrun every rank calls this with the same
    arguments; `cfg.batch_size` is the global batch (each of N ranks takes batch_size / N, rounded up).
    """
    if "train" not in splits or "val" not in splits:
        raise TrainingError(f"need a train and a val split (got {', '.join(splits) or 'none'})")
    train_set, val_set = splits["train"], splits["val"]
    if len(train_set) == 0 or len(val_set) == 0:
        raise TrainingError("the train or val split is empty")
    if name and (models_dir or MODELS_DIR).joinpath(name).exists() and not overwrite:
        raise ModelError(f"model {name!r} exists; choose another name or allow overwriting")
    streamed = not hasattr(train_set, "images") or not hasattr(val_set, "images")
    _refuse_conflicts(cfg, streamed)
    ctx = distributed.setup(pick_device(cfg.device))
    try:
        return _train(cfg, splits, ctx, name=name, workdir=workdir, resume=resume,
                      callback=(callback or Callback()) if ctx.is_main else Callback(), models_dir=models_dir,
                      overwrite=overwrite, card=card, extra_meta=extra_meta, workers=workers, streamed=streamed)
    finally:
        distributed.teardown(ctx)


def _train(cfg: TrainConfig, splits: Splits, ctx: distributed.Context, *, name, workdir, resume, callback,
           models_dir, overwrite, card, extra_meta, workers, streamed) -> TrainResult:
    train_set, val_set = splits["train"], splits["val"]
    torch.manual_seed(cfg.seed)
    torch.set_num_threads(cfg.threads or runtimes.TORCH_DEFAULT_THREADS)  # 0: torch's default, not the last model's
    device = ctx.device
    gen = torch.Generator()
    model = build_model(cfg, splits)
    workdir = Path(workdir or APP_HOME / "runs" / (name or "unnamed"))
    workdir.mkdir(parents=True, exist_ok=True)
    if ctx.is_main:  # files half written when an earlier run was killed
        for stale_tmp in workdir.glob(".*.safetensors.*.tmp"):
            stale_tmp.unlink(missing_ok=True)
    started = time.perf_counter()
    history: list[EpochStats] = []
    batch_size = math.ceil(cfg.batch_size / ctx.world_size)

    head_only = cfg.mode == "head"
    y_train = torch.from_numpy(train_set.labels.astype(np.int64))
    if head_only:
        cache = APP_HOME / "cache" / "embeddings"
        if not ctx.is_main:  # rank 0 embeds and caches; the others read its cache (or embed themselves)
            distributed.barrier(ctx)
        x_train = cached_embeddings(model, train_set, device, cache, phase_reporter("embed", callback))
        x_val = cached_embeddings(model, val_set, device, cache, phase_reporter("embed", callback))
        if ctx.is_main:
            distributed.barrier(ctx)
        net: nn.Module = model.head
        prepare = None
        eval_batch = 512
    else:  # grey uint8 faces, normalised per batch on the device (CLIP's 224 px val set would take GBs)
        net = model
        prepare = model.encoder.normalize
        eval_batch = max(1, min(512, EVAL_FLOATS // prepare(torch.zeros((1, 48, 48), dtype=torch.uint8)).numel()))
        if not streamed:
            x_train = torch.from_numpy(np.ascontiguousarray(train_set.images))
            x_val = torch.from_numpy(np.ascontiguousarray(val_set.images))
    if streamed:
        train_data: _InMemory | _Streamed = _Streamed(train_set, device, ctx, workers)
        val_data: _InMemory | _Streamed = _Streamed(val_set, device, ctx, workers)
    else:
        train_data = _InMemory(x_train, y_train, device, ctx,
                               _soft_targets(cfg, train_set, workdir, ctx, callback) if cfg.soft else None,
                               _haar_views(train_set, workdir, ctx, callback, cfg.seed)
                               if cfg.haar_views > 0 else None, cfg.haar_views)
        val_data = _InMemory(x_val, torch.from_numpy(val_set.labels.astype(np.int64)), device, ctx)
    net.to(device)
    amp = amp_dtype(cfg.precision, device)
    if not head_only:  # conv nets run faster channels-last (NHWC) in oneDNN and cuDNN
        net.to(memory_format=torch.channels_last)
    wrapped = net
    if ctx.distributed:
        from torch.nn.parallel import DistributedDataParallel

        # static graph: the same parameters take part every step (and any never used, e.g. in a pretrained
        # tower, need no find_unused_parameters search)
        wrapped = DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None,
                                          static_graph=True)

    def forward_with(module: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
        def forward(x: torch.Tensor) -> torch.Tensor:
            if x.dim() == 4:
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device.type, dtype=amp or torch.bfloat16, enabled=amp is not None):
                return module(x).float()
        return forward

    train_forward, eval_forward = forward_with(wrapped), forward_with(net)
    teacher_forwards: list[Callable[[torch.Tensor], torch.Tensor]] = []
    if cfg.kd_online:  # consistent teaching: the teachers run on each batch as the student sees it
        for teacher in targets.online_teachers(cfg.teachers, model.encoder.normalize):
            teacher.to(device).to(memory_format=torch.channels_last)
            teacher_forwards.append(forward_with(teacher))
    weights = class_weights(train_set.labels, cfg.balance).to(device)
    params = param_groups(model, cfg)
    if cfg.optimizer == "sgd":
        opt: torch.optim.Optimizer = torch.optim.SGD(params, lr=cfg.lr, momentum=0.9, nesterov=True,
                                                     weight_decay=cfg.weight_decay)
    else:
        opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    scaler = torch.amp.GradScaler(device.type, enabled=amp == torch.float16)
    aug_cfg = AugmentConfig()

    steps_per_epoch = train_data.steps(batch_size)
    total_steps = steps_per_epoch * cfg.epochs
    ckpt = workdir / "checkpoint.safetensors"
    start_epoch, best_acc, best_epoch, stale, resumes = 1, -1.0, 0, 0, []
    best_state: dict[str, torch.Tensor] | None = None
    swa: dict[str, torch.Tensor] = {}  # the running mean of `net`'s tensors over the averaged epochs
    swa_count = 0
    config_json = json.loads(json.dumps(asdict(cfg)))
    changed: list[dict] = []  # settings given new values on a resume (`_settable_on_resume`)
    if resume and ckpt.is_file():
        meta, swa = _load_checkpoint(ckpt, net, opt, scaler)
        swa_count = meta.get("swa_count", 0)
        # a checkpoint from before a setting existed ran with its default
        saved = {**json.loads(json.dumps(asdict(TrainConfig()))), **meta.get("config", {})}
        differ = {k for k, v in saved.items() if k not in config_json or v != config_json[k]}  # saved has every key
        if differ - _settable_on_resume(saved, config_json, meta["epoch"]):
            raise TrainingError(f"{ckpt}: the checkpoint was made with other settings; start a new run "
                                f"(another work folder) or resume with the same settings")
        changed = [*meta.get("changed_on_resume", []),
                   *({"after_epoch": meta["epoch"], "setting": k, "was": saved[k], "now": config_json[k]}
                     for k in sorted(differ))]
        if meta.get("world_size", 1) != ctx.world_size:
            raise TrainingError(f"{ckpt}: the checkpoint was made by {meta.get('world_size', 1)} process(es), "
                                f"not {ctx.world_size}; resume with the same number (the batches depend on it)")
        start_epoch, best_acc = meta["epoch"] + 1, meta["best_acc"]
        best_epoch, stale = meta["best_epoch"], meta["stale"]
        resumes = [*meta.get("resumes", []), meta["epoch"]]
        history = [EpochStats(**h) for h in meta["history"]]
        started -= meta.get("seconds", 0.0)
        if meta.get("best_file"):
            try:
                best_state = load_file(str(workdir / meta["best_file"]))
            except Exception as exc:  # noqa: BLE001
                raise TrainingError(f"{workdir / meta['best_file']}: the best epoch's weights are unreadable "
                                    f"({exc}); start a new run") from None
            if tensors_digest(best_state) != meta.get("best_sha256"):
                raise TrainingError(f"{workdir / meta['best_file']}: does not match the checkpoint's digest; "
                                    "start a new run")

    stopped = False
    read_every = HOST_READ_EVERY.get(device.type, HOST_READ_EVERY["other"])
    sum_dtype = torch.float32 if device.type == "mps" else torch.float64  # MPS has no float64
    progress = Progress("train", start_epoch, cfg.epochs, 0, steps_per_epoch, history=history,
                        steps_before=(start_epoch - 1) * steps_per_epoch)
    epochs_began = time.perf_counter()  # the ETA's clock: this process's epochs only
    for epoch in range(start_epoch, cfg.epochs + 1):
        t0 = time.perf_counter()
        # every draw reproducible per epoch and rank, so resumes match: dropout, then augmentation
        torch.manual_seed(cfg.seed * 100_003 + epoch + 7_919 * ctx.rank)
        gen.manual_seed(cfg.seed * 1_000_003 + epoch * 7_919 + ctx.rank)
        net.train()
        sums = torch.zeros(3, dtype=sum_dtype, device=device)  # loss * n, correct, seen: on the device, read below
        b = -1
        for b, (xb, yb, mask, tb) in enumerate(train_data.train_batches(batch_size, cfg.seed, epoch, gen)):
            if distributed.any_rank(ctx, callback.should_stop()):
                stopped = True
                break
            step = (epoch - 1) * steps_per_epoch + b
            lr = lr_at(cfg, step, total_steps)
            for group in opt.param_groups:
                group["lr"] = lr * group.get("lr_scale", 1.0)
            if not head_only:
                xb = model.encoder.normalize(xb)
                if cfg.augment:
                    xb = augment(xb, aug_cfg, gen)
            if tb is None:
                logits = train_forward(xb)
                loss = _step_loss(logits, yb, mask, weights, cfg.label_smoothing)
            else:  # soft targets: [base | teachers'] columns
                k = len(CLASSES)
                base, teach, sample_w = tb[:, :k], (tb[:, k:] if tb.shape[1] > k else None), weights[yb]
                xb, (base, teach), sample_w = targets.blend(xb, [base, teach], sample_w, gen, mixup=cfg.mixup,
                                                            cutmix=cfg.cutmix)
                if teacher_forwards:
                    with torch.no_grad():
                        teach = torch.stack([torch.softmax(f(xb), 1) for f in teacher_forwards]).mean(0)
                logits = train_forward(xb)
                loss = targets.soft_loss(logits, base, teach, sample_w, cfg.kd_weight, cfg.kd_temperature)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            n_good = torch.full((), float(len(yb)), device=device) if mask is None else mask.sum()
            hits = (logits.argmax(1) == yb) if mask is None else (logits.argmax(1) == yb) & mask
            n_good = n_good.to(sum_dtype)
            sums += torch.stack([loss.detach().to(sum_dtype) * n_good, hits.sum().to(sum_dtype), n_good])
            if (b + 1) % read_every == 0 or b + 1 == steps_per_epoch:  # a host read: waits for the device
                _check_finite(sums[0], epoch, b, ckpt)
                progress.epoch, progress.step, progress.loss, progress.lr = epoch, b + 1, loss.item(), lr
                progress.elapsed = time.perf_counter() - epochs_began
                callback.on_progress(progress)
        _check_finite(sums[0], epoch, b, ckpt)  # before val, the weight mean and the checkpoint
        loss_sum, correct, seen = distributed.sum_across(ctx, sums.cpu().double()).tolist()
        if stopped and seen == 0:
            break
        net.eval()
        val_loss, rep = _evaluate(eval_forward, val_data.eval_batches(eval_batch), ctx,
                                  cfg.tta_flip and not head_only, prepare)
        improved = rep["accuracy"] > best_acc
        if improved:
            best_acc, best_epoch, stale = rep["accuracy"], epoch, 0
            best_state = {k: v.detach().cpu().clone().contiguous() for k, v in model.state_dict().items()}
            if ctx.is_main:
                save_tensors_atomically(_best_file(workdir, epoch), best_state)
        else:
            stale += 1
        if not stopped and epoch > cfg.epochs - cfg.swa_epochs:
            swa_count = _accumulate_mean(swa, net.state_dict(), swa_count)
        stats = EpochStats(epoch, cfg.epochs, loss_sum / max(1, seen), correct / max(1, seen), val_loss,
                           rep["accuracy"], rep["macro_f1"], progress.lr, time.perf_counter() - t0, improved)
        history.append(stats)
        if not stopped and ctx.is_main and best_state is not None:
            _save_checkpoint(ckpt, net, opt, {
                "config": config_json, "epoch": epoch, "best_acc": best_acc, "best_epoch": best_epoch,
                "stale": stale, "history": [asdict(h) for h in history], "world_size": ctx.world_size,
                "resumes": resumes, "best_file": _best_file(workdir, best_epoch).name,
                "best_sha256": tensors_digest(best_state), "seconds": time.perf_counter() - started,
                "device": device_name(device), "swa_count": swa_count, "changed_on_resume": changed}, scaler, swa)
            for old in workdir.glob("best-*.safetensors"):  # only the committed best is kept
                if old.name != _best_file(workdir, best_epoch).name:
                    old.unlink(missing_ok=True)
        callback.on_epoch(stats, progress)
        if stopped or (cfg.patience and stale >= cfg.patience):
            stopped = True
            break

    if best_state is None:
        raise TrainingError("no epoch finished; nothing to save (the previous model is intact)")
    swa_meta = {}
    if swa_count:  # the weight mean, its BatchNorm statistics measured anew, is one more candidate
        net.load_state_dict(swa)
        refresh_batchnorm(net, (xb for xb, *_ in train_data.eval_batches(eval_batch)), prepare)
        _batchnorm_mean_across_ranks(net, ctx)
        net.eval()
        _, swa_rep = _evaluate(eval_forward, val_data.eval_batches(eval_batch), ctx, cfg.tta_flip and not head_only,
                               prepare)
        chosen = swa_rep["accuracy"] > best_acc
        swa_meta = {"swa": {"epochs_averaged": swa_count, "val_accuracy": swa_rep["accuracy"],
                            "val_macro_f1": swa_rep["macro_f1"], "chosen": chosen}}
        if chosen:
            best_state = {k: v.detach().cpu().clone().contiguous() for k, v in model.state_dict().items()}
    model.load_state_dict(best_state)
    model.to(memory_format=torch.contiguous_format)
    model.eval()  # the final report is in fp32, as the model will run
    _, report = _evaluate(net, val_data.eval_batches(eval_batch), ctx, cfg.tta_flip and not head_only, prepare)
    model.to("cpu")
    seconds = time.perf_counter() - started
    data_meta = {
        "train": {"source": train_set.source, "n": len(train_set), "counts": train_set.class_counts()},
        "val": {"source": val_set.source, "n": len(val_set), "counts": val_set.class_counts()}}
    if streamed:
        data_meta["streamed"] = True
        bad = distributed.sum_across(ctx, torch.tensor([float(train_data.bad + val_data.bad)], dtype=torch.float64))
        data_meta["unreadable_skipped"] = int(bad.item())  # counted each time a bad file came up
    model.meta.update({
        "training": {"config": config_json, "data": data_meta,
                     "epochs_run": len(history), "best_epoch": best_epoch, "seconds": round(seconds, 1),
                     "device": device_name(device), "precision": PRECISION_NAMES[amp],
                     "host": {"cpu": runtimes.cpu_info(), "torch": torch.__version__},  # what the hours were on
                     "processes": ctx.world_size, **({"resumed_after_epochs": resumes} if resumes else {}),
                     **({"changed_on_resume": changed} if changed else {}),
                     "history": [asdict(h) for h in history], **swa_meta, "command": None, **(extra_meta or {})},
        "metrics": {"val": report},
    })
    own = runs.record(model.meta["training"], name)  # the table of runs: the parents' and teachers' runs, then this
    parents = [*([cfg.init_from] if cfg.init_from else []), *cfg.teachers]
    model.meta["runs"] = [asdict(r) for r in runs.merged(runs.ancestors(parents), [own])]
    result = TrainResult(model, history, report, None, stopped, seconds, device_name(device))
    if name and ctx.is_main:
        result.saved_to = save_model(model, name, models_dir=models_dir, overwrite=overwrite,
                                     card=card(result) if card else None,
                                     extra_files={"confusion.png": confusion_png(report["confusion"])})
    distributed.barrier(ctx)
    return result
