"""The frame pipeline for live video: detect -> batch classify (in a worker) -> track/smooth -> draw.

CONTRACT STUB (to be implemented): the signatures below are what the pages and the CLI use.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from fer_app.config import DetectorConfig
from fer_app.model import Classifier
from fer_app.types import Prediction


@dataclass(frozen=True)
class DrawOptions:
    boxes: bool = True
    labels: bool = True
    bars: bool = True        # a small bar chart of the top probabilities per face
    stats: bool = True       # FPS / latency overlay


@dataclass(frozen=True)
class LiveSettings:
    detector: DetectorConfig = field(default_factory=DetectorConfig)
    smoothing: float = 0.6   # exponential average weight of the past per track (0 = off)
    draw: DrawOptions = field(default_factory=DrawOptions)
    asynchronous: bool | None = None   # classify in a worker thread; None = auto (when it's slower than a frame)


@dataclass(frozen=True)
class LiveStats:
    fps: float
    detect_ms: tuple[float, float]     # (median, p95) over a rolling window
    classify_ms: tuple[float, float]
    draw_ms: tuple[float, float]
    frame_ms: tuple[float, float]
    faces: int
    model: str
    frames: int
    label_refresh_hz: float            # how often each face's label gets a new classification


class LivePipeline:
    """Thread-safe: `process` runs in the video thread, `update`/`stats`/`timeline` from the page."""

    def __init__(self, model: Classifier, settings: LiveSettings | None = None) -> None: ...

    def update(self, model: Classifier | None = None, settings: LiveSettings | None = None) -> None:
        """Swap model/settings; applied from the next frame, the stream keeps running."""

    def process(self, frame: np.ndarray) -> np.ndarray:
        """Annotated copy of a BGR frame."""
        raise NotImplementedError

    def predictions(self) -> list[Prediction]:
        """Smoothed predictions of the last frame (with track ids)."""
        raise NotImplementedError

    def stats(self) -> LiveStats:
        raise NotImplementedError

    def timeline(self) -> list[dict]:
        """Rows {t, track, label, <class>: prob...} for the session's emotion timeline."""
        raise NotImplementedError

    def close(self) -> None: ...
