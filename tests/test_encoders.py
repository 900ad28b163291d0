"""Encoder.normalize: the tensor form of each encoder's preprocess (what the training engine feeds the network)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from conftest import make_faces

from fer_app.encoders.base import Encoder
from fer_app.encoders.compact import CompactEncoder

#: One grey level after CLIP's normalisation, at its smallest std (0.2613): the unit of the tolerance below.
CLIP_GREY_LEVEL = 1 / 255 / 0.2613


def _odd_faces() -> list[np.ndarray]:
    """Grey faces of other sizes and shapes than FER-2013's: small, tall, wide and large (downscaled)."""
    rng = np.random.default_rng(3)
    return [rng.integers(0, 256, shape, dtype=np.uint8) for shape in ((30, 30), (60, 45), (45, 60), (300, 400))]


def test_compact_normalize_is_preprocess_on_tensors():
    enc = CompactEncoder((8, 16), 1, mean=0.45, std=0.27)
    faces = make_faces(2, 0).images
    x = torch.from_numpy(faces)
    out = enc.normalize(x)
    assert out.shape == (len(faces), 1, 48, 48) and out.dtype == torch.float32
    assert torch.equal(out, ((x.float() / 255.0 - 0.45) / 0.27).unsqueeze(1))  # the training formula, bit for bit
    assert torch.equal(out, enc.preprocess(list(faces)))
    for h, w in ((30, 30), (60, 45), (45, 60), (300, 400)):  # other sizes are resized, as preprocess does
        face = cv2.resize(faces[0], (w, h), interpolation=cv2.INTER_CUBIC)
        got, want = enc.normalize(torch.from_numpy(face)[None]), enc.preprocess([face])
        assert got.shape == want.shape == (1, 1, 48, 48)
        assert (got - want).abs().mean() * 0.27 * 255 < 8  # mean difference in grey levels (not the same filter)


def test_clip_normalize_matches_preprocess(tiny_clip_dir: Path):
    from fer_app.encoders.clip import load_clip_encoder

    enc = load_clip_encoder(tiny_clip_dir)
    for faces in (list(make_faces(3, 5).images), *[[f] for f in _odd_faces()]):
        want = enc.preprocess(faces)
        got = enc.normalize(torch.from_numpy(np.stack(faces)))
        assert got.shape == want.shape == (len(faces), 3, 224, 224) and got.dtype == torch.float32
        diff = (got - want).abs()
        # Pillow resizes in fixed point: a pixel may differ by a grey level or two, almost all are equal
        assert diff.max() <= 2 * CLIP_GREY_LEVEL + 1e-5, diff.max()
        assert (diff > 1e-5).float().mean() < 0.005
        assert diff.mean() < 1e-3
    with torch.no_grad():  # and the embeddings agree
        faces = make_faces(1, 7).images
        cos = torch.cosine_similarity(enc(enc.normalize(torch.from_numpy(faces))), enc(enc.preprocess(list(faces))))
    assert cos.min() > 0.999


def test_base_normalize_falls_back_to_preprocess():
    class Doubling(Encoder):
        encoder_id, embed_dim = "doubling", 1

        def preprocess(self, crops: Sequence[np.ndarray]) -> torch.Tensor:
            return torch.from_numpy(np.stack(crops)).float().unsqueeze(1) * 2

        def config(self) -> dict:
            return {"type": self.encoder_id}

    faces = make_faces(1, 0).images
    assert torch.equal(Doubling().normalize(torch.from_numpy(faces)), torch.from_numpy(faces).float().unsqueeze(1) * 2)


@pytest.mark.parametrize("size", [48, 224])
def test_augment_is_generic_in_channels_and_size(size: int):
    from fer_app.augment import AugmentConfig, augment

    grey = torch.randn(6, 1, size, size, generator=torch.Generator().manual_seed(0))
    ref = augment(grey, AugmentConfig(), torch.Generator().manual_seed(1))
    out = augment(grey.repeat(1, 3, 1, 1), AugmentConfig(), torch.Generator().manual_seed(1))
    assert out.shape == (6, 3, size, size) and ref.shape == grey.shape
    assert not torch.allclose(ref, grey, atol=0.1)  # it did something
    for c in range(3):  # the same warp, jitter and erasing on every channel, as on one: a grey face stays grey
        torch.testing.assert_close(out[:, c:c + 1], ref, atol=1e-5, rtol=1e-5)
