"""Batched data augmentation of normalised face batches (any channels and size), done on tensors.

No per-image Python work; the random draws come from a CPU generator (so a run is reproducible
and resumable whatever the device), the image work runs on the batch's device.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class AugmentConfig:
    """Random flip, rotation (degrees), scale, shift (fraction of the side), brightness/contrast, erasing."""

    flip: bool = True
    rotation: float = 12.0
    scale: tuple[float, float] = (0.88, 1.12)
    shift: float = 0.1
    brightness: float = 0.25
    contrast: float = 0.3
    erase_p: float = 0.4
    erase_area: tuple[float, float] = (0.04, 0.2)


def augment(x: torch.Tensor, cfg: AugmentConfig, gen: torch.Generator) -> torch.Tensor:
    """Augment a normalised batch (N, C, H, W) with one affine warp + photometric jitter + erasing.

    Contrast is scaled around each image's per-channel mean, so a grey face repeated over channels
    with per-channel normalisation (CLIP) stays grey; erased boxes are 0, each channel's mean.
    """
    n, _, h, w = x.shape
    device = x.device

    def uniform(lo: float, hi: float) -> torch.Tensor:
        return torch.rand(n, generator=gen) * (hi - lo) + lo

    angle = uniform(-cfg.rotation, cfg.rotation) * math.pi / 180
    scale = uniform(*cfg.scale)
    flip = torch.where(torch.rand(n, generator=gen) < 0.5, -1.0, 1.0) if cfg.flip else torch.ones(n)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos * flip, -sin, uniform(-cfg.shift, cfg.shift) * 2], 1),
                         torch.stack([sin * flip, cos, uniform(-cfg.shift, cfg.shift) * 2], 1)], 1)
    grid = F.affine_grid(theta.to(device=device, dtype=x.dtype), list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    mean = x.mean(dim=(2, 3), keepdim=True)
    contrast = uniform(1 - cfg.contrast, 1 + cfg.contrast).view(n, 1, 1, 1).to(device)
    brightness = uniform(-cfg.brightness, cfg.brightness).view(n, 1, 1, 1).to(device)
    x = (x - mean) * contrast + mean + brightness
    if cfg.erase_p > 0:
        area = uniform(*cfg.erase_area)
        aspect = torch.exp(uniform(math.log(0.5), math.log(2.0)))
        eh = (torch.sqrt(area * aspect) * h).clamp(1, h)
        ew = (torch.sqrt(area / aspect) * w).clamp(1, w)
        y0 = torch.rand(n, generator=gen) * (h - eh)
        x0 = torch.rand(n, generator=gen) * (w - ew)
        ys = torch.arange(h).view(1, h, 1)
        xs = torch.arange(w).view(1, 1, w)
        box = (ys >= y0.view(n, 1, 1)) & (ys < (y0 + eh).view(n, 1, 1)) & \
              (xs >= x0.view(n, 1, 1)) & (xs < (x0 + ew).view(n, 1, 1))
        on = (torch.rand(n, generator=gen) < cfg.erase_p).view(n, 1, 1)
        x = x.masked_fill((box & on).unsqueeze(1).to(device), 0.0)
    return x
