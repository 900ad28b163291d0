"""Face tracking across video frames, and per-track smoothing of class probabilities.

`FaceTracker.update` matches each frame's detected faces to the live tracks, greedily by box
overlap (IoU) and then by centre distance, tracks seen in the last frame first, so a face keeps its
track id while it moves. An
unmatched face starts a new track with a fresh id (ids are never reused); a track that goes
unmatched for more than `max_missed` frames dies, so a face that leaves and comes back, or a
different face, starts from scratch and never inherits another track's label or probabilities.
`FaceTracker.add_probabilities` folds a classification into a track's exponential average:
`smoothed = alpha * smoothed + (1 - alpha) * new`, `alpha` being the weight of the past (0 = off);
with one TTA view per frame, `new` is the mean of the latest result of each view.

Label hysteresis: each track also holds the label it shows (`Track.label`). It starts as the top
class of the first result and changes only when another class leads the shown one by at least
`label_margin` in the smoothed probabilities, and the shown label has been held for at least
`label_dwell` seconds (the defaults are `LABEL_MARGIN` and `LABEL_DWELL_S` in `fer_app.config`).
Both 0, or smoothing 0 (off): the shown label is always the top class.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from fer_app.config import LABEL_DWELL_S, LABEL_MARGIN
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
    label: int | None = None  # index of the class shown (hysteresis); None until the first classification
    label_since: float = 0.0  # when the shown label last changed
    label_changes: int = 0  # how often the shown label changed
    classified: int = 0  # classifications folded in (video spreads a face's TTA views over them)
    view_probabilities: dict[int, np.ndarray] = field(default_factory=dict)  # the latest of each TTA view

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
    (a fast move between two frames). label_margin, label_dwell: the label hysteresis (module docstring).
    """

    def __init__(self, *, smoothing: float = 0.6, max_missed: int = 8, min_iou: float = 0.3,
                 max_shift: float = 0.6, max_scale: float = 1.5, label_margin: float = LABEL_MARGIN,
                 label_dwell: float = LABEL_DWELL_S) -> None:
        if not 0.0 <= smoothing < 1.0:
            raise ValueError(f"smoothing must be in [0, 1), got {smoothing}")
        if max_missed < 0:
            raise ValueError(f"max_missed must be >= 0, got {max_missed}")
        if not 0.0 <= label_margin < 1.0 or label_dwell < 0:
            raise ValueError(f"label_margin must be in [0, 1) and label_dwell >= 0, got {label_margin}, {label_dwell}")
        self.smoothing, self.max_missed = smoothing, max_missed
        self.label_margin, self.label_dwell = label_margin, label_dwell
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

    def add_probabilities(self, track_id: int, probabilities: np.ndarray, now: float,
                          view: int | None = None) -> bool:
        """Fold a classification into the track's smoothed probabilities; False if the track is gone.

        view: the TTA view (`Classifier.view`) the probabilities are of, when a face gets one view per
        frame: the mean of the latest probabilities of each view seen is what is folded in, so that once
        every view has come round it is the full TTA average, refreshed one view at a time."""
        track = self._tracks.get(track_id)
        if track is None:
            return False
        new = np.asarray(probabilities, dtype=np.float32)
        if view is not None:
            track.view_probabilities[view] = new
            new = np.mean(list(track.view_probabilities.values()), axis=0).astype(np.float32)
        track.classified += 1
        if track.probabilities is None or self.smoothing == 0.0:
            track.probabilities = new.copy()
        else:
            track.probabilities = self.smoothing * track.probabilities + (1.0 - self.smoothing) * new
        track.updates.append(now)
        self._hold_label(track, now)
        return True

    def _hold_label(self, track: Track, now: float) -> None:
        """The hysteresis: switch the shown label only to a class that clearly leads, after the dwell."""
        top = int(np.argmax(track.probabilities))
        if track.label is None or self.smoothing == 0.0 and top != track.label:  # smoothing off: no hold either
            track.label_changes += track.label is not None
            track.label, track.label_since = top, now
            return
        if top == track.label:
            return
        lead = float(track.probabilities[top] - track.probabilities[track.label])
        if lead >= self.label_margin and now - track.label_since >= self.label_dwell:
            track.label, track.label_since = top, now
            track.label_changes += 1

    def clear_probabilities(self) -> None:
        """Forget every track's probabilities (e.g. after a model change); ids stay."""
        for track in self._tracks.values():
            track.probabilities, track.label = None, None
            track.updates.clear()
            track.view_probabilities.clear()
            track.classified = 0

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
