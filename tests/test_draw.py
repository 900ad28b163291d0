"""Tests of fer_app.draw: boxes, labels and bars per face, kept inside the frame and off each other; the
stats overlay; speed."""

from __future__ import annotations

import itertools
import time

import numpy as np
import pytest

from fer_app.config import CLASSES
from fer_app.draw import (
    CLASS_COLOURS,
    PENDING_COLOUR,
    DrawOptions,
    Rect,
    bars_box,
    class_colour,
    draw_predictions,
    draw_stats,
    layout_labels,
    layout_panels,
    stats_box,
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


# ------------------------------------------------------------------------------------------ layout

W, H = 640, 480
PANEL = (123, 55)  # the bar panel's size at 640 px wide (3 bars)
ONE_BAR = (123, 21)


def inside(rect: Rect, width: int = W, height: int = H) -> bool:
    return 0 <= rect.x and 0 <= rect.y and rect.x + rect.w <= width and rect.y + rect.h <= height


def assert_clear(boxes: list[Face], panels: list[Rect | None], avoid: tuple[Rect, ...] = ()) -> None:
    """Each panel inside the frame, off every other panel, every other face's box and `avoid`."""
    for i, panel in enumerate(panels):
        if panel is None:
            continue
        assert inside(panel), panel
        assert not any(panel.intersects(a) for a in avoid), panel
        for j, box in enumerate(boxes):
            assert i == j or not panel.intersects(box.box), (panel, box)
    placed = [p for p in panels if p is not None]
    for a, b in itertools.combinations(placed, 2):
        assert not a.intersects(b), (a, b)


@pytest.mark.parametrize("x0", [0, 100, 200, 300, 380])
def test_panels_of_faces_side_by_side_stay_apart(x0: int) -> None:
    """Two 120-px faces 20 px apart, anywhere across the frame (0: at the left edge; 380: at the right)."""
    boxes = [Face(x0, 180, 120, 120), Face(x0 + 140, 180, 120, 120)]
    panels = layout_panels(boxes, (W, H), PANEL, fallback_sizes=[ONE_BAR])
    assert all(p is not None and (p.w, p.h) == PANEL for p in panels)  # room for full panels everywhere
    assert_clear(boxes, panels)
    for box, panel in zip(boxes, panels):
        assert not panel.intersects(box.box)  # beside, not on, its own face


def test_side_by_side_with_labels_and_three_faces() -> None:
    boxes = [Face(60, 150, 120, 120), Face(200, 150, 120, 120), Face(340, 150, 120, 120)]
    labels = layout_labels(boxes, (W, H), [(116, 23)] * 3)
    for a, b in itertools.combinations(labels, 2):
        assert not a.intersects(b)
    for i, label in enumerate(labels):
        assert inside(label)
        assert label.y + label.h <= boxes[i].y  # above its own face: there's room
        assert not any(label.intersects(b.box) for j, b in enumerate(boxes) if j != i)
    panels = layout_panels(boxes, (W, H), PANEL, fallback_sizes=[ONE_BAR], labels=labels)
    assert all(p is not None for p in panels)
    assert_clear(boxes, panels, avoid=tuple(labels))


@pytest.mark.parametrize("face", [Face(560, 200, 80, 80), Face(0, 200, 80, 80), Face(300, 420, 60, 60),
                                  Face(200, 400, 200, 80), Face(0, 0, 80, 80), Face(560, 400, 80, 80),
                                  Face(520, 0, 120, 480), Face(0, 0, 640, 480), Face(600, 460, 60, 40)])
def test_panel_and_label_inside_the_frame_at_the_edges(face: Face) -> None:
    panel = layout_panels([face], (W, H), PANEL)[0]
    assert panel is not None and inside(panel)
    label = layout_labels([face], (W, H), [(116, 23)])[0]
    assert inside(label)


def test_panel_goes_left_then_below_then_above_then_inside() -> None:
    right_edge = layout_panels([Face(540, 100, 100, 100)], (W, H), PANEL)[0]
    assert right_edge.x + right_edge.w <= 540  # left of the face
    tall = layout_panels([Face(100, 0, 480, 300)], (W, H), PANEL)[0]
    assert tall.y >= 300  # below: no room either side
    low = layout_panels([Face(100, 200, 480, 280)], (W, H), PANEL)[0]
    assert low.y + low.h <= 200  # above
    full = layout_panels([Face(0, 0, 640, 480)], (W, H), PANEL)[0]
    assert full.y + full.h == 480  # inside, at the bottom of the face
    assert layout_panels([Face(0, 0, 10, 10)], (60, 40), PANEL) == [None]  # frame smaller than the panel


def test_panels_keep_off_the_stats_overlay() -> None:
    stats = stats_box(W, ["30.0 FPS  faces 1  labels 10.0/s", "detect 5.0  classify 2.0 (sync)  draw 0.5 ms",
                          "model tiny"])
    assert stats is not None and stats.x == 0 and stats.y == 0 and stats.w > 200
    assert stats_box(W, []) is None
    box = Face(stats.w - 60, stats.h + 10, 100, 100)  # its left side is under the overlay
    alone = layout_panels([box], (W, H), PANEL)[0]
    panel = layout_panels([box], (W, H), PANEL, avoid=[stats])[0]
    assert_clear([box], [panel], avoid=(stats,))
    assert alone != panel or not alone.intersects(stats)
    label = layout_labels([box], (W, H), [(116, 23)], avoid=[stats])[0]
    assert not label.intersects(stats) and inside(label)


def test_panel_goes_past_its_own_label() -> None:
    """The top strip taken (as by the stats overlay): the first face's label goes below it, and its
    bars below that label (the neighbour blocks the right, the frame the left)."""
    top = Rect(0, 0, 300, 60)
    boxes = [Face(0, 30, 120, 120), Face(140, 30, 120, 120)]
    labels = layout_labels(boxes, (W, H), [(116, 23)] * 2, avoid=[top])
    assert labels[0].y == 150 and not any(label.intersects(top) for label in labels)
    panels = layout_panels(boxes, (W, H), PANEL, labels=labels, avoid=[top])
    assert panels[0].y >= labels[0].y + labels[0].h and panels[0].x == 0
    assert_clear(boxes, panels, avoid=(top, *labels))
    with pytest.raises(ValueError, match="labels"):
        layout_panels(boxes, (W, H), PANEL, labels=labels[:1])


@pytest.mark.parametrize("size", [40, 100, 150, 160, 240])
def test_many_faces_filling_the_frame_degrade_without_overlap(size: int) -> None:
    boxes = [Face(x, y, size, size) for y in range(0, H - size + 1, size + 4) for x in range(0, W - size + 1, size + 4)]
    labels = layout_labels(boxes, (W, H), [(116, 23)] * len(boxes))
    assert len(labels) == len(boxes) and all(inside(r) for r in labels)  # labels never dropped
    panels = layout_panels(boxes, (W, H), PANEL, fallback_sizes=[ONE_BAR], labels=labels)
    assert len(panels) == len(boxes)
    assert_clear(boxes, panels, avoid=tuple(labels))  # fewer or smaller panels, never overlapping
    image = frame()
    placements = draw_predictions(image, [prediction(b, track_id=i) for i, b in enumerate(boxes)],
                                  options=DrawOptions(track_ids=True))
    assert [p.panel for p in placements] == layout_panels(boxes, (W, H), PANEL, fallback_sizes=[ONE_BAR],
                                                          labels=[p.label for p in placements])
    assert_clear(boxes, [p.panel for p in placements])


def test_crowded_labels_get_shorter_rather_than_overlap() -> None:
    """Twenty 100-px faces 10 px apart under the stats overlay: no room for any panel; labels drop
    the track id, then the confidence, where the full text would run into a neighbour."""
    stats = stats_box(W, ["30.0 FPS  faces 20  labels 10.0/s", "detect 5.0  classify 2.0 (sync)  draw 0.5 ms",
                          "model tiny"])
    boxes = [Face(x, y, 100, 100) for y in range(40, 380, 110) for x in range(0, 540, 110)]
    labels_ = ("surprise", "neutral", "disgust", "happy", "sad")
    predictions = [prediction(b, labels_[i % 5], p=0.55, track_id=10 + i) for i, b in enumerate(boxes)]
    image = frame()
    placements = draw_predictions(image, predictions, avoid=[stats], options=DrawOptions(track_ids=True))
    assert all(p.panel is None and p.bars == 0 for p in placements)
    for a, b in itertools.combinations([p.label for p in placements], 2):
        assert not a.intersects(b)
    texts = [p.text for p in placements]
    assert all(t.startswith(pred.label) for t, pred in zip(texts, predictions))
    assert "surprise 55% #10" not in texts and "surprise" in texts  # shortened ...
    assert texts[-1] == "sad 55% #29"  # ... only where needed: the last face has room to its right
    assert all(inside(p.label) for p in placements)


def test_degrades_to_one_bar_then_none() -> None:
    """A face with room for a one-bar panel only gets that; with no room at all, no panel."""
    boxes = [Face(0, 0, 500, 424)]  # room for a full panel at the right, for one bar only below
    full = layout_panels(boxes, (W, H), PANEL, fallback_sizes=[ONE_BAR])[0]
    assert (full.w, full.h) == PANEL and full.x >= 504
    blocker = Rect(504, 0, 136, 480)  # the right strip taken
    one = layout_panels(boxes, (W, H), PANEL, fallback_sizes=[ONE_BAR], avoid=[blocker])[0]
    assert (one.w, one.h) == ONE_BAR and one.y == 428  # the one-bar panel, below
    own = layout_panels(boxes, (W, H), PANEL, fallback_sizes=[ONE_BAR], avoid=[blocker, Rect(0, 424, 640, 56)])[0]
    assert (own.w, own.h) == PANEL and own.y + own.h == 424  # nothing free outside: inside the face's box
    crowded = [Face(0, 0, 320, 240), Face(320, 0, 320, 240), Face(0, 240, 320, 240), Face(320, 240, 320, 240)]
    inside_own = layout_panels(crowded, (W, H), PANEL)
    for box, panel in zip(crowded, inside_own):  # no room outside: inside each face's own box
        assert panel is not None and box.x <= panel.x and panel.y + panel.h == box.y + box.h
    assert layout_panels([Face(0, 0, 100, 50)], (100, 50), PANEL, fallback_sizes=[ONE_BAR]) == [None]


def test_layout_is_deterministic() -> None:
    boxes = [Face(20 + 150 * i, 100 + 30 * i, 120, 120) for i in range(4)]
    first = layout_panels(boxes, (W, H), PANEL, fallback_sizes=[ONE_BAR])
    assert all(layout_panels(boxes, (W, H), PANEL, fallback_sizes=[ONE_BAR]) == first for _ in range(5))


def test_rendering_two_faces_side_by_side() -> None:
    """The real drawing: each face's bars are on the darkened panel the layout chose, and neither
    panel nor label covers the other face."""
    faces = [Face(200, 180, 120, 120), Face(340, 180, 120, 120)]
    image = frame()
    placements = draw_predictions(image, [prediction(faces[0], "happy"), prediction(faces[1], "sad", track_id=2)],
                                  options=DrawOptions(track_ids=True))
    mask = changed(frame(), image)
    panels = [p.panel for p in placements]
    assert all(p is not None for p in placements) and [p.bars for p in placements] == [3, 3]
    assert_clear(faces, panels)
    for p in placements:
        assert not p.label.intersects(p.panel)
    left, right = panels
    assert left.x + left.w <= 200 and right.x >= 460  # outside the pair, each on its own side
    for panel in panels:
        region = image[panel.y : panel.y + panel.h, panel.x : panel.x + panel.w]
        assert (region <= 120 // 4).mean() > 0.5  # mostly darkened background
        assert mask[panel.y : panel.y + panel.h, panel.x : panel.x + panel.w].mean() > 0.9
    happy = np.all(image == CLASS_COLOURS["happy"], axis=2)
    sad = np.all(image == CLASS_COLOURS["sad"], axis=2)
    assert happy[left.y : left.y + left.h, left.x : left.x + left.w].any()  # the top bar of face 0
    assert sad[right.y : right.y + right.h, right.x : right.x + right.w].any()
    for face in faces:  # the faces themselves stay visible (inside the box outline)
        assert not mask[face.y + 3 : face.y + face.h - 3, face.x + 3 : face.x + face.w - 3].any()
    assert tuple(image[240, 340]) == CLASS_COLOURS["sad"]  # the second box's left edge, not covered
    assert mask[180 - 23 : 180, 200:300].any() and mask[180 - 23 : 180, 340:440].any()  # both labels above


def test_rendering_cramped_pair_at_the_left_edge_and_stats() -> None:
    """Faces at the left edge: the first face's bars go below it, not over its neighbour; the stats
    overlay's area (passed as `avoid`) stays clear of labels and bars."""
    lines = ["30.0 FPS  faces 2  labels 10.0/s", "detect 5.0  classify 2.0 (sync)  draw 0.5 ms", "model tiny"]
    stats = stats_box(W, lines)
    faces = [Face(0, 100, 120, 120), Face(140, 100, 120, 120)]
    image = frame()
    placements = draw_predictions(image, [prediction(f, track_id=i) for i, f in enumerate(faces)], avoid=[stats])
    first, second = (p.panel for p in placements)
    assert first.y >= 224 and first.x + first.w <= W  # below the first face
    assert second.x >= 264
    assert_clear(faces, [first, second], avoid=(stats,))
    assert all(not p.label.intersects(stats) for p in placements)
    before = image.copy()
    draw_stats(image, lines)
    drawn = changed(before, image)
    assert drawn[: stats.h, : stats.w].mean() > 0.99 and drawn.sum() == drawn[: stats.h, : stats.w].sum()


def test_layout_is_fast() -> None:
    """Three faces' labels and panels: well under 1 ms (CPU time, about 0.05 ms)."""
    boxes = [Face(100 + 140 * i, 180, 120, 120) for i in range(3)]
    times = []
    for _ in range(50):
        start = time.thread_time()
        labels = layout_labels(boxes, (W, H), [(116, 23)] * 3, avoid=[Rect(0, 0, 317, 60)])
        layout_panels(boxes, (W, H), PANEL, fallback_sizes=[ONE_BAR], labels=labels, avoid=[Rect(0, 0, 317, 60)])
        times.append(time.thread_time() - start)
    assert np.median(times) < 0.001


# ------------------------------------------------------------------- face numbers and track ids (badges)


def test_face_numbers_are_badges_beside_each_box_in_order() -> None:
    """The photo page's numbers: a white badge at the start of each label, right by its own box."""
    faces = [Face(60, 150, 100, 100), Face(260, 150, 100, 100), Face(460, 150, 100, 100)]
    image = frame()
    placements = draw_predictions(image, [prediction(f, track_id=None) for f in faces], tags=["1", "2", "3"])
    assert [p.tag for p in placements] == ["1", "2", "3"]
    for face, p in zip(faces, placements):
        assert p.text.startswith("happy") and p.label is not None
        assert abs(p.label.x - face.x) <= 2 and p.label.y + p.label.h <= face.y + 1  # above its own box, at its left
        badge = image[p.label.y : p.label.y + p.label.h, p.label.x : p.label.x + 8]
        assert (badge == 255).all(axis=2).mean() > 0.5  # the white badge
    with pytest.raises(ValueError, match="2 tags for 3"):
        draw_predictions(frame(), [prediction(f) for f in faces], tags=["1", "2"])


def test_badges_survive_crowding_and_show_track_ids() -> None:
    """With `badges` the track id is drawn on every face; where the label must shorten, the id stays."""
    boxes = [Face(x, y, 100, 100) for y in range(40, 380, 110) for x in range(0, 540, 110)]
    predictions = [prediction(b, "surprise", p=0.55, track_id=10 + i) for i, b in enumerate(boxes)]
    placements = draw_predictions(frame(), predictions, options=DrawOptions(badges=True, track_ids=True))
    assert [p.tag for p in placements] == [f"#{10 + i}" for i in range(len(boxes))]
    assert all("#" not in p.text for p in placements)  # the id is not repeated in the text
    assert any(p.text != "surprise 55%" for p in placements)  # some were shortened, the badge kept
    for a, b in itertools.combinations([p.label for p in placements], 2):
        assert not a.intersects(b)
    off = draw_predictions(frame(), predictions[:1], options=DrawOptions(labels=False, badges=True))
    assert off[0].tag == "#10" and off[0].text == ""  # labels off: the badge alone
    plain = draw_predictions(frame(), predictions[:1])
    assert plain[0].tag == "" and plain[0].text == "surprise 55%"  # the default is unchanged


def test_a_larger_scale_draws_larger_labels_and_badges() -> None:
    """A photo shown smaller than it is gets text sized for its display (the Photo page's `scale`)."""
    big = np.full((1200, 1800, 3), 120, np.uint8)
    pred = prediction(Face(600, 400, 400, 400), track_id=None)
    default = draw_predictions(big.copy(), [pred], tags=["1"])[0]
    larger = draw_predictions(big.copy(), [pred], tags=["1"], scale=2.0)[0]
    assert larger.label.h > 1.6 * default.label.h and larger.label.w > 1.6 * default.label.w
    assert larger.panel.w > 1.6 * default.panel.w


# ---------------------------------------------------------------- the stats overlay keeps off the faces

LINES = ["30.0 FPS  faces 1  labels 10.0/s", "detect 5  classify 2 ms (sync)"]


def test_stats_box_goes_to_a_corner_without_a_face() -> None:
    free = stats_box(W, LINES, frame_height=H)
    assert (free.x, free.y) == (0, 0) and free.w < W / 2 and free.h < 50  # two short lines, top-left
    top_left = Face(10, 20, 120, 120)
    moved = stats_box(W, LINES, frame_height=H, faces=[top_left])
    assert (moved.x, moved.y) == (W - moved.w, 0)  # top-right
    both_top = [top_left, Face(W - 130, 30, 120, 120)]
    low = stats_box(W, LINES, frame_height=H, faces=both_top)
    assert (low.x, low.y) == (0, H - low.h)
    everywhere = both_top + [Face(10, H - 130, 120, 120), Face(W - 130, H - 130, 120, 120)]
    assert stats_box(W, LINES, frame_height=H, faces=everywhere) is None  # left out rather than over a face
    # the current corner is kept while it stays free (no jumping about)
    assert stats_box(W, LINES, frame_height=H, prefer=(0, H - low.h)) == low


@pytest.mark.parametrize("seed", range(5))
def test_stats_box_never_meets_a_face_or_its_label_strip(seed: int) -> None:
    rng = np.random.default_rng(seed)
    for _ in range(200):
        faces = [Face(int(rng.integers(0, W - 60)), int(rng.integers(0, H - 60)), s, s)
                 for s in rng.integers(40, 160, int(rng.integers(1, 4)))]
        box = stats_box(W, LINES, frame_height=H, faces=faces)
        if box is None:
            continue
        assert box.inside(W, H)
        for face in faces:
            assert not box.intersects(face.box)
            assert not box.intersects((face.x, face.y - 20, face.w, 20))  # where its label goes


def test_draw_stats_at_a_box() -> None:
    image = frame(200)
    box = stats_box(W, LINES, frame_height=H, faces=[Face(0, 0, 200, 200)])
    draw_stats(image, LINES, at=box)
    mask = changed(frame(200), image)
    assert mask.sum() == mask[box.y : box.y + box.h, box.x : box.x + box.w].sum() > 0
    assert mask[box.y : box.y + box.h, box.x : box.x + box.w].mean() > 0.99
