"""The CLIP ViT-B/32 encoder: the image tower of OpenAI's CLIP through transformers.

The weights are never bundled: they are looked up, in order, in an explicit folder, the default
folder `config.CLIP_LOCAL_DIR` (models/clip-vit-base-patch32/), the Hugging Face cache, and only
when allowed, the Hugging Face Hub (see `resolve_clip_source`). `fetch_clip` saves them into the
default folder on a machine that is online; when they cannot be found the error,
`ClipWeightsMissing`, tells the user where to put them.

Besides the image encoder (`load_clip_encoder`), a folder that holds the full CLIPModel with its
tokenizer gives CLIP's zero-shot emotion classifier (`zero_shot_weights`): one weight row per
class built from prompt ensembles (`PROMPT_TEMPLATES` x `EMOTION_WORDS`).

Preprocessing reproduces CLIPImageProcessor (RGB, bicubic resize of the shortest side, centre
crop, rescale, normalise) without its per-image overhead: one Pillow resize per crop (Pillow is
what CLIPImageProcessor itself resizes with, so the pixels match), the rest in numpy on the batch.
`ClipPreprocessing.normalize` does the same for a batch of grey faces in a tensor, on its device
(the training engine's full fine-tune): torch's antialiased resize in Pillow's order (width, then
height, rounding to uint8 in between): almost all pixels equal Pillow's, the rest within 2 grey levels.

A fully fine-tuned encoder (`fine_tuned=True`) owns its weights: they are saved with the model
(model.safetensors); the CLIP folder then only gives the architecture and preprocessing settings.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from transformers import (
    AutoConfig,
    AutoTokenizer,
    CLIPConfig,
    CLIPModel,
    CLIPProcessor,
    CLIPVisionConfig,
    CLIPVisionModelWithProjection,
    PreTrainedModel,
)
from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
from transformers.utils import logging as hf_logging

from fer_app import config
from fer_app.config import CLASSES, CLIP_HUB_ID
from fer_app.encoders.base import Encoder

CONFIG_FILE = "config.json"
PREPROCESSOR_FILE = "preprocessor_config.json"
#: Tokenizer files of a CLIP folder: either the fast tokenizer's file or the BPE pair.
TOKENIZER_FILES = (("tokenizer.json",), ("vocab.json", "merges.txt"))
#: Pillow's code for bicubic resampling, CLIPImageProcessor's default ("resample": 3).
BICUBIC = 3
#: torch's interpolation modes for Pillow's resampling codes (others are taken as bicubic).
TORCH_RESAMPLE = {2: "bilinear", BICUBIC: "bicubic"}

#: Prompt templates for zero-shot classification; "{}" takes an adjective from EMOTION_WORDS.
PROMPT_TEMPLATES: tuple[str, ...] = (
    "a photo of a face that looks {}.",
    "a close-up photo of a person looking {}.",
    "a photo of someone who is feeling {}.",
    "a black and white photo of a person who looks {}.",
    "a low resolution photo of a face looking {}.",
    "a cropped photo of a person who seems {}.",
)
#: Natural words for each FER-2013 class (keys are config.CLASSES).
EMOTION_WORDS: dict[str, tuple[str, ...]] = {
    "angry": ("angry", "furious", "annoyed"),
    "disgust": ("disgusted", "repulsed", "grossed out"),
    "fear": ("fearful", "scared", "afraid"),
    "happy": ("happy", "joyful", "cheerful"),
    "sad": ("sad", "unhappy", "sorrowful"),
    "surprise": ("surprised", "astonished", "shocked"),
    "neutral": ("neutral", "expressionless", "calm"),
}


def class_prompts(label: str) -> tuple[str, ...]:
    """Every template filled with every word of `label` (the label itself when it has no words)."""
    return tuple(t.format(w) for w in EMOTION_WORDS.get(label, (label,)) for t in PROMPT_TEMPLATES)


#: The full prompt ensemble of each class.
EMOTION_PROMPTS: dict[str, tuple[str, ...]] = {label: class_prompts(label) for label in CLASSES}


# --------------------------------------------------------------------------------------- errors

def _how_to_fetch(dest: Path) -> str:
    return (f"To fetch them, run on a machine with internet access `python -m fer_app fetch-clip` "
            f"(saves them to {dest}) or `hf download {CLIP_HUB_ID} --local-dir {dest}` "
            f"(`huggingface-cli download` with older huggingface_hub), then copy the folder here if needed.")


class ClipWeightsMissing(FileNotFoundError):
    """The CLIP weights cannot be found locally; the message says where they were looked for."""

    def __init__(self, looked_in: Sequence[str], message: str | None = None) -> None:
        self.looked_in = list(looked_in)
        dest = config.CLIP_LOCAL_DIR
        super().__init__(message or (
            f"The CLIP ViT-B/32 weights were not found (looked in: {'; '.join(self.looked_in)}). "
            f"The CLIP encoder needs the pretrained {CLIP_HUB_ID} model as a transformers folder "
            f"(config.json, model.safetensors or pytorch_model.bin, and the preprocessor/tokenizer files): "
            f"put it in {dest} (the default) or pass its folder as the source. {_how_to_fetch(dest)}"))


class ClipWeightsInvalid(ClipWeightsMissing):
    """A CLIP folder was found but cannot be loaded (corrupt, truncated or mismatched files)."""

    def __init__(self, folder: str, problem: str) -> None:
        self.folder, self.problem = folder, problem
        super().__init__([folder], (
            f"The CLIP weights in {folder} cannot be loaded: {problem}. Replace the folder with a "
            f"fresh copy of {CLIP_HUB_ID}. {_how_to_fetch(config.CLIP_LOCAL_DIR)}"))


class ClipTextTowerMissing(ValueError):
    """The CLIP folder holds only the image tower, so zero-shot weights cannot be computed."""

    def __init__(self, folder: str) -> None:
        self.folder = folder
        super().__init__(
            f"{folder} holds only CLIP's image tower (no text config or no tokenizer files), so CLIP's "
            f"zero-shot classifier is not available. Use a folder with the full CLIPModel and its "
            f"tokenizer, as saved by `python -m fer_app fetch-clip`.")


class ClipDownloadError(ConnectionError):
    """Downloading CLIP from the Hugging Face Hub failed (offline, blocked or unknown repository)."""


# ----------------------------------------------------------------------------------- resolution

_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


def _is_hub_id(source: str | Path) -> bool:
    """A string "namespace/name" that is not an existing path; Path objects are always folders."""
    return isinstance(source, str) and not Path(source).exists() and _HUB_ID.fullmatch(source) is not None


def _has_config(folder: Path) -> bool:
    return (folder / CONFIG_FILE).is_file()


def _cached_snapshot(repo_id: str) -> str | None:
    """The Hugging Face cache's snapshot folder of `repo_id` (no network), or None."""
    from huggingface_hub import try_to_load_from_cache

    try:
        cached = try_to_load_from_cache(repo_id, CONFIG_FILE)
    except ValueError:  # an invalid repository id
        return None
    return str(Path(cached).parent) if isinstance(cached, str) else None


def resolve_clip_source(source: str | Path | None = None, *, allow_download: bool = False) -> str:
    """Where to load CLIP from: a local folder, or the hub id when `allow_download`.

    `source` may be a folder (it must hold config.json), a hub id such as "openai/clip-vit-base-patch32",
    or None for CLIP ViT-B/32. A hub id is looked up in the Hugging Face cache; the default one is
    first looked for in `config.CLIP_LOCAL_DIR`. The network is never touched here; with
    `allow_download` the hub id is returned for transformers to download. Raises ClipWeightsMissing.
    """
    if source is not None and not _is_hub_id(source):
        folder = Path(source).expanduser()
        if _has_config(folder):
            return str(folder)
        raise ClipWeightsMissing([f"{folder} ({'no config.json there' if folder.is_dir() else 'no such folder'})"])
    repo_id = CLIP_HUB_ID if source is None else str(source)
    looked_in = []
    if repo_id == CLIP_HUB_ID:
        if _has_config(config.CLIP_LOCAL_DIR):
            return str(config.CLIP_LOCAL_DIR)
        looked_in.append(str(config.CLIP_LOCAL_DIR))
    cached = _cached_snapshot(repo_id)
    if cached is not None:
        return cached
    looked_in.append(f"the Hugging Face cache for {repo_id}")
    if allow_download:
        return repo_id
    raise ClipWeightsMissing(looked_in)


# -------------------------------------------------------------------------------------- loading

@contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Silence transformers' load reports and progress bars (problems are reported by us)."""
    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def _describe(err: Exception) -> str:
    """One line for users: what is wrong with the files."""
    first_line = (str(err).strip().splitlines() or [""])[0][:300]
    if type(err).__name__ == "SafetensorError":
        return f"a .safetensors weights file is corrupt or truncated ({first_line})"
    return f"{type(err).__name__}: {first_line}"


@contextmanager
def _load_errors(source: str) -> Iterator[None]:
    """Turn any failure of transformers/safetensors/torch while loading `source` into ClipWeightsInvalid."""
    with _quiet_transformers():
        try:
            yield
        except ClipWeightsMissing:
            raise
        except Exception as err:  # noqa: BLE001 - the libraries raise many unrelated types
            raise ClipWeightsInvalid(source, _describe(err)) from err


_Model = TypeVar("_Model", bound=PreTrainedModel)


def _from_pretrained(cls: type[_Model], source: str, allow_download: bool, **kwargs: object) -> _Model:
    """`cls.from_pretrained` that fails, instead of silently re-initialising, on missing or mis-shaped weights."""
    model, info = cls.from_pretrained(source, local_files_only=not allow_download, ignore_mismatched_sizes=True,
                                      output_loading_info=True, **kwargs)
    missing, mismatched = sorted(info.get("missing_keys", ())), sorted(info.get("mismatched_keys", ()))
    if missing:
        raise ClipWeightsInvalid(source, f"{len(missing)} weight tensors of {cls.__name__} are missing from the "
                                         f"weights file (e.g. {missing[0]})")
    if mismatched:
        key, in_file, expected = mismatched[0][:3]
        raise ClipWeightsInvalid(source, f"{len(mismatched)} weight tensors do not match config.json (e.g. {key}: "
                                         f"{tuple(in_file)} in the file, {tuple(expected)} expected)")
    return model.eval()


def _vision_config(source: str, allow_download: bool) -> CLIPVisionConfig:
    """The vision config of a CLIPModel or CLIPVisionModelWithProjection folder, with its projection size.

    (CLIPVisionModelWithProjection.from_pretrained on a CLIPModel folder would take the vision
    sub-config's default projection_dim instead of the model's.)
    """
    cfg = AutoConfig.from_pretrained(source, local_files_only=not allow_download)
    if isinstance(cfg, CLIPConfig):
        vision = cfg.vision_config
        vision.projection_dim = cfg.projection_dim
        return vision
    if isinstance(cfg, CLIPVisionConfig):
        return cfg
    raise ClipWeightsInvalid(source, f"config.json describes a {cfg.model_type!r} model, not CLIP")


def _preprocessor_file(source: str, allow_download: bool) -> Path | None:
    """The preprocessor_config.json of `source`, or None (CLIP's defaults then apply)."""
    if Path(source).is_dir():
        path = Path(source) / PREPROCESSOR_FILE
        return path if path.is_file() else None
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(source, PREPROCESSOR_FILE, local_files_only=not allow_download))
    except (OSError, ValueError):  # not in the repository: CLIP's defaults apply
        return None


# -------------------------------------------------------------------------------- preprocessing

def _pair(value: int | dict | Sequence[int], what: str) -> tuple[int, int]:
    if isinstance(value, int):
        return value, value
    if isinstance(value, dict) and {"height", "width"} <= value.keys():
        return int(value["height"]), int(value["width"])
    if isinstance(value, (list, tuple)) and len(value) == 2:
        return int(value[0]), int(value[1])
    raise ValueError(f"unsupported {what} {value!r} in {PREPROCESSOR_FILE}")


def to_rgb(crop: np.ndarray) -> np.ndarray:
    """uint8 RGB (H, W, 3) from a grey, BGR or BGRA crop."""
    if crop.ndim == 2 or crop.shape[2] == 1:
        return cv2.cvtColor(crop.reshape(crop.shape[:2]), cv2.COLOR_GRAY2RGB)
    return cv2.cvtColor(crop, cv2.COLOR_BGRA2RGB if crop.shape[2] == 4 else cv2.COLOR_BGR2RGB)


@dataclass(frozen=True)
class ClipPreprocessing:
    """CLIPImageProcessor's steps for a batch of OpenCV crops.

    resize: an int resizes the shortest side to it (keeping the aspect ratio, as CLIP does); a
    (height, width) pair resizes to that size. crop: the centre crop (height, width), which must
    fit in the resized image. resample: Pillow's filter code (3: bicubic).
    """

    resize: int | tuple[int, int] = 224
    crop: tuple[int, int] = (224, 224)
    mean: tuple[float, ...] = tuple(OPENAI_CLIP_MEAN)
    std: tuple[float, ...] = tuple(OPENAI_CLIP_STD)
    rescale: float = 1 / 255
    resample: int = BICUBIC

    def __post_init__(self) -> None:
        smallest = (self.resize, self.resize) if isinstance(self.resize, int) else self.resize
        if self.crop[0] > smallest[0] or self.crop[1] > smallest[1]:
            raise ValueError(f"crop size {self.crop} is larger than the resized image {self.resize}")

    @classmethod
    def from_file(cls, path: Path | None) -> ClipPreprocessing:
        """Settings from a preprocessor_config.json; CLIP's defaults where it is absent or silent."""
        if path is None:
            return cls()
        cfg = json.loads(path.read_text())
        default = cls()
        size = cfg.get("size", default.resize)
        if isinstance(size, dict) and "shortest_edge" in size:
            resize: int | tuple[int, int] = int(size["shortest_edge"])
        else:
            resize = size if isinstance(size, int) else _pair(size, "size")
        return cls(resize=resize,
                   crop=_pair(cfg.get("crop_size", default.crop), "crop_size"),
                   mean=tuple(cfg.get("image_mean", default.mean)) if cfg.get("do_normalize", True) else (0.0,) * 3,
                   std=tuple(cfg.get("image_std", default.std)) if cfg.get("do_normalize", True) else (1.0,) * 3,
                   rescale=float(cfg.get("rescale_factor", default.rescale)) if cfg.get("do_rescale", True) else 1.0,
                   resample=int(cfg.get("resample", default.resample)))

    def resized_shape(self, height: int, width: int) -> tuple[int, int]:
        """(height, width) after resizing, computed as transformers does."""
        if not isinstance(self.resize, int):
            return self.resize
        if width <= height:
            return int(self.resize * height / width), self.resize
        return self.resize, int(self.resize * width / height)

    def _resize_and_crop(self, crop: np.ndarray) -> np.ndarray:
        """uint8 (H, W) or (H, W, 3) RGB -> the uint8 centre crop of the resized image."""
        new_h, new_w = self.resized_shape(*crop.shape[:2])
        resized = np.asarray(Image.fromarray(np.ascontiguousarray(crop)).resize((new_w, new_h), resample=self.resample))
        top, left = (new_h - self.crop[0]) // 2, (new_w - self.crop[1]) // 2
        return resized[top:top + self.crop[0], left:left + self.crop[1]]

    def normalize(self, grey_uint8: torch.Tensor) -> torch.Tensor:
        """uint8 grey faces (N, H, W) -> float32 (N, 3, crop height, crop width), as `__call__` on the
        same faces (within 2 grey levels per pixel: Pillow's fixed-point arithmetic), on the input's device."""
        height, width = grey_uint8.shape[-2:]
        new_h, new_w = self.resized_shape(height, width)
        x = grey_uint8.unsqueeze(1).float()
        mode = TORCH_RESAMPLE.get(self.resample, "bicubic")
        for size in ((height, new_w), (new_h, new_w)):  # Pillow resizes the width first, then the height
            if x.shape[-2:] != size:
                x = F.interpolate(x, size=size, mode=mode, antialias=True, align_corners=False).round_().clamp_(0, 255)
        top, left = (new_h - self.crop[0]) // 2, (new_w - self.crop[1]) // 2
        x = x[:, :, top:top + self.crop[0], left:left + self.crop[1]]
        std = torch.tensor(self.std, dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
        mean = torch.tensor(self.mean, dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
        return x * (torch.tensor(self.rescale, dtype=torch.float32, device=x.device) / std) - mean / std

    def __call__(self, crops: Sequence[np.ndarray]) -> torch.Tensor:
        """uint8 grey/BGR/BGRA crops of any sizes -> float32 (N, 3, crop height, crop width)."""
        batch = np.empty((len(crops), 3, *self.crop), np.uint8)
        for out, crop in zip(batch, crops):
            if crop.ndim == 2 or crop.shape[2] == 1:
                # One channel resized and broadcast: the pixels of its RGB copy at a third of the cost.
                out[...] = self._resize_and_crop(crop.reshape(crop.shape[:2]))
            else:
                out[...] = self._resize_and_crop(to_rgb(crop)).transpose(2, 0, 1)
        std = np.asarray(self.std, np.float32)[:, None, None]
        pixels = np.multiply(batch, np.float32(self.rescale) / std, dtype=np.float32)
        pixels -= np.asarray(self.mean, np.float32)[:, None, None] / std
        return torch.from_numpy(pixels)


# -------------------------------------------------------------------------------------- encoder

class ClipEncoder(Encoder):
    """CLIP's image tower with its projection; `forward` returns unit-length image embeddings.

    fine_tuned: the weights were trained by this project (full fine-tune), so a saved model keeps
    them (model.safetensors) instead of reloading them from `source`.
    """

    encoder_id = "clip-vit-b32"

    def __init__(self, vision: CLIPVisionModelWithProjection, preprocessing: ClipPreprocessing | None = None,
                 source: str = CLIP_HUB_ID, fine_tuned: bool = False) -> None:
        super().__init__()
        self.vision = vision
        self.preprocessing = preprocessing or ClipPreprocessing()
        self.source = source
        self.fine_tuned = fine_tuned
        self.embed_dim = int(vision.config.projection_dim)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.vision(pixel_values=pixels).image_embeds, dim=-1)

    def preprocess(self, crops: Sequence[np.ndarray]) -> torch.Tensor:
        return self.preprocessing(crops)

    def normalize(self, grey_uint8: torch.Tensor) -> torch.Tensor:
        """(N, H, W) uint8 grey faces -> (N, 3, 224, 224) float, as `preprocess` (see ClipPreprocessing.normalize)."""
        return self.preprocessing.normalize(grey_uint8)

    def config(self) -> dict:
        cfg: dict = {"type": self.encoder_id, "source": self.source}
        return {**cfg, "fine_tuned": True} if self.fine_tuned else cfg

    @classmethod
    def from_config(cls, cfg: dict, *, allow_download: bool = False) -> ClipEncoder:
        """The encoder of a config entry; a fine-tuned one has `source`'s weights until the model's are loaded."""
        encoder = load_clip_encoder(cfg.get("source"), allow_download=allow_download)
        encoder.fine_tuned = bool(cfg.get("fine_tuned", False))
        return encoder


def load_clip_encoder(source: str | Path | None = None, allow_download: bool = False) -> ClipEncoder:
    """The CLIP image encoder from `source` (see `resolve_clip_source`), in eval mode.

    Raises ClipWeightsMissing when nothing is found and ClipWeightsInvalid (a subclass) when the
    files found cannot be loaded.
    """
    resolved = resolve_clip_source(source, allow_download=allow_download)
    with _load_errors(resolved):
        vision = _from_pretrained(CLIPVisionModelWithProjection, resolved, allow_download,
                                  config=_vision_config(resolved, allow_download))
        preprocessing = ClipPreprocessing.from_file(_preprocessor_file(resolved, allow_download))
    return ClipEncoder(vision, preprocessing, source=CLIP_HUB_ID if source is None else str(source)).eval()


# ----------------------------------------------------------------------------------- zero-shot

def _folder_has_text_tower(folder: Path) -> bool:
    try:
        has_text_config = "text_config" in json.loads((folder / CONFIG_FILE).read_text())
    except (OSError, ValueError):
        return False
    return has_text_config and any(all((folder / name).is_file() for name in names) for names in TOKENIZER_FILES)


def has_text_tower(source: str | Path | None = None) -> bool:
    """Whether the local CLIP folder of `source` holds the full CLIPModel and its tokenizer.

    False as well when no local CLIP folder is found (nothing is downloaded).
    """
    try:
        return _folder_has_text_tower(Path(resolve_clip_source(source)))
    except ClipWeightsMissing:
        return False


def zero_shot_weights(source: str | Path | None = None, classes: Sequence[str] = CLASSES, *,
                      allow_download: bool = False) -> torch.Tensor:
    """CLIP's zero-shot classifier as a (len(classes), D) matrix W.

    Each row is the re-normalised mean of the class's normalised prompt embeddings (see
    `class_prompts`), times CLIP's logit scale, so that `softmax(image_embeds @ W.T)` with unit
    image embeddings (`ClipEncoder.forward`) is CLIP's zero-shot prediction. Loads the whole
    CLIPModel: cache the result. Raises ClipTextTowerMissing for an image-only folder.
    """
    resolved = resolve_clip_source(source, allow_download=allow_download)
    if Path(resolved).is_dir() and not _folder_has_text_tower(Path(resolved)):
        raise ClipTextTowerMissing(resolved)
    with _load_errors(resolved):
        model = _from_pretrained(CLIPModel, resolved, allow_download)
        tokenizer = AutoTokenizer.from_pretrained(resolved, local_files_only=not allow_download)
    prompts = [class_prompts(label) for label in classes]
    tokens = tokenizer([p for group in prompts for p in group], padding=True, truncation=True, return_tensors="pt")
    with torch.no_grad():
        features = model.get_text_features(**tokens)
        if not isinstance(features, torch.Tensor):  # transformers >= 5 returns a model output
            features = features.pooler_output
        per_prompt = F.normalize(features, dim=-1)
        per_class = torch.stack([group.mean(dim=0) for group in per_prompt.split([len(g) for g in prompts])])
        return F.normalize(per_class, dim=-1) * model.logit_scale.exp()


# -------------------------------------------------------------------------------------- download

def fetch_clip(dest: Path | None = None, *, repo_id: str = CLIP_HUB_ID) -> Path:
    """Download CLIPModel and CLIPProcessor from the hub and save them to `dest` (default config.CLIP_LOCAL_DIR).

    The files are written to a sibling ".partial" folder first and swapped in at the end, so an
    interrupted download never leaves a half folder that looks complete. Raises ClipDownloadError
    when the hub cannot be reached.
    """
    dest = Path(dest) if dest is not None else config.CLIP_LOCAL_DIR
    try:
        model = CLIPModel.from_pretrained(repo_id)
        processor = CLIPProcessor.from_pretrained(repo_id)
    except OSError as err:
        raise ClipDownloadError(
            f"Could not download {repo_id} from the Hugging Face Hub ({_describe(err)}). Check the internet "
            f"connection and that HF_HUB_OFFLINE is not set, or copy a saved CLIP folder to {dest}.") from err
    partial, old = dest.with_name(dest.name + ".partial"), dest.with_name(dest.name + ".old")
    for leftover in (partial, old):
        shutil.rmtree(leftover, ignore_errors=True)
    model.save_pretrained(partial)
    processor.save_pretrained(partial)
    if dest.exists():
        dest.rename(old)
    partial.rename(dest)
    shutil.rmtree(old, ignore_errors=True)
    return dest
