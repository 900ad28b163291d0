"""Tests of fer_app.live on frames made from a real face photo, with the real Haar detector.

Frames are 640x480: the lower part of assets/astronaut.png (suit, badges, flag), upside down and
stretched, as a textured background without a face, with copies of her head pasted at known places.
`FakeModel` stands in for a Classifier with chosen probabilities, an optional delay and a gate, to
make the threading tests deterministic. The scene helpers and `FakeModel` are shared with
test_video.py.
"""

from __future__ import annotations

import threading
import time
from dataclasses import replace
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np
import pytest

from fer_app.config import CLASSES, DetectorConfig, ScanConfig
from fer_app.imageio import load_image
from fer_app.live import DrawOptions, LivePipeline, LiveSettings, LiveStats
from fer_app.model import load_model

ASTRONAUT = Path(__file__).resolve().parent.parent / "assets" / "astronaut.png"
#: The astronaut's face in the photo (x, y, w, h); the pasted head has it at (60, 55) of its own.
ASTRONAUT_FACE = (176, 65, 97, 97)
HEAD_SCALE = 0.8
#: Detection on a 320 px wide copy: plenty for these ~78 px faces, and quick on a busy test machine.
DETECTOR = DetectorConfig(detection_width=320)
SYNC = LiveSettings(detector=DETECTOR, asynchronous=False)


@lru_cache(maxsize=1)
def _photo() -> np.ndarray:
    return load_image(ASTRONAUT)


@lru_cache(maxsize=4)
def _head(scale: float) -> np.ndarray:
    x, y, w, _ = ASTRONAUT_FACE
    head = _photo()[y - 55 : y + 2 * w, x - 60 : x + w + 60]
    return cv2.resize(head, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)


def scene(*places: tuple[int, int], scale: float = HEAD_SCALE, size: tuple[int, int] = (640, 480)) -> np.ndarray:
    """A BGR frame with a copy of the astronaut's head whose top-left corner is at each (x, y)."""
    frame = cv2.resize(_photo()[:249:-1], size, interpolation=cv2.INTER_AREA)
    head = _head(scale)
    for x, y in places:
        frame[y : y + head.shape[0], x : x + head.shape[1]] = head
    return frame


def face_centre(x: int, y: int, scale: float = HEAD_SCALE) -> tuple[float, float]:
    """Where the face centre of a head pasted at (x, y) lies."""
    return x + (60 + 97 / 2) * scale, y + (55 + 97 / 2) * scale


def moving(step: int) -> tuple[int, int]:
    """A head crossing the frame: 12 px right and 3 px down per frame."""
    return 20 + 12 * step, 60 + 3 * step


def probs(label: str, p: float = 0.9) -> np.ndarray:
    out = np.full(len(CLASSES), (1 - p) / (len(CLASSES) - 1), np.float32)
    out[CLASSES.index(label)] = p
    return out


class FakeModel:
    """A stand-in Classifier: fixed probabilities for every crop, after an optional gate and delay."""

    def __init__(self, label: str = "happy", *, name: str = "fake", delay: float = 0.0,
                 gate: threading.Event | None = None, error: Exception | None = None) -> None:
        self.name, self.classes = name, CLASSES
        self.probs, self.delay, self.gate, self.error = probs(label), delay, gate, error
        self.batches: list[int] = []
        self.mirrors: list[bool | None] = []
        self.finished_at: float | None = None

    def views(self, tta: bool | None = None) -> int:
        return 1  # no test-time augmentation of its own: nothing to spread over frames

    def predict_proba(self, crops, *, tta: bool | None = None) -> np.ndarray:
        self.mirrors.append(tta)
        if self.gate is not None:
            assert self.gate.wait(10), "gate never opened"
        time.sleep(self.delay)
        self.batches.append(len(crops))
        self.finished_at = time.perf_counter()
        if self.error is not None:
            raise self.error
        return np.tile(self.probs, (len(crops), 1))


def wait_until_idle(pipeline: LivePipeline, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while pipeline.classifying:
        assert time.monotonic() < deadline, "the worker never finished"
        time.sleep(0.01)


# --- synchronous mode -----------------------------------------------------------------------------


def test_sync_tracks_a_moving_face_and_fills_stats(tiny_model: Path) -> None:
    model = load_model(tiny_model)
    with LivePipeline(model, SYNC, timeline_every=0) as pipeline:
        track_ids = set()
        for step in range(10):
            frame = scene(moving(step))
            out = pipeline.process(frame)
            assert out.shape == frame.shape and out.dtype == np.uint8 and (out != frame).any()
            (pred,) = pipeline.predictions()
            cx, cy = face_centre(*moving(step))
            assert abs(pred.face.x + pred.face.w / 2 - cx) < 20 and abs(pred.face.y + pred.face.h / 2 - cy) < 20
            assert pred.probabilities.shape == (7,) and pred.probabilities.sum() == pytest.approx(1, abs=1e-4)
            track_ids.add(pred.track_id)
        assert len(track_ids) == 1
        stats = pipeline.stats()
    assert isinstance(stats, LiveStats)
    assert stats.frames == 10 and stats.faces == 1 and stats.model == "tiny" and not stats.asynchronous
    for median, p95 in (stats.detect_ms, stats.classify_ms, stats.draw_ms, stats.frame_ms):
        assert 0 < median <= p95
    assert stats.frame_ms[0] >= stats.detect_ms[0]
    assert stats.fps > 0 and stats.label_refresh_hz > 0 and stats.error is None
    assert any("FPS" in line for line in stats.overlay_lines())
    timing = pipeline.last_timing()
    assert timing.detect_ms > 0 and timing.classify_ms > 0 and timing.frame_ms >= timing.detect_ms
    rows = pipeline.timeline()
    assert len(rows) == 10 and all(r["largest"] and r["track"] in track_ids for r in rows)
    assert set(rows[0]) == {"t", "track", "largest", "label", "confidence", "gap", "segment", *CLASSES}
    assert rows[-1]["t"] >= rows[0]["t"]


@pytest.mark.parametrize("full_every", [1, ScanConfig().full_every])
def test_new_face_gets_a_new_id_by_the_next_full_scan_and_one_batch_per_frame(full_every: int) -> None:
    model = FakeModel()
    settings = replace(SYNC, scan=ScanConfig(full_every=full_every))
    with LivePipeline(model, settings) as pipeline:
        first = None
        for step in range(3):
            (pred,) = pipeline.analyze(scene(moving(step)))
            first = first or pred.track_id
            assert pred.track_id == first
        seen = []
        for step in range(3, 3 + full_every + 2):  # a second face appears: window scans can't see it
            preds = pipeline.analyze(scene(moving(step), (420, 250)))
            seen.append(len(preds))
        found = seen.index(2)
        assert found < full_every and all(n == 2 for n in seen[found:])  # from the next full scan on
        by_place = {p.face.x > 400: p.track_id for p in preds}
        assert by_place[False] == first and by_place[True] != first
    assert model.batches == [1, 1, 1] + seen  # all crops of a frame in one batch


def test_returning_face_does_not_inherit() -> None:
    model = FakeModel("happy")
    settings = replace(SYNC, smoothing=0.9, max_missed=2)
    with LivePipeline(model, settings) as pipeline:
        (before,) = [pipeline.analyze(scene((200, 100))) for _ in range(3)][-1]
        pipeline.analyze(scene())  # one missed frame: the track lives on
        (same,) = pipeline.analyze(scene((204, 100)))
        assert same.track_id == before.track_id
        for _ in range(3):  # longer than max_missed: the track ends
            assert pipeline.analyze(scene()) == []
        model.probs = probs("sad")
        (back,) = pipeline.analyze(scene((204, 100)))
    assert back.track_id != before.track_id
    np.testing.assert_allclose(back.probabilities, probs("sad"))  # nothing mixed in from the old track


def test_smoothing_damps_a_flip() -> None:
    model = FakeModel("happy")
    with LivePipeline(model, replace(SYNC, smoothing=0.6)) as pipeline:
        for _ in range(4):
            pipeline.analyze(scene((200, 100)))
        model.probs = probs("sad")
        (pred,) = pipeline.analyze(scene((200, 100)))
        assert pred.label == "happy"  # one odd frame doesn't flip the label
        pipeline.update(settings=replace(SYNC, smoothing=0.0))
        (pred,) = pipeline.analyze(scene((200, 100)))
        assert pred.label == "sad"


def test_update_applies_to_the_next_frame() -> None:
    frame = scene((200, 100))
    with LivePipeline(FakeModel("happy", name="a"), SYNC) as pipeline:
        pipeline.process(frame)
        pipeline.update(model=FakeModel("angry", name="b"))
        assert pipeline.stats().model == "a" and pipeline.predictions()[0].label == "happy"
        pipeline.process(frame)
        assert pipeline.stats().model == "b" and pipeline.predictions()[0].label == "angry"

        nothing = DrawOptions(boxes=False, labels=False, bars=False, stats=False)
        pipeline.update(settings=replace(SYNC, draw=nothing))
        assert (pipeline.process(frame) == frame).all()

        pipeline.update(settings=replace(SYNC, detector=replace(DETECTOR, min_face=300)))
        pipeline.process(frame)
        assert pipeline.stats().faces == 0 and pipeline.predictions() == []
        assert pipeline.settings.detector.min_face == 300


def test_grey_frame_gives_a_colour_annotation() -> None:
    grey = cv2.cvtColor(scene((200, 100)), cv2.COLOR_BGR2GRAY)
    with LivePipeline(FakeModel(), SYNC) as pipeline:
        out = pipeline.process(grey)
    assert out.shape == (480, 640, 3) and len(pipeline.predictions()) == 1


def test_timeline_largest_face_and_cap() -> None:
    frame = scene((20, 60))
    head = _head(1.1)
    frame[200 : 200 + head.shape[0], 380 : 380 + head.shape[1]] = head  # a second, larger face
    with LivePipeline(FakeModel(), SYNC, timeline_every=0, timeline_length=5) as pipeline:
        for _ in range(4):
            pipeline.analyze(frame)
        rows = pipeline.timeline()
        assert len(rows) == 5  # 8 rows made, the oldest dropped
        largest = pipeline.timeline(largest=True)
        big = max(pipeline.predictions(), key=lambda p: p.face.area).track_id
        assert largest and all(r["track"] == big for r in largest)
        assert all(r["track"] == big for r in pipeline.timeline(track=big))


def test_bad_settings() -> None:
    with pytest.raises(ValueError):
        LiveSettings(smoothing=1.0)


# --- asynchronous mode ----------------------------------------------------------------------------


def test_async_never_blocks_the_video_thread() -> None:
    """The model is held at a gate, then sleeps 200 ms: process() returns meanwhile, boxes keep moving,
    and the label shows up only once the worker is done.

    The gate makes "returned while the model was still busy" a certainty rather than a race against a
    wall-clock limit, which a loaded test machine can blow.
    """
    gate = threading.Event()
    model = FakeModel("surprise", delay=0.2, gate=gate)
    with LivePipeline(model, replace(SYNC, asynchronous=True)) as pipeline:
        for step in range(4):
            frame = scene(moving(step))
            out = pipeline.process(frame)
            assert pipeline.classifying and not model.batches  # returned while the model is still at work
            assert pipeline.predictions() == [] and pipeline.stats().faces == 1
            x, y = (int(v) for v in face_centre(*moving(step)))
            around_face = np.s_[y - 50 : y + 50, x - 50 : x + 50]
            assert (out[around_face] != frame[around_face]).any()  # its box follows the face
        gate.set()
        deadline = time.monotonic() + 30
        while not pipeline.predictions():
            assert time.monotonic() < deadline, "no label after the worker finished"
            step = min(step + 1, 30)  # a loaded machine may take many frames: keep the face inside the frame
            pipeline.process(scene(moving(step)))
            seen_at = time.perf_counter()
        assert model.finished_at is not None and model.finished_at < seen_at
        (pred,) = pipeline.predictions()
        assert pred.label == "surprise" and pred.track_id == 1  # the face's first and only track
        stats = pipeline.stats()
        assert stats.asynchronous and stats.classify_ms[0] >= 200
    assert model.batches[0] == 1


def test_auto_mode_follows_the_classification_time() -> None:
    fast = FakeModel("happy")
    with LivePipeline(fast, replace(SYNC, asynchronous=None)) as pipeline:
        for step in range(8):
            pipeline.process(scene(moving(step)))
            wait_until_idle(pipeline)
        assert not pipeline.stats().asynchronous  # fast: classified in the video thread
        pipeline.update(model=FakeModel("sad", name="slow", delay=0.03))
        for step in range(8):
            pipeline.process(scene(moving(step)))
            wait_until_idle(pipeline)
        stats = pipeline.stats()
        assert stats.asynchronous and stats.model == "slow"  # slower than async_above_ms: in the worker
        assert pipeline.predictions()[0].label == "sad"


def test_worker_error_is_reported_and_the_stream_goes_on() -> None:
    model = FakeModel(error=RuntimeError("out of memory"))
    with LivePipeline(model, replace(SYNC, asynchronous=True)) as pipeline:
        pipeline.process(scene((200, 100)))
        wait_until_idle(pipeline)
        out = pipeline.process(scene((200, 100)))
        assert out.shape == (480, 640, 3)
        assert "out of memory" in pipeline.stats().error
        assert pipeline.predictions() == []


def test_close_stops_the_worker() -> None:
    pipeline = LivePipeline(FakeModel(), replace(SYNC, asynchronous=True))
    pipeline.process(scene((200, 100)))
    worker = pipeline._worker.thread
    pipeline.close()
    assert not worker.is_alive()
    pipeline.close()  # twice is fine


def test_close_from_the_page_waits_for_the_frame_in_hand() -> None:
    """The page closes the pipeline whenever its script runs without the stream playing, and frames may still be
    flowing then (START's signalling, STOP): close() must not pull the threads from under a frame halfway through
    (that raised in the video thread, and streamlit-webrtc's processing thread died: a frozen video)."""
    pipeline = LivePipeline(FakeModel(), replace(SYNC, asynchronous=True))
    pipeline.process(scene((200, 100)))
    pipeline.process(scene((200, 100)))  # tracked: the full scans now run in their own thread
    inside, release = threading.Event(), threading.Event()
    detect = pipeline._scanner.detect

    def held_detect(frame, tracks):
        inside.set()
        assert release.wait(10)
        return detect(frame, tracks)

    pipeline._scanner.detect = held_detect
    errors: list[BaseException] = []

    def video() -> None:
        try:
            pipeline.process(scene((204, 100)))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    frame = threading.Thread(target=video)
    frame.start()
    assert inside.wait(10)
    closing = threading.Thread(target=pipeline.close)
    closing.start()
    closing.join(0.2)
    assert closing.is_alive(), "close() returned while a frame was halfway through"
    release.set()
    frame.join(10)
    closing.join(10)
    assert not errors and not closing.is_alive() and pipeline._worker is None
    pipeline.process(scene((208, 100)))  # and the stream goes on: its threads start again
    pipeline.close()


@pytest.mark.parametrize(("asynchronous", "mirror", "expected"),
                         [(False, None, None), (True, None, False), (True, True, True), (False, False, False)])
def test_mirror_averaging_off_in_the_worker_by_default(asynchronous, mirror, expected):
    model = FakeModel()
    settings = replace(SYNC, asynchronous=asynchronous, mirror=mirror)
    with LivePipeline(model, settings) as pipeline:
        for _ in range(3):
            pipeline.analyze(scene((200, 100)))
            wait_until_idle(pipeline)
    assert model.mirrors and set(model.mirrors) == {expected}


# --- the overlay, one source of truth for the counters, timeline gaps, label hysteresis (issue 13) -----------


def test_overlay_keeps_off_the_faces_and_agrees_with_the_page() -> None:
    from fer_app.draw import Rect, face_clearance

    with LivePipeline(FakeModel("happy"), SYNC) as pipeline:
        for place in [(0, 0), (400, 0), (10, 200)]:  # a face in the top-left corner, then top-right, then lower
            for _ in range(3):
                pipeline.process(scene(place))
            (pred,) = pipeline.predictions()
            lines, box = pipeline.overlay()
            assert box is not None and lines
            assert not Rect(*box).intersects(face_clearance(pred.face, 640)), (place, box, pred.face)
            shown = pipeline.shown_stats()  # what the page shows: the overlay's own figures
            assert shown.overlay_lines() == lines and shown.faces == 1
        assert box[0] == 0 or box[1] == 0


def test_timeline_breaks_where_no_face_was_seen() -> None:
    now = [0.0]
    with LivePipeline(FakeModel("happy"), SYNC, clock=lambda: now[0], timeline_every=0.0) as pipeline:
        for frame_no in range(40):
            now[0] = frame_no / 10
            pipeline.analyze(scene((200, 100)) if not 10 <= frame_no < 30 else scene())  # no face for 2 s
        rows = pipeline.timeline(largest=True)
        segments = sorted({r["segment"] for r in rows})
        assert len(segments) == 2, [(r["t"], r["segment"]) for r in rows]
        first = [r["t"] for r in rows if r["segment"] == segments[0]]
        assert max(first) < 1.0 <= min(r["t"] for r in rows if r["segment"] == segments[1]) - 1.0
        assert [r["gap"] for r in rows].count(True) == 1 and pipeline.gap_s == 3.0


def test_pipeline_labels_hold_under_hysteresis() -> None:
    now = [0.0]
    model = FakeModel("happy")
    with LivePipeline(model, replace(SYNC, smoothing=0.1), clock=lambda: now[0]) as pipeline:
        pipeline.analyze(scene((200, 100)))
        model.probs = probs("sad")
        now[0] = 0.5
        (pred,) = pipeline.analyze(scene((200, 100)))
        assert pred.label == "happy" and pred.confidence == pytest.approx(float(pred.probabilities[3]))
        now[0] = 2.0  # past the dwell: sad leads clearly, so it shows
        (pred,) = pipeline.analyze(scene((200, 100)))
        assert pred.label == "sad"
        pipeline.update(settings=replace(SYNC, smoothing=0.1, label_margin=0.0, label_dwell=0.0))
        model.probs = probs("fear")
        now[0] = 2.1
        (pred,) = pipeline.analyze(scene((200, 100)))
        assert pred.label == "fear"  # hysteresis off: the top class at once


def test_one_missed_detection_is_no_gap_but_three_are() -> None:
    now = [0.0]
    with LivePipeline(FakeModel("happy"), SYNC, clock=lambda: now[0], timeline_every=0.0) as pipeline:
        pattern = [True] * 5 + [False] + [True] * 5 + [False] * 3 + [True] * 5
        for i, face in enumerate(pattern):
            now[0] = i / 30  # a fast stream: no time gap at all
            pipeline.analyze(scene((200, 100)) if face else scene())
        rows = pipeline.timeline(largest=True)
        assert len({r["track"] for r in rows}) == 1
        assert [r["segment"] for r in rows] == [1] * 10 + [2] * 5


class _CropRecorder(FakeModel):
    """A FakeModel that keeps the crops it was given."""

    def __init__(self) -> None:
        super().__init__()
        self.crops: list[np.ndarray] = []

    def predict_proba(self, crops, *, tta: bool | None = None) -> np.ndarray:
        self.crops.extend(np.array(c) for c in crops)
        return super().predict_proba(crops, tta=tta)


def test_an_aligning_detector_levels_the_crops_the_model_and_the_captures_get() -> None:
    frame = scene((200, 100))
    centre = face_centre(200, 100)
    frame = cv2.warpAffine(frame, cv2.getRotationMatrix2D(centre, 12, 1.0), (frame.shape[1], frame.shape[0]),
                           borderMode=cv2.BORDER_REPLICATE)
    model = _CropRecorder()
    settings = replace(SYNC, detector=replace(DETECTOR, align=True))
    with LivePipeline(model, settings) as pipeline:
        pipeline.process(frame)
        faces = [p.face for p in pipeline.predictions()]
        assert len(faces) == 1 and len(model.crops) == 1
        np.testing.assert_array_equal(model.crops[0], pipeline.crop(frame, faces)[0])
    with LivePipeline(FakeModel(), SYNC) as plain:
        plain.process(frame)
        assert not np.array_equal(model.crops[0], plain.crop(frame, faces)[0])  # levelled: not the plain box


@pytest.mark.parametrize("asynchronous", [False, True])
def test_eye_alignment_measures_new_faces_then_one_face_a_batch_in_turn(monkeypatch: pytest.MonkeyPatch,
                                                                         asynchronous: bool) -> None:
    """Three faces: all three eye searches in the first batch, then one a batch, each face in turn; the faces not
    searched keep their last roll. With a worker the same, the searches in the worker's thread."""
    from fer_app.alignment import EyeAligner
    from fer_app.detection import FaceDetector

    searched: list[int] = []  # the x of each face searched
    cut_with: list[list[float]] = []  # the rolls each batch's crops were cut with

    threads: set[str] = set()

    def roll(self: EyeAligner, frame: np.ndarray, face) -> float:
        searched.append(face.x)
        threads.add(threading.current_thread().name)
        return 3.0 * len(searched)  # another roll at every search

    crop = FaceDetector.crop

    def recorded(self: FaceDetector, frame: np.ndarray, faces, rolls=None) -> list[np.ndarray]:
        cut_with.append([] if rolls is None else list(rolls))
        return crop(self, frame, faces, rolls)

    monkeypatch.setattr(EyeAligner, "roll", roll)
    monkeypatch.setattr(FaceDetector, "crop", recorded)
    frame = scene((10, 150), (220, 150), (430, 150))
    model = FakeModel()
    settings = replace(SYNC, detector=replace(DETECTOR, align=True), asynchronous=asynchronous)
    with LivePipeline(model, settings) as pipeline:
        while not model.batches and not pipeline.classifying:  # a worker: until the faces' first batch is sent
            pipeline.process(frame)
            time.sleep(0.01)
        wait_until_idle(pipeline)
        for _ in range(6):
            pipeline.process(frame)  # a worker: takes the last batch's result, then starts the next batch
            wait_until_idle(pipeline)
        pipeline.update(settings=replace(settings, detector=replace(DETECTOR, align=True, margin=0.2)))
        pipeline.process(frame)
        wait_until_idle(pipeline)
    assert threads == {"fer-app-classify" if asynchronous else threading.current_thread().name}
    assert len(searched) == 3 + 6 + 3  # another detector (here its margin) measures every face again
    searched, cut_with = searched[:-3], cut_with[:-1]
    assert model.batches == [3] * 8 and len(cut_with) == 7
    assert len(searched) == 3 + 6 and sorted(cut_with[0]) == [3.0, 6.0, 9.0]
    first = sorted(searched[:3])  # each later search, by the face nearest (a tracked box may move a pixel or two)
    nearest = [min(range(3), key=lambda i, x=x: abs(first[i] - x)) for x in searched[3:]]
    assert [nearest.count(i) for i in range(3)] == [2, 2, 2]  # in turn: each face twice in six batches
    for before, after, measured in zip(cut_with, cut_with[1:], range(4, 10)):
        assert set(after) - set(before) == {3.0 * measured} and len(set(after) & set(before)) == 2  # the others kept
