"""Face detection with OpenCV's Haar cascades, cheap enough to run on every video frame.

`FaceDetector.detect` works on a grey, histogram-equalised (CLAHE) copy of the frame downscaled to
`DetectorConfig.detection_width` (never upscaled) and maps the boxes back to full resolution.
Overlapping detections of one face are merged, keeping the strongest. `crop_faces` cuts square,
centred crops with a margin out of the full-resolution frame, rotated so the eyes are level when
`DetectorConfig.align` is on (`fer_app.alignment`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from fer_app.alignment import EyeAligner, aligned_crop
from fer_app.config import EQUALIZE_MODES, DetectorConfig
from fer_app.imageio import to_grey
from fer_app.types import Face

__all__ = ["DEFAULT_CASCADE", "FaceDetector", "cascade_path", "crop_faces", "equalize", "same_face", "square_box"]

#: Cascade file used by default: a file name in OpenCV's cascade folder, or a path. Chosen on
#: real photos, face-free photos and composites (327 faces, DetectorConfig defaults): `alt` had
#: precision 1.00 at recall 0.93; `alt2` 0.99 / 0.94 (it fires on coin portraits); `default`
#: (the `fer` package's choice) 0.92 / 0.91.
DEFAULT_CASCADE = "haarcascade_frontalface_alt.xml"
#: Two detections of one face: IoU above this, or the smaller box mostly (this fraction) inside.
_MAX_IOU = 0.3
_MAX_CONTAINED = 0.6


def cascade_path(cascade: str | Path) -> Path:
    """Resolve a cascade setting: a bare file name is looked up in `cv2.data.haarcascades`."""
    path = Path(cascade)
    if path.parent == Path(".") and not path.exists():
        path = Path(cv2.data.haarcascades) / path
    return path


class FaceDetector:
    """Haar-cascade face detector; the cascade is loaded once, in the constructor."""

    def __init__(self, config: DetectorConfig | None = None, *, cascade: str | Path = DEFAULT_CASCADE):
        self.config = config or DetectorConfig()
        if (self.config.detection_width < 1 or self.config.scale_factor <= 1.0 or self.config.min_face < 1
                or self.config.equalize not in EQUALIZE_MODES):
            raise ValueError(f"invalid detector settings: {self.config}")
        self.cascade = cascade_path(cascade)
        self._classifier = cv2.CascadeClassifier(str(self.cascade))
        if self._classifier.empty():
            raise FileNotFoundError(f"{self.cascade}: not a readable Haar cascade file")
        self.aligner = EyeAligner() if self.config.align else None

    def detect(self, frame: np.ndarray) -> list[Face]:
        """Faces in a grey (H, W) or BGR (H, W, 3) uint8 frame, largest first, in frame pixels."""
        small, scale = self._prepare(frame)
        min_side = max(1, round(self.config.min_face * scale))
        if min(small.shape[:2]) < min_side:
            return []
        boxes, neighbours = self._classifier.detectMultiScale2(
            small,
            scaleFactor=self.config.scale_factor,
            minNeighbors=self.config.min_neighbors,
            minSize=(min_side, min_side),
        )
        if len(boxes) == 0:
            return []
        height, width = frame.shape[:2]
        kept = _suppress_overlaps(np.asarray(boxes, dtype=np.float64) / scale, np.asarray(neighbours))
        faces = [_to_face(box, width, height) for box in kept]
        return sorted(faces, key=lambda face: face.area, reverse=True)

    def detect_near(self, frame: np.ndarray, faces: Sequence[Face], *, window: float = 0.5,
                    scale_range: float = 1.3) -> list[Face]:
        """Faces found only near `faces` (e.g. the live tracks): in the box of each grown by `window` of
        its side on every side, over face sizes within `scale_range` (x or /) of its own, on the same
        grey, downscaled, equalised copy as `detect` uses. Largest first, in frame pixels."""
        if not faces:
            return []
        small, scale = self._prepare(frame)
        floor = max(1, round(self.config.min_face * scale))
        found, strengths = [], []
        for face in faces:
            side = max(face.w, face.h) * scale
            pad = window * side
            x0, y0 = max(0, int(face.x * scale - pad)), max(0, int(face.y * scale - pad))
            x1 = min(small.shape[1], int(np.ceil((face.x + face.w) * scale + pad)))
            y1 = min(small.shape[0], int(np.ceil((face.y + face.h) * scale + pad)))
            lo, hi = max(floor, int(side / scale_range)), int(np.ceil(side * scale_range))
            if min(x1 - x0, y1 - y0) < lo or hi < lo:
                continue
            boxes, neighbours = self._classifier.detectMultiScale2(
                small[y0:y1, x0:x1], scaleFactor=self.config.scale_factor, minNeighbors=self.config.min_neighbors,
                minSize=(lo, lo), maxSize=(hi, hi))
            for box, n in zip(boxes, np.asarray(neighbours).ravel()):
                found.append([box[0] + x0, box[1] + y0, box[2], box[3]])
                strengths.append(n)
        if not found:
            return []
        height, width = frame.shape[:2]
        kept = _suppress_overlaps(np.asarray(found, dtype=np.float64) / scale, np.asarray(strengths))
        return sorted((_to_face(box, width, height) for box in kept), key=lambda f: f.area, reverse=True)

    def rolls(self, frame: np.ndarray, faces: Sequence[Face]) -> list[float] | None:
        """Each face's roll in degrees (`EyeAligner.roll`) when this detector aligns crops, else None."""
        return None if self.aligner is None else [self.aligner.roll(frame, face) for face in faces]

    def crop(self, frame: np.ndarray, faces: Sequence[Face], rolls: Sequence[float] | None = None) -> list[np.ndarray]:
        """`crop_faces` with this detector's margin, aligned on the eyes when its config says so: by `rolls`
        (degrees, one per face) when given, else by each face's roll measured here (`rolls`)."""
        if self.aligner is None:
            rolls = None
        elif rolls is None:
            rolls = self.rolls(frame, faces)
        return crop_faces(frame, faces, self.config.margin, rolls)

    def _prepare(self, frame: np.ndarray) -> tuple[np.ndarray, float]:
        """Grey, downscaled, equalised copy of the frame and its scale relative to the frame."""
        if frame.dtype != np.uint8 or frame.ndim not in (2, 3) or frame.size == 0:
            raise ValueError(f"expected a non-empty uint8 grey or BGR frame, got {frame.dtype} {frame.shape}")
        grey = to_grey(frame)
        height, width = grey.shape
        scale = min(1.0, self.config.detection_width / width)
        if scale < 1.0:
            size = (self.config.detection_width, max(1, round(height * scale)))
            grey = cv2.resize(grey, size, interpolation=cv2.INTER_AREA)
        return equalize(grey, self.config.equalize), scale


def equalize(grey: np.ndarray, mode: str = "clahe") -> np.ndarray:
    """The detector's contrast step: "clahe" (the default), "global" or "none" (`EQUALIZE_MODES`).

    CLAHE (contrast-limited adaptive histogram equalisation, 2x2 tiles, clip limit 3) was chosen
    over global `cv2.equalizeHist` on video frames: global equalisation stretches the noise of flat
    backgrounds into texture the cascade must reject window by window, so it is slower and finds
    fewer faces; no equalisation loses faces in dim frames (`python -m fer_app bench --pipeline`
    compares the three on FER-2013 val faces pasted into 640x360 frames). Finer tiles (8x8, clip
    limit 2) made false faces out of the tests' textured background; 2x2 tiles did not, and no false
    face came up on 20 face-free photos at two sizes.
    """
    if mode == "clahe":
        return cv2.createCLAHE(clipLimit=3.0, tileGridSize=(2, 2)).apply(grey)
    if mode == "global":
        return cv2.equalizeHist(grey)
    if mode == "none":
        return grey
    raise ValueError(f"unknown equalize mode {mode!r} (one of {', '.join(EQUALIZE_MODES)})")


def square_box(face: Face, frame_shape: tuple[int, ...], margin: float) -> Face:
    """The square crop box for `face`: centred on it, side `max(w, h) * (1 + 2 * margin)`.

    Near a border the square shrinks (staying centred and square) to fit inside the frame;
    it is never padded outside.
    """
    height, width = frame_shape[:2]
    cx = min(max(face.x + face.w / 2, 0.5), width - 0.5)
    cy = min(max(face.y + face.h / 2, 0.5), height - 0.5)
    wanted = max(face.w, face.h) * (1.0 + 2.0 * margin)
    side = max(1, int(min(wanted, 2 * cx, 2 * (width - cx), 2 * cy, 2 * (height - cy))))
    x = min(max(round(cx - side / 2), 0), width - side)
    y = min(max(round(cy - side / 2), 0), height - side)
    return Face(x, y, side, side)


def crop_faces(frame: np.ndarray, faces: Sequence[Face], margin: float = DetectorConfig.margin,
               rolls: Sequence[float] | None = None) -> list[np.ndarray]:
    """Square crops around `faces` (see `square_box`), each rotated by its roll in `rolls` (degrees,
    `fer_app.alignment.aligned_crop`) when given; a crop with no roll is a view into `frame`, no copy."""
    if rolls is not None and len(rolls) != len(faces):
        raise ValueError(f"{len(rolls)} rolls for {len(faces)} faces")
    return [aligned_crop(frame, square_box(face, frame.shape, margin), rolls[i] if rolls is not None else 0.0)
            for i, face in enumerate(faces)]


def _suppress_overlaps(boxes: np.ndarray, strengths: np.ndarray) -> list[np.ndarray]:
    """Keep one box per face: strongest first (then largest), dropping boxes that overlap it."""
    areas = boxes[:, 2] * boxes[:, 3]
    order = np.lexsort((-areas, -strengths.ravel()))
    kept: list[np.ndarray] = []
    for index in order:
        box = boxes[index]
        if not any(_same_face(box, other) for other in kept):
            kept.append(box)
    return kept


def same_face(a: Face, b: Face) -> bool:
    """Whether two detected faces overlap enough to be one face (the rule that merges a face's detections)."""
    return _same_face(a.box, b.box)


def _same_face(a: Sequence[float], b: Sequence[float]) -> bool:
    """Whether two (x, y, w, h) boxes overlap enough to be one face."""
    ix = min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0])
    iy = min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1])
    if ix <= 0 or iy <= 0:
        return False
    inter = ix * iy
    area_a, area_b = a[2] * a[3], b[2] * b[3]
    return inter / (area_a + area_b - inter) > _MAX_IOU or inter / min(area_a, area_b) > _MAX_CONTAINED


def _to_face(box: np.ndarray, width: int, height: int) -> Face:
    """Round a full-resolution float box to pixels, clipped to the frame."""
    x0, y0 = max(0, round(box[0])), max(0, round(box[1]))
    x1, y1 = min(width, round(box[0] + box[2])), min(height, round(box[1] + box[3]))
    return Face(x0, y0, max(1, x1 - x0), max(1, y1 - y0))
