"""The frame pipeline for live video: detect -> batch classify (in a worker) -> track/smooth -> draw.

`LivePipeline.process` runs in the video thread. Every frame it finds faces (detect-and-track,
`fer_app.scan`: a full Haar scan now and then, windows around the tracked faces in between) and
matches them to tracks (`fer_app.tracking`), so boxes follow faces on every frame. All crops of a frame are
classified in one batch: in the video thread when that is fast (synchronous mode), otherwise in a
worker thread that the video thread never waits for. It hands the worker the latest crops, with
their track ids, only when the worker is idle, and draws each track's last smoothed result
meanwhile. With the model's test-time augmentation on, each face gets one of its views per
frame, in turn (`spread`), and its track averages the latest result of each view: the full TTA
average at the cost of one view. Eye alignment works the same way: a face's roll is measured when
its track is new, then one tracked face's per batch, in turn (`_due`), so a batch costs one eye
search however many faces it holds; with a worker, the worker searches and cuts (`_Cut`).
`asynchronous=None` picks the mode from the measured classification time. `update` swaps the model or the settings from another thread; the change
applies from the next frame.
`stats` gives rolling medians/p95 of the stage timings, and `timeline` the session's emotion rows.
"""

from __future__ import annotations

import math
import statistics
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import cv2
import numpy as np

from fer_app.background import Background
from fer_app.config import LABEL_DWELL_S, LABEL_MARGIN, VIDEO_SCAN, DetectorConfig, ScanConfig
from fer_app.detection import FaceDetector
from fer_app.draw import DrawOptions, Rect, draw_predictions, draw_stats, stats_box
from fer_app.model import Classifier
from fer_app.runtimes import runtime_choice
from fer_app.scan import Scanner
from fer_app.tracking import FaceTracker, Track
from fer_app.types import Face, Prediction

__all__ = ["DrawOptions", "FrameTiming", "LivePipeline", "LiveSettings", "LiveStats"]

#: Classification times (ms) the automatic mode choice looks at, and how many it needs.
_AUTO_WINDOW, _AUTO_MIN = 5, 3
#: Processed frames in a row without a face that break its timeline line (one missed detection does not).
_GAP_FRAMES = 3
#: How often the on-frame stats overlay is refreshed (s): readable, and cheap.
_OVERLAY_EVERY = 0.5


@dataclass(frozen=True)
class LiveSettings:
    """What the page can change while the stream runs.

    smoothing: exponential average weight of the past per track (0 = off). asynchronous: classify
    in a worker thread; None = automatic, in a worker while the median classification takes longer
    than `async_above_ms` (back in the video thread below half of it). Unless it is False, the full
    face scans run in a thread of their own too (`fer_app.scan`); False: all in the video thread,
    frame by frame, deterministically (the video CLI). max_missed: frames a face
    may go undetected before its track ends (a face seen again later gets a new track).
    mirror: test-time augmentation (the model's views of each face: mirror image, zoomed copies);
    None = the model's own setting in the video thread and off in the worker, where the model is
    slow: the smoothing over frames averages there anyway, and each face's label refreshes more often.
    spread: with TTA on, classify one view of each face per frame, in turn, instead of all of them
    (the track averages the latest of each view); TTA then costs nothing more than one view, so the
    worker uses the model's views too. scan: detect-and-track settings (`fer_app.scan`).
    label_margin, label_dwell: each track's label hysteresis (`fer_app.tracking`): the label shown
    changes only to a class leading it by `label_margin`, after `label_dwell` seconds held.
    """

    detector: DetectorConfig = field(default_factory=DetectorConfig)
    smoothing: float = 0.6
    draw: DrawOptions = field(default_factory=DrawOptions)
    asynchronous: bool | None = None
    max_missed: int = 8
    async_above_ms: float = 15.0
    mirror: bool | None = None
    spread: bool = True
    scan: ScanConfig = VIDEO_SCAN
    label_margin: float = LABEL_MARGIN
    label_dwell: float = LABEL_DWELL_S

    def __post_init__(self) -> None:
        if not 0.0 <= self.smoothing < 1.0:
            raise ValueError(f"smoothing must be in [0, 1), got {self.smoothing}")
        if self.max_missed < 0 or self.async_above_ms < 0:
            raise ValueError(f"max_missed and async_above_ms must be >= 0: {self}")
        if not 0.0 <= self.label_margin < 1.0 or self.label_dwell < 0:
            raise ValueError(f"label_margin must be in [0, 1) and label_dwell >= 0: {self}")


@dataclass(frozen=True)
class LiveStats:
    """Rolling statistics of the stream; each `*_ms` is (median, p95) over the last frames."""

    fps: float  # frames processed per second
    detect_ms: tuple[float, float]
    classify_ms: tuple[float, float]  # per batch, in whichever thread ran it
    draw_ms: tuple[float, float]
    frame_ms: tuple[float, float]  # the video thread's time per frame, all stages
    faces: int  # faces in the last frame
    model: str
    frames: int  # frames processed in all
    label_refresh_hz: float  # classifications per second per face (mean over the last frame's faces)
    asynchronous: bool = False  # whether the last frame's classification went to the worker
    error: str | None = None  # the worker's last error, if its last batch failed
    runtime: str = "torch"  # where the model's encoder runs (`fer_app.runtimes.RuntimeChoice`)...
    runtime_reason: str = ""  # ...and why

    def overlay_lines(self) -> list[str]:
        """The text of the on-frame stats overlay: two short lines (the page shows the rest)."""
        mode = "async" if self.asynchronous else "sync"
        return [f"{self.fps:.1f} FPS  faces {self.faces}  labels {self.label_refresh_hz:.1f}/s",
                f"detect {self.detect_ms[0]:.0f}  classify {self.classify_ms[0]:.0f} ms ({mode}, {self.runtime})"] + (
                    ["classification failed"] if self.error else [])


@dataclass(frozen=True)
class FrameTiming:
    """The last frame's stage times in ms; classify_ms is None when the video thread classified nothing."""

    detect_ms: float
    classify_ms: float | None
    draw_ms: float
    frame_ms: float
    full_scan: bool = True  # whether detection scanned the whole frame (else windows around the tracks)


@dataclass(frozen=True)
class _Cut:
    """A batch's crops levelled on the eyes: the frame (the worker's own copy), the faces, each face's roll where it is
    known and None where it is measured now (`LivePipeline._due`), and the aligning detector."""

    detector: FaceDetector
    frame: np.ndarray
    faces: list[Face]
    known: list[float | None]

    def crops(self) -> tuple[list[np.ndarray], list[float]]:
        """The crops, and every face's roll (the ones measured here included)."""
        aligner = self.detector.aligner
        assert aligner is not None  # a cut is made only for an aligning detector
        rolls = [aligner.roll(self.frame, face) if roll is None else roll for face, roll in zip(self.faces, self.known)]
        return self.detector.crop(self.frame, self.faces, rolls), rolls


@dataclass(frozen=True)
class _Job:
    generation: int
    model: Classifier
    crops: list[np.ndarray] | _Cut  # a _Cut: the worker measures the eyes and cuts the crops itself
    track_ids: list[int]
    mirror: bool | None = None
    views: list[int] | None = None  # one view per crop (`Classifier.predict_views`), or all of them


@dataclass(frozen=True)
class _Result:
    generation: int
    track_ids: list[int]
    probabilities: np.ndarray | None
    seconds: float
    error: str | None = None
    views: list[int] | None = None
    rolls: list[float] | None = None  # every face's roll, when the worker cut the crops (`_Cut`)
    cut: _Cut | None = None


@dataclass(frozen=True)
class _Pending:
    model: Classifier | None = None
    settings: LiveSettings | None = None
    detector: FaceDetector | None = None


def _run_job(job: _Job, clock: Callable[[], float]) -> _Result:
    """Classify a job's batch in the worker (cutting its crops first when it holds a `_Cut`); an error is reported in
    the result (the stream goes on)."""
    start = clock()
    cut = job.crops if isinstance(job.crops, _Cut) else None
    crops, rolls = job.crops, None
    try:
        if cut is not None:
            crops, rolls = cut.crops()
        probs, error = _predict(job.model, crops, job.mirror, job.views), None
    except Exception as exc:  # noqa: BLE001 - reported through stats(); the stream goes on
        probs, error = None, f"{type(exc).__name__}: {exc}"
    return _Result(job.generation, job.track_ids, probs, clock() - start, error, job.views, rolls, cut)


class LivePipeline:
    """Thread-safe: `process` runs in the video thread, `update`/`stats`/`timeline`/`close` from the page.

    window: frames in the rolling statistics. timeline_every: seconds between timeline rows
    (0: every frame); timeline_length: rows kept (the oldest go first).
    """

    def __init__(self, model: Classifier, settings: LiveSettings | None = None, *, window: int = 120,
                 timeline_every: float = 0.2, timeline_length: int = 3000,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        self._settings = settings or LiveSettings()
        self._model = model
        self._detector = FaceDetector(self._settings.detector)
        self._scanner = _scanner(self._detector, self._settings)
        self._tracker = FaceTracker(smoothing=self._settings.smoothing, max_missed=self._settings.max_missed,
                                    label_margin=self._settings.label_margin, label_dwell=self._settings.label_dwell)
        self._clock, self._t0 = clock, clock()
        self._lock = threading.Lock()
        self._step_lock = threading.Lock()  # held by the video thread through each frame, and by close()
        self._pending: _Pending | None = None
        self._worker: Background[_Result] | None = None
        self._generation = 0  # results of an older generation (model or mode since changed) are dropped
        self._auto_async, self._was_async = True, False
        self._recent_classify: deque[float] = deque(maxlen=_AUTO_WINDOW)
        self._times: dict[str, deque[float]] = {k: deque(maxlen=window) for k in ("detect", "classify", "draw",
                                                                                  "frame", "start")}
        self._frames, self._faces, self._refresh_hz = 0, 0, 0.0
        self._error: str | None = None
        self._predictions: list[Prediction] = []
        self._last_timing: FrameTiming | None = None
        self._timeline: deque[dict] = deque(maxlen=timeline_length)
        self._timeline_every, self._timeline_at = timeline_every, -math.inf
        self._overlay: list[str] = []
        self._overlay_at = -math.inf
        self._overlay_stats: LiveStats | None = None  # the stats the overlay shows: the page shows the same
        self._absent: dict[int | None, int] = {}  # per track (None: any face), frames in a row without it
        self._roll_of: dict[int, tuple[float, int]] = {}  # per track: its roll (degrees) and the batch that measured it
        self._batches = 0  # batches cut with eye alignment (`_due`)
        self._gapped: set[int | None] = set()  # tracks (None: any face) unseen for _GAP_FRAMES since their last row
        self._overlay_drawn: tuple[list[str], Rect | None] = ([], None)  # the last frame's overlay and its box

    # ------------------------------------------------------------ page thread

    @property
    def settings(self) -> LiveSettings:
        """The settings of the next frame: the latest `update`'s, applied or not yet."""
        with self._lock:
            return self._pending.settings if self._pending and self._pending.settings else self._settings

    @property
    def model(self) -> Classifier:
        """The model of the next frame: the latest `update`'s, applied or not yet."""
        with self._lock:
            return self._pending.model if self._pending and self._pending.model is not None else self._model

    def update(self, model: Classifier | None = None, settings: LiveSettings | None = None) -> None:
        """Swap model/settings; applied from the next frame, the stream keeps running.

        A new model drops the tracks' probabilities and any batch in flight; tracks keep their ids.
        A new detector is built here, so the video thread doesn't pay for loading the cascade.
        """
        detector = None
        if settings is not None and settings.detector != self.settings.detector:
            detector = FaceDetector(settings.detector)
        with self._lock:
            old = self._pending or _Pending()
            self._pending = _Pending(model if model is not None else old.model, settings or old.settings,
                                     detector or old.detector)

    def crop(self, frame: np.ndarray, faces: Sequence[Face]) -> list[np.ndarray]:
        """`faces` cut out of `frame` the way this pipeline cuts them for the classifier (margin, eye alignment)."""
        return self._detector.crop(frame, faces)

    def predictions(self) -> list[Prediction]:
        """Smoothed predictions of the last frame (with track ids); faces not classified yet are left out."""
        with self._lock:
            return list(self._predictions)

    def stats(self) -> LiveStats:
        choice = runtime_choice(getattr(self._model, "encoder", None))  # torch for a stand-in without an encoder
        with self._lock:
            starts = self._times["start"]
            span = starts[-1] - starts[0] if len(starts) > 1 else 0.0
            return LiveStats(
                fps=(len(starts) - 1) / span if span > 0 else 0.0,
                detect_ms=_median_p95(self._times["detect"]),
                classify_ms=_median_p95(self._times["classify"]),
                draw_ms=_median_p95(self._times["draw"]),
                frame_ms=_median_p95(self._times["frame"]),
                faces=self._faces, model=self._model.name, frames=self._frames,
                label_refresh_hz=self._refresh_hz, asynchronous=self._was_async, error=self._error,
                runtime=choice.runtime, runtime_reason=choice.reason)

    def shown_stats(self) -> LiveStats:
        """The stats the on-frame overlay shows now (refreshed with it, every `_OVERLAY_EVERY` s): the page shows
        these, so the page and the video agree. `stats()` when the overlay is off or has not been drawn lately."""
        with self._lock:
            snapshot, at = self._overlay_stats, self._overlay_at
        if snapshot is None or self._clock() - at > 2 * _OVERLAY_EVERY + 0.5:
            return self.stats()
        return snapshot

    def overlay(self) -> tuple[list[str], tuple[int, int, int, int] | None]:
        """The last frame's overlay: its lines and its (x, y, w, h) box (None: not drawn, e.g. no face-free corner)."""
        with self._lock:
            lines, rect = self._overlay_drawn
        return list(lines), None if rect is None else tuple(rect)

    def last_timing(self) -> FrameTiming | None:
        """Stage times of the last frame (None before the first)."""
        with self._lock:
            return self._last_timing

    def timeline(self, track: int | None = None, *, largest: bool = False) -> list[dict]:
        """Rows {t, track, largest, label, confidence, <class>: prob..., segment} for the session's emotion timeline.

        t: seconds since the pipeline started. Filter to one track, or to the largest face of each frame.
        gap: the row's face (for the largest face: any face) went unseen for `_GAP_FRAMES` processed frames or
        more since its previous row. segment: rows of one unbroken stretch share a number; a new one starts after
        such a gap, after `gap_s` seconds without a row, and (largest face) where the track changes: a chart
        draws no line between segments.
        """
        with self._lock:
            rows = list(self._timeline)
        rows = [r for r in rows if (track is None or r["track"] == track) and (not largest or r["largest"])]
        return _segmented(rows, self.gap_s, per_track=not largest)

    @property
    def gap_s(self) -> float:
        """Seconds without a timeline row that break its line whatever the frames said (e.g. a stream stopped and
        started again); within a stream, a line breaks where its face went unseen for `_GAP_FRAMES` frames."""
        return max(3.0, 5 * self._timeline_every)

    @property
    def classifying(self) -> bool:
        """Whether the worker thread is busy with a batch."""
        return self._worker is not None and self._worker.busy

    def close(self) -> None:
        """Stop the worker and the scan threads (each finishes the job in hand); `process` may still be called
        after (it starts them again). Safe from the page thread while frames flow: it waits for the frame in
        hand, so the video thread never finds its threads gone halfway through a frame."""
        with self._step_lock:
            worker, self._worker = self._worker, None
            self._scanner.close()  # waits for a full scan in flight: tens of ms
        if worker is not None:
            worker.close()  # a batch in flight may take longer: waited for outside the frame lock

    def __enter__(self) -> LivePipeline:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------ video thread

    def process(self, frame: np.ndarray) -> np.ndarray:
        """Annotated copy of a BGR (or grey/BGRA) frame. One video thread at a time.

        A model error is raised here in synchronous mode; in asynchronous mode it is reported by
        `stats().error` and the stream goes on, without new labels.
        """
        annotated, _ = self._step(frame, annotate=True)
        return annotated

    def analyze(self, frame: np.ndarray) -> list[Prediction]:
        """Like `process` without drawing: the frame's smoothed predictions (with track ids)."""
        _, predictions = self._step(frame, annotate=False)
        return predictions

    def _step(self, frame: np.ndarray, *, annotate: bool) -> tuple[np.ndarray | None, list[Prediction]]:
        with self._step_lock:
            return self._step_locked(frame, annotate=annotate)

    def _step_locked(self, frame: np.ndarray, *, annotate: bool) -> tuple[np.ndarray | None, list[Prediction]]:
        start = self._clock()
        settings = self._apply_pending()
        scan = self._scanner.detect(frame, self._tracker.tracks)
        tracks = self._tracker.update(scan.faces)
        self._scanner.after(tracks)
        detected = self._clock()
        classify_s = self._classify(frame, tracks, settings, detected)
        classified = self._clock()
        classes = tuple(self._model.classes)
        predictions = [Prediction(t.face, t.probabilities, classes, track_id=t.id, shown=t.label)
                       for t in tracks if t.probabilities is not None]
        annotated = None
        if annotate:
            annotated = _to_bgr(frame)
            overlay, stats_area = self._overlay_lines(classified, annotated.shape, tracks) if settings.draw.stats \
                else ([], None)  # the box is where no face is; labels and bars keep clear of it
            draw_predictions(annotated, predictions, pending=[t.face for t in tracks if t.probabilities is None],
                             options=settings.draw, avoid=() if stats_area is None else (stats_area,))
            draw_stats(annotated, overlay, at=stats_area)
        end = self._clock()
        timing = FrameTiming((detected - start) * 1e3, None if classify_s is None else classify_s * 1e3,
                             (end - classified) * 1e3 if annotate else 0.0, (end - start) * 1e3, scan.full)
        self._record(start, timing, tracks, predictions, annotate)
        return annotated, predictions

    def _apply_pending(self) -> LiveSettings:
        """Apply what `update` queued; returns the settings for this frame."""
        with self._lock:
            pending, self._pending = self._pending, None
            if pending is None:
                return self._settings
            if pending.model is not None and pending.model is not self._model:
                self._model = pending.model
                self._generation += 1
                self._tracker.clear_probabilities()
                self._recent_classify.clear()
                self._auto_async, self._error = True, None
            if pending.settings is not None:
                if pending.detector is not None:
                    self._detector = pending.detector
                    self._roll_of.clear()  # its settings (alignment, margin) may differ: measure again
                if (pending.detector is not None or pending.settings.scan != self._settings.scan
                        or _scans_beside(pending.settings) != _scans_beside(self._settings)):
                    self._scanner.close()
                    self._scanner = _scanner(self._detector, pending.settings)
                self._settings = pending.settings
                self._tracker.smoothing = self._settings.smoothing
                self._tracker.max_missed = self._settings.max_missed
                self._tracker.label_margin = self._settings.label_margin
                self._tracker.label_dwell = self._settings.label_dwell
            return self._settings

    def _classify(self, frame: np.ndarray, tracks: list[Track], settings: LiveSettings, now: float) -> float | None:
        """Classify the frame's faces in one batch, here or in the worker; the seconds it took here."""
        use_worker = settings.asynchronous if settings.asynchronous is not None else self._auto_async
        if use_worker != self._was_async:
            self._generation += 1  # a batch in flight would overwrite newer results
            self._was_async = use_worker
        worker = self._worker  # read once: close() from the page may clear it meanwhile
        if worker is not None:
            result = worker.take()
            if result is not None and result.generation == self._generation:
                self._apply_result(result, now)
        if not tracks:
            return None
        ids = [t.id for t in tracks]
        count = self._model.views(settings.mirror)
        views = [t.classified % count for t in tracks] if settings.spread and count > 1 else None
        if use_worker:
            worker = worker or self._start_worker()
            if not worker.busy:  # crops are cut only for a batch that runs
                # all views of every face at once would be slow here; one view each costs no more than none
                mirror = settings.mirror if views is not None or settings.mirror is not None else False
                faces = [t.face for t in tracks]
                # levelled on the eyes: the worker searches them and cuts (an eye search costs more than a face's
                # classification), from its own copy of the frame; else the crops are copied here
                crops = [np.array(c) for c in self._detector.crop(frame, faces)] if self._detector.aligner is None \
                    else _Cut(self._detector, frame.copy(), faces, self._due(tracks))
                job = _Job(self._generation, self._model, crops, ids, mirror, views)
                worker.submit(lambda: _run_job(job, self._clock))
            return None
        crops = self._cut(frame, tracks)
        start = self._clock()
        probs = _predict(self._model, crops, settings.mirror, views)
        seconds = self._clock() - start
        self._apply_result(_Result(self._generation, ids, probs, seconds, views=views), now)
        return seconds

    def _cut(self, frame: np.ndarray, tracks: list[Track]) -> list[np.ndarray]:
        """The tracked faces' crops for one batch cut here, levelled on the eyes when the detector aligns (`_due`)."""
        faces = [t.face for t in tracks]
        if self._detector.aligner is None:
            return self._detector.crop(frame, faces)
        cut = _Cut(self._detector, frame, faces, self._due(tracks))
        crops, rolls = cut.crops()
        self._measured([t.id for t in tracks], cut, rolls)
        return crops

    def _due(self, tracks: list[Track]) -> list[float | None]:
        """Each track's roll for this batch, None for those to measure now: new tracks, or when there are none, the
        track measured longest ago; the others keep their last roll. An eye search costs more than classifying the
        face (about 9 against 3 ms on 2 AVX2 cores), and a head's roll changes little from one batch to the next."""
        self._batches += 1
        self._roll_of = {t.id: self._roll_of[t.id] for t in tracks if t.id in self._roll_of}  # ended tracks go
        due = {t.id for t in tracks if t.id not in self._roll_of}
        if not due:
            due = {min(tracks, key=lambda t: self._roll_of[t.id][1]).id}
        return [None if t.id in due else self._roll_of[t.id][0] for t in tracks]

    def _measured(self, track_ids: list[int], cut: _Cut, rolls: list[float]) -> None:
        """Keep the rolls a cut measured, unless the detector changed since (its alignment settings may differ)."""
        if cut.detector is not self._detector:
            return
        for track_id, known, roll in zip(track_ids, cut.known, rolls):
            if known is None:
                self._roll_of[track_id] = (roll, self._batches)

    def _start_worker(self) -> Background[_Result]:
        self._worker = Background("fer-app-classify")
        return self._worker

    def _apply_result(self, result: _Result, now: float) -> None:
        """Fold a batch's probabilities into its tracks (those still alive) and note its time."""
        if result.cut is not None and result.rolls is not None:
            self._measured(result.track_ids, result.cut, result.rolls)
        if result.probabilities is not None:
            views = result.views or [None] * len(result.track_ids)
            for track_id, probs, view in zip(result.track_ids, result.probabilities, views):
                self._tracker.add_probabilities(track_id, probs, now, view)
        ms = result.seconds * 1e3
        self._recent_classify.append(ms)
        if len(self._recent_classify) >= _AUTO_MIN:
            median = statistics.median(self._recent_classify)
            if median > self._settings.async_above_ms:
                self._auto_async = True
            elif median < self._settings.async_above_ms / 2:
                self._auto_async = False
        with self._lock:
            self._times["classify"].append(ms)
            self._error = result.error

    def _record(self, start: float, timing: FrameTiming, tracks: list[Track], predictions: list[Prediction],
                annotated: bool) -> None:
        """Statistics, snapshot for the page thread, and timeline rows of the frame just done."""
        rates = [hz for t in tracks if (hz := t.refresh_hz()) is not None]
        rows = self._timeline_rows(start, predictions)
        with self._lock:
            self._frames += 1
            self._times["start"].append(start)
            self._times["detect"].append(timing.detect_ms)
            self._times["frame"].append(timing.frame_ms)
            if annotated:
                self._times["draw"].append(timing.draw_ms)
            self._faces, self._predictions, self._last_timing = len(tracks), predictions, timing
            self._refresh_hz = sum(rates) / len(rates) if rates else 0.0
            self._timeline.extend(rows)

    def _timeline_rows(self, now: float, predictions: list[Prediction]) -> list[dict]:
        present = {p.track_id for p in predictions} | ({None} if predictions else set())
        for key in present:
            self._absent[key] = 0
        for key in list(self._absent):
            if key not in present:
                self._absent[key] += 1
                if self._absent[key] == _GAP_FRAMES:
                    self._gapped.add(key)
                elif self._absent[key] > 100 * _GAP_FRAMES:  # long gone
                    del self._absent[key]
        if not predictions or now - self._timeline_at < self._timeline_every:
            return []
        self._timeline_at = now
        largest = max(predictions, key=lambda p: p.face.area)
        t = round(now - self._t0, 3)
        rows = [{"t": t, "track": p.track_id, "largest": p is largest, "label": p.label,
                 "confidence": round(p.confidence, 4),
                 **{c: round(float(v), 4) for c, v in zip(p.classes, p.probabilities)},
                 "gap": p.track_id in self._gapped or (p is largest and None in self._gapped)} for p in predictions]
        self._gapped.difference_update(present)
        return rows

    def _overlay_lines(self, now: float, shape: tuple[int, ...], tracks: list[Track]) -> tuple[list[str], Rect | None]:
        """The overlay's lines (refreshed every `_OVERLAY_EVERY` s) and its box: a corner where no face (with its
        label strip) is, the current one while it stays free; ([], None) where every corner has a face."""
        if now - self._overlay_at >= _OVERLAY_EVERY:
            snapshot = replace(self.stats(), faces=len(tracks))  # this frame's faces, as drawn
            with self._lock:
                self._overlay, self._overlay_at, self._overlay_stats = snapshot.overlay_lines(), now, snapshot
        faces = [t.face for t in tracks] + [t.face for t in self._tracker.tracks]
        previous = self._overlay_drawn[1]
        rect = stats_box(shape[1], self._overlay, frame_height=shape[0], faces=faces,
                         prefer=None if previous is None else (previous.x, previous.y))
        lines = self._overlay if rect is not None else []
        with self._lock:
            self._overlay_drawn = (lines, rect)
        return lines, rect


def _scans_beside(settings: LiveSettings) -> bool:
    """Full scans in the background, unless everything is to run in the video thread (`asynchronous=False`:
    the video CLI, deterministic)."""
    return settings.asynchronous is not False


def _scanner(detector: FaceDetector, settings: LiveSettings) -> Scanner:
    """The scan schedule for `settings`."""
    return Scanner(detector, settings.scan, background=_scans_beside(settings))


def _predict(model: Classifier, crops: list[np.ndarray], mirror: bool | None, views: list[int] | None) -> np.ndarray:
    """One view of each crop (`views`), or the `mirror` setting's views of every crop, averaged."""
    return model.predict_proba(crops, tta=mirror) if views is None else model.predict_views(crops, views)


def _segmented(rows: list[dict], gap_s: float, *, per_track: bool) -> list[dict]:
    """Rows (in time order) with a "segment" number: a new one after a row marked "gap", after more than `gap_s` s
    without a row, and (one line for the largest face) where the track changes. per_track: within each track."""
    out, segment, last = [], 0, {}
    for row in rows:
        key = row["track"] if per_track else None
        before = last.get(key)
        if (before is None or row.get("gap") or row["t"] - before[0] > gap_s
                or (not per_track and row["track"] != before[1])):
            segment += 1
            last[key] = (row["t"], row["track"], segment)
        else:
            last[key] = (row["t"], row["track"], before[2])
        out.append({**row, "segment": last[key][2]})
    return out


def _median_p95(values: deque[float]) -> tuple[float, float]:
    if not values:
        return (0.0, 0.0)
    arr = np.fromiter(values, dtype=np.float64, count=len(values))
    median, p95 = np.percentile(arr, (50, 95))
    return (float(median), float(p95))


def _to_bgr(frame: np.ndarray) -> np.ndarray:
    """A BGR copy of a grey, BGR or BGRA frame (to draw on)."""
    if frame.ndim == 2 or frame.shape[2] == 1:
        return cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR)
    if frame.shape[2] == 4:
        return cv2.cvtColor(frame, cv2.COLOR_BGRA2BGR)
    return frame.copy()
