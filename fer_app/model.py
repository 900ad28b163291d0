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

import contextlib
import glob
import hashlib
import json
import logging
import math
import os
import re
import secrets
import shutil
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from fer_app import runtimes
from fer_app.config import CLASSES, DEFAULT_MODEL, MODELS_DIR, STILLS_MODEL
from fer_app.encoders.base import Encoder
from fer_app.encoders.compact import INPUT_SIZE, CompactEncoder
from fer_app.encoders.ensemble import SHARED_KEYS, EnsembleEncoder
from fer_app.heads import Head

CONFIG_FILE, WEIGHTS_FILE, CARD_FILE = "config.json", "model.safetensors", "README.md"
FORMAT = "fer-app-model/1"
#: The pseudo-model name for CLIP's zero-shot classifier (built from text prompts, not saved).
CLIP_ZERO_SHOT = "clip-vit-b32-zero-shot"
#: The config entry with the sha256 of model.safetensors: recorded by `save_model`, checked on load.
DIGEST_KEY = "weights_sha256"
ENCODER_TYPES = (CompactEncoder.encoder_id, "clip-vit-b32", EnsembleEncoder.encoder_id)
HEAD_TYPES = ("linear", "mlp", "zero-shot", "personal")
_log = logging.getLogger(__name__)


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

    threads: the inference threads it was loaded for. Each prediction first sets torch's count for the
    calling thread (`fer_app.runtimes.torch_threads`): these threads when torch runs the encoder, one around
    an encoder in another runtime; None leaves torch's count to the caller for a torch encoder.
    """

    def __init__(self, encoder: Encoder, head: Head, *, name: str = "", classes: Sequence[str] = CLASSES,
                 tta_flip: bool = False, tta_zooms: Sequence[float] = (), meta: dict | None = None,
                 threads: int | None = None) -> None:
        super().__init__()
        self.encoder, self.head = encoder, head
        self.name, self.classes, self.tta_flip = name, tuple(classes), tta_flip
        self.tta_zooms = tuple(float(z) for z in tta_zooms)
        self.meta = meta or {}
        self.threads = threads

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(pixels))

    @property
    def tta_views(self) -> int:
        """Views per face under the model's own TTA (1: none)."""
        return (1 + len(self.tta_zooms)) * (2 if self.tta_flip else 1)

    def views(self, tta: bool | None = None) -> int:
        """Views per face for `tta` (None: the model's own; False: the face alone; True: the model's
        views, or the face and its mirror image for a model without any)."""
        own = self.tta_views > 1
        if not (own if tta is None else tta):
            return 1
        return self.tta_views if own else 2

    def view(self, pixels: torch.Tensor, index: int) -> torch.Tensor:
        """View `index` of preprocessed pixels: 0 the face, then each of `tta_zooms`, then the mirror
        image of each of those (the order `predict_pixels` averages them in)."""
        per_side = 1 + len(self.tta_zooms)
        base = index % per_side
        out = pixels if base == 0 else zoom(pixels, self.tta_zooms[base - 1])
        return out.flip(-1) if index >= per_side else out

    def use_threads(self) -> None:
        """Set torch's thread count for the calling thread to this model's (see the class); every prediction
        does this first."""
        count = runtimes.torch_threads(self.encoder, self.threads)
        if count is not None:
            runtimes.use_torch_threads(count)

    @torch.inference_mode()
    def predict_pixels(self, pixels: torch.Tensor, *, tta: bool | None = None) -> torch.Tensor:
        """Probabilities for preprocessed pixels, averaged over the `views(tta)` views of each face.
        All views of all faces go through the encoder in one batch."""
        self.use_threads()
        return self._averaged(pixels, tta)

    def _averaged(self, pixels: torch.Tensor, tta: bool | None) -> torch.Tensor:
        """`predict_pixels` once torch's thread count is set."""
        count = self.views(tta)
        if count == 1:
            return self._probabilities(self(pixels))
        probs = self._probabilities(self(torch.cat([self.view(pixels, i) for i in range(count)])))
        return probs.view(count, len(pixels), -1).mean(0)

    @staticmethod
    def _probabilities(logits: torch.Tensor) -> torch.Tensor:
        return torch.softmax(logits, dim=1)

    @torch.inference_mode()
    def predict_views(self, crops: Sequence[np.ndarray], views: Sequence[int]) -> np.ndarray:
        """(N, num_classes) probabilities of each crop under one view (`view`; `views[i]` for crop i),
        all in one batch: what video classifies per frame, spreading a face's views over frames."""
        if len(crops) != len(views):
            raise ValueError(f"{len(crops)} crops but {len(views)} views")
        if len(crops) == 0:
            return np.zeros((0, len(self.classes)), np.float32)
        if self.training:
            self.eval()
        self.use_threads()
        pixels = self.encoder.preprocess(crops)
        order, parts = [], []
        for index in sorted(set(views)):
            rows = [i for i, v in enumerate(views) if v == index]
            order += rows
            parts.append(self.view(pixels[rows], index))
        probs = self._probabilities(self(torch.cat(parts)))
        out = torch.empty_like(probs)
        out[order] = probs
        return self._checked(out.numpy().astype(np.float32))

    def predict_proba(self, crops: Sequence[np.ndarray], *, tta: bool | None = None) -> np.ndarray:
        """(N, num_classes) float32 probabilities for N face crops (grey or BGR uint8).

        tta: test-time augmentation (None: the model's own; see `predict_pixels`)."""
        if len(crops) == 0:
            return np.zeros((0, len(self.classes)), np.float32)
        if self.training:
            self.eval()
        self.use_threads()  # before the preprocessing, which runs in torch too
        pixels = self.encoder.preprocess(crops)
        with torch.inference_mode():
            probs = self._averaged(pixels, tta)
        return self._checked(probs.numpy().astype(np.float32))

    def _checked(self, probs: np.ndarray) -> np.ndarray:
        if not np.isfinite(probs).all():  # never hand on NaN: damaged weights that escaped the digest check
            raise ModelError(f"model {self.name!r} gave non-finite probabilities (NaN or infinity): "
                             "its weights are damaged")
        return probs

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
    #: Why the model cannot be used (a damaged or malformed folder; the message names the file); None: usable.
    problem: str | None = None

    @property
    def usable(self) -> bool:
        return self.problem is None


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


def write_config(folder: Path, cfg: dict) -> None:
    """Replace a model folder's config.json atomically (a reader sees the old file or the new, never half)."""
    tmp = Path(folder) / (CONFIG_FILE + ".tmp")
    tmp.write_text(json.dumps(cfg, indent=2) + "\n")
    os.replace(tmp, Path(folder) / CONFIG_FILE)


def read_config(folder: Path) -> dict:
    path = folder / CONFIG_FILE
    try:
        cfg = json.loads(path.read_text())
    except FileNotFoundError:
        raise ModelError(f"{path}: missing; not a fer-app model folder") from None
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError, absurd nesting or numbers
        raise ModelError(f"{path}: not valid JSON ({type(exc).__name__}: {exc})") from None
    except OSError as exc:
        raise ModelError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    validate_config(cfg, path)
    return cfg


def _short(value: object, limit: int = 60) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= limit else text[:limit] + "..."


def _is_int(value: object, low: int = 1) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= low


def _is_number(value: object, low: float = -math.inf, high: float = math.inf) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) \
        and low <= value <= high


def _check_compact(enc: dict, bad: Callable[[str], ModelError]) -> None:
    """Check a compact encoder's config entry (`bad(what)` makes the ModelError)."""
    widths = enc.get("widths", [32, 64, 128, 256])
    if not (isinstance(widths, list) and widths and len(widths) <= 8 and all(_is_int(w) and w <= 4096
                                                                              for w in widths)):
        raise bad(f"encoder 'widths' must be a list of 1 to 8 channel counts (1-4096), got {_short(widths)}")
    convs = enc.get("convs_per_stage", 2)
    if not ((_is_int(convs) and convs <= 16) or (isinstance(convs, list) and len(convs) == len(widths)
                                                  and all(_is_int(n) and n <= 16 for n in convs))):
        raise bad(f"encoder 'convs_per_stage' must be 1-16 or a list of those, one per width, got {_short(convs)}")
    for key, low, high, default in (("dropout", 0.0, 0.99, 0.3), ("mean", 0.0, 1.0, 0.5), ("std", 1e-6, 1.0, 0.25)):
        if not _is_number(enc.get(key, default), low, high):
            raise bad(f"encoder {key!r} must be a number in [{low:g}, {high:g}], got {_short(enc[key])}")
    if enc.get("input_size", INPUT_SIZE) != INPUT_SIZE:
        raise bad(f"encoder 'input_size' must be {INPUT_SIZE}, got {_short(enc['input_size'])}")


def validate_config(cfg: object, path: Path) -> None:
    """Check a model config completely (types and sizes of every entry load_model uses), so that a
    malformed one is a ModelError naming `path`, never a traceback at load or prediction time."""
    def bad(what: str) -> ModelError:
        return ModelError(f"{path}: {what}")

    if not isinstance(cfg, dict):
        raise bad(f"not a JSON object but {_short(cfg)}; not a fer-app model config")
    for key in ("encoder", "head", "classes"):
        if key not in cfg:
            raise bad(f"no {key!r} entry; not a fer-app model config")
    if cfg.get("format", FORMAT) != FORMAT:
        raise bad(f"format {_short(cfg['format'])}, this version reads {FORMAT!r}")
    classes = cfg["classes"]
    if not (isinstance(classes, list) and len(classes) >= 2 and all(isinstance(c, str) and c for c in classes)
            and len(set(classes)) == len(classes)):
        raise bad(f"'classes' must be a list of at least 2 distinct names, got {_short(classes)}")
    enc = cfg["encoder"]
    if not isinstance(enc, dict):
        raise bad(f"'encoder' must be an object with a 'type' ({', '.join(ENCODER_TYPES)}), got {_short(enc)}")
    kind = enc.get("type")
    if kind == CompactEncoder.encoder_id:
        _check_compact(enc, bad)
    elif kind == EnsembleEncoder.encoder_id:
        members = enc.get("members")
        if not (isinstance(members, list) and 2 <= len(members) <= 16 and all(isinstance(m, dict) for m in members)):
            raise bad(f"ensemble encoder 'members' must be a list of 2 to 16 encoder configs, got {_short(members)}")
        for m in members:
            if m.get("type") != CompactEncoder.encoder_id:
                raise bad(f"ensemble members must be compact encoders, got {_short(m.get('type'))}")
            _check_compact(m, bad)
            if any(m.get(k) != members[0].get(k) for k in SHARED_KEYS):
                raise bad(f"ensemble members must share {', '.join(SHARED_KEYS)}, got {_short(m)}")
    elif kind == "clip-vit-b32":
        if not isinstance(enc.get("source"), (str, type(None))):
            raise bad(f"encoder 'source' must be a folder or hub id, got {_short(enc['source'])}")
        if not isinstance(enc.get("fine_tuned", False), bool):
            raise bad(f"encoder 'fine_tuned' must be true or false, got {_short(enc['fine_tuned'])}")
    else:
        raise bad(f"unknown encoder type {_short(kind)} (known: {', '.join(ENCODER_TYPES)})")
    head = cfg["head"]
    if not isinstance(head, dict):
        raise bad(f"'head' must be an object with a 'type' ({', '.join(HEAD_TYPES)}), got {_short(head)}")
    if head.get("type", "linear") not in HEAD_TYPES:
        raise bad(f"unknown head type {_short(head['type'])} (known: {', '.join(HEAD_TYPES)})")
    for key in ("in_dim", "num_classes"):
        if not _is_int(head.get(key)) or head[key] > 1 << 20:
            raise bad(f"head {key!r} must be a positive whole number, got {_short(head.get(key))}")
    if not (_is_int(head.get("hidden", 256)) and head.get("hidden", 256) <= 1 << 16):
        raise bad(f"head 'hidden' must be a positive whole number, got {_short(head['hidden'])}")
    if not _is_number(head.get("dropout", 0.0), 0.0, 0.99):
        raise bad(f"head 'dropout' must be a number in [0, 0.99], got {_short(head['dropout'])}")
    if head["num_classes"] != len(classes):  # (a head that does not fit the encoder: see load_state)
        raise bad(f"{len(classes)} classes for a head with {head['num_classes']} outputs")
    if not isinstance(cfg.get("tta_flip", False), bool):
        raise bad(f"'tta_flip' must be true or false, got {_short(cfg['tta_flip'])}")
    _zooms(cfg, path.parent)
    digest = cfg.get(DIGEST_KEY)
    if digest is not None and not (isinstance(digest, str) and len(digest) == 64
                                   and all(c in "0123456789abcdef" for c in digest)):
        raise bad(f"{DIGEST_KEY!r} must be a sha256 in hex, got {_short(digest)}")
    for key in ("name", "description"):
        if not isinstance(cfg.get(key, ""), str):
            raise bad(f"{key!r} must be a string, got {_short(cfg[key])}")
    metrics = cfg.get("metrics", {})
    val = metrics.get("val", {}) if isinstance(metrics, dict) else None
    if not isinstance(val, dict) or not (val.get("accuracy") is None or _is_number(val["accuracy"], 0.0, 1.0)):
        raise bad(f"'metrics' must be an object with val.accuracy in [0, 1], got {_short(metrics)}")


_DIGESTS: dict[tuple, str] = {}
_DIGESTS_LOCK = threading.Lock()


def file_sha256(path: Path, *, fresh: bool = False) -> str:
    """The sha256 of a file, hashed once per process and version of the file (device and inode, size, mtime and
    ctime: a rename of its folder keeps it, any write or touch changes it). fresh: hash it in any case (a file
    just written: its inode and coarse timestamps may repeat those of a file just deleted)."""
    st = path.stat()
    key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    with _DIGESTS_LOCK:
        if key in _DIGESTS and not fresh:
            return _DIGESTS[key]
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    with _DIGESTS_LOCK:
        _DIGESTS[key] = h.hexdigest()
    return _DIGESTS[key]


def check_weights(path: Path, cfg: dict) -> None:
    """A ModelError naming `path` when the weights file differs from the sha256 its config recorded at save
    time (a damaged or replaced file: safetensors checks the header, not the tensor data). Models saved before
    digests were recorded have none and are not checked."""
    expected = cfg.get(DIGEST_KEY)
    if expected is None:
        return
    if not path.is_file():
        raise ModelError(f"{path}: missing")
    try:
        actual = file_sha256(path)
    except OSError as exc:
        raise ModelError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    if actual != expected:
        raise ModelError(f"{path}: damaged or changed since it was saved (its sha256 is {actual[:12]}..., "
                         f"{CONFIG_FILE} records {expected[:12]}...); save or copy the model again")


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
    """Whether a model's own weights file holds its encoder's weights: compact (or an ensemble of those), or a
    fine-tuned CLIP."""
    return encoder_cfg.get("type") in (CompactEncoder.encoder_id, EnsembleEncoder.encoder_id) \
        or bool(encoder_cfg.get("fine_tuned", False))


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
    elif kind == EnsembleEncoder.encoder_id:
        encoder = EnsembleEncoder.from_config(cfg)
    else:
        raise ModelError(f"unknown encoder type {kind!r}")
    return encoder if runtime == "torch" else _in_runtime(encoder, runtime, threads)


def _in_runtime(encoder: Encoder, runtime: str, threads: int | None, head: nn.Module | None = None,
                folder: Path | None = None, cfg: dict | None = None) -> Encoder:
    """`encoder` in `runtime` through `fer_app.runtimes.select_runtime`, with the model folder's shipped
    files (an int8 encoder made from these weights, the reference batch) when there is a folder."""
    shipped, reference = runtime_files(folder, cfg)
    if runtime in runtimes.SHIPPED_RUNTIMES and runtime not in shipped:
        raise ModelError(f"{folder}: {shipped_problem(folder, cfg or {}) or 'no file for ' + runtime}")
    try:
        return runtimes.select_runtime(encoder, runtime, threads=threads, head=head, shipped=shipped,
                                       reference=reference)
    except runtimes.RuntimeUnavailable as exc:
        raise ModelError(str(exc)) from None


def runtime_files(folder: Path | None, cfg: dict | None):
    """What a model folder gives the runtime selection: its shipped runtime files (`shipped_runtimes`)
    and its reference batch (`fer_app.runtimes.read_reference`; None when it has none or it is damaged,
    said in one log line)."""
    if folder is None or cfg is None:
        return {}, None
    try:
        reference = runtimes.read_reference(folder)
    except runtimes.RuntimeUnavailable as exc:
        runtimes.log(f"{exc}; checking runtimes on the default crops")
        reference = None
    return shipped_runtimes(folder, cfg), reference


#: The static-int8 encoder a compact model may ship (`fer_app.quantize` writes it; its config entry
#: `quantized` records the sha256 of the weights it was made from).
QUANTIZED_FILE, QUANTIZED_KEY = "encoder.int8.onnx", "quantized"


def shipped_problem(folder: Path | None, cfg: dict) -> str | None:
    """Why a model folder's int8 encoder can't be offered (None: it can)."""
    entry = cfg.get(QUANTIZED_KEY)
    if folder is None or not isinstance(entry, dict) or not (folder / QUANTIZED_FILE).is_file():
        return (f"no {QUANTIZED_FILE} (make one with: python -m fer_app quantize "
                f"{folder.name if folder else 'MODEL'} DATA)")
    if entry.get("weights_sha256") != file_sha256(folder / WEIGHTS_FILE) and (  # same weights, or same encoder
            ENCODER_DIGEST not in entry or entry[ENCODER_DIGEST] != encoder_sha256(folder / WEIGHTS_FILE)):
        return f"{QUANTIZED_FILE} was made from other weights; quantize again"
    return None


#: A `quantized` entry's record of the encoder tensors its int8 file was made from, for a model whose
#: weights file differs from the one quantized only in its head (a calibrated model: same encoder, new head).
ENCODER_DIGEST = "encoder_sha256"


def encoder_sha256(path: Path) -> str:
    """sha256 of the `encoder.*` tensors of a weights file (names, dtypes, shapes, bytes; in name order)."""
    from safetensors import safe_open

    h = hashlib.sha256()
    with safe_open(str(path), framework="pt") as f:
        for k in sorted(k for k in f.keys() if k.startswith("encoder.")):
            v = f.get_tensor(k).contiguous()
            h.update(f"{k}|{v.dtype}|{tuple(v.shape)}|".encode())
            h.update(v.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def shipped_runtimes(folder: Path, cfg: dict) -> dict[str, Path]:
    """The runtime files of a model folder that `auto` may use ({"onnx-int8-static": path}); a stale
    int8 file (made from other weights) is left out with one log line."""
    from fer_app.runtimes import ONNX_INT8_STATIC, log

    problem = shipped_problem(folder, cfg)
    if problem is None:
        return {ONNX_INT8_STATIC: folder / QUANTIZED_FILE}
    if QUANTIZED_KEY in cfg:
        log(f"{folder}: {problem}; not offering it")
    return {}


def load_model(name_or_path: str | Path = DEFAULT_MODEL, *, models_dir: Path | None = None,
               clip_source: str | Path | None = None, allow_download: bool = False, runtime: str = "auto",
               threads: int | None = None) -> Classifier:
    """Load a saved model by name or folder; `clip-vit-b32-zero-shot` builds CLIP's zero-shot classifier.

    runtime: where the encoder runs (`fer_app.runtimes`). "auto", the default, picks the fastest CPU
    runtime of the encoder's candidates (for a compact model: torch or its shipped int8 file) that passes
    the accuracy check with this model's head on this machine, on the model's shipped reference batch
    (decided once per machine, then cached); "torch" gives the plain (trainable) torch encoder.
    threads: None for the default count.
    """
    if str(name_or_path) == CLIP_ZERO_SHOT:
        model = clip_zero_shot(clip_source, allow_download=allow_download)
        return _with_runtime(model, runtime, threads)
    folder = model_dir(name_or_path, models_dir)
    recover_model(folder)
    if not folder.is_dir():
        names = ", ".join(m.name for m in list_models(models_dir)) or "none"
        raise ModelError(f"no model {str(name_or_path)!r} (looked in {folder}); available: {names}")
    cfg = read_config(folder)
    weights_path = folder / WEIGHTS_FILE
    tensors = read_weights(weights_path)
    check_weights(weights_path, cfg)
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
    return _with_runtime(model.eval(), runtime, threads, folder, cfg)


def _with_runtime(model: Classifier, runtime: str, threads: int | None, folder: Path | None = None,
                  cfg: dict | None = None) -> Classifier:
    """`model` with its encoder in `runtime` (checked against the model's own head under "auto"), predicting with
    `threads` (resolved by `fer_app.runtimes.resolve_threads`; the torch runtime keeps None: the caller's count)."""
    if runtime != "torch":
        model.encoder = _in_runtime(model.encoder, runtime, threads, model.head, folder, cfg)
        model.threads = runtimes.resolve_threads(threads)
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
    """Write models/<name>/ atomically, also under a kill: a reader sees the old model or the new one, whole.

    The files are written (and fsynced) into a temporary folder, which is renamed to `.<name>.new`
    (complete from then on); under a lock on the models folder the old model is renamed to `.<name>.old`,
    `.<name>.new` to `<name>`, and the old one is deleted. A failure midway puts the old model back; a
    kill between the renames is finished by the next `load_model`, `list_models` or `save_model`
    (`recover_model`). The weights' sha256 goes into the config (`DIGEST_KEY`), checked on every load.
    The folder gets the usual permissions (0777 less the umask: 0755 under the common 022).
    """
    root = models_dir or MODELS_DIR
    root.mkdir(parents=True, exist_ok=True)
    target = root / name
    recover_model(target)
    if target.exists() and not overwrite:
        raise ModelError(f"{target} exists; choose another name or pass overwrite=True")
    state = model.state_dict() if owns_encoder_weights(model.encoder.config()) else \
        {f"head.{k}": v for k, v in model.head.state_dict().items()}
    cfg = model.config()
    cfg["name"] = name
    cfg.setdefault("created", datetime.now(timezone.utc).isoformat(timespec="seconds"))
    tmp = root / f".{name}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
    new, old = _swap_paths(target)
    os.mkdir(tmp, 0o777)  # the umask applies, as for any new folder (tempfile.mkdtemp would give 0700)
    try:
        file_mode = tmp.stat().st_mode & 0o666  # the umask's, as the folder's (safetensors writes 0600)
        save_file({k: v.detach().contiguous().cpu() for k, v in state.items()}, str(tmp / WEIGHTS_FILE))
        os.chmod(tmp / WEIGHTS_FILE, file_mode)
        cfg[DIGEST_KEY] = file_sha256(tmp / WEIGHTS_FILE, fresh=True)
        (tmp / CONFIG_FILE).write_text(json.dumps(cfg, indent=2) + "\n")
        if card is not None:
            (tmp / CARD_FILE).write_text(card)
        for fname, data in (extra_files or {}).items():
            (tmp / fname).write_bytes(data)
        for path in tmp.iterdir():
            if path.name != WEIGHTS_FILE:  # (a chmod would change its ctime, the digest cache's key)
                os.chmod(path, file_mode)
        _fsync_folder(tmp)
        with _models_lock(root):
            if target.exists() and not overwrite:
                raise ModelError(f"{target} exists; choose another name or pass overwrite=True")
            _discard(new)  # a leftover that was never swapped in
            os.replace(tmp, new)
            if target.exists():
                _discard(old)
                os.replace(target, old)
            os.replace(new, target)
            _fsync_dir(root)
            _discard(old)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        with _models_lock(root):  # a failure (not a kill) between the renames: the old model goes back
            if not target.exists() and old.is_dir():
                os.replace(old, target)
            _discard(new)
        raise
    return target


_SWAP_LEFTOVER = re.compile(r"^\.(?P<name>.+)\.(?:new|old|old-\d+|tmp-(?P<pid>\d+)-[0-9a-f]+|trash-\d+-[0-9a-f]+)$")


def _swap_paths(target: Path) -> tuple[Path, Path]:
    """The complete new folder and the old one set aside, while `save_model` swaps them."""
    return target.with_name(f".{target.name}.new"), target.with_name(f".{target.name}.old")


def _discard(path: Path) -> None:
    """Delete a folder: first renamed away (atomic), so that a kill midway never leaves half of it under its name."""
    if not path.exists():
        return
    trash = path.with_name(f".{path.name.lstrip('.')}.trash-{os.getpid()}-{secrets.token_hex(4)}")
    try:
        os.replace(path, trash)
    except OSError:
        trash = path
    shutil.rmtree(trash, ignore_errors=True)


@contextlib.contextmanager
def _models_lock(root: Path):
    """An exclusive lock on the models folder (released by the OS when the process dies)."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock
        yield
        return
    fd = os.open(root, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _fsync_folder(folder: Path) -> None:
    for path in folder.iterdir():
        with open(path, "rb") as f:
            os.fsync(f.fileno())
    _fsync_dir(folder)


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def recover_model(folder: Path) -> str | None:
    """Finish or roll back a `save_model` of `folder` that was killed midway; what was done, or None.

    No `<name>` but a complete `.<name>.new`: renamed into place (the save is finished). No `<name>` and no
    `.new` but `.<name>.old`: renamed back (rolled back). With `<name>` in place, leftovers are deleted:
    `.old` (the swap was done), `.new` (it never started: the old model stays), and the temporary folders
    of saves whose process is gone.
    """
    folder = Path(folder)
    root, name = folder.parent, folder.name
    new, old = _swap_paths(folder)
    leftovers = [new, old, *root.glob(f".{glob.escape(name)}.old-*")]
    if not any(p.exists() for p in leftovers) or not root.is_dir():
        return None
    done = None
    try:
        with _models_lock(root):
            if not folder.exists():
                if new.is_dir():
                    os.replace(new, folder)
                    done = f"{folder}: finished an interrupted save (from {new.name})"
                else:
                    older = [p for p in (old, *sorted(root.glob(f".{glob.escape(name)}.old-*"))) if p.is_dir()]
                    if older:
                        os.replace(older[0], folder)
                        done = f"{folder}: rolled back an interrupted save (from {older[0].name})"
                _fsync_dir(root)
            if folder.exists():
                for leftover in (new, old, *root.glob(f".{glob.escape(name)}.old-*")):
                    _discard(leftover)
    except OSError as exc:  # e.g. a read-only models folder: leave it as it is
        _log.warning("%s: cannot recover an interrupted save (%s)", folder, exc)
        return None
    if done:
        _log.warning(done)
    return done


def recover_models(root: Path) -> list[str]:
    """`recover_model` for every model folder of `root` with leftovers of an interrupted save; also deletes
    the temporary folders of saves whose process is gone. What was done."""
    done, names = [], set()
    for path in root.iterdir() if root.is_dir() else []:
        match = _SWAP_LEFTOVER.match(path.name)
        if not match:
            continue
        pid = match.group("pid")
        if ".trash-" in path.name or (pid is not None and not _pid_alive(int(pid))):
            shutil.rmtree(path, ignore_errors=True)
        elif pid is None:
            names.add(match.group("name"))
    for name in sorted(names):
        if (what := recover_model(root / name)) is not None:
            done.append(what)
    return done


def list_models(models_dir: Path | None = None, *, include_zero_shot: bool = True) -> list[ModelInfo]:
    """Saved models (folders with a config.json), the default first; plus CLIP zero-shot when its weights are here.

    A damaged or malformed model folder is listed with `problem` set (why it cannot be used, naming the
    file); the others stay usable. Folders whose config.json is not a model config (CLIP's weights) are
    left out. Interrupted saves are finished or rolled back first (`recover_models`).
    """
    root = models_dir or MODELS_DIR
    out: list[ModelInfo] = []
    try:
        recover_models(root)
    except OSError:
        pass
    for folder in sorted(root.glob("*/" + CONFIG_FILE)) if root.is_dir() else []:
        folder = folder.parent
        if folder.name.startswith("."):
            continue
        try:
            cfg = read_config(folder)
            check_weights(folder / WEIGHTS_FILE, cfg)
            if not (folder / WEIGHTS_FILE).is_file():
                raise ModelError(f"{folder / WEIGHTS_FILE}: missing")
        except Exception as exc:  # noqa: BLE001 - one bad folder never breaks the list
            if _is_model_folder(folder):
                problem = str(exc) if isinstance(exc, ModelError) else f"{folder}: {type(exc).__name__}: {exc}"
                out.append(ModelInfo(folder.name, folder, "?", problem=problem))
            continue
        acc = cfg.get("metrics", {}).get("val", {}).get("accuracy")
        out.append(ModelInfo(folder.name, folder, cfg["encoder"]["type"], acc, cfg.get("description", "")))
    out.sort(key=lambda m: (m.name != DEFAULT_MODEL, m.name))
    if include_zero_shot:
        try:
            from fer_app.encoders.clip import has_text_tower, resolve_clip_source

            if has_text_tower(resolve_clip_source()):
                out.append(ModelInfo(CLIP_ZERO_SHOT, None, "clip-vit-b32", None, "CLIP zero-shot (text prompts)"))
        except Exception:  # noqa: BLE001 - no CLIP weights (or no transformers): simply not listed
            pass
    return out


def stills_model(models_dir: Path | None = None) -> str:
    """The model photos use by default: `STILLS_MODEL` (the accurate one) when models/ has it, else `DEFAULT_MODEL`."""
    return STILLS_MODEL if (model_dir(STILLS_MODEL, models_dir) / CONFIG_FILE).is_file() else DEFAULT_MODEL


def _is_model_folder(folder: Path) -> bool:
    """Whether a folder with a config.json is meant as a model (a damaged one included), not e.g. CLIP's weights."""
    try:
        cfg = json.loads((folder / CONFIG_FILE).read_text())
    except Exception:  # noqa: BLE001 - unreadable: a damaged model
        return True
    return not isinstance(cfg, dict) or bool({"format", "encoder", "head", "classes"} & set(cfg)) \
        or (folder / WEIGHTS_FILE).is_file() and "model_type" not in cfg
