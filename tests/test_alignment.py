"""fer_app.alignment: the eyes found in a face box, the roll of the face, crops levelled on the eyes."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest

from fer_app.alignment import MIN_ROLL, EyeAligner, Eyes, aligned_crop
from fer_app.config import DetectorConfig
from fer_app.detection import FaceDetector, crop_faces, square_box
from fer_app.imageio import load_image
from fer_app.types import Face

ASSETS = Path(__file__).resolve().parent.parent / "assets"


@pytest.fixture(scope="module")
def astronaut() -> tuple[np.ndarray, Face]:
    image = load_image(ASSETS / "astronaut.png")
    return image, FaceDetector().detect(image)[0]


def _turned(image: np.ndarray, face: Face, degrees: float) -> np.ndarray:
    """The image turned about the face's centre (positive: counter-clockwise on screen)."""
    turn = cv2.getRotationMatrix2D((face.x + face.w / 2, face.y + face.h / 2), degrees, 1.0)
    return cv2.warpAffine(image, turn, (image.shape[1], image.shape[0]), borderMode=cv2.BORDER_REPLICATE)


def test_eyes_of_an_upright_face_are_in_the_upper_half_left_then_right(astronaut):
    image, face = astronaut
    eyes = EyeAligner().eyes(image, face)
    assert eyes is not None
    (lx, ly), (rx, ry) = eyes.left, eyes.right
    assert face.x < lx < face.x + face.w / 2 < rx < face.x + face.w
    assert face.y + 0.2 * face.h < min(ly, ry) and max(ly, ry) < face.y + 0.55 * face.h
    assert abs(eyes.roll) < 5


@pytest.mark.parametrize("degrees", [-12, 12, 20])
def test_roll_follows_a_turned_head_and_the_aligned_crop_is_level(astronaut, degrees):
    image, face = astronaut
    aligner = EyeAligner()
    upright = aligner.eyes(image, face).roll
    turned = _turned(image, face, degrees)
    found = FaceDetector().detect(turned)[0]
    roll = aligner.roll(turned, found)
    # counter-clockwise on screen raises the right-hand eye: the roll goes down by about the angle
    assert roll == pytest.approx(upright - degrees, abs=4)
    crop = aligned_crop(turned, square_box(found, turned.shape, 0.0), roll)
    assert crop.shape[:2] == (found.w, found.w)
    side = crop.shape[0]
    level = aligner.eyes(crop, Face(0, 0, side, side))
    assert level is not None and abs(level.roll) < 3


def test_no_eyes_in_a_flat_box_means_no_roll():
    flat = np.full((200, 200, 3), 120, np.uint8)
    aligner = EyeAligner()
    assert aligner.eyes(flat, Face(50, 50, 100, 100)) is None
    assert aligner.roll(flat, Face(50, 50, 100, 100)) == 0.0


def test_small_rolls_are_left_alone(astronaut, monkeypatch):
    image, face = astronaut
    aligner = EyeAligner()
    monkeypatch.setattr(aligner, "eyes", lambda *_: Eyes((0.0, 0.0), (100.0, MIN_ROLL * 0.9 * np.pi / 180 * 100)))
    assert aligner.roll(image, face) == 0.0
    monkeypatch.setattr(aligner, "eyes", lambda *_: Eyes((0.0, 0.0), (100.0, 10.0)))
    assert aligner.roll(image, face) == pytest.approx(np.degrees(np.arctan2(10, 100)))


class _FakeCascade:
    """Stands in for the eye cascade: returns eye boxes given as centres in fractions of a 100 px face box."""

    def __init__(self, centres):
        self.centres = centres

    def detectMultiScale(self, band, **_):  # noqa: N802 - OpenCV's name
        scale = 160 / 100  # FACE_WIDTH over the box width; the band starts at 15% of the box height
        return np.array([(round(x * 100 * scale) - 15, round((y * 100 - 15) * scale) - 15, 30, 30)
                         for x, y in self.centres]).reshape(-1, 4)


@pytest.mark.parametrize("centres, plausible", [
    ([(0.3, 0.4), (0.7, 0.4)], True),
    ([(0.3, 0.4), (0.7, 0.5)], True),                 # 14 degrees
    ([(0.3, 0.3), (0.7, 0.65)], False),               # 41 degrees: steeper than MAX_ROLL
    ([(0.45, 0.4), (0.55, 0.4)], False),              # too close for a face this wide
    ([(0.3, 0.4)], False),                            # one eye
    ([(0.2, 0.4), (0.35, 0.4)], False),               # both on one side
    ([(0.3, 0.4), (0.45, 0.4), (0.7, 0.4)], True),    # a third box: the one nearest an eye's place wins
])
def test_eye_candidates_are_checked_before_they_are_believed(centres, plausible):
    aligner = EyeAligner()
    aligner._classifier = _FakeCascade(centres)
    eyes = aligner.eyes(np.zeros((100, 100), np.uint8), Face(0, 0, 100, 100))
    assert (eyes is not None) == plausible
    if plausible:
        (lx, ly), (rx, ry) = eyes.left, eyes.right
        assert (lx, ly) == pytest.approx((100 * centres[0][0], 100 * centres[0][1]), abs=1)
        assert (rx, ry) == pytest.approx((100 * centres[-1][0], 100 * centres[-1][1]), abs=1)


def test_crop_faces_with_rolls_turns_only_the_faces_that_have_one(astronaut):
    image, face = astronaut
    other = Face(300, 300, 80, 80)
    plain = crop_faces(image, [face, other], 0.0)
    assert all(np.shares_memory(c, image) for c in plain)  # views, no copies
    mixed = crop_faces(image, [face, other], 0.0, [10.0, 0.0])
    assert not np.shares_memory(mixed[0], image) and np.shares_memory(mixed[1], image)
    assert mixed[0].shape == plain[0].shape
    assert not np.array_equal(mixed[0], plain[0])
    np.testing.assert_array_equal(mixed[1], plain[1])
    with pytest.raises(ValueError, match="rolls"):
        crop_faces(image, [face, other], 0.0, [1.0])


def test_aligned_crop_turns_the_picture_the_right_way():
    # a bar dipping to the right by 10 degrees, levelled by its own roll
    canvas = np.zeros((100, 100), np.uint8)
    cv2.line(canvas, (20, 50 - 5), (80, 50 + 5), 255, 3)
    roll = float(np.degrees(np.arctan2(10, 60)))
    level = aligned_crop(canvas, Face(0, 0, 100, 100), roll)
    ys = np.nonzero(level[:, 30])[0].mean(), np.nonzero(level[:, 70])[0].mean()
    assert abs(ys[0] - ys[1]) < 1.5


def test_a_detector_that_aligns_crops_levelled_faces(astronaut):
    image, face = astronaut
    turned = _turned(image, face, 12)
    plain, aligning = FaceDetector(), FaceDetector(replace(DetectorConfig(), align=True))
    assert plain.aligner is None and plain.rolls(turned, [face]) is None
    found = aligning.detect(turned)
    rolls = aligning.rolls(turned, found)
    assert rolls[0] < -MIN_ROLL
    np.testing.assert_array_equal(aligning.crop(turned, found)[0], crop_faces(turned, found, 0.0, rolls)[0])
    assert not np.array_equal(aligning.crop(turned, found)[0], plain.crop(turned, found)[0])
