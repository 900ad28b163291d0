"""Result types shared by the library, the CLI and the pages."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from fer_app.config import CLASSES


@dataclass(frozen=True)
class Face:
    """A detected face: box in full-frame pixel coordinates (x, y, width, height)."""

    x: int
    y: int
    w: int
    h: int

    @property
    def box(self) -> tuple[int, int, int, int]:
        return (self.x, self.y, self.w, self.h)

    @property
    def area(self) -> int:
        return self.w * self.h


@dataclass(frozen=True)
class Prediction:
    """One face and its class probabilities (in `CLASSES` order).

    shown: the index of the class to show, where it is not simply the top one (a tracked face's
    label under hysteresis, `fer_app.tracking`); None: the top class. `label` and `confidence` are
    the shown class and its probability.
    """

    face: Face
    probabilities: np.ndarray
    classes: tuple[str, ...] = field(default=CLASSES)
    track_id: int | None = None
    shown: int | None = None

    @property
    def label(self) -> str:
        return self.classes[self._index]

    @property
    def confidence(self) -> float:
        return float(self.probabilities[self._index])

    @property
    def _index(self) -> int:
        return int(np.argmax(self.probabilities)) if self.shown is None else self.shown

    def to_dict(self) -> dict:
        out = {
            "box": list(self.face.box),
            "label": self.label,
            "confidence": round(self.confidence, 4),
            "probabilities": {c: round(float(p), 4) for c, p in zip(self.classes, self.probabilities)},
        }
        if self.track_id is not None:
            out["track_id"] = self.track_id
        return out
