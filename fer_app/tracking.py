"""Face tracking across video frames, and per-track smoothing of class probabilities.

`FaceTracker.update` matches each frame's detected faces to the live tracks, greedily by box
overlap (IoU) and then by centre distance, tracks seen in the last frame first, so a face keeps its
track id while it moves. An
unmatched face starts a new track with a fresh id (ids are never reused); a track that goes
unmatched for more than `max_missed` frames dies, so a face that leaves and comes back, or a
different face, starts from scratch and never inherits another track's label or probabilities.
`FaceTracker.add_probabilities` folds a classification into a track's exponential average:
`smoothed = alpha * smoothed + (1 - alpha) * new`, `alpha` being the weight of the past (0 = off).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from fer_app.types import Face

__all__ = ["FaceTracker", "Track", "centre_distance", "iou"]

#: Classification times kept per track, for its label refresh rate.
_REFRESH_HISTORY = 30


@dataclass
class Track:
    """One face followed across frames: its last box, smoothed probabilities and bookkeeping."""

    id: int
    face: Face
    probabilities: np.ndarray | None = None  # smoothed; None until the first classification
    missed: int = 0  # consecutive frames without a matching detection
    hits: int = 1  # frames with a matching detection
    updates: deque[float] = field(default_factory=lambda: deque(maxlen=_REFRESH_HISTORY))

    def refresh_hz(self) -> float | None:
        """Classifications per second over the recent ones; None before the second."""
        if len(self.updates) < 2 or self.updates[-1] <= self.updates[0]:
            return None
        return (len(self.updates) - 1) / (self.updates[-1] - self.updates[0])


def iou(a: Face, b: Face) -> float:
    """Intersection over union of two boxes."""
    ix = min(a.x + a.w, b.x + b.w) - max(a.x, b.x)
    iy = min(a.y + a.h, b.y + b.h) - max(a.y, b.y)
    if ix <= 0 or iy <= 0:
        return 0.0
    inter = ix * iy
    return inter / (a.area + b.area - inter)


def centre_distance(a: Face, b: Face) -> float:
    """Distance between the box centres, in units of the boxes' mean side."""
    dx = (a.x + a.w / 2) - (b.x + b.w / 2)
    dy = (a.y + a.h / 2) - (b.y + b.h / 2)
    side = (a.w + a.h + b.w + b.h) / 4
    return float(np.hypot(dx, dy) / max(side, 1.0))


class FaceTracker:
    """IoU/centroid tracker with per-track probability smoothing. Not thread-safe: one caller.

    min_iou: boxes overlapping at least this much can be one face. max_shift: otherwise, centres
    at most this many mean sides apart, with sides within `max_scale` of each other, can be too
    (a fast move between two frames).
    """

    def __init__(self, *, smoothing: float = 0.6, max_missed: int = 8, min_iou: float = 0.3,
                 max_shift: float = 0.6, max_scale: float = 1.5) -> None:
        if not 0.0 <= smoothing < 1.0:
            raise ValueError(f"smoothing must be in [0, 1), got {smoothing}")
        if max_missed < 0:
            raise ValueError(f"max_missed must be >= 0, got {max_missed}")
        self.smoothing, self.max_missed = smoothing, max_missed
        self.min_iou, self.max_shift, self.max_scale = min_iou, max_shift, max_scale
        self._tracks: dict[int, Track] = {}
        self._next_id = 1

    @property
    def tracks(self) -> list[Track]:
        """The live tracks (matched this frame or recently), oldest first."""
        return list(self._tracks.values())

    def get(self, track_id: int) -> Track | None:
        return self._tracks.get(track_id)

    def update(self, faces: Sequence[Face]) -> list[Track]:
        """Match this frame's faces to tracks; returns the track of each face, in `faces`' order."""
        tracks = list(self._tracks.values())
        assigned: dict[int, Track] = {}
        used: set[int] = set()
        for *_, ti, fi in sorted(self._candidates(tracks, faces)):
            if fi not in assigned and ti not in used:
                assigned[fi] = tracks[ti]
                used.add(ti)
        for ti, track in enumerate(tracks):
            if ti not in used:
                track.missed += 1
                if track.missed > self.max_missed:
                    del self._tracks[track.id]
        out = []
        for fi, face in enumerate(faces):
            track = assigned.get(fi)
            if track is None:
                track = Track(self._next_id, face)
                self._tracks[track.id] = track
                self._next_id += 1
            else:
                track.face, track.missed, track.hits = face, 0, track.hits + 1
            out.append(track)
        return out

    def add_probabilities(self, track_id: int, probabilities: np.ndarray, now: float) -> bool:
        """Fold a classification into the track's smoothed probabilities; False if the track is gone."""
        track = self._tracks.get(track_id)
        if track is None:
            return False
        new = np.asarray(probabilities, dtype=np.float32)
        if track.probabilities is None or self.smoothing == 0.0:
            track.probabilities = new.copy()
        else:
            track.probabilities = self.smoothing * track.probabilities + (1.0 - self.smoothing) * new
        track.updates.append(now)
        return True

    def clear_probabilities(self) -> None:
        """Forget every track's probabilities (e.g. after a model change); ids stay."""
        for track in self._tracks.values():
            track.probabilities = None
            track.updates.clear()

    def reset(self) -> None:
        """Drop all tracks; ids keep counting up."""
        self._tracks.clear()

    def _candidates(self, tracks: Sequence[Track], faces: Sequence[Face]) -> list[tuple[int, float, float, int, int]]:
        """(frames missed, -IoU, centre distance, track index, face index) of every pair that may be one face.

        Sorted, these match the tracks seen in the last frame first (a matching cascade, as in
        DeepSORT): a face moving onto the spot where a lost track was last seen stays in its own track.
        """
        pairs = []
        for ti, track in enumerate(tracks):
            for fi, face in enumerate(faces):
                overlap, shift = iou(track.face, face), centre_distance(track.face, face)
                scale = max(track.face.w, face.w) / max(1, min(track.face.w, face.w))
                if overlap >= self.min_iou or (shift <= self.max_shift and scale <= self.max_scale):
                    pairs.append((track.missed, -overlap, shift, ti, fi))
        return pairs
