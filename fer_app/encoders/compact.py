"""The compact CNN encoder: 48x48 grey faces -> a small embedding; trained on FER-2013.

A VGG-style stack of 3x3 conv / batch-norm / ReLU blocks in four stages (48, 24, 12, 6 px),
global average pooling, dropout. Sized so that it trains on a 2-core CPU across resumable runs
and runs in about a millisecond per face.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fer_app.encoders.base import Encoder
from fer_app.imageio import to_grey

INPUT_SIZE = 48


def _block(c_in: int, c_out: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]


class CompactEncoder(Encoder):
    encoder_id = "compact"

    def __init__(self, widths: Sequence[int] = (32, 64, 128, 256), convs_per_stage: int | Sequence[int] = 2,
                 dropout: float = 0.3, mean: float = 0.5, std: float = 0.25) -> None:
        super().__init__()
        self.widths = tuple(int(w) for w in widths)
        if isinstance(convs_per_stage, int):
            convs_per_stage = [convs_per_stage] * len(self.widths)
        self.convs_per_stage = [int(n) for n in convs_per_stage]
        self.dropout_p = float(dropout)
        self.mean, self.std = float(mean), float(std)
        layers: list[nn.Module] = []
        c_in = 1
        for i, width in enumerate(self.widths):
            if i > 0:
                layers.append(nn.MaxPool2d(2))
            for _ in range(self.convs_per_stage[i]):
                layers += _block(c_in, width)
                c_in = width
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(self.dropout_p)
        self.embed_dim = c_in

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.dropout(torch.flatten(self.pool(self.features(pixels)), 1))

    def normalize(self, grey_uint8: torch.Tensor) -> torch.Tensor:
        """(N, 48, 48) uint8 -> (N, 1, 48, 48) float, normalised as in training.

        Other sizes are resized first (antialiased bilinear: within a few grey levels of `preprocess`'s
        cv2.INTER_AREA on real faces).
        """
        x = grey_uint8.float()
        if x.shape[-2:] != (INPUT_SIZE, INPUT_SIZE):
            x = F.interpolate(x.unsqueeze(1), size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", antialias=True,
                              align_corners=False).squeeze(1)
        return ((x / 255.0 - self.mean) / self.std).unsqueeze(1)

    def preprocess(self, crops: Sequence[np.ndarray]) -> torch.Tensor:
        arr = np.stack([cv2.resize(to_grey(c), (INPUT_SIZE, INPUT_SIZE), interpolation=cv2.INTER_AREA)
                        for c in crops]) if len(crops) else np.zeros((0, INPUT_SIZE, INPUT_SIZE), np.uint8)
        return self.normalize(torch.from_numpy(arr))

    def config(self) -> dict:
        return {"type": self.encoder_id, "widths": list(self.widths), "convs_per_stage": self.convs_per_stage,
                "dropout": self.dropout_p, "input_size": INPUT_SIZE, "mean": self.mean, "std": self.std}

    @classmethod
    def from_config(cls, cfg: dict) -> "CompactEncoder":
        return cls(widths=cfg.get("widths", (32, 64, 128, 256)), convs_per_stage=cfg.get("convs_per_stage", 2),
                   dropout=cfg.get("dropout", 0.3), mean=cfg.get("mean", 0.5), std=cfg.get("std", 0.25))
