"""Shared test fixtures."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fer_app.config import DEFAULT_MODEL


def _tiny_clip_model():
    """A tiny randomly initialised CLIPModel (deterministic), with ViT-B/32's 224 px input and 32 px patches.

    Its text vocabulary is the one `_write_tiny_clip_vocab` writes.
    """
    import torch
    from transformers import CLIPConfig, CLIPModel

    tiny = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 37}
    vocab_size = 2 * 256 + 2
    text = dict(tiny, vocab_size=vocab_size, max_position_embeddings=77, pad_token_id=1,
                bos_token_id=vocab_size - 2, eos_token_id=vocab_size - 1)
    torch.manual_seed(0)
    return CLIPModel(CLIPConfig(text_config=text, vision_config=dict(tiny, image_size=224, patch_size=32),
                                projection_dim=16)).eval()


def _write_tiny_clip_vocab(folder: Path) -> None:
    """A byte-level BPE vocabulary without merges: every byte alone and word-final, then CLIP's specials last."""
    from tokenizers.pre_tokenizers import ByteLevel

    symbols = sorted(ByteLevel.alphabet())
    tokens = symbols + [s + "</w>" for s in symbols] + ["<|startoftext|>", "<|endoftext|>"]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}))
    (folder / "merges.txt").write_text("#version: 0.2\n")


def _save_image_processor(folder: Path) -> None:
    try:  # transformers >= 5 without torchvision: the Pillow processor, saved as a CLIPImageProcessor
        from transformers import CLIPImageProcessorPil as Processor
    except ImportError:
        from transformers import CLIPImageProcessor as Processor
    Processor().save_pretrained(folder)


@pytest.fixture(scope="session")
def tiny_clip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A full tiny CLIP folder (CLIPModel, tokenizer, image processor) laid out like openai/clip-vit-base-patch32."""
    from transformers import CLIPTokenizer

    root = tmp_path_factory.mktemp("tiny-clip")
    _write_tiny_clip_vocab(root / "vocab")
    folder = root / "clip"
    _tiny_clip_model().save_pretrained(folder)
    CLIPTokenizer.from_pretrained(root / "vocab", model_max_length=77).save_pretrained(folder)
    _save_image_processor(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_clip_vision_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The image tower of `tiny_clip_dir`'s model alone (CLIPVisionModelWithProjection), without a tokenizer."""
    from transformers import CLIPVisionModelWithProjection

    full = _tiny_clip_model()
    vision_config = full.config.vision_config
    vision_config.projection_dim = full.config.projection_dim
    vision = CLIPVisionModelWithProjection(vision_config).eval()
    vision.load_state_dict({k: v for k, v in full.state_dict().items()
                            if k.startswith(("vision_model.", "visual_projection."))})
    folder = tmp_path_factory.mktemp("tiny-clip-vision")
    vision.save_pretrained(folder)
    _save_image_processor(folder)
    return folder


# ---------------------------------------------------------------- tiny learnable face data and models


def make_faces(n_per_class: int, seed: int = 0):
    """A FaceSet whose class sets the image's brightness and stripe pattern, plus noise.

    Learnable in a few epochs by a tiny CNN (global pooling keeps brightness and texture);
    mirror images keep the label.
    """
    import numpy as np

    from fer_app.config import CLASSES
    from fer_app.data import FaceSet

    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(len(CLASSES)), n_per_class)
    noise = rng.integers(0, 40, size=(len(labels), 48, 48))
    rows = np.arange(48).reshape(1, 48, 1)
    stripes = ((rows // (labels.reshape(-1, 1, 1) + 1)) % 2) * 30
    images = (20 + 25 * labels.reshape(-1, 1, 1) + noise + stripes).clip(0, 255).astype(np.uint8)
    order = rng.permutation(len(labels))
    return FaceSet(images=images[order], labels=labels[order].astype(np.int64), source=f"synthetic:{seed}")


@pytest.fixture(scope="session")
def tiny_splits():
    return {"train": make_faces(24, seed=1), "val": make_faces(8, seed=2)}


@pytest.fixture()
def models_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty models/ folder used by the library for this test (and an isolated FER_APP_HOME)."""
    import fer_app.config as config
    import fer_app.model as model
    import fer_app.training as training

    folder = tmp_path / "models"
    folder.mkdir()
    for mod in (config, model, training):
        monkeypatch.setattr(mod, "MODELS_DIR", folder, raising=False)
    monkeypatch.setattr(config, "APP_HOME", tmp_path / "home")
    monkeypatch.setattr(training, "APP_HOME", tmp_path / "home")
    monkeypatch.setattr(config, "CLIP_LOCAL_DIR", tmp_path / "no-clip")
    return folder


#: The shipped default model's folder in this checkout (`config.DEFAULT_MODEL` under the project's models/).
BUNDLED = Path(__file__).resolve().parent.parent / "models" / DEFAULT_MODEL

TINY_COMPACT = dict(widths=(8, 16), convs_per_stage=(1, 1), epochs=3, batch_size=16, lr=0.05, seed=0, augment=False,
                    label_smoothing=0.0, threads=1)


@pytest.fixture()
def tiny_model(models_dir: Path, tiny_splits) -> Path:
    """A tiny compact model trained for a few epochs and saved as models/tiny."""
    from fer_app.training import TrainConfig, train

    result = train(TrainConfig(**TINY_COMPACT), tiny_splits, name="tiny", workdir=models_dir.parent / "run")
    return result.saved_to


@pytest.fixture()
def no_job_left():
    """The test starts and ends without a background training job in this process."""
    from fer_app.jobs import clear_job, current_job

    yield
    job = current_job()
    if job is not None:
        job.stop()
        job.wait(1800)
    clear_job()
