"""The training engine: a model end to end (the compact CNN, or a full fine-tune of CLIP ViT-B/32),
or a head on frozen (cached) embeddings.

One engine for the CLI and the training page. Full training feeds the network 48x48 grey faces
through the encoder's `normalize` (per batch, on the device: CLIP's is 224 px, 3 channels), then
augments them on the device. It picks the device (CUDA, MPS, CPU), seeds every
random draw, writes a checkpoint each epoch into a work folder (resumable with `resume=True`),
stops early on val, reports progress through a callback, and saves the best model atomically:
an interrupted, stopped or diverged run never overwrites a good model.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from fer_app.augment import AugmentConfig, augment
from fer_app.config import APP_HOME, CLASSES, MODELS_DIR
from fer_app.data import FaceSet, Splits
from fer_app.encoders.compact import CompactEncoder
from fer_app.heads import Head
from fer_app.metrics import classification_report, confusion_png
from fer_app.model import Classifier, ModelError, build_encoder, load_model, save_model


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
    precision: str = "auto"             # "fp32", "bf16" (autocast) or "auto": bf16 where the hardware has it
    threads: int = 0                    # CPU threads (0 = torch's default)
    clip_source: str | None = None

    def __post_init__(self) -> None:
        self.widths, self.convs_per_stage = tuple(self.widths), tuple(self.convs_per_stage)
        choices = {"encoder": ("compact", "clip-vit-b32"), "mode": ("full", "head"), "head": ("linear", "mlp"),
                   "optimizer": ("sgd", "adamw"), "schedule": ("onecycle", "cosine", "constant"),
                   "balance": ("none", "sqrt", "inverse"), "precision": ("auto", "fp32", "bf16")}
        for key, allowed in choices.items():
            if getattr(self, key) not in allowed:
                raise ValueError(f"{key} must be one of {', '.join(allowed)} (got {getattr(self, key)!r})")
        if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0:
            raise ValueError("epochs, batch_size and lr must be positive")


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
    """What a callback sees during a run: phase ("embed", "train"), step counters and the latest numbers."""

    phase: str
    epoch: int
    epochs: int
    step: int
    steps: int
    loss: float = math.nan
    lr: float = 0.0
    elapsed: float = 0.0
    history: list[EpochStats] = field(default_factory=list)

    @property
    def fraction(self) -> float:
        done = (self.epoch - 1) * self.steps + self.step
        return done / max(1, self.epochs * self.steps)

    @property
    def eta(self) -> float:
        f = self.fraction
        return self.elapsed * (1 - f) / f if f > 0 else math.nan


class Callback:
    """Override what you need; `should_stop` is polled every batch (a Stop button)."""

    def on_progress(self, progress: Progress) -> None: ...

    def on_epoch(self, stats: EpochStats, progress: Progress) -> None: ...

    def should_stop(self) -> bool:
        return False


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
        if cfg.head != model.head.kind and model.head.kind != "zero-shot":
            model.head = Head(model.encoder.embed_dim, len(CLASSES), cfg.head, dropout=0.2)
        elif model.head.kind == "zero-shot":
            model.head = Head(model.encoder.embed_dim, len(CLASSES), cfg.head, dropout=0.2)
        model.tta_flip = cfg.tta_flip
        # What was chosen or built for the old weights doesn't carry over to the new ones.
        model.tta_zooms = ()
        for key in ("quantized", "tta_selection"):
            model.meta.pop(key, None)
        _mark_fine_tuned(model, cfg)
        return model
    if cfg.encoder == "compact":
        images = splits["train"].images
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
    if path.is_file():
        try:
            return load_file(str(path))["embeddings"]
        except Exception:  # noqa: BLE001 - a corrupt cache entry is rebuilt, never trusted
            path.unlink(missing_ok=True)
    emb = compute_embeddings(model, faces, device, report=report)
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_file({"embeddings": emb.contiguous()}, str(tmp))
    os.replace(tmp, path)
    return emb


# ---------------------------------------------------------------- checkpoints


def _save_checkpoint(path: Path, model: nn.Module, opt: torch.optim.Optimizer, state: dict,
                     gen: torch.Generator) -> None:
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    opt_state = opt.state_dict()
    scalars = {}
    for idx, st in opt_state["state"].items():
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"opt.{idx}.{k}"] = v.detach().cpu().contiguous()
            else:
                scalars[f"{idx}.{k}"] = v
    tensors["rng"] = gen.get_state()
    tmp = path.with_suffix(".tmp")
    save_file(tensors, str(tmp))
    os.replace(tmp, path)
    meta = {**state, "opt_scalars": scalars, "opt_param_groups": opt_state["param_groups"]}
    tmp_json = path.with_suffix(".json.tmp")
    tmp_json.write_text(json.dumps(meta, indent=1))
    os.replace(tmp_json, path.with_suffix(".json"))


def _load_checkpoint(path: Path, model: nn.Module, opt: torch.optim.Optimizer, gen: torch.Generator) -> dict:
    try:
        tensors = load_file(str(path))
        meta = json.loads(path.with_suffix(".json").read_text())
    except Exception as exc:  # noqa: BLE001
        raise TrainingError(f"{path}: checkpoint unreadable ({exc}); delete it to start over") from None
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
    gen.set_state(tensors["rng"])
    return meta


# ---------------------------------------------------------------- the loop


def _batches(n: int, batch_size: int, gen: torch.Generator, shuffle: bool) -> list[torch.Tensor]:
    order = torch.randperm(n, generator=gen) if shuffle else torch.arange(n)
    return list(order.split(batch_size))


def _evaluate_logits(forward: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, y: torch.Tensor,
                     device: torch.device, tta_flip: bool, batch_size: int = 512,
                     prepare: Callable[[torch.Tensor], torch.Tensor] | None = None) -> tuple[float, np.ndarray]:
    """Mean loss and predictions over (x, y) in batches; `prepare` turns each batch of x, on the device,
    into the network's input (the encoder's `normalize` in full mode: val is never normalised whole)."""
    losses, preds = [], []
    with torch.inference_mode():
        for i in range(0, len(y), batch_size):
            xb = x[i:i + batch_size].to(device)
            if prepare is not None:
                xb = prepare(xb)
            probs = torch.softmax(forward(xb), 1)
            if tta_flip and xb.dim() == 4:
                probs = (probs + torch.softmax(forward(xb.flip(-1)), 1)) / 2
            losses.append(F.nll_loss(torch.log(probs + 1e-8), y[i:i + batch_size].to(device), reduction="sum"))
            preds.append(probs.argmax(1).cpu())
    return float(sum(losses) / max(1, len(y))), torch.cat(preds).numpy() if preds else np.zeros(0, np.int64)


def train(cfg: TrainConfig, splits: Splits, *, name: str | None = None, workdir: Path | None = None,
          resume: bool = False, callback: Callback | None = None, models_dir: Path | None = None,
          overwrite: bool = False, card: Callable[[TrainResult], str] | None = None,
          extra_meta: dict | None = None) -> TrainResult:
    """Train per `cfg` on splits["train"], select on splits["val"]; save the best as models/<name> if given."""
    if "train" not in splits or "val" not in splits:
        raise TrainingError(f"need a train and a val split (got {', '.join(splits) or 'none'})")
    train_set, val_set = splits["train"], splits["val"]
    if len(train_set) == 0 or len(val_set) == 0:
        raise TrainingError("the train or val split is empty")
    if name and (models_dir or MODELS_DIR).joinpath(name).exists() and not overwrite:
        raise ModelError(f"model {name!r} exists; choose another name or allow overwriting")
    callback = callback or Callback()
    torch.manual_seed(cfg.seed)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = pick_device(cfg.device)
    gen = torch.Generator().manual_seed(cfg.seed)
    model = build_model(cfg, splits)
    workdir = Path(workdir or APP_HOME / "runs" / (name or "unnamed"))
    workdir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    history: list[EpochStats] = []

    head_only = cfg.mode == "head"
    if head_only:
        progress = Progress("embed", 1, 1, 0, 1)

        def report(done: int, total: int) -> None:
            progress.step, progress.steps, progress.elapsed = done, total, time.perf_counter() - started
            callback.on_progress(progress)

        cache = APP_HOME / "cache" / "embeddings"
        x_train = cached_embeddings(model, train_set, device, cache, report)
        x_val = cached_embeddings(model, val_set, device, cache, report)
        net: nn.Module = model.head
        prepare = None
        eval_batch = 512
    else:  # grey uint8 faces, normalised per batch on the device (CLIP's 224 px val set would take GBs)
        x_train = torch.from_numpy(np.ascontiguousarray(train_set.images))
        x_val = torch.from_numpy(np.ascontiguousarray(val_set.images))
        net = model
        prepare = model.encoder.normalize
        eval_batch = max(1, min(512, EVAL_FLOATS // prepare(x_val[:1]).numel()))
    y_train = torch.from_numpy(train_set.labels.astype(np.int64))
    y_val = torch.from_numpy(val_set.labels.astype(np.int64))
    net.to(device)
    bf16 = use_bf16(cfg.precision, device)
    if not head_only:  # conv nets run faster channels-last (NHWC) in oneDNN and cuDNN
        net.to(memory_format=torch.channels_last)

    def forward(x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            return net(x).float()
    weights = class_weights(train_set.labels, cfg.balance).to(device)
    params = param_groups(model, cfg)
    if cfg.optimizer == "sgd":
        opt: torch.optim.Optimizer = torch.optim.SGD(params, lr=cfg.lr, momentum=0.9, nesterov=True,
                                                     weight_decay=cfg.weight_decay)
    else:
        opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    aug_cfg = AugmentConfig()

    steps_per_epoch = math.ceil(len(y_train) / cfg.batch_size)
    total_steps = steps_per_epoch * cfg.epochs
    ckpt, best_path = workdir / "checkpoint.safetensors", workdir / "best.safetensors"
    start_epoch, best_acc, best_epoch, stale = 1, -1.0, 0, 0
    if resume and ckpt.is_file():
        meta = _load_checkpoint(ckpt, net, opt, gen)
        if meta.get("config") != json.loads(json.dumps(asdict(cfg))):
            raise TrainingError(f"{ckpt}: the checkpoint was made with other settings; start a new run "
                                f"(another work folder) or resume with the same settings")
        start_epoch, best_acc, best_epoch, stale = meta["epoch"] + 1, meta["best_acc"], meta["best_epoch"], meta["stale"]
        history = [EpochStats(**h) for h in meta["history"]]
        started -= meta.get("seconds", 0.0)

    stopped = False
    progress = Progress("train", start_epoch, cfg.epochs, 0, steps_per_epoch, history=history)
    for epoch in range(start_epoch, cfg.epochs + 1):
        t0 = time.perf_counter()
        torch.manual_seed(cfg.seed * 100_003 + epoch)  # dropout draws: reproducible per epoch, so resumes match
        net.train()
        loss_sum, correct, seen = 0.0, 0, 0
        for b, idx in enumerate(_batches(len(y_train), cfg.batch_size, gen, shuffle=True)):
            if callback.should_stop():
                stopped = True
                break
            step = (epoch - 1) * steps_per_epoch + b
            lr = lr_at(cfg, step, total_steps)
            for group in opt.param_groups:
                group["lr"] = lr * group.get("lr_scale", 1.0)
            yb = y_train[idx].to(device)
            if head_only:
                xb = x_train[idx].to(device)
            else:
                xb = model.encoder.normalize(x_train[idx].to(device))
                if cfg.augment:
                    xb = augment(xb, aug_cfg, gen)
            logits = forward(xb)
            loss = F.cross_entropy(logits, yb, weight=weights, label_smoothing=cfg.label_smoothing)
            if not torch.isfinite(loss):
                raise TrainingError(f"training diverged at epoch {epoch}, batch {b + 1} (loss {loss.item()}); "
                                    f"try a lower learning rate. The last checkpoint ({ckpt}) and saved models "
                                    f"are intact.")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss_sum += loss.item() * len(yb)
            correct += int((logits.argmax(1) == yb).sum())
            seen += len(yb)
            progress.epoch, progress.step, progress.loss, progress.lr = epoch, b + 1, loss.item(), lr
            progress.elapsed = time.perf_counter() - started
            callback.on_progress(progress)
        if stopped and seen == 0:
            break
        net.eval()
        val_loss, val_pred = _evaluate_logits(forward, x_val, y_val, device, cfg.tta_flip and not head_only,
                                              eval_batch, prepare)
        rep = classification_report(y_val.numpy(), val_pred)
        improved = rep["accuracy"] > best_acc
        if improved:
            best_acc, best_epoch, stale = rep["accuracy"], epoch, 0
            tmp = best_path.with_suffix(".tmp")
            save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, str(tmp))
            os.replace(tmp, best_path)
        else:
            stale += 1
        stats = EpochStats(epoch, cfg.epochs, loss_sum / max(1, seen), correct / max(1, seen), val_loss,
                           rep["accuracy"], rep["macro_f1"], progress.lr, time.perf_counter() - t0, improved)
        history.append(stats)
        if not stopped:
            _save_checkpoint(ckpt, net, opt, {
                "config": json.loads(json.dumps(asdict(cfg))), "epoch": epoch, "best_acc": best_acc,
                "best_epoch": best_epoch, "stale": stale, "history": [asdict(h) for h in history],
                "seconds": time.perf_counter() - started}, gen)
        callback.on_epoch(stats, progress)
        if stopped or (cfg.patience and stale >= cfg.patience):
            stopped = True
            break

    if not best_path.is_file():
        raise TrainingError("no epoch finished; nothing to save (the previous model is intact)")
    model.load_state_dict(load_file(str(best_path)))
    model.to(memory_format=torch.contiguous_format)
    model.eval()  # the final report is in fp32, as the model will run
    _, val_pred = _evaluate_logits(net, x_val, y_val, device, cfg.tta_flip and not head_only, eval_batch, prepare)
    report = classification_report(y_val.numpy(), val_pred)
    model.to("cpu")
    seconds = time.perf_counter() - started
    model.meta.update({
        "training": {"config": json.loads(json.dumps(asdict(cfg))), "data": {
            "train": {"source": train_set.source, "n": len(train_set), "counts": train_set.class_counts()},
            "val": {"source": val_set.source, "n": len(val_set), "counts": val_set.class_counts()}},
            "epochs_run": len(history), "best_epoch": best_epoch, "seconds": round(seconds, 1),
            "device": device_name(device), "precision": "bf16 autocast" if bf16 else "fp32",
            "history": [asdict(h) for h in history], **(extra_meta or {})},
        "metrics": {"val": report},
    })
    result = TrainResult(model, history, report, None, stopped, seconds, device_name(device))
    if name:
        result.saved_to = save_model(model, name, models_dir=models_dir, overwrite=overwrite,
                                     card=card(result) if card else None,
                                     extra_files={"confusion.png": confusion_png(report["confusion"])})
    return result
