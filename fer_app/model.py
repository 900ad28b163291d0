"""The classifier (encoder + head), and saving/loading models as safetensors + JSON config.

A model folder `models/<name>/` holds:
- `model.safetensors`: the head's weights (`head.*`) and, for encoders this project trains
  (compact, fully fine-tuned CLIP), the encoder's too (`encoder.*`). A CLIP model with a head on
  frozen embeddings does not copy CLIP's weights: they stay in their folder / the HF cache (which
  also gives a fine-tuned CLIP its architecture and preprocessing settings).
- `config.json`: encoder and head configs, classes, preprocessing, training data, metrics.
- `README.md`: the model card.
Weights are read with safetensors only: nothing a user hands in is ever unpickled.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from fer_app.config import CLASSES, DEFAULT_MODEL, MODELS_DIR
from fer_app.encoders.base import Encoder
from fer_app.encoders.compact import CompactEncoder
from fer_app.heads import Head

CONFIG_FILE, WEIGHTS_FILE, CARD_FILE = "config.json", "model.safetensors", "README.md"
FORMAT = "fer-app-model/1"
#: The pseudo-model name for CLIP's zero-shot classifier (built from text prompts, not saved).
CLIP_ZERO_SHOT = "clip-vit-b32-zero-shot"


class ModelError(ValueError):
    """A model that cannot be found or loaded; the message names the file and what is wrong."""


def zoom(pixels: torch.Tensor, factor: float) -> torch.Tensor:
    """Centre-zoomed copies of a (N, C, H, W) batch: the content at `factor` of its size (below 1:
    zoomed out, the border pixels repeated; above 1: zoomed in), same shape."""
    n = len(pixels)
    theta = torch.tensor([[1.0 / factor, 0.0, 0.0], [0.0, 1.0 / factor, 0.0]], dtype=pixels.dtype)
    grid = F.affine_grid(theta.expand(n, 2, 3), list(pixels.shape), align_corners=False)
    return F.grid_sample(pixels, grid, mode="bilinear", padding_mode="border", align_corners=False)


class Classifier(nn.Module):
    """Face crops in, (N, num_classes) probabilities out; all crops go through in one batch.

    Test-time augmentation (TTA) averages the probabilities over views of each face: the face
    itself, zoomed copies (`tta_zooms`, chosen on val by `fer_app.tta`) and, with `tta_flip`, the
    mirror image of each of those.
    """

    def __init__(self, encoder: Encoder, head: Head, *, name: str = "", classes: Sequence[str] = CLASSES,
                 tta_flip: bool = False, tta_zooms: Sequence[float] = (), meta: dict | None = None) -> None:
        super().__init__()
        self.encoder, self.head = encoder, head
        self.name, self.classes, self.tta_flip = name, tuple(classes), tta_flip
        self.tta_zooms = tuple(float(z) for z in tta_zooms)
        self.meta = meta or {}

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(pixels))

    @property
    def tta_views(self) -> int:
        """Views per face under the model's own TTA (1: none)."""
        return (1 + len(self.tta_zooms)) * (2 if self.tta_flip else 1)

    @torch.inference_mode()
    def predict_pixels(self, pixels: torch.Tensor, *, tta: bool | None = None) -> torch.Tensor:
        """Probabilities for preprocessed pixels. tta None: the model's own views (`tta_views`);
        False: the face alone; True: the model's views, or the mirror image for a model without any.
        All views of all faces go through the encoder in one batch."""
        own = self.tta_views > 1
        if not (own if tta is None else tta):
            return torch.softmax(self(pixels), dim=1)
        views = [pixels] + [zoom(pixels, z) for z in self.tta_zooms]
        if self.tta_flip or not own:
            views += [v.flip(-1) for v in views]
        probs = torch.softmax(self(torch.cat(views)), dim=1)
        return probs.view(len(views), len(pixels), -1).mean(0)

    def predict_proba(self, crops: Sequence[np.ndarray], *, tta: bool | None = None) -> np.ndarray:
        """(N, num_classes) float32 probabilities for N face crops (grey or BGR uint8).

        tta: test-time augmentation (None: the model's own; see `predict_pixels`)."""
        if len(crops) == 0:
            return np.zeros((0, len(self.classes)), np.float32)
        if self.training:
            self.eval()
        return self.predict_pixels(self.encoder.preprocess(crops), tta=tta).numpy().astype(np.float32)

    def config(self) -> dict:
        return {"format": FORMAT, "name": self.name, "classes": list(self.classes),
                "encoder": self.encoder.config(), "head": self.head.config(), "tta_flip": self.tta_flip,
                "tta_zooms": list(self.tta_zooms), **self.meta}


@dataclass(frozen=True)
class ModelInfo:
    """A model the user can pick: its name, folder (None for the zero-shot pseudo-model) and summary."""

    name: str
    path: Path | None
    encoder: str
    val_accuracy: float | None = None
    description: str = ""


def _zooms(cfg: dict, folder: Path) -> tuple[float, ...]:
    zooms = cfg.get("tta_zooms", [])
    if not isinstance(zooms, list) or not all(isinstance(z, (int, float)) and 0.5 <= z <= 2.0 for z in zooms):
        raise ModelError(f"{folder / CONFIG_FILE}: tta_zooms must be a list of numbers in [0.5, 2], got {zooms!r}")
    return tuple(float(z) for z in zooms)


def model_dir(name_or_path: str | Path, models_dir: Path | None = None) -> Path:
    """The folder of a model given by name (under models_dir) or by path."""
    p = Path(name_or_path)
    if p.is_dir():
        return p
    return (models_dir or MODELS_DIR) / str(name_or_path)


def read_config(folder: Path) -> dict:
    path = folder / CONFIG_FILE
    try:
        cfg = json.loads(path.read_text())
    except FileNotFoundError:
        raise ModelError(f"{path}: missing; not a fer-app model folder") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelError(f"{path}: not valid JSON ({exc})") from None
    for key in ("encoder", "head", "classes"):
        if key not in cfg:
            raise ModelError(f"{path}: no {key!r} entry; not a fer-app model config")
    return cfg


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a safetensors file, or a ModelError that names the file."""
    if not path.is_file():
        raise ModelError(f"{path}: missing")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise ModelError(f"{path}: not a valid safetensors file ({exc})") from None


def load_state(module: nn.Module, tensors: dict[str, torch.Tensor], path: Path) -> None:
    """Load tensors into module, naming the file and the mismatch instead of a torch traceback."""
    expected = module.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    wrong = [f"{k} {tuple(tensors[k].shape)} != {tuple(v.shape)}" for k, v in expected.items()
             if k in tensors and tensors[k].shape != v.shape]
    problems = []
    if missing:
        problems.append(f"missing {len(missing)} tensors (e.g. {missing[0]})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected tensors (e.g. {unexpected[0]})")
    if wrong:
        problems.append(f"wrong shapes: {'; '.join(wrong[:3])}")
    if problems:
        raise ModelError(f"{path}: weights do not match the model config: {', '.join(problems)}")
    module.load_state_dict(tensors)


def owns_encoder_weights(encoder_cfg: dict) -> bool:
    """Whether a model's own weights file holds its encoder's weights: compact, or a fine-tuned CLIP."""
    return encoder_cfg.get("type") == CompactEncoder.encoder_id or bool(encoder_cfg.get("fine_tuned", False))


def build_encoder(cfg: dict, *, clip_source: str | Path | None = None, allow_download: bool = False,
                  runtime: str = "torch", threads: int | None = None) -> Encoder:
    """An encoder from its config entry (CLIP weights are loaded from their own source).

    runtime: "torch" (default: a trainable torch module), "auto" or a name of `fer_app.runtimes.RUNTIMES`
    to run it in (see `fer_app.runtimes.select_runtime`; `auto` checks it with a random head here).
    """
    kind = cfg.get("type")
    if kind == CompactEncoder.encoder_id:
        encoder: Encoder = CompactEncoder.from_config(cfg)
    elif kind == "clip-vit-b32":
        from fer_app.encoders.clip import load_clip_encoder

        encoder = load_clip_encoder(clip_source or cfg.get("source"), allow_download=allow_download)
        encoder.fine_tuned = bool(cfg.get("fine_tuned", False))
    else:
        raise ModelError(f"unknown encoder type {kind!r}")
    return encoder if runtime == "torch" else _in_runtime(encoder, runtime, threads)


def _in_runtime(encoder: Encoder, runtime: str, threads: int | None, head: nn.Module | None = None) -> Encoder:
    from fer_app.runtimes import select_runtime

    return select_runtime(encoder, runtime, threads=threads, head=head)


def load_model(name_or_path: str | Path = DEFAULT_MODEL, *, models_dir: Path | None = None,
               clip_source: str | Path | None = None, allow_download: bool = False, runtime: str = "auto",
               threads: int | None = None) -> Classifier:
    """Load a saved model by name or folder; `clip-vit-b32-zero-shot` builds CLIP's zero-shot classifier.

    runtime: where the encoder runs (`fer_app.runtimes`). "auto", the default, picks the fastest CPU
    runtime that passes the accuracy check with this model's head for CLIP, and torch for the compact
    encoder; "torch" gives the plain (trainable) torch encoder. threads: None for the default count.
    """
    if str(name_or_path) == CLIP_ZERO_SHOT:
        model = clip_zero_shot(clip_source, allow_download=allow_download)
        return _with_runtime(model, runtime, threads)
    folder = model_dir(name_or_path, models_dir)
    if not folder.is_dir():
        names = ", ".join(m.name for m in list_models(models_dir)) or "none"
        raise ModelError(f"no model {str(name_or_path)!r} (looked in {folder}); available: {names}")
    cfg = read_config(folder)
    weights_path = folder / WEIGHTS_FILE
    tensors = read_weights(weights_path)
    encoder = build_encoder(cfg["encoder"], clip_source=clip_source, allow_download=allow_download)
    head = Head.from_config(cfg["head"])
    meta = {k: v for k, v in cfg.items() if k not in ("format", "name", "classes", "encoder", "head", "tta_flip",
                                                 "tta_zooms")}
    model = Classifier(encoder, head, name=cfg.get("name", folder.name), classes=cfg["classes"],
                       tta_flip=bool(cfg.get("tta_flip", False)), tta_zooms=_zooms(cfg, folder), meta=meta)
    if owns_encoder_weights(cfg["encoder"]) or any(k.startswith("encoder.") for k in tensors):
        load_state(model, tensors, weights_path)
    else:
        load_state(model.head, {k.removeprefix("head."): v for k, v in tensors.items()}, weights_path)
    return _shipped_int8(model.eval(), folder, cfg, runtime, threads) or _with_runtime(model, runtime, threads)


def _shipped_int8(model: Classifier, folder: Path, cfg: dict, runtime: str, threads: int | None) -> Classifier | None:
    """The model with the static-int8 encoder shipped in its folder (`fer_app.quantize`) when `runtime`
    is "onnx-int8-static", or "auto" and the file is there, matches the weights and can run here."""
    from fer_app import quantize, runtimes

    if runtime == "auto" and os.environ.get(runtimes.ENV_RUNTIME, "auto").strip() not in ("", "auto"):
        return None  # a runtime pinned for this machine
    if runtime not in ("auto", quantize.ONNX_INT8_STATIC) or (runtime == "auto" and quantize.CONFIG_KEY not in cfg):
        return None
    try:
        return quantize.load_quantized(model, folder, cfg, threads)
    except quantize.QuantizeError as exc:
        if runtime == quantize.ONNX_INT8_STATIC:
            raise ModelError(str(exc)) from None
        runtimes.log(f"{exc}; running the model in torch")
        return None


def _with_runtime(model: Classifier, runtime: str, threads: int | None) -> Classifier:
    """`model` with its encoder in `runtime` (checked against the model's own head under "auto")."""
    if runtime != "torch":
        model.encoder = _in_runtime(model.encoder, runtime, threads, head=model.head)
    return model


def clip_zero_shot(clip_source: str | Path | None = None, *, allow_download: bool = False) -> Classifier:
    """CLIP ViT-B/32 with a head built from text prompts: works before any training."""
    from fer_app.encoders.clip import load_clip_encoder, zero_shot_weights
    from fer_app.heads import zero_shot_head

    encoder = load_clip_encoder(clip_source, allow_download=allow_download)
    head = zero_shot_head(zero_shot_weights(clip_source, CLASSES, allow_download=allow_download))
    return Classifier(encoder, head, name=CLIP_ZERO_SHOT, meta={"description": "CLIP zero-shot (text prompts)"}).eval()


def save_model(model: Classifier, name: str, *, models_dir: Path | None = None, overwrite: bool = False,
               card: str | None = None, extra_files: dict[str, bytes] | None = None) -> Path:
    """Write models/<name>/ atomically: a failure midway leaves any existing model untouched."""
    root = models_dir or MODELS_DIR
    root.mkdir(parents=True, exist_ok=True)
    target = root / name
    if target.exists() and not overwrite:
        raise ModelError(f"{target} exists; choose another name or pass overwrite=True")
    state = model.state_dict() if owns_encoder_weights(model.encoder.config()) else \
        {f"head.{k}": v for k, v in model.head.state_dict().items()}
    cfg = model.config()
    cfg["name"] = name
    cfg.setdefault("created", datetime.now(timezone.utc).isoformat(timespec="seconds"))
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=root))
    try:
        save_file({k: v.detach().contiguous().cpu() for k, v in state.items()}, str(tmp / WEIGHTS_FILE))
        (tmp / CONFIG_FILE).write_text(json.dumps(cfg, indent=2) + "\n")
        if card is not None:
            (tmp / CARD_FILE).write_text(card)
        for fname, data in (extra_files or {}).items():
            (tmp / fname).write_bytes(data)
        old = None
        if target.exists():
            old = root / f".{name}.old-{os.getpid()}"
            os.replace(target, old)
        os.replace(tmp, target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def list_models(models_dir: Path | None = None, *, include_zero_shot: bool = True) -> list[ModelInfo]:
    """Saved models (folders with a config.json), the default first; plus CLIP zero-shot when its weights are here."""
    root = models_dir or MODELS_DIR
    out: list[ModelInfo] = []
    for folder in sorted(root.glob("*/" + CONFIG_FILE)) if root.is_dir() else []:
        folder = folder.parent
        if folder.name.startswith("."):
            continue
        try:
            cfg = read_config(folder)
        except ModelError:
            continue
        acc = cfg.get("metrics", {}).get("val", {}).get("accuracy")
        out.append(ModelInfo(folder.name, folder, cfg["encoder"].get("type", "?"), acc, cfg.get("description", "")))
    out.sort(key=lambda m: (m.name != DEFAULT_MODEL, m.name))
    if include_zero_shot:
        try:
            from fer_app.encoders.clip import has_text_tower, resolve_clip_source

            if has_text_tower(resolve_clip_source()):
                out.append(ModelInfo(CLIP_ZERO_SHOT, None, "clip-vit-b32", None, "CLIP zero-shot (text prompts)"))
        except Exception:  # noqa: BLE001 - no CLIP weights (or no transformers): simply not listed
            pass
    return out
