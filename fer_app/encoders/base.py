"""The encoder interface every backbone implements."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn


class Encoder(nn.Module, ABC):
    """A torch module mapping preprocessed pixels (N, C, H, W) to embeddings (N, embed_dim).

    Crops given to `preprocess` are uint8 arrays, either grey (H, W) or BGR (H, W, 3) as
    OpenCV produces them; any size (the encoder resizes). `normalize` is the same on a batch of
    grey faces already in a tensor (the training engine's input), on the tensor's device.
    """

    #: Stable identifier written into model configs ("compact", "clip-vit-b32").
    encoder_id: str = ""
    embed_dim: int = 0

    @abstractmethod
    def preprocess(self, crops: Sequence[np.ndarray]) -> torch.Tensor:
        """Turn face crops into the float tensor `forward` expects."""

    @abstractmethod
    def config(self) -> dict:
        """What is needed to rebuild this encoder (JSON-serialisable)."""

    def normalize(self, grey_uint8: torch.Tensor) -> torch.Tensor:
        """Grey uint8 faces (N, H, W) -> the float pixels `forward` expects (N, C, S, S), on the input's device.

        This fallback goes through `preprocess` (numpy, on the CPU); encoders override it with tensor code.
        """
        pixels = self.preprocess(list(grey_uint8.cpu().numpy()))
        return pixels.to(grey_uint8.device)
