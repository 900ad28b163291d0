"""Roll correction of face crops: level the eyes, found with OpenCV's eye cascade, before classifying.

A head tilted to one side (roll) gives a Haar face box that is upright while the face in it is not.
`EyeAligner.roll` looks for the two eyes in the upper part of the box (the face scaled to a fixed
width, so the cost does not grow with the face) and returns the angle of the line through them;
`aligned_crop` cuts the square crop rotated by that angle about the box's centre, so the eyes come out
level. When the eyes are not both found, or their line is implausible (too steep, too short or too
long for the box), the roll is unknown and the crop is the plain one: alignment never makes a crop
worse than the box it came from.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from fer_app.imageio import to_grey
from fer_app.types import Face

#: Eye cascade: OpenCV's, from its cascade folder.
EYE_CASCADE = Path(cv2.data.haarcascades) / "haarcascade_eye.xml"
#: The face box is scaled to this width before the eyes are looked for (the cascade's window is 20 px,
#: an eye about a fifth of the face: about 30 px here).
FACE_WIDTH = 160
#: The eyes are looked for in this band of the box's height (a Haar box puts them at about 0.35-0.45).
EYE_BAND = (0.15, 0.6)
#: An eye's side, as a fraction of the box width.
EYE_SIZE = (0.12, 0.4)
#: The eyes' distance, as a fraction of the box width.
EYE_DISTANCE = (0.25, 0.7)
#: Rolls beyond this many degrees are taken for a false eye (the face cascade rarely finds faces tilted more).
MAX_ROLL = 30.0
#: Rolls under this many degrees are left alone (a resampled crop is slightly blurred).
MIN_ROLL = 2.0
#: Where the eyes of an upright face sit in the box (x of each, y), as fractions; a candidate nearest wins.
_EXPECTED = ((0.3, 0.4), (0.7, 0.4))


@dataclass(frozen=True)
class Eyes:
    """Centres of the two eyes in frame pixels: `left` is the one on the image's left."""

    left: tuple[float, float]
    right: tuple[float, float]

    @property
    def roll(self) -> float:
        """Degrees the eye line dips to the image's right (positive: the right-hand eye is lower)."""
        return math.degrees(math.atan2(self.right[1] - self.left[1], self.right[0] - self.left[0]))


class EyeAligner:
    """Finds the eyes in a face box (`eyes`) and the roll of the face (`roll`); loads its cascade once."""

    def __init__(self, cascade: str | Path = EYE_CASCADE):
        self.cascade = Path(cascade)
        self._classifier = cv2.CascadeClassifier(str(self.cascade))
        if self._classifier.empty():
            raise FileNotFoundError(f"{self.cascade}: not a readable Haar cascade file")

    def eyes(self, frame: np.ndarray, face: Face) -> Eyes | None:
        """The two eyes of `face` in a grey or BGR `frame`, or None when they are not both found plausibly."""
        height, width = frame.shape[:2]
        top, bottom = face.y + int(EYE_BAND[0] * face.h), face.y + int(EYE_BAND[1] * face.h)
        x0, x1 = max(0, face.x), min(width, face.x + face.w)
        top, bottom = max(0, top), min(height, bottom)
        if x1 - x0 < 8 or bottom - top < 4:
            return None
        scale = FACE_WIDTH / face.w
        band = cv2.resize(to_grey(frame[top:bottom, x0:x1]),
                          (max(1, round((x1 - x0) * scale)), max(1, round((bottom - top) * scale))),
                          interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
        band = cv2.equalizeHist(band)
        lo, hi = (max(1, int(s * FACE_WIDTH)) for s in EYE_SIZE)
        if min(band.shape) < lo:
            return None
        found = self._classifier.detectMultiScale(band, scaleFactor=1.1, minNeighbors=3, minSize=(lo, lo),
                                                  maxSize=(hi, hi))
        # candidate centres, as fractions of the box (x of its width, y of its height)
        centres = [((x0 - face.x + (x + w / 2) / scale) / face.w, (top - face.y + (y + h / 2) / scale) / face.h)
                   for x, y, w, h in (found if len(found) else [])]
        left = [c for c in centres if c[0] < 0.5]
        right = [c for c in centres if c[0] >= 0.5]
        if not left or not right:
            return None
        pick = [min(side, key=lambda c, e=e: math.dist(c, e)) for side, e in zip((left, right), _EXPECTED)]
        to_frame = [(face.x + cx * face.w, face.y + cy * face.h) for cx, cy in pick]
        eyes = Eyes(to_frame[0], to_frame[1])
        distance = math.dist(eyes.left, eyes.right) / face.w
        if not (EYE_DISTANCE[0] <= distance <= EYE_DISTANCE[1]) or abs(eyes.roll) > MAX_ROLL:
            return None
        return eyes

    def roll(self, frame: np.ndarray, face: Face) -> float:
        """The face's roll in degrees (see `Eyes.roll`); 0 when the eyes are not found or it is under `MIN_ROLL`."""
        eyes = self.eyes(frame, face)
        return eyes.roll if eyes is not None and abs(eyes.roll) >= MIN_ROLL else 0.0


def aligned_crop(frame: np.ndarray, box: Face, roll: float) -> np.ndarray:
    """The square `box` of `frame`, rotated by `roll` degrees about its centre so that a face with that
    roll comes out level; the plain crop (a view) when `roll` is 0. Pixels from outside the frame repeat
    its border."""
    if roll == 0.0:
        return frame[box.y:box.y + box.h, box.x:box.x + box.w]
    centre = (box.x + box.w / 2, box.y + box.h / 2)
    matrix = cv2.getRotationMatrix2D(centre, roll, 1.0)
    matrix[:, 2] -= (box.x, box.y)
    return cv2.warpAffine(frame, matrix, (box.w, box.h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
