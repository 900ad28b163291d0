"""Tests of fer_app.detection on a real photo (assets/astronaut.png) and scenes composited from it."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from fer_app.config import DetectorConfig
from fer_app.detection import FaceDetector, _suppress_overlaps, cascade_path, crop_faces, equalize, square_box
from fer_app.imageio import load_image
from fer_app.types import Face

ASTRONAUT = Path(__file__).resolve().parent.parent / "assets" / "astronaut.png"
#: The astronaut's face in the 512x512 photo (x, y, w, h), as measured by hand.
ASTRONAUT_FACE = (176, 65, 97, 97)


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    return load_image(ASTRONAUT)


@pytest.fixture(scope="module")
def detector() -> FaceDetector:
    return FaceDetector()


def _centre(box: tuple[int, int, int, int]) -> tuple[float, float]:
    return box[0] + box[2] / 2, box[1] + box[3] / 2


def _assert_near(found: Face, expected: tuple[float, float, float, float], tolerance: float = 0.2) -> None:
    """The box's centre and side agree with `expected` within `tolerance` of the expected side."""
    side = expected[2]
    (fx, fy), (ex, ey) = _centre(found.box), _centre(expected)
    assert abs(fx - ex) <= tolerance * side and abs(fy - ey) <= tolerance * side, (found, expected)
    assert abs(found.w - side) <= 2 * tolerance * side, (found, expected)


def _head(astronaut: np.ndarray) -> np.ndarray:
    """The astronaut's head and shoulders, face box at (60, 55, 97, 97) inside the crop."""
    x, y, w, _ = ASTRONAUT_FACE
    return astronaut[y - 55 : y + 2 * w, x - 60 : x + w + 60]


def _scene(astronaut: np.ndarray) -> tuple[np.ndarray, list[tuple[float, float, float, float]]]:
    """A 1280x720 frame with three copies of the head (plain, mirrored and 1.4x).

    The background is the photo's lower part (suit, badges, helmet, flag) stretched to the frame:
    real texture, and no face.
    """
    frame = cv2.resize(astronaut[250:], (1280, 720), interpolation=cv2.INTER_CUBIC)
    head = _head(astronaut)
    copies = [(head, 1.0, 40, 150), (head[:, ::-1], 1.0, 480, 380), (head, 1.4, 850, 100)]
    faces = []
    for patch, scale, x, y in copies:
        patch = cv2.resize(patch, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        frame[y : y + patch.shape[0], x : x + patch.shape[1]] = patch
        faces.append((x + 60 * scale, y + 55 * scale, 97 * scale, 97 * scale))
    return frame, faces


# --- detection ----------------------------------------------------------------------------------


def test_finds_the_astronauts_face(detector: FaceDetector, astronaut: np.ndarray) -> None:
    faces = detector.detect(astronaut)
    assert len(faces) == 1
    _assert_near(faces[0], ASTRONAUT_FACE)


@pytest.mark.parametrize("kind", ["black", "grey", "noise", "smooth noise"])
def test_no_face_in_blank_or_noise(detector: FaceDetector, kind: str) -> None:
    rng = np.random.default_rng(1)
    frames = {
        "black": np.zeros((480, 640, 3), np.uint8),
        "grey": np.full((480, 640, 3), 128, np.uint8),
        "noise": rng.integers(0, 256, (480, 640, 3), dtype=np.uint8),
        "smooth noise": cv2.GaussianBlur(rng.integers(0, 256, (480, 640, 3), dtype=np.uint8), (0, 0), 3),
    }
    assert detector.detect(frames[kind]) == []


def test_equalize_modes() -> None:
    rng = np.random.default_rng(2)
    dim = rng.integers(20, 60, (90, 160), dtype=np.uint8)  # a dim, low-contrast frame
    assert equalize(dim, "none") is dim
    stretched = equalize(dim, "global")
    assert stretched.min() < 10 and stretched.max() > 245  # one histogram over the whole range
    local = equalize(dim, "clahe")
    assert local.shape == dim.shape and local.std() > dim.std()  # more contrast, clip-limited
    with pytest.raises(ValueError, match="unknown equalize mode"):
        equalize(dim, "sharpen")
    with pytest.raises(ValueError, match="invalid detector settings"):
        FaceDetector(DetectorConfig(equalize="sharpen"))


def test_clahe_finds_the_face_in_a_dim_frame(astronaut: np.ndarray) -> None:
    dim = (astronaut.astype(np.float32) * 0.15).astype(np.uint8)
    assert len(FaceDetector(DetectorConfig(equalize="clahe")).detect(dim)) == 1


def test_multi_face_scene_right_count_no_duplicates(detector: FaceDetector, astronaut: np.ndarray) -> None:
    frame, expected = _scene(astronaut)
    faces = detector.detect(frame)
    assert len(faces) == len(expected)
    assert [f.area for f in faces] == sorted((f.area for f in faces), reverse=True)
    # Largest first: the 1.4x copy, then the two others in either order.
    _assert_near(faces[0], expected[2])
    for want in expected[:2]:
        assert sum(1 for f in faces if _is_near(f, want)) == 1


def _is_near(face: Face, expected: tuple[float, float, float, float]) -> bool:
    try:
        _assert_near(face, expected)
    except AssertionError:
        return False
    return True


def test_boxes_map_back_to_full_resolution(astronaut: np.ndarray) -> None:
    """Detection on a 480-px copy of a 1600-px frame gives boxes in the 1600-px frame."""
    frame = np.full((1000, 1600, 3), 90, np.uint8)
    big = cv2.resize(astronaut, (768, 768), interpolation=cv2.INTER_CUBIC)
    frame[150:918, 700:1468] = big
    expected = (700 + 1.5 * ASTRONAUT_FACE[0], 150 + 1.5 * ASTRONAUT_FACE[1], 1.5 * 97, 1.5 * 97)
    faces = FaceDetector(DetectorConfig(detection_width=480)).detect(frame)
    assert len(faces) == 1
    _assert_near(faces[0], expected)
    full = FaceDetector(DetectorConfig(detection_width=1600)).detect(frame)
    assert len(full) == 1
    _assert_near(faces[0], full[0].box, tolerance=0.15)


def test_small_frames_are_not_upscaled(detector: FaceDetector, astronaut: np.ndarray) -> None:
    small = cv2.resize(astronaut, (320, 320), interpolation=cv2.INTER_AREA)
    faces = detector.detect(small)  # detection_width 480 > 320: runs at 320
    assert len(faces) == 1
    _assert_near(faces[0], tuple(v * 320 / 512 for v in ASTRONAUT_FACE))


def test_min_face_is_in_full_resolution_pixels(astronaut: np.ndarray) -> None:
    frame = cv2.resize(astronaut, (1024, 1024), interpolation=cv2.INTER_CUBIC)  # face ~194 px
    assert len(FaceDetector(DetectorConfig(min_face=150)).detect(frame)) == 1
    assert FaceDetector(DetectorConfig(min_face=260)).detect(frame) == []


@pytest.mark.parametrize("layout", ["grey", "grey (H, W, 1)", "BGRA"])
def test_grey_and_other_layouts(detector: FaceDetector, astronaut: np.ndarray, layout: str) -> None:
    grey = cv2.cvtColor(astronaut, cv2.COLOR_BGR2GRAY)
    frames = {
        "grey": grey,
        "grey (H, W, 1)": grey[:, :, None],
        "BGRA": cv2.cvtColor(astronaut, cv2.COLOR_BGR2BGRA),
    }
    faces = detector.detect(frames[layout])
    assert len(faces) == 1
    _assert_near(faces[0], ASTRONAUT_FACE)


def test_rejects_bad_frames(detector: FaceDetector) -> None:
    with pytest.raises(ValueError):
        detector.detect(np.zeros((10, 10, 3), np.float32))
    with pytest.raises(ValueError):
        detector.detect(np.zeros((0, 0, 3), np.uint8))


def test_cascade_setting() -> None:
    assert cascade_path("haarcascade_frontalface_alt.xml") == Path(cv2.data.haarcascades) / (
        "haarcascade_frontalface_alt.xml"
    )
    assert FaceDetector().cascade.is_file()
    with pytest.raises(FileNotFoundError):
        FaceDetector(cascade="no_such_cascade.xml")


# --- duplicate suppression ----------------------------------------------------------------------


def test_overlapping_detections_keep_the_strongest() -> None:
    boxes = np.array(
        [
            [100, 100, 80, 80],  # weak duplicate of the next one (IoU ~0.7)
            [105, 105, 80, 80],  # strong
            [120, 125, 30, 30],  # small box inside the strong one
            [400, 100, 60, 60],  # separate face
        ],
        dtype=np.float64,
    )
    kept = _suppress_overlaps(boxes, np.array([3, 9, 12, 4]))
    kept_boxes = sorted(tuple(int(v) for v in box) for box in kept)
    # The contained box is strongest, so it wins over the two big ones that contain it.
    assert kept_boxes == [(120, 125, 30, 30), (400, 100, 60, 60)]
    kept = _suppress_overlaps(boxes[[0, 1, 3]], np.array([3, 9, 4]))
    assert sorted(tuple(int(v) for v in box) for box in kept) == [(105, 105, 80, 80), (400, 100, 60, 60)]


# --- crops --------------------------------------------------------------------------------------


def test_crops_are_square_with_margin_and_views() -> None:
    frame = np.arange(300 * 400 * 3, dtype=np.uint32).astype(np.uint8).reshape(300, 400, 3)
    faces = [Face(100, 100, 50, 50), Face(200, 50, 40, 60)]
    crops = crop_faces(frame, faces, margin=0.2)
    assert [c.shape for c in crops] == [(70, 70, 3), (84, 84, 3)]
    assert all(np.shares_memory(c, frame) for c in crops)
    box = square_box(faces[0], frame.shape, 0.2)
    assert box == Face(90, 90, 70, 70)
    np.testing.assert_array_equal(crops[0], frame[90:160, 90:160])


@pytest.mark.parametrize(
    "face",
    [Face(0, 0, 50, 50), Face(370, 10, 30, 30), Face(180, 260, 40, 40), Face(5, 240, 60, 60)],
)
def test_crops_near_borders_shrink_stay_square_and_inside(face: Face) -> None:
    frame = np.zeros((300, 400), np.uint8)
    box = square_box(face, frame.shape, margin=0.5)
    assert box.w == box.h
    assert box.x >= 0 and box.y >= 0 and box.x + box.w <= 400 and box.y + box.h <= 300
    assert box.w < 2 * face.w  # smaller than the wanted side: clipped, not padded
    # Still centred on the face and covering it.
    assert abs((box.x + box.w / 2) - (face.x + face.w / 2)) <= 1
    assert box.x <= face.x and box.x + box.w >= face.x + face.w
    (crop,) = crop_faces(frame, [face], margin=0.5)
    assert crop.shape == (box.h, box.w)


def test_detector_crop_uses_its_margin(detector: FaceDetector, astronaut: np.ndarray) -> None:
    faces = detector.detect(astronaut)
    (crop,) = detector.crop(astronaut, faces)
    side = round(max(faces[0].w, faces[0].h) * (1 + 2 * detector.config.margin))
    assert abs(crop.shape[0] - side) <= 1 and crop.shape[0] == crop.shape[1]


def test_detector_crop_takes_given_rolls_only_when_it_aligns(astronaut: np.ndarray) -> None:
    aligning = FaceDetector(DetectorConfig(align=True))
    faces = aligning.detect(astronaut)
    (turned,) = aligning.crop(astronaut, faces, [15.0])  # given: no eye search, that roll
    np.testing.assert_array_equal(turned, crop_faces(astronaut, faces, aligning.config.margin, [15.0])[0])
    (plain,) = FaceDetector().crop(astronaut, faces, [15.0])  # a detector that does not align ignores them
    np.testing.assert_array_equal(plain, crop_faces(astronaut, faces, aligning.config.margin)[0])
    assert not np.array_equal(turned, plain)


# --- box mapping edges (found by mutation testing) ----------------------------------------------


@pytest.mark.parametrize(("a", "b", "same"), [
    ((100, 200, 50, 80), (110, 210, 50, 80), True),  # one face, boxes a little apart
    ((0, 0, 100, 100), (45, 0, 100, 100), True),  # IoU 0.38 with neither mostly inside the other
    ((100, 200, 100, 100), (120, 220, 30, 40), True),  # a small box inside a large one
    ((100, 200, 50, 80), (160, 200, 50, 80), False),  # side by side, level
    ((100, 200, 50, 80), (100, 290, 50, 80), False),  # one above the other
    ((0, 0, 10, 10), (30, 30, 10, 10), False),  # apart diagonally (both overlaps negative)
    ((0, 0, 100, 100), (80, 0, 40, 40), False),  # half of the small box inside: not enough
    ((0, 0, 20, 10), (8, 0, 32, 10), False),  # IoU exactly 0.3 and 0.6 of the smaller inside: both limits exclusive
    ((0, 0, 1.5, 10), (0.5, 0, 10, 10), True),  # a one-pixel-wide overlap, two thirds of the thin box
    ((0, 0, 10, 1.5), (0, 0.5, 10, 10), True),
])
def test_same_face(a: tuple, b: tuple, same: bool) -> None:
    from fer_app.detection import _same_face

    a, b = np.array(a, np.float64), np.array(b, np.float64)
    assert bool(_same_face(a, b)) == same and bool(_same_face(b, a)) == same


def test_equally_strong_duplicates_keep_the_larger() -> None:
    kept = _suppress_overlaps(np.array([[0, 0, 50, 50], [2, 2, 60, 60]], np.float64), np.array([5, 5]))
    assert [tuple(int(v) for v in box) for box in kept] == [(2, 2, 60, 60)]
    kept = _suppress_overlaps(np.array([[5, 0, 60, 50], [0, 0, 80, 40]], np.float64), np.array([5, 5]))
    assert [tuple(int(v) for v in box) for box in kept] == [(0, 0, 80, 40)]  # area w * h, not h * h


def test_boxes_are_rounded_and_clipped_to_the_frame() -> None:
    from fer_app.detection import _to_face

    assert _to_face(np.array([0.2, 0.4, 10.4, 20.6]), 100, 100) == Face(0, 0, 11, 21)
    assert _to_face(np.array([-3.0, -2.0, 10.0, 30.0]), 100, 100) == Face(0, 0, 7, 28)
    assert _to_face(np.array([90.0, 95.0, 20.0, 20.0]), 100, 100) == Face(90, 95, 10, 5)
    assert _to_face(np.array([5.0, 5.0, 1.0, 1.0]), 100, 100) == Face(5, 5, 1, 1)


@pytest.mark.parametrize(("face", "box"), [
    (Face(0, 100, 50, 50), Face(0, 100, 50, 50)),  # at each border: the border alone limits the side
    (Face(350, 100, 50, 50), Face(350, 100, 50, 50)),
    (Face(100, 0, 50, 50), Face(100, 0, 50, 50)),
    (Face(100, 250, 50, 50), Face(100, 250, 50, 50)),
    (Face(10, 100, 50, 50), Face(0, 90, 70, 70)),  # 10 px from the left border: side 2 * 35
    (Face(100, 10, 50, 50), Face(90, 0, 70, 70)),
    (Face(0, 0, 1, 1), Face(0, 0, 1, 1)),  # a one-pixel face in the corner
    (Face(399, 299, 1, 1), Face(399, 299, 1, 1)),
])
def test_square_box_at_the_borders(face: Face, box: Face) -> None:
    assert square_box(face, (300, 400), margin=0.5) == box


def test_detector_passes_its_settings_to_the_cascade(astronaut: np.ndarray) -> None:
    config = DetectorConfig(scale_factor=1.3, min_neighbors=7, min_face=60, detection_width=256)
    detector = FaceDetector(config)
    calls = []
    real = detector._classifier

    class Spy:
        def detectMultiScale2(self, image, **kwargs):  # noqa: N802 - OpenCV's name
            calls.append((image.shape, kwargs))
            return real.detectMultiScale2(image, **kwargs)

    detector._classifier = Spy()
    faces = detector.detect(astronaut)
    assert calls == [((256, 256), {"scaleFactor": 1.3, "minNeighbors": 7, "minSize": (30, 30)})]  # 60 px at 0.5x
    assert len(faces) == 1
    side = int(max(faces[0].w, faces[0].h) * 1.4)  # square_box truncates
    assert [c.shape[:2] for c in FaceDetector(DetectorConfig(margin=0.2)).crop(astronaut, faces)] == \
        [(side, side)]  # the detector's own margin (0.2 here), not the default


@pytest.mark.parametrize("bad", [{"detection_width": 0}, {"scale_factor": 1.0}, {"min_face": 0}])
def test_each_bad_setting_is_refused_alone(bad: dict) -> None:
    with pytest.raises(ValueError, match="invalid detector settings"):
        FaceDetector(DetectorConfig(**bad))


def test_smallest_valid_settings_are_accepted() -> None:
    FaceDetector(DetectorConfig(detection_width=1, scale_factor=1.01, min_face=1))


def test_the_detector_uses_its_contrast_step(astronaut: np.ndarray) -> None:
    grey = cv2.cvtColor(astronaut, cv2.COLOR_BGR2GRAY)
    for mode, expected in [("none", grey), ("global", cv2.equalizeHist(grey)),
                           ("clahe", cv2.createCLAHE(clipLimit=3.0, tileGridSize=(2, 2)).apply(grey))]:
        small, scale = FaceDetector(DetectorConfig(equalize=mode))._prepare(astronaut)  # 512 px: not resized
        assert scale == 1.0 and np.array_equal(small, expected), mode
    assert not np.array_equal(equalize(grey, "clahe"), cv2.createCLAHE(clipLimit=3.0, tileGridSize=(8, 8)).apply(grey))


def test_missing_cascade_is_named() -> None:
    with pytest.raises(FileNotFoundError, match="no_such_cascade.xml"):
        FaceDetector(cascade="no_such_cascade.xml")


def test_detect_near_maps_its_windows_back_like_detect(astronaut: np.ndarray) -> None:
    """On a downscaled, wide frame with two faces of different sizes off the diagonal, `detect_near` around
    `detect`'s boxes finds the same faces, in frame pixels, largest first."""
    from fer_app.tracking import iou

    frame = np.full((720, 1280, 3), 90, np.uint8)
    frame[300:720, 700:1212] = astronaut[:420]  # her face at about (876, 365), 97 px
    frame[20:404, 40:424] = cv2.resize(astronaut, (384, 384), interpolation=cv2.INTER_AREA)  # (172, 69), 73 px
    detector = FaceDetector(DetectorConfig(detection_width=640))  # a 0.5x copy of the frame
    full = detector.detect(frame)
    assert len(full) == 2 and full[0].area > full[1].area and full[0].x > full[1].x
    near = detector.detect_near(frame, list(reversed(full)))
    assert len(near) == 2 and near[0].area > near[1].area  # largest first, whatever order the tracks came in
    for expected, got in zip(full, near):
        assert iou(expected, got) > 0.7, (expected, got)
    big = full[0]
    (shifted,) = detector.detect_near(frame, [Face(big.x + big.w // 4, big.y, big.w, big.h)])  # a track a bit off
    assert iou(shifted, big) > 0.7, (shifted, big)  # off-centre in its window: x and y mapped back each on its own
    (bottom,) = detector.detect_near(frame, [full[0]], window=3.0)  # a window clipped by the frame's bottom
    assert iou(bottom, full[0]) > 0.7


class _CascadeSpy:
    """Stands in for the cascade: records each call (the image's shape and the arguments) and answers
    with `boxes` (x, y, w, h in the window) of `neighbours` strength."""

    def __init__(self, boxes=(), neighbours: int = 7) -> None:
        self.calls: list[tuple[tuple[int, ...], dict]] = []
        self.boxes, self.neighbours = [list(b) for b in boxes], neighbours

    def detectMultiScale2(self, image, **kwargs):  # noqa: N802 - OpenCV's name
        self.calls.append((image.shape, kwargs))
        return np.array(self.boxes, np.int32).reshape(-1, 4), np.full((len(self.boxes), 1), self.neighbours)


def test_detect_near_scans_the_window_over_the_sizes_near_the_track() -> None:
    config = DetectorConfig(detection_width=400, scale_factor=1.2, min_neighbors=3, min_face=40)
    detector = FaceDetector(config)
    spy = detector._classifier = _CascadeSpy(boxes=[(10, 5, 40, 36)])
    frame = np.random.default_rng(0).integers(0, 256, (400, 800), dtype=np.uint8)  # a 0.5x copy: 400 x 200
    (found,) = detector.detect_near(frame, [Face(200, 100, 100, 80)])  # the defaults: window 0.5, range 1.3
    # side 50 px in the copy, a window of 25 px more on every side: x 75-175, y 25-115
    assert spy.calls == [((90, 100), {"scaleFactor": 1.2, "minNeighbors": 3, "minSize": (38, 38),
                                      "maxSize": (65, 65)})]  # sizes 50 / 1.3 to 50 x 1.3
    assert found == Face(170, 60, 80, 72)  # (75 + 10, 25 + 5, 40, 36) in the copy, doubled


def test_detect_near_clips_windows_and_skips_those_that_cannot_hold_a_face() -> None:
    detector = FaceDetector(DetectorConfig(detection_width=400, min_face=40))
    spy = detector._classifier = _CascadeSpy()
    frame = np.zeros((400, 800), np.uint8)
    assert detector.detect_near(frame, [Face(0, 0, 100, 100)], window=0.5) == []  # found nothing
    assert spy.calls[0][0] == (75, 75)  # clipped at the top-left corner: 0 to 50 + 25
    lo = spy.calls[0][1]["minSize"][0]
    assert lo == max(20, int(50 / 1.3))  # the smallest face: min_face (40 px = 20 in the copy) or the range
    spy.calls.clear()
    assert detector.detect_near(frame, [Face(700, 300, 100, 100)], window=0.5) == []
    assert spy.calls[0][0] == (75, 75)  # clipped at the bottom-right corner
    spy.calls.clear()
    assert detector.detect_near(frame, [Face(300, 100, 20, 20)]) == []  # 10 px in the copy: below min_face
    assert detector.detect_near(frame, [Face(300, 100, 60, 60)], window=0.0, scale_range=1.0) == []
    assert spy.calls == [((30, 30), {"scaleFactor": 1.15, "minNeighbors": 4, "minSize": (30, 30),
                                     "maxSize": (30, 30)})]  # only the 60 px track was scanned, at its size
    spy.calls.clear()
    # windows cut by the right and the bottom border to 35 px, under the 38 px smallest face: skipped, and
    # a track after a skipped one is still scanned
    tracks = [Face(780, 100, 100, 100), Face(300, 380, 100, 100), Face(300, 100, 100, 100)]
    assert detector.detect_near(frame, tracks, window=0.5) == []
    assert [shape for shape, _ in spy.calls] == [(100, 100)]
    assert detector.detect_near(frame, []) == []
