"""Personal calibration: capture your own faces per emotion, then fine-tune a model's head on them.

Captures are 48x48 grey PNGs in the folder layout `<root>/<name>/<class>/*.png` (root defaults to
APP_HOME/calibration), so a person's captures are also an ordinary data source (`load_folders`,
the Training page's sources, the CLI's `--mix`).

- `CalibrationSession`: add / list / delete / count one person's captures.
- `CaptureScheduler`: pure timing logic for the live page: which emotion to show, its countdown,
  when to grab a crop (testable with made-up times).
- `CaptureRecorder`: a scheduler and a session fed with live frames and their detected faces; it
  stores crops of the largest face. Thread-safe: frames arrive in the video thread.
- `calibrate`: fine-tune the head (frozen encoder, cached embeddings) of a model on FER-2013 (when
  given) plus the captures weighted up; accuracy on held-out captures before and after; the result
  is saved as a new model, never over the one it started from.
"""

from __future__ import annotations

import math
import os
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import cv2
import numpy as np

from fer_app import config
from fer_app.config import CLASSES, DetectorConfig
from fer_app.data import SIDE, DataError, FaceSet, Splits, load_folders, split_for_validation
from fer_app.detection import crop_faces
from fer_app.encoders.base import to_grey
from fer_app.evaluate import evaluate
from fer_app.jobs import Job, check_name, run_dir, start_job
from fer_app.mixing import mix
from fer_app.model import load_model
from fer_app.modelcard import render_card
from fer_app.training import Callback, TrainConfig, TrainResult, train
from fer_app.types import Face

#: Captures per emotion a session aims at.
DEFAULT_PER_CLASS = 20
#: Share of the non-held-out captures used to pick the best epoch.
CALIBRATION_VAL_FRACTION = 0.25
#: calibrate() needs this many captures of each emotion captured (held out / val / train).
MIN_CAPTURES_PER_CLASS = 3
MIN_CAPTURES = 15


def calibration_root() -> Path:
    return config.APP_HOME / "calibration"


def list_sessions(root: Path | None = None) -> list[str]:
    """Names of the calibration sessions (folders) under `root`."""
    root = root or calibration_root()
    return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")) if root.is_dir() \
        else []


# ---------------------------------------------------------------- captures on disk


class CalibrationSession:
    """One person's captures: `<root>/<name>/<class>/*.png`, 48x48 grey."""

    def __init__(self, name: str, root: Path | None = None, per_class: int = DEFAULT_PER_CLASS) -> None:
        self.name = check_name(name, "calibration name")
        self.root = Path(root) if root is not None else calibration_root()
        self.folder = self.root / self.name
        self.per_class = int(per_class)

    def add(self, label: str, crop: np.ndarray) -> Path:
        """Store a face crop (grey, BGR or BGRA, any size) of emotion `label`; the PNG's path."""
        if label not in CLASSES:
            raise ValueError(f"unknown emotion {label!r}; expected one of {', '.join(CLASSES)}")
        if crop.size == 0 or crop.dtype != np.uint8:
            raise ValueError(f"a face crop must be a non-empty uint8 image (got {crop.dtype}, shape {crop.shape})")
        face = cv2.resize(to_grey(crop), (SIDE, SIDE), interpolation=cv2.INTER_AREA)
        ok, png = cv2.imencode(".png", face)
        if not ok:
            raise ValueError("the face crop could not be encoded as PNG")
        folder = self.folder / label
        folder.mkdir(parents=True, exist_ok=True)
        now = time.time_ns()  # names sort by capture time: date, time, nanoseconds, a random tag
        path = folder / f"{time.strftime('%Y%m%d-%H%M%S', time.localtime(now / 1e9))}-{now % 10 ** 9:09d}-" \
                        f"{uuid.uuid4().hex[:6]}.png"
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(png.tobytes())
        os.replace(tmp, path)
        return path

    def list(self, label: str) -> list[Path]:
        """The captures of `label`, oldest first."""
        folder = self.folder / label
        return sorted(folder.glob("*.png")) if folder.is_dir() else []

    def counts(self) -> dict[str, int]:
        return {c: len(self.list(c)) for c in CLASSES}

    def missing(self) -> dict[str, int]:
        """How many captures each emotion still lacks to reach `per_class`."""
        return {c: max(0, self.per_class - n) for c, n in self.counts().items()}

    def delete(self, path: str | Path) -> None:
        """Remove one capture; ValueError for any path that is not a capture of this session."""
        path = Path(path).resolve()
        if path.suffix != ".png" or path.parent.name not in CLASSES or path.parent.parent != self.folder.resolve():
            raise ValueError(f"{path} is not a capture of calibration session {self.name!r}")
        path.unlink(missing_ok=True)

    def clear(self) -> None:
        """Remove all captures of this session."""
        shutil.rmtree(self.folder, ignore_errors=True)


# ---------------------------------------------------------------- capture timing (pure logic)


@dataclass(frozen=True)
class CaptureStep:
    """What the live page shows and does for one frame."""

    label: str | None        # the emotion to show (None when done)
    countdown: float         # seconds left before grabbing starts (0 while grabbing)
    grab: bool               # take a crop from this frame
    have: int                # captures of `label` so far
    need: int
    done: bool
    message: str


class CaptureScheduler:
    """Which emotion to show next, with a countdown, and when to grab a crop; fed (time, face seen).

    Emotions come in `classes` order, skipping those with `per_class` captures already. Each one
    starts with `countdown` seconds to put on the expression; then a crop is grabbed every
    `interval` seconds while a face is seen. `record` counts a stored crop; `skip` moves on.
    """

    def __init__(self, classes: Sequence[str] = CLASSES, per_class: int = DEFAULT_PER_CLASS,
                 counts: Mapping[str, int] | None = None, countdown: float = 3.0, interval: float = 0.5) -> None:
        unknown = [c for c in classes if c not in CLASSES]
        if unknown or not classes:
            raise ValueError(f"classes must be some of {', '.join(CLASSES)} (got {list(classes)})")
        self.classes, self.per_class = tuple(classes), int(per_class)
        self.countdown, self.interval = float(countdown), float(interval)
        self._counts = {c: int((counts or {}).get(c, 0)) for c in self.classes}
        self._skipped: set[str] = set()
        self._label: str | None = None
        self._since = 0.0
        self._last_grab = -math.inf

    def current(self) -> str | None:
        """The emotion being captured, or None when all are done."""
        return next((c for c in self.classes if c not in self._skipped and self._counts[c] < self.per_class), None)

    def counts(self) -> dict[str, int]:
        return dict(self._counts)

    def tick(self, now: float, face: bool) -> CaptureStep:
        """The step for a frame at time `now` (seconds, any clock) in which a face was (not) found."""
        label = self.current()
        if label is None:
            return CaptureStep(None, 0.0, False, 0, 0, True,
                               "Captures done: calibrate on the Training page")
        if label != self._label:
            self._label, self._since = label, now
        have, need = self._counts[label], self.per_class
        left = self.countdown - (now - self._since)
        if left > 0:
            return CaptureStep(label, left, False, have, need, False, f"Show {label.upper()} in {math.ceil(left)}")
        if not face:
            return CaptureStep(label, 0.0, False, have, need, False, f"{label.upper()}: no face, look at the camera")
        grab = now - self._last_grab >= self.interval
        if grab:
            self._last_grab = now
        return CaptureStep(label, 0.0, grab, have, need, False, f"Hold {label.upper()}: {have}/{need}")

    def record(self, label: str) -> None:
        """A crop of `label` was stored."""
        self._counts[label] = self._counts.get(label, 0) + 1

    def skip(self) -> None:
        """Move on from the current emotion (one you cannot act, say)."""
        label = self.current()
        if label is not None:
            self._skipped.add(label)


class CaptureRecorder:
    """Live frames in, crops of the largest face stored per the scheduler's steps; thread-safe.

    `on_frame` runs in the video thread; `last_step` and `skip` may be called from the page.
    """

    def __init__(self, session: CalibrationSession, scheduler: CaptureScheduler | None = None, *,
                 margin: float = DetectorConfig.margin, clock: Callable[[], float] = time.monotonic) -> None:
        self.session = session
        self.scheduler = scheduler or CaptureScheduler(per_class=session.per_class, counts=session.counts())
        self.margin, self._clock = margin, clock
        self._lock = threading.Lock()
        self._last: CaptureStep | None = None

    @classmethod
    def for_session(cls, name: str, per_class: int = DEFAULT_PER_CLASS, root: Path | None = None,
                    **scheduler_options: float) -> CaptureRecorder:
        session = CalibrationSession(name, root, per_class)
        return cls(session, CaptureScheduler(per_class=per_class, counts=session.counts(), **scheduler_options))

    def on_frame(self, frame: np.ndarray, faces: Sequence[Face], now: float | None = None) -> CaptureStep:
        """The step for this frame; when it says grab, the largest face's crop is stored."""
        now = self._clock() if now is None else now
        face = max(faces, key=lambda f: f.area, default=None)
        with self._lock:
            step = self.scheduler.tick(now, face is not None)
            if step.grab and face is not None and step.label is not None:
                self.session.add(step.label, crop_faces(frame, [face], self.margin)[0])
                self.scheduler.record(step.label)
                step = replace(step, have=step.have + 1)
            self._last = step
        return step

    def last_step(self) -> CaptureStep | None:
        with self._lock:
            return self._last

    def skip(self) -> None:
        with self._lock:
            self.scheduler.skip()


def draw_capture_prompt(frame: np.ndarray, step: CaptureStep) -> np.ndarray:
    """The step's message as a banner across the top of a BGR frame, with a progress bar (in place)."""
    width = frame.shape[1]
    cv2.rectangle(frame, (0, 0), (width, 46), (40, 40, 40), -1)
    cv2.putText(frame, step.message, (10, 31), cv2.FONT_HERSHEY_SIMPLEX, 0.8, (255, 255, 255), 2, cv2.LINE_AA)
    if step.need:
        cv2.rectangle(frame, (0, 42), (int(width * min(step.have / step.need, 1.0)), 46), (80, 200, 80), -1)
    if step.grab:  # a flash, so the person sees the capture
        cv2.rectangle(frame, (0, 0), (width - 1, frame.shape[0] - 1), (255, 255, 255), 6)
    return frame


# ---------------------------------------------------------------- the fine-tune


@dataclass
class CalibrationResult:
    """Accuracy on the held-out captures with the starting model (`before`) and the calibrated one (`after`)."""

    before: dict                 # classification reports (fer_app.metrics)
    after: dict
    held_out: int
    training: TrainResult
    saved_to: Path | None


def load_captures(captures_root: str | Path) -> FaceSet:
    """All captures under a session folder, checked to be enough to calibrate on."""
    try:
        faces = next(iter(load_folders(captures_root, on_error="skip").values()))
    except DataError:
        raise DataError(f"{captures_root}: no captures yet; capture faces on the Live webcam page") from None
    present = {c: n for c, n in faces.class_counts().items() if n}
    few = [f"{c} ({n})" for c, n in present.items() if n < MIN_CAPTURES_PER_CLASS]
    if few or len(faces) < MIN_CAPTURES:
        raise DataError(f"{captures_root}: too few captures to calibrate: need {MIN_CAPTURES_PER_CLASS}+ of each "
                        f"emotion captured and {MIN_CAPTURES}+ in all (have {len(faces)}"
                        f"{'; too few of ' + ', '.join(few) if few else ''}); capture more on the Live webcam page")
    return faces


def calibrate(base_model: str | Path, captures_root: str | Path, fer_splits: Splits | None = None, *,
              user_weight: float = 5.0, holdout: float = 0.3, epochs: int = 15, name: str | None = None,
              lr: float = 1e-3, seed: int = 0, threads: int = 0, overwrite: bool = False,
              callback: Callback | None = None, command: str = "") -> CalibrationResult:
    """Fine-tune `base_model`'s head on FER-2013 (`fer_splits["train"]`, when given) + the captures x `user_weight`.

    A stratified `holdout` share of the captures is never trained on: the result reports accuracy on
    it before and after. A quarter of the rest picks the best epoch. The encoder stays frozen (its
    embeddings are cached), and the result is saved as models/<name> when `name` is given.
    """
    if name is not None and check_name(name, "model name") == Path(base_model).name:
        raise ValueError(f"save the calibrated model under another name than its starting model {name!r}")
    captures = load_captures(captures_root)
    try:
        rest, held = split_for_validation(captures, holdout, seed)
        user_train, user_val = split_for_validation(rest, CALIBRATION_VAL_FRACTION, seed)
    except DataError as exc:
        raise DataError(f"{captures_root}: too few captures to hold out {holdout:.0%} and still train "
                        f"({exc}); capture more, or lower the held-out share") from None
    base = load_model(base_model, runtime="torch")
    before = evaluate(base, held)
    sources: list[tuple[Splits, float]] = [({"train": user_train, "val": user_val}, user_weight)]
    if fer_splits is not None:
        sources.insert(0, ({"train": fer_splits["train"]}, 1.0))
    head = base.head.kind if base.head.kind in ("linear", "mlp") else "linear"
    cfg = TrainConfig(encoder=base.encoder.encoder_id, mode="head", head=head, init_from=str(base_model),
                      epochs=epochs, optimizer="adamw", lr=lr, schedule="cosine", tta_flip=base.tta_flip,
                      seed=seed, threads=threads)
    run_name = name or f"calibrate-{Path(captures_root).name}"
    meta = {"calibration": {"base_model": str(base_model), "captures": str(captures_root),
                            "captures_per_class": captures.class_counts(), "user_weight": user_weight,
                            "held_out": len(held), "with_fer2013": fer_splits is not None}}
    command = command or "(calibrated on the Training page)"
    result = train(cfg, mix(sources, seed=seed), name=name, workdir=run_dir(run_name), overwrite=overwrite,
                   callback=callback, extra_meta=meta, card=lambda r: render_card(run_name, r.model.config(), command))
    return CalibrationResult(before, evaluate(result.model, held), len(held), result, result.saved_to)


def start_calibration(base_model: str, captures_root: str | Path, fer_splits: Splits | None = None, *, name: str,
                      **options: object) -> Job:
    """`calibrate` as a background job (see fer_app.jobs): the page polls it like a training run."""
    def work(job: Job) -> CalibrationResult:
        return calibrate(base_model, captures_root, fer_splits, name=name, callback=job, **options)  # type: ignore[arg-type]

    return start_job("calibrate", f"calibrating {base_model} on {Path(captures_root).name}", name, work)
