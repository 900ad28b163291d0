"""Detect-and-track: when the Haar cascade scans the whole frame, and where it looks in between.

A full-frame scan costs 20-30 ms per frame on real footage on a slow 2-core CPU; a window around a
face already tracked, over a narrow range of sizes, costs a small fraction of that. `Scanner.detect`
scans the whole frame every `ScanConfig.full_every` frames, when no track is live, and on the frame
after a track was new (a face just found: look again for others) or lost (a tracked face not found,
until it is found again or its track ends); otherwise only the window of each live track
(`FaceDetector.detect_near`), over sizes around the track's size at its last full scan. Faces
entering the picture are found by the next full scan. Photos never come here: they always get the
full, thorough scan.

With `background=True` (the live page) the full scans made while faces are tracked run in a thread
of their own and the video thread does not wait for them: every frame gets its window scans, and
the faces of a full scan join those of the frame on which it ends (a face the windows found that
frame keeps their fresher box). A second face entering the picture is then found a frame or two
later; such a frame costs a window scan, not a full one (20-30 ms). With nothing tracked there is
no window to scan and nothing to show: the full scan runs in the video thread, and a face is
found on the frame it appears in. `background=False` (the video CLI, the tests) does everything in the calling
thread, frame by frame, deterministically.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from fer_app.background import Background
from fer_app.config import VIDEO_SCAN, ScanConfig
from fer_app.detection import FaceDetector, same_face
from fer_app.tracking import Track
from fer_app.types import Face

__all__ = ["Scanner"]


@dataclass(frozen=True)
class ScanResult:
    faces: list[Face]
    full: bool  # whether the whole frame was scanned


class Scanner:
    """One video's scan schedule over a `FaceDetector`. Not thread-safe: the video thread's."""

    def __init__(self, detector: FaceDetector, config: ScanConfig = VIDEO_SCAN, *, background: bool = False) -> None:
        self.detector, self.config = detector, config
        self._since_full = 0
        self._want_full = True  # a full scan is due and not started yet
        self._sought: set[int] = set()
        #: Where a full scan ended this frame, the sides it found: by face (the faces it gave this frame) and
        #: by track id (faces of tracks live when it started, which keep their window boxes).
        self._full_sides: tuple[dict[Face, int], dict[int, int]] | None = None
        #: Each track's face side at the last full scan that found it: the window scans look for sizes
        #: around it, so that a box cannot creep bigger (or smaller) scan after scan.
        self._sides: dict[int, int] = {}
        self.full_scans = self.window_scans = 0
        # OpenCV's cascade is not safe to share between threads: the background scans get their own.
        #: (its full scan's number, the tracks' boxes when it started, the faces it found)
        self._background: Background[tuple[int, dict[int, Face], list[Face]]] | None = None
        self._last_here = 0  # the number of the last full scan made in the calling thread
        self._background_detector = FaceDetector(detector.config, cascade=detector.cascade) if background else None

    def detect(self, frame: np.ndarray, tracks: Sequence[Track]) -> ScanResult:
        """This frame's faces; `tracks` are the tracker's live tracks before this frame (those lost for a
        few frames included: their windows are scanned too, so a face missed once keeps its track)."""
        self._sought = {t.id for t in tracks}
        self._want_full = (self._want_full or self.config.full_every <= 1 or not tracks
                           or self._since_full + 1 >= self.config.full_every)
        if self._background_detector is None or not tracks:
            return self._detect_here(frame, tracks)
        return self._detect_beside(frame, tracks)

    def after(self, matched: Sequence[Track]) -> None:
        """Tell the schedule which tracks this frame's faces went to: a new track, or a live track not
        found (lost: until it is found again or ends), asks for a full scan."""
        ids = {t.id for t in matched}
        if self._full_sides is not None:
            by_face, by_id = self._full_sides
            self._sides = {t.id: by_id.get(t.id, by_face.get(t.face, self._sides.get(t.id, max(t.face.w, t.face.h))))
                           for t in matched}
        if any(t.hits == 1 for t in matched) or self._sought - ids:
            self._want_full = True

    def close(self) -> None:
        """Stop the background scans' thread, if any (a later `detect` starts another)."""
        background, self._background = self._background, None
        if background is not None:
            background.close()

    def _detect_here(self, frame: np.ndarray, tracks: Sequence[Track]) -> ScanResult:
        """Frame by frame: the whole frame when a full scan is due, else the tracks' windows."""
        if self._want_full:
            self._want_full, self._since_full = False, 0
            self.full_scans += 1
            self._last_here = self.full_scans
            faces = self.detector.detect(frame)
            self._full_sides = ({f: max(f.w, f.h) for f in faces}, {})
            return ScanResult(faces, True)
        self._full_sides = None
        self._since_full += 1
        return ScanResult(self._windows(frame, tracks), False)

    def _detect_beside(self, frame: np.ndarray, tracks: Sequence[Track]) -> ScanResult:
        """The tracks' windows here; a due full scan started in the background; one that ended joined in
        (one that ends after the tracks are gone is dropped: the frame without tracks had a full scan)."""
        if self._background is None:
            self._background = Background("fer-app-scan")
        ended = self._background.take()
        if ended is not None and ended[0] < self._last_here:
            ended = None  # older than a full scan made here since: its faces may have moved on
        if self._want_full and not self._background.busy:
            self._want_full, self._since_full = False, 0
            self.full_scans += 1
            number, detector, copy = self.full_scans, self._background_detector, frame.copy()  # the caller
            boxes = {t.id: t.face for t in tracks}  # may reuse its frame buffer
            self._background.submit(lambda: (number, boxes, detector.detect(copy)))
        else:
            self._since_full += 1
        faces = self._windows(frame, tracks)
        self._full_sides = None
        if ended is None:
            return ScanResult(faces, False)
        _, boxes, found = ended
        new: dict[Face, int] = {}
        by_id: dict[int, int] = {}
        for face in found:  # a tracked face keeps its window box (fresher) and takes the full scan's size
            track = next((i for i, box in boxes.items() if same_face(face, box)), None)
            if track is not None:
                by_id[track] = max(face.w, face.h)
            elif not any(same_face(face, w) for w in faces):
                new[face] = max(face.w, face.h)
        self._full_sides = (new, by_id)
        return ScanResult(sorted([*faces, *new], key=lambda f: f.area, reverse=True), True)

    def _windows(self, frame: np.ndarray, tracks: Sequence[Track]) -> list[Face]:
        if not tracks:
            return []
        self.window_scans += 1
        return self.detector.detect_near(frame, [self._anchored(t) for t in tracks], window=self.config.window,
                                         scale_range=self.config.scale_range)

    def _anchored(self, track: Track) -> Face:
        """The track's box at its current centre with the side of its last full-scan detection."""
        side = self._sides.get(track.id, max(track.face.w, track.face.h))
        cx, cy = track.face.x + track.face.w / 2, track.face.y + track.face.h / 2
        return Face(round(cx - side / 2), round(cy - side / 2), side, side)
