"""Classifier heads: embeddings (N, D) -> logits (N, 7). Trained (linear, MLP), zero-shot, or personal.

A personal head (`kind="personal"`, made by `fer_app.calibration`) is a trained linear/MLP head kept
exactly as it was, plus a memory of one person's capture embeddings with their labels: an embedding
whose cosine similarity to its nearest capture reaches `gate` takes the (similarity-weighted) vote of
its `k` nearest captures; any other face (other people, other lighting) keeps the base head's output.
"""

from __future__ import annotations

import torch
from torch import nn


class Head(nn.Module):
    """A linear or small-MLP head; `kind` and sizes are saved in the model config."""

    def __init__(self, in_dim: int, num_classes: int, kind: str = "linear", hidden: int = 256,
                 dropout: float = 0.0, *, base: str = "linear", memory: int = 0, gate: float = 0.97, k: int = 5,
                 sharpness: float = 0.02) -> None:
        super().__init__()
        if kind not in ("linear", "mlp", "zero-shot", "personal"):
            raise ValueError(f"unknown head type {kind!r} (linear, mlp, zero-shot or personal)")
        self.kind, self.in_dim, self.num_classes = kind, int(in_dim), int(num_classes)
        self.hidden, self.dropout_p = int(hidden), float(dropout)
        self.base = base if kind == "personal" else kind
        if kind == "personal":
            if base not in ("linear", "mlp") or memory < 1:
                raise ValueError(f"a personal head needs a linear or mlp base and 1+ captures (got {base!r}, {memory})")
            self.gate, self.k, self.sharpness = float(gate), int(k), float(sharpness)
            self.register_buffer("memory", torch.zeros(int(memory), int(in_dim)))
            self.register_buffer("memory_labels", torch.zeros(int(memory), dtype=torch.int64))
        if self.base == "mlp":
            self.net = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout),
                                     nn.Linear(hidden, num_classes))
        else:
            self.net = nn.Sequential(nn.Dropout(dropout), nn.Linear(in_dim, num_classes, bias=kind != "zero-shot"))

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        logits = self.net(embeddings)
        if self.kind != "personal":
            return logits
        return torch.log(self.personal_probabilities(embeddings, torch.softmax(logits.float(), dim=1)) + 1e-12)

    def personal_probabilities(self, embeddings: torch.Tensor, base: torch.Tensor,
                               gate: float | None = None) -> torch.Tensor:
        """The base head's probabilities `base`, replaced by the captures' vote where the gate opens."""
        gate = self.gate if gate is None else gate
        sims = nn.functional.normalize(embeddings.float(), dim=1) @ self.memory.T
        top = sims.topk(min(self.k, len(self.memory)), dim=1)
        weights = torch.softmax(top.values / self.sharpness, dim=1)
        votes = nn.functional.one_hot(self.memory_labels[top.indices], self.num_classes).float()
        vote = (weights.unsqueeze(-1) * votes).sum(1)
        opened = torch.sigmoid((top.values[:, :1] - gate) / 0.005)  # a soft step at `gate`
        return opened * vote + (1 - opened) * base

    def remember(self, embeddings: torch.Tensor, labels: torch.Tensor) -> None:
        """Store the captures' embeddings (normalised) and labels (a personal head's memory)."""
        with torch.no_grad():
            self.memory.copy_(nn.functional.normalize(embeddings.float(), dim=1))
            self.memory_labels.copy_(labels.long())

    def config(self) -> dict:
        cfg = {"type": self.kind, "in_dim": self.in_dim, "num_classes": self.num_classes,
               "hidden": self.hidden, "dropout": self.dropout_p}
        if self.kind == "personal":
            cfg.update(base=self.base, memory=len(self.memory), gate=self.gate, k=self.k, sharpness=self.sharpness)
        return cfg

    @classmethod
    def from_config(cls, cfg: dict) -> "Head":
        extra = {k: cfg[k] for k in ("base", "memory", "gate", "k", "sharpness") if k in cfg} \
            if cfg.get("type") == "personal" else {}
        return cls(cfg["in_dim"], cfg["num_classes"], cfg.get("type", "linear"), cfg.get("hidden", 256),
                   cfg.get("dropout", 0.0), **extra)


def zero_shot_head(class_weights: torch.Tensor) -> Head:
    """A head whose weights are CLIP text embeddings (times the logit scale): CLIP's zero-shot classifier."""
    head = Head(class_weights.shape[1], class_weights.shape[0], kind="zero-shot")
    with torch.no_grad():
        head.net[-1].weight.copy_(class_weights)
    return head
