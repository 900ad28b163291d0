"""Detect-and-track: when the Haar cascade scans the whole frame, and where it looks in between.

A full-frame scan costs 20-30 ms per frame on real footage on a slow 2-core CPU; a window around a
face already tracked, over a narrow range of sizes, costs a small fraction of that. `Scanner.detect`
scans the whole frame every `ScanConfig.full_every` frames, when no track is live, and on the frame
after a track was new (a face just found: look again for others) or lost (a tracked face not found,
until it is found again or its track ends); otherwise only the window of each live track
(`FaceDetector.detect_near`), over sizes around the track's size at its last full scan. Faces entering the picture are found by the next full scan. Photos
never come here: they always get the full, thorough scan.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from fer_app.config import VIDEO_SCAN, ScanConfig
from fer_app.detection import FaceDetector
from fer_app.tracking import Track
from fer_app.types import Face

__all__ = ["Scanner"]


@dataclass(frozen=True)
class ScanResult:
    faces: list[Face]
    full: bool  # whether the whole frame was scanned


class Scanner:
    """One video's scan schedule over a `FaceDetector`. Not thread-safe: the video thread's."""

    def __init__(self, detector: FaceDetector, config: ScanConfig = VIDEO_SCAN) -> None:
        self.detector, self.config = detector, config
        self._since_full = 0
        self._need_full = True
        self._sought: set[int] = set()
        self._full = False
        #: Each track's face side at the last full scan that found it: the window scans look for sizes
        #: around it, so that a box cannot creep bigger (or smaller) scan after scan.
        self._sides: dict[int, int] = {}
        self.full_scans = self.window_scans = 0

    def detect(self, frame: np.ndarray, tracks: Sequence[Track]) -> ScanResult:
        """This frame's faces; `tracks` are the tracker's live tracks before this frame (those lost for a
        few frames included: their windows are scanned too, so a face missed once keeps its track)."""
        self._sought = {t.id for t in tracks}
        full = (self.config.full_every <= 1 or self._need_full or not tracks
                or self._since_full + 1 >= self.config.full_every)
        self._full = full
        if full:
            self._since_full = 0
            self.full_scans += 1
            return ScanResult(self.detector.detect(frame), True)
        self._since_full += 1
        self.window_scans += 1
        return ScanResult(self.detector.detect_near(frame, [self._anchored(t) for t in tracks],
                                                    window=self.config.window, scale_range=self.config.scale_range),
                          False)

    def after(self, matched: Sequence[Track]) -> None:
        """Tell the schedule which tracks this frame's faces went to: a new track, or a live track not
        found (lost: until it is found again or ends), asks for a full scan next frame."""
        ids = {t.id for t in matched}
        if self._full:
            self._sides = {t.id: max(t.face.w, t.face.h) for t in matched}
        self._need_full = any(t.hits == 1 for t in matched) or bool(self._sought - ids)

    def _anchored(self, track: Track) -> Face:
        """The track's box at its current centre with the side of its last full-scan detection."""
        side = self._sides.get(track.id, max(track.face.w, track.face.h))
        cx, cy = track.face.x + track.face.w / 2, track.face.y + track.face.h / 2
        return Face(round(cx - side / 2), round(cy - side / 2), side, side)
