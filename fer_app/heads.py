"""Classifier heads: embeddings (N, D) -> logits (N, 7). Trained (linear, MLP) or zero-shot."""

from __future__ import annotations

import torch
from torch import nn


class Head(nn.Module):
    """A linear or small-MLP head; `kind` and sizes are saved in the model config."""

    def __init__(self, in_dim: int, num_classes: int, kind: str = "linear", hidden: int = 256,
                 dropout: float = 0.0) -> None:
        super().__init__()
        if kind not in ("linear", "mlp", "zero-shot"):
            raise ValueError(f"unknown head type {kind!r} (linear, mlp or zero-shot)")
        self.kind, self.in_dim, self.num_classes = kind, int(in_dim), int(num_classes)
        self.hidden, self.dropout_p = int(hidden), float(dropout)
        if kind == "mlp":
            self.net = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout),
                                     nn.Linear(hidden, num_classes))
        else:
            self.net = nn.Sequential(nn.Dropout(dropout), nn.Linear(in_dim, num_classes, bias=kind != "zero-shot"))

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        return self.net(embeddings)

    def config(self) -> dict:
        return {"type": self.kind, "in_dim": self.in_dim, "num_classes": self.num_classes,
                "hidden": self.hidden, "dropout": self.dropout_p}

    @classmethod
    def from_config(cls, cfg: dict) -> "Head":
        return cls(cfg["in_dim"], cfg["num_classes"], cfg.get("type", "linear"), cfg.get("hidden", 256),
                   cfg.get("dropout", 0.0))


def zero_shot_head(class_weights: torch.Tensor) -> Head:
    """A head whose weights are CLIP text embeddings (times the logit scale): CLIP's zero-shot classifier."""
    head = Head(class_weights.shape[1], class_weights.shape[0], kind="zero-shot")
    with torch.no_grad():
        head.net[-1].weight.copy_(class_weights)
    return head
