"""Tests of fer_app.draw: boxes, labels and bars per face, kept inside the frame; the stats overlay; speed."""

from __future__ import annotations

import time

import numpy as np
import pytest

from fer_app.config import CLASSES
from fer_app.draw import (
    CLASS_COLOURS,
    PENDING_COLOUR,
    DrawOptions,
    bars_box,
    class_colour,
    draw_predictions,
    draw_stats,
)
from fer_app.types import Face, Prediction


def frame(value: int = 120) -> np.ndarray:
    return np.full((480, 640, 3), value, np.uint8)


def prediction(face: Face, label: str = "happy", p: float = 0.7, track_id: int | None = 1) -> Prediction:
    probs = np.full(len(CLASSES), (1 - p) / (len(CLASSES) - 1), np.float32)
    probs[CLASSES.index(label)] = p
    return Prediction(face, probs, CLASSES, track_id=track_id)


def changed(before: np.ndarray, after: np.ndarray) -> np.ndarray:
    """(H, W) mask of the pixels drawing changed."""
    return np.any(before != after, axis=2)


def test_every_class_has_its_own_colour() -> None:
    assert set(CLASS_COLOURS) == set(CLASSES)
    assert len(set(CLASS_COLOURS.values())) == len(CLASSES)
    assert class_colour("contempt") == class_colour("contempt")  # a class outside the table: stable colour


def test_box_label_and_bars() -> None:
    image, face = frame(), Face(200, 150, 100, 100)
    draw_predictions(image, [prediction(face, "sad")])
    assert tuple(image[200, 200]) == CLASS_COLOURS["sad"]  # left edge of the box
    mask = changed(frame(), image)
    assert mask[130:150, 200:260].any()  # the label, above the box
    assert mask[150:200, 304:420].any()  # the bar chart, right of the box
    assert not mask[300:, :].any() and not mask[:, 480:].any()  # nothing far away
    assert not mask[170:240, 215:285].any()  # the face itself stays visible


@pytest.mark.parametrize("face", [Face(560, 200, 80, 80), Face(0, 0, 80, 80), Face(300, 420, 60, 60),
                                  Face(0, 380, 100, 100), Face(240, 0, 400, 480)])
def test_bars_stay_inside_the_frame(face: Face) -> None:
    panel = bars_box(face, (480, 640, 3), (140, 60))
    assert panel is not None
    assert 0 <= panel.x and panel.x + panel.w <= 640 and 0 <= panel.y and panel.y + panel.h <= 480
    image = frame()
    draw_predictions(image, [prediction(face)])  # near a border: no error, no wrap-around
    assert changed(frame(), image).any()


def test_bars_beside_the_face_when_there_is_room() -> None:
    right = bars_box(Face(100, 100, 80, 80), (480, 640), (140, 60))
    assert right.x >= 180
    left = bars_box(Face(500, 100, 80, 80), (480, 640), (140, 60))
    assert left.x + left.w <= 500
    assert bars_box(Face(0, 0, 10, 10), (40, 60), (140, 60)) is None  # frame smaller than the panel


def test_label_moves_inside_the_box_at_the_top_edge() -> None:
    image = frame()
    draw_predictions(image, [prediction(Face(200, 0, 100, 100))], options=DrawOptions(bars=False, boxes=False))
    mask = changed(frame(), image)
    assert mask[:25, 200:260].any()


def test_options_off_draw_nothing_and_pending_faces_get_a_plain_box() -> None:
    image = frame()
    draw_predictions(image, [prediction(Face(100, 100, 80, 80))],
                     options=DrawOptions(boxes=False, labels=False, bars=False))
    assert not changed(frame(), image).any()
    draw_predictions(image, [], pending=[Face(100, 100, 80, 80)])
    assert tuple(image[140, 100]) == PENDING_COLOUR
    assert changed(frame(), image)[:, 185:].sum() == 0  # no label, no bars


def test_stats_overlay_top_left() -> None:
    image = frame(200)
    draw_stats(image, ["12.3 FPS", "detect 5.0 ms", "model tiny"])
    mask = changed(frame(200), image)
    assert mask[:40, :80].mean() > 0.5  # a darkened panel behind the text
    assert not mask[100:, :].any() and not mask[:, 320:].any()
    draw_stats(image, [])  # nothing to show: nothing drawn


def test_drawing_is_fast() -> None:
    """Three faces on a 640x480 frame: well under 5 ms of CPU (about 0.5 ms; CPU time, as wall time is noisy)."""
    predictions = [prediction(Face(40 + 200 * i, 150, 90, 90), label, track_id=i)
                   for i, label in enumerate(("happy", "angry", "neutral"))]
    image = frame()
    times = []
    for _ in range(20):
        start = time.thread_time()
        draw_predictions(image, predictions, options=DrawOptions(track_ids=True))
        draw_stats(image, ["30.0 FPS", "detect 5.0 classify 2.0 draw 0.5 ms", "model tiny"])
        times.append(time.thread_time() - start)
    assert np.median(times) < 0.005
