"""Tests of fer_app.tracking: track ids across frames, track death, and probability smoothing."""

from __future__ import annotations

import numpy as np
import pytest

from fer_app.config import CLASSES
from fer_app.tracking import FaceTracker, centre_distance, iou
from fer_app.types import Face


def probs(label: str, p: float = 0.9) -> np.ndarray:
    """Probabilities with `p` on `label` and the rest spread evenly."""
    out = np.full(len(CLASSES), (1 - p) / (len(CLASSES) - 1), np.float32)
    out[CLASSES.index(label)] = p
    return out


def ids(tracker: FaceTracker, *faces: Face) -> list[int]:
    return [t.id for t in tracker.update(faces)]


def test_iou_and_centre_distance() -> None:
    a = Face(0, 0, 10, 10)
    assert iou(a, a) == 1.0
    assert iou(a, Face(5, 0, 10, 10)) == pytest.approx(50 / 150)
    assert iou(a, Face(20, 20, 10, 10)) == 0.0
    assert centre_distance(a, Face(10, 0, 10, 10)) == pytest.approx(1.0)


def test_ids_stable_while_faces_move() -> None:
    tracker = FaceTracker()
    first = ids(tracker, Face(50, 60, 80, 80), Face(400, 200, 90, 90))
    for step in range(1, 15):
        moved = ids(tracker, Face(50 + 12 * step, 60 + 4 * step, 80, 80), Face(400 - 8 * step, 200, 90, 90))
        assert moved == first
    assert len(tracker.tracks) == 2


def test_order_of_detections_does_not_matter() -> None:
    tracker = FaceTracker()
    a, b = ids(tracker, Face(0, 0, 80, 80), Face(300, 0, 80, 80))
    assert ids(tracker, Face(305, 2, 80, 80), Face(4, 3, 80, 80)) == [b, a]


def test_fast_move_without_overlap_keeps_id() -> None:
    tracker = FaceTracker(max_shift=0.6)
    (a,) = ids(tracker, Face(100, 100, 100, 100))
    assert ids(tracker, Face(150, 120, 100, 100)) == [a]  # IoU 0.25, centres half a side apart
    assert ids(tracker, Face(400, 120, 100, 100)) != [a]  # a jump of 2.5 sides: another face


def test_new_face_gets_new_id_and_ids_are_never_reused() -> None:
    tracker = FaceTracker(max_missed=0)
    (a,) = ids(tracker, Face(0, 0, 80, 80))
    a2, b = ids(tracker, Face(2, 0, 80, 80), Face(300, 0, 80, 80))
    assert a2 == a and b != a
    ids(tracker)  # both gone (max_missed=0)
    (c,) = ids(tracker, Face(300, 0, 80, 80))
    assert c not in (a, b)


def test_track_survives_short_gaps_and_dies_after_max_missed() -> None:
    tracker = FaceTracker(max_missed=3)
    (a,) = ids(tracker, Face(100, 100, 80, 80))
    tracker.add_probabilities(a, probs("happy"), now=0.0)
    for _ in range(3):
        ids(tracker)
    assert ids(tracker, Face(104, 100, 80, 80)) == [a]  # back within 3 frames: same face, same label
    assert tracker.get(a).probabilities is not None
    for _ in range(4):
        ids(tracker)
    assert tracker.get(a) is None and tracker.tracks == []
    (back,) = tracker.update([Face(104, 100, 80, 80)])
    assert back.id != a and back.probabilities is None  # returning face starts from scratch
    assert not tracker.add_probabilities(a, probs("sad"), now=1.0)  # a late result for the dead track is dropped


def test_different_face_elsewhere_does_not_take_a_missing_tracks_id() -> None:
    tracker = FaceTracker(max_missed=5)
    (a,) = ids(tracker, Face(50, 50, 80, 80))
    tracker.add_probabilities(a, probs("angry"), now=0.0)
    (b,) = tracker.update([Face(450, 300, 80, 80)])  # `a` is missing, another face appears far away
    assert b.id != a and b.probabilities is None


def test_face_moving_onto_a_lost_tracks_spot_stays_in_its_own_track() -> None:
    tracker = FaceTracker(max_missed=8)
    (lost,) = ids(tracker, Face(200, 100, 80, 80))
    (moving,) = ids(tracker, Face(100, 100, 80, 80))  # the face jumped away: a new track, the old one lost
    assert moving != lost
    for x in range(112, 220, 12):  # walks back over the lost track's last box
        assert ids(tracker, Face(x, 100, 80, 80)) == [moving]


def test_very_different_size_is_another_face() -> None:
    tracker = FaceTracker()
    (a,) = ids(tracker, Face(100, 100, 60, 60))
    assert ids(tracker, Face(60, 60, 200, 200)) != [a]


def test_smoothing_damps_a_flip() -> None:
    tracker = FaceTracker(smoothing=0.6)
    (track,) = tracker.update([Face(0, 0, 80, 80)])
    tracker.add_probabilities(track.id, probs("happy"), now=0.0)
    np.testing.assert_allclose(track.probabilities, probs("happy"))  # the first result is taken as is
    for t in range(1, 4):
        tracker.add_probabilities(track.id, probs("happy"), now=t / 10)
    tracker.add_probabilities(track.id, probs("sad"), now=0.4)  # a one-frame flip
    assert CLASSES[int(np.argmax(track.probabilities))] == "happy"
    assert track.probabilities.sum() == pytest.approx(1.0, abs=1e-5)
    for t in range(5, 8):
        tracker.add_probabilities(track.id, probs("sad"), now=t / 10)
    assert CLASSES[int(np.argmax(track.probabilities))] == "sad"  # a lasting change comes through


def test_smoothing_off_follows_every_result() -> None:
    tracker = FaceTracker(smoothing=0.0)
    (track,) = tracker.update([Face(0, 0, 80, 80)])
    tracker.add_probabilities(track.id, probs("happy"), now=0.0)
    tracker.add_probabilities(track.id, probs("sad"), now=0.1)
    np.testing.assert_allclose(track.probabilities, probs("sad"))


def test_refresh_rate_and_clear() -> None:
    tracker = FaceTracker()
    (track,) = tracker.update([Face(0, 0, 80, 80)])
    assert track.refresh_hz() is None
    for i in range(5):
        tracker.add_probabilities(track.id, probs("fear"), now=i * 0.1)
    assert track.refresh_hz() == pytest.approx(10.0)
    tracker.clear_probabilities()
    assert track.probabilities is None and track.refresh_hz() is None
    assert [t.id for t in tracker.update([Face(1, 0, 80, 80)])] == [track.id]


@pytest.mark.parametrize("kwargs", [{"smoothing": 1.0}, {"smoothing": -0.1}, {"max_missed": -1}])
def test_bad_settings(kwargs: dict) -> None:
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        FaceTracker(**kwargs)


def test_two_close_faces_keep_their_own_tracks_and_labels() -> None:
    """Each track goes to the face it overlaps most: a neighbour that also overlaps it never takes it."""
    tracker = FaceTracker()
    a, b = ids(tracker, Face(100, 100, 80, 80), Face(140, 100, 80, 80))  # IoU 1/3 with each other
    tracker.add_probabilities(a, probs("happy"), now=0.0)
    tracker.add_probabilities(b, probs("sad"), now=0.0)
    for step in range(1, 6):
        tracks = tracker.update([Face(100 + step, 100, 80, 80), Face(140 - step, 100, 80, 80)])
        assert [t.id for t in tracks] == [a, b]
        assert [CLASSES[int(np.argmax(t.probabilities))] for t in tracks] == ["happy", "sad"]


def test_a_track_goes_to_the_face_that_overlaps_it_most() -> None:
    tracker = FaceTracker()
    (a,) = ids(tracker, Face(100, 100, 80, 80))
    # both are candidates (IoU 0.9 and 1/3); the far one is listed first and is nearer in the sort's tie-breaks
    far, near = ids(tracker, Face(140, 100, 80, 80), Face(104, 100, 80, 80))
    assert near == a and far != a
    assert ids(tracker, Face(104, 100, 80, 80), Face(140, 100, 80, 80)) == [near, far]


def test_a_track_seen_last_frame_is_matched_before_a_lost_one() -> None:
    """The matching cascade: frames missed come first in the ordering, before overlap."""
    tracker = FaceTracker(max_missed=5)
    lost, seen = ids(tracker, Face(100, 100, 80, 80), Face(190, 100, 80, 80))
    assert ids(tracker, Face(190, 100, 80, 80)) == [seen]  # `lost` misses a frame
    # a face between the two, a candidate for both: it overlaps the lost track's box more (IoU 0.31
    # against 0.25), but the track seen in the last frame takes it
    assert ids(tracker, Face(142, 100, 80, 80)) == [seen]
    assert tracker.get(lost).missed == 2


# ------------------------------------------------------------------ edges found by mutation testing

def test_iou_of_disjoint_and_barely_touching_boxes() -> None:
    a = Face(0, 0, 10, 10)
    assert iou(a, Face(20, 0, 10, 10)) == 0.0  # apart horizontally, level vertically: not a negative IoU
    assert iou(a, Face(0, 20, 10, 10)) == 0.0
    assert iou(a, Face(10, 0, 10, 10)) == 0.0  # edges touching
    assert iou(a, Face(9, 0, 10, 10)) == pytest.approx(10 / 190)  # one pixel column shared
    assert iou(a, Face(0, 9, 10, 10)) == pytest.approx(10 / 190)


def test_centre_distance_of_tiny_boxes() -> None:
    assert centre_distance(Face(0, 0, 1, 1), Face(3, 4, 1, 1)) == pytest.approx(5.0)  # a 1 px side is the unit


def test_default_settings() -> None:
    tracker = FaceTracker()
    (a,) = ids(tracker, Face(0, 0, 100, 100))
    assert a == 1  # ids start at 1 and count up by one
    assert ids(tracker, Face(0, 0, 160, 160)) == [a]  # grows 1.6x towards the camera, IoU 0.39 >= 0.3
    for _ in range(8):
        assert ids(tracker) == []
    assert tracker.get(a) is not None and tracker.get(a).missed == 8  # max_missed 8: still alive...
    ids(tracker)
    assert tracker.get(a) is None  # ...and gone at the 9th
    (b,) = ids(tracker, Face(100, 100, 60, 60))
    # twice the side, centres 0.47 mean sides apart but IoU 0.25: the scale (> 1.5) says another face
    assert ids(tracker, Face(100, 100, 120, 120)) == [b + 1] and b == 2


def test_ids_count_up_by_one_and_hits_count_matched_frames() -> None:
    tracker = FaceTracker()
    assert ids(tracker, Face(0, 0, 80, 80), Face(200, 0, 80, 80), Face(400, 0, 80, 80)) == [1, 2, 3]
    for _ in range(3):
        tracks = tracker.update([Face(0, 0, 80, 80)])
    assert tracks[0].hits == 4 and tracker.get(2).hits == 1 and tracker.get(2).missed == 3


def test_thresholds_are_inclusive() -> None:
    by_overlap = FaceTracker(min_iou=1 / 3, max_shift=0.0)
    (a,) = ids(by_overlap, Face(0, 0, 10, 10))
    assert ids(by_overlap, Face(5, 0, 10, 10)) == [a]  # IoU exactly 1/3
    by_scale = FaceTracker(min_iou=1.0, max_shift=0.6, max_scale=1.5)
    (b,) = ids(by_scale, Face(0, 0, 80, 80))
    assert ids(by_scale, Face(-20, -20, 120, 120)) == [b]  # same centre, side exactly 1.5x
    assert ids(by_scale, Face(-40, -40, 200, 200)) != [b]  # 1.67x


def test_add_probabilities_returns_true_and_keeps_float32() -> None:
    tracker = FaceTracker(smoothing=0.5)
    (track,) = tracker.update([Face(0, 0, 80, 80)])
    assert tracker.add_probabilities(track.id, probs("happy").astype(np.float64), now=0.0) is True
    assert track.probabilities.dtype == np.float32
    assert tracker.add_probabilities(track.id, probs("sad").astype(np.float64), now=0.1) is True
    assert track.probabilities.dtype == np.float32
    np.testing.assert_allclose(track.probabilities, (probs("happy") + probs("sad")) / 2, rtol=1e-6)


def test_refresh_rate_edges() -> None:
    track = FaceTracker().update([Face(0, 0, 80, 80)])[0]
    track.updates.extend([100.0, 100.5])
    assert track.refresh_hz() == pytest.approx(2.0)  # two classifications are enough, at any clock origin
    track.updates.append(100.5)  # a third at the same moment: 2 intervals over 0.5 s
    assert track.refresh_hz() == pytest.approx(4.0)
    track.updates.clear()
    track.updates.extend([7.0, 7.0, 7.0])
    assert track.refresh_hz() is None  # no time elapsed: no rate, not a division by zero
    track.updates.clear()
    track.updates.extend([5.0, 5.0, 6.0])
    assert track.refresh_hz() == pytest.approx(2.0)  # from the first to the last, whatever lies between


def test_views_spread_over_frames_average_like_all_views_at_once():
    from fer_app.types import Face

    tracker = FaceTracker(smoothing=0.0)
    (track,) = tracker.update([Face(10, 10, 50, 50)])
    views = [np.eye(7, dtype=np.float32)[i] for i in (3, 3, 4, 6)]
    for i, p in enumerate(views):
        tracker.add_probabilities(track.id, p, now=float(i), view=i)
    np.testing.assert_allclose(track.probabilities, np.mean(views, axis=0), atol=1e-6)
    tracker.add_probabilities(track.id, np.eye(7, dtype=np.float32)[3], now=5.0, view=3)  # view 3 refreshed
    np.testing.assert_allclose(track.probabilities, np.mean(views[:3] + [np.eye(7)[3]], axis=0), atol=1e-6)
    assert track.classified == 5
    tracker.clear_probabilities()
    assert track.view_probabilities == {} and track.classified == 0


# ---------------------------------------------------------------- label hysteresis


def mix(a: str, pa: float, b: str, pb: float) -> np.ndarray:
    out = np.full(len(CLASSES), (1 - pa - pb) / (len(CLASSES) - 2), np.float32)
    out[CLASSES.index(a)], out[CLASSES.index(b)] = pa, pb
    return out


def test_label_changes_only_when_another_class_clearly_leads_after_the_dwell() -> None:
    tracker = FaceTracker(smoothing=0.0001, label_margin=0.15, label_dwell=1.5)
    (track,) = tracker.update([Face(0, 0, 80, 80)])
    tracker.add_probabilities(track.id, probs("happy"), now=0.0)
    assert CLASSES[track.label] == "happy"
    for i in range(1, 20):  # neck and neck: sad barely ahead, never by the margin
        tracker.add_probabilities(track.id, mix("sad", 0.45, "happy", 0.40), now=0.1 * i)
    assert CLASSES[int(np.argmax(track.probabilities))] == "sad" and CLASSES[track.label] == "happy"
    assert track.label_changes == 0
    tracker.add_probabilities(track.id, probs("angry"), now=2.5)  # clearly ahead, past the dwell: it changes
    assert CLASSES[track.label] == "angry" and track.label_since == 2.5 and track.label_changes == 1
    tracker.add_probabilities(track.id, probs("fear"), now=3.0)  # clearly ahead but too soon after the change
    assert CLASSES[track.label] == "angry"
    tracker.add_probabilities(track.id, probs("fear"), now=4.0)
    assert CLASSES[track.label] == "fear" and track.label_changes == 2


def test_label_hysteresis_switches_exactly_at_the_margin_and_the_dwell() -> None:
    def run(margin: float, dwell: float = 1.5, at: float = 1.5) -> tuple[str, float]:
        tracker = FaceTracker(smoothing=0.2, label_margin=margin, label_dwell=dwell)
        (track,) = tracker.update([Face(0, 0, 80, 80)])
        tracker.add_probabilities(track.id, probs("happy"), now=0.0)
        tracker.add_probabilities(track.id, mix("sad", 0.9, "happy", 0.05), now=at)
        p = track.probabilities
        return CLASSES[track.label], float(p[CLASSES.index("sad")] - p[CLASSES.index("happy")])

    _, lead = run(0.99)  # the lead sad takes over happy (the same whatever the margin)
    assert 0 < lead < 0.99
    assert run(lead)[0] == "sad"  # a lead of exactly the margin is enough
    assert run(float(np.nextafter(lead, 1)))[0] == "happy"  # a hair more is not
    assert run(lead, dwell=1.5, at=1.5)[0] == "sad"  # held exactly the dwell: it may change
    assert run(lead, dwell=1.5, at=1.4999)[0] == "happy"


def test_hysteresis_off_and_smoothing_off_follow_the_top_class() -> None:
    for tracker in (FaceTracker(label_margin=0.0, label_dwell=0.0, smoothing=0.0001), FaceTracker(smoothing=0.0)):
        (track,) = tracker.update([Face(0, 0, 80, 80)])
        for i, label in enumerate(["happy", "sad", "happy", "fear"]):
            tracker.add_probabilities(track.id, probs(label), now=0.01 * i)
            assert CLASSES[track.label] == label
        assert track.label_changes == 3
    tracker.clear_probabilities()
    assert track.label is None


def test_label_hysteresis_defaults_come_from_the_config() -> None:
    from fer_app.config import LABEL_DWELL_S, LABEL_MARGIN

    tracker = FaceTracker()
    assert (tracker.label_margin, tracker.label_dwell) == (LABEL_MARGIN, LABEL_DWELL_S)
    with pytest.raises(ValueError, match="label_margin"):
        FaceTracker(label_margin=1.0)
    with pytest.raises(ValueError, match="label_dwell"):
        FaceTracker(label_dwell=-1)
