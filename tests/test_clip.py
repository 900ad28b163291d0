"""The CLIP encoder, its weight lookup and zero-shot weights, on tiny randomly initialised CLIP folders."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from fer_app import config
from fer_app.config import CLASSES, CLIP_HUB_ID
from fer_app.encoders.clip import (
    EMOTION_PROMPTS,
    PROMPT_TEMPLATES,
    ClipDownloadError,
    ClipEncoder,
    ClipTextTowerMissing,
    ClipWeightsInvalid,
    ClipWeightsMissing,
    fetch_clip,
    has_text_tower,
    load_clip_encoder,
    resolve_clip_source,
    zero_shot_weights,
)


@pytest.fixture(autouse=True)
def offline_hub(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No network, an empty Hugging Face cache and an empty default CLIP folder; returns the cache folder."""
    import huggingface_hub.constants as hub_constants

    cache = tmp_path / "hf_home" / "hub"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(cache.parent))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hub_constants, "HF_HOME", str(cache.parent))
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(config, "CLIP_LOCAL_DIR", tmp_path / "models" / "clip-vit-base-patch32")
    return cache


def _crops(seed: int = 0) -> list[np.ndarray]:
    """Smooth random crops: BGR of several sizes (up- and downscaled, non-square), grey, (H, W, 1) and BGRA."""
    rng = np.random.default_rng(seed)

    def smooth(h: int, w: int, channels: int) -> np.ndarray:
        small = rng.integers(0, 256, (max(h // 8, 2), max(w // 8, 2), channels), dtype=np.uint8)
        big = cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC).reshape(h, w, channels)
        return np.clip(big + rng.normal(0, 10, big.shape), 0, 255).astype(np.uint8)

    return [smooth(48, 48, 3), smooth(120, 90, 3), smooth(224, 224, 3), smooth(300, 410, 3), smooth(500, 380, 3),
            smooth(100, 100, 1)[:, :, 0], smooth(64, 80, 1), smooth(260, 230, 4)]


def _rgb(crop: np.ndarray) -> np.ndarray:
    """What the crop looks like to CLIPImageProcessor: RGB."""
    if crop.ndim == 2 or crop.shape[2] == 1:
        return np.repeat(crop.reshape(crop.shape[:2])[..., None], 3, axis=2)
    return np.ascontiguousarray(crop[:, :, 2::-1])


# ------------------------------------------------------------------------------------- loading

def test_loads_from_explicit_folder(tiny_clip_dir: Path) -> None:
    assert resolve_clip_source(tiny_clip_dir) == str(tiny_clip_dir)
    encoder = load_clip_encoder(tiny_clip_dir)
    assert isinstance(encoder, ClipEncoder)
    assert encoder.encoder_id == "clip-vit-b32" and encoder.embed_dim == 16
    assert encoder.config() == {"type": "clip-vit-b32", "source": str(tiny_clip_dir)}
    assert not encoder.training


def test_loads_from_default_folder(tiny_clip_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(config, "CLIP_LOCAL_DIR", tiny_clip_dir)
    assert resolve_clip_source() == str(tiny_clip_dir)
    assert resolve_clip_source(CLIP_HUB_ID) == str(tiny_clip_dir)
    encoder = load_clip_encoder()
    assert encoder.config() == {"type": "clip-vit-b32", "source": CLIP_HUB_ID}
    rebuilt = ClipEncoder.from_config(encoder.config())
    pixels = encoder.preprocess(_crops()[:2])
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(pixels), encoder(pixels))


def test_loads_from_hugging_face_cache(tiny_clip_dir: Path, offline_hub: Path) -> None:
    repo = offline_hub / "models--openai--clip-vit-base-patch32"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0123abcd")
    shutil.copytree(tiny_clip_dir, repo / "snapshots" / "0123abcd")
    snapshot = str(repo / "snapshots" / "0123abcd")
    assert resolve_clip_source() == snapshot
    assert resolve_clip_source(CLIP_HUB_ID) == snapshot
    assert load_clip_encoder().embed_dim == 16


def test_vision_only_folder_gives_the_same_embeddings(tiny_clip_dir: Path, tiny_clip_vision_dir: Path) -> None:
    full, vision = load_clip_encoder(tiny_clip_dir), load_clip_encoder(tiny_clip_vision_dir)
    pixels = full.preprocess(_crops())
    with torch.no_grad():
        torch.testing.assert_close(vision(pixels), full(pixels))


# -------------------------------------------------------------------------- embeddings, preprocess

def test_embeddings_are_unit_vectors_for_mixed_crops(tiny_clip_dir: Path) -> None:
    encoder = load_clip_encoder(tiny_clip_dir)
    crops = _crops()
    pixels = encoder.preprocess(crops)
    assert pixels.shape == (len(crops), 3, 224, 224) and pixels.dtype == torch.float32
    with torch.no_grad():
        embeddings = encoder(pixels)
    assert embeddings.shape == (len(crops), 16)
    torch.testing.assert_close(embeddings.norm(dim=1), torch.ones(len(crops)))
    assert encoder.preprocess([]).shape == (0, 3, 224, 224)


def test_grey_and_colour_conversions(tiny_clip_dir: Path) -> None:
    encoder = load_clip_encoder(tiny_clip_dir)
    grey = _crops()[5]
    bgr = cv2.cvtColor(grey, cv2.COLOR_GRAY2BGR)
    same = encoder.preprocess([grey, grey[:, :, None], bgr])
    torch.testing.assert_close(same[0], same[1])
    torch.testing.assert_close(same[0], same[2])
    colour = _crops()[1]
    bgra = cv2.cvtColor(colour, cv2.COLOR_BGR2BGRA)
    swapped = np.ascontiguousarray(colour[:, :, ::-1])
    out = encoder.preprocess([colour, bgra, swapped])
    torch.testing.assert_close(out[0], out[1])
    assert not torch.allclose(out[0], out[2])


def test_preprocess_matches_clip_image_processor(tiny_clip_dir: Path) -> None:
    from transformers import CLIPImageProcessor

    encoder = load_clip_encoder(tiny_clip_dir)
    crops = _crops()
    ours = encoder.preprocess(crops)
    processor = CLIPImageProcessor.from_pretrained(tiny_clip_dir)
    reference = processor(images=[_rgb(c) for c in crops], return_tensors="pt")["pixel_values"]
    assert ours.shape == reference.shape
    # Pillow-based processors agree to one grey level; torchvision's bicubic differs by a few.
    assert (ours - reference).abs().max() < 0.1
    assert (ours - reference).abs().mean() < 0.01
    with torch.no_grad():
        cosine = torch.nn.functional.cosine_similarity(encoder(ours), encoder(reference))
    assert cosine.min() > 0.999


def test_preprocessing_follows_the_folder_config(tiny_clip_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "clip"
    shutil.copytree(tiny_clip_dir, folder)
    settings = json.loads((folder / "preprocessor_config.json").read_text())
    settings.update(size={"shortest_edge": 256}, crop_size={"height": 224, "width": 224}, image_mean=[0.5] * 3)
    (folder / "preprocessor_config.json").write_text(json.dumps(settings))
    preprocessing = load_clip_encoder(folder).preprocessing
    assert preprocessing.resize == 256 and preprocessing.crop == (224, 224) and preprocessing.mean == (0.5,) * 3


# ------------------------------------------------------------------------------------ errors

def test_missing_weights_explain_where_to_put_them() -> None:
    with pytest.raises(ClipWeightsMissing) as caught:
        load_clip_encoder()
    message = str(caught.value)
    for expected in (str(config.CLIP_LOCAL_DIR), "Hugging Face cache", "fetch-clip", f"hf download {CLIP_HUB_ID}"):
        assert expected in message
    with pytest.raises(ClipWeightsMissing, match="Hugging Face cache for someone/other-clip"):
        resolve_clip_source("someone/other-clip")
    assert resolve_clip_source("someone/other-clip", allow_download=True) == "someone/other-clip"
    assert resolve_clip_source(allow_download=True) == CLIP_HUB_ID


def test_missing_explicit_folder_is_named(tmp_path: Path) -> None:
    with pytest.raises(ClipWeightsMissing, match="no such folder") as caught:
        resolve_clip_source(tmp_path / "nowhere")
    assert str(tmp_path / "nowhere") in str(caught.value)
    with pytest.raises(ClipWeightsMissing, match="no config.json"):
        load_clip_encoder(tmp_path)


def _garbage(folder: Path) -> None:
    (folder / "model.safetensors").write_bytes(b"not a safetensors file" * 50)


def _truncated(folder: Path) -> None:
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[: len(data) // 2])


def _deleted(folder: Path) -> None:
    (folder / "model.safetensors").unlink()


def _mismatched(folder: Path) -> None:
    settings = json.loads((folder / "config.json").read_text())
    settings["vision_config"]["intermediate_size"] = 40
    (folder / "config.json").write_text(json.dumps(settings))


def _not_clip(folder: Path) -> None:
    (folder / "config.json").write_text(json.dumps({"model_type": "bert"}))


@pytest.mark.parametrize(("damage", "problem"), [
    (_garbage, "corrupt or truncated"), (_truncated, "corrupt or truncated"), (_deleted, "model.safetensors"),
    (_mismatched, "do not match config.json"), (_not_clip, "not CLIP"),
])
def test_damaged_folder_gives_a_clear_error(tiny_clip_dir: Path, tmp_path: Path,
                                            damage: Callable[[Path], None], problem: str) -> None:
    folder = tmp_path / "clip"
    shutil.copytree(tiny_clip_dir, folder)
    damage(folder)
    with pytest.raises(ClipWeightsInvalid) as caught:
        load_clip_encoder(folder)
    message = str(caught.value)
    assert str(folder) in message and problem in message and "fetch-clip" in message
    assert "\n" not in message and isinstance(caught.value, ClipWeightsMissing)


# --------------------------------------------------------------------------------- zero-shot

def test_prompts_cover_every_class() -> None:
    assert set(EMOTION_PROMPTS) == set(CLASSES)
    for prompts in EMOTION_PROMPTS.values():
        assert len(prompts) >= len(PROMPT_TEMPLATES) and len(set(prompts)) == len(prompts)
        assert all("{}" not in p for p in prompts)


def test_zero_shot_weights(tiny_clip_dir: Path) -> None:
    from transformers import CLIPModel

    weights = zero_shot_weights(tiny_clip_dir)
    assert weights.shape == (len(CLASSES), 16) and not weights.requires_grad
    logit_scale = CLIPModel.from_pretrained(tiny_clip_dir).logit_scale.exp().item()
    torch.testing.assert_close(weights.norm(dim=1), torch.full((len(CLASSES),), logit_scale))
    torch.testing.assert_close(zero_shot_weights(tiny_clip_dir), weights)
    assert zero_shot_weights(tiny_clip_dir, ("happy", "bored")).shape == (2, 16)
    encoder = load_clip_encoder(tiny_clip_dir)
    with torch.no_grad():
        probs = torch.softmax(encoder(encoder.preprocess(_crops())) @ weights.T, dim=1)
    torch.testing.assert_close(probs.sum(dim=1), torch.ones(len(_crops())))


def test_text_tower_detection(tiny_clip_dir: Path, tiny_clip_vision_dir: Path, tmp_path: Path) -> None:
    assert has_text_tower(tiny_clip_dir)
    assert not has_text_tower(tiny_clip_vision_dir)
    assert not has_text_tower(tmp_path / "nowhere")
    assert not has_text_tower()
    with pytest.raises(ClipTextTowerMissing, match=str(tiny_clip_vision_dir)):
        zero_shot_weights(tiny_clip_vision_dir)


# ---------------------------------------------------------------------------------- download

def test_fetch_clip_saves_a_loadable_folder(tiny_clip_dir: Path, tmp_path: Path) -> None:
    dest = tmp_path / "models" / "clip"
    dest.mkdir(parents=True)
    (dest / "stale.txt").write_text("replaced")
    assert fetch_clip(dest, repo_id=str(tiny_clip_dir)) == dest
    assert not (dest / "stale.txt").exists() and has_text_tower(dest)
    assert load_clip_encoder(dest).embed_dim == 16
    assert sorted(p.name for p in dest.parent.iterdir()) == ["clip"]


def test_fetch_clip_offline_fails_clearly(tmp_path: Path) -> None:
    dest = tmp_path / "clip"
    with pytest.raises(ClipDownloadError, match=f"Could not download {CLIP_HUB_ID}"):
        fetch_clip(dest)
    assert not dest.exists()
