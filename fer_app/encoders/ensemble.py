"""Several compact encoders side by side: one encoder whose embedding is its members' embeddings, concatenated.

An ensemble of saved models (`fer_app.ensemble`) is this encoder plus one linear head holding each member's
head (scaled by 1/N) in its own block of columns: its logits are the mean of the members' logits. So an
ensemble is an ordinary model (one safetensors file, one config, TTA, evaluation, teachers for
distillation), it only costs N networks per view. The members see the same preprocessed pixels, so they
must preprocess alike (same input size and normalisation).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from fer_app.encoders.base import Encoder
from fer_app.encoders.compact import CompactEncoder

#: The preprocessing settings the members must share (they get one set of pixels).
SHARED_KEYS = ("input_size", "mean", "std")


class EnsembleEncoder(Encoder):
    encoder_id = "ensemble"

    def __init__(self, members: Sequence[CompactEncoder]) -> None:
        super().__init__()
        if len(members) < 2:
            raise ValueError(f"an ensemble needs at least 2 member encoders, got {len(members)}")
        if not all(isinstance(m, CompactEncoder) for m in members):
            kinds = sorted({getattr(m, "encoder_id", type(m).__name__) for m in members})
            raise ValueError(f"an ensemble's members must be compact encoders, got {', '.join(kinds)}")
        first = {k: members[0].config()[k] for k in SHARED_KEYS}
        for i, m in enumerate(members[1:], 2):
            own = {k: m.config()[k] for k in SHARED_KEYS}
            if own != first:
                raise ValueError(f"ensemble member {i} preprocesses differently from member 1 ({own} vs {first})")
        self.members = nn.ModuleList(members)
        self.embed_dim = sum(m.embed_dim for m in members)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return torch.cat([m(pixels) for m in self.members], dim=1)

    def normalize(self, grey_uint8: torch.Tensor) -> torch.Tensor:
        return self.members[0].normalize(grey_uint8)

    def preprocess(self, crops: Sequence[np.ndarray]) -> torch.Tensor:
        return self.members[0].preprocess(crops)

    def config(self) -> dict:
        return {"type": self.encoder_id, "members": [m.config() for m in self.members]}

    @classmethod
    def from_config(cls, cfg: dict) -> EnsembleEncoder:
        return cls([CompactEncoder.from_config(m) for m in cfg["members"]])
