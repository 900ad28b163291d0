"""Personal calibration: capture your own faces per emotion, then fine-tune a model's head on them.

Captures are 48x48 grey PNGs in the folder layout `<root>/<name>/<class>/*.png` (root defaults to
APP_HOME/calibration), so a person's captures are also an ordinary data source (`load_folders`,
the Training page's sources, the CLI's `--mix`).

- `CalibrationSession`: add / list / delete / count one person's captures.
- `CaptureScheduler`: pure timing logic for the live page: which emotion to show, its countdown,
  when to grab a crop (testable with made-up times).
- `CaptureRecorder`: a scheduler and a session fed with live frames and their detected faces; it
  stores crops of the largest face. Thread-safe: frames arrive in the video thread.
- `calibrate`: a personal copy of a model: encoder and head unchanged, plus a memory of the person's
  capture embeddings that decides only for faces close to one of them (`fer_app.heads`, "personal");
  accuracy on the latest captures of each emotion (held out by capture time) before and after, and on
  FER-2013 val when given; saved as a new model (int8 encoder and TTA views kept), never over its base.
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
import torch
from torch import nn

from fer_app import config, runtimes
from fer_app.config import CLASSES, DetectorConfig
from fer_app.data import SIDE, DataError, FaceSet, Splits, load_folders
from fer_app.detection import crop_faces
from fer_app.evaluate import evaluate
from fer_app.heads import Head
from fer_app.imageio import to_grey
from fer_app.jobs import Job, check_name, start_job
from fer_app.metrics import classification_report, confusion_png
from fer_app.model import (DIGEST_KEY, ENCODER_DIGEST, QUANTIZED_FILE, QUANTIZED_KEY, WEIGHTS_FILE, Classifier,
                           ModelError, encoder_sha256, load_model, model_dir, read_config, save_model, shipped_problem)
from fer_app.modelcard import render_card, with_section
from fer_app.training import Callback, phase_reporter
from fer_app.types import Face

#: Captures per emotion a session aims at.
DEFAULT_PER_CLASS = 20
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

    def skip(self, label: str | None = None) -> bool:
        """Move on from the current emotion (one you cannot act, say). `label`: skip it only if it is still
        the current one (a click on "Skip" for what the page showed, never for the emotion after it)."""
        current = self.current()
        if current is None or (label is not None and label != current):
            return False
        self._skipped.add(current)
        return True

    def skipped(self) -> list[str]:
        """The emotions skipped, in `classes` order."""
        return [c for c in self.classes if c in self._skipped]


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

    def on_frame(self, frame: np.ndarray, faces: Sequence[Face], now: float | None = None,
                 crop: Callable[[np.ndarray, Sequence[Face]], list[np.ndarray]] | None = None) -> CaptureStep:
        """The step for this frame; when it says grab, the largest face's crop is stored, cut by `crop` (the
        live pipeline's, so captures are framed as the classifier sees faces; default: `crop_faces` with
        this recorder's margin)."""
        now = self._clock() if now is None else now
        face = max(faces, key=lambda f: f.area, default=None)
        with self._lock:
            step = self.scheduler.tick(now, face is not None)
            if step.grab and face is not None and step.label is not None:
                cut = crop(frame, [face]) if crop is not None else crop_faces(frame, [face], self.margin)
                self.session.add(step.label, cut[0])
                self.scheduler.record(step.label)
                step = replace(step, have=step.have + 1)
            self._last = step
        return step

    def last_step(self) -> CaptureStep | None:
        with self._lock:
            return self._last

    def skip(self, label: str | None = None) -> bool:
        """Skip `label` if it is still the emotion being captured (see `CaptureScheduler.skip`)."""
        with self._lock:
            return self.scheduler.skip(label)

    def skipped(self) -> list[str]:
        with self._lock:
            return self.scheduler.skipped()


#: Height of the capture prompt's banner, drawn across the BOTTOM of the frame (the stats overlay is at the top).
BANNER_H = 46


def draw_capture_prompt(frame: np.ndarray, step: CaptureStep) -> np.ndarray:
    """The step's message as a banner across the bottom of a BGR frame, with a progress bar (in place)."""
    height, width = frame.shape[:2]
    top = max(0, height - BANNER_H)
    cv2.rectangle(frame, (0, top), (width, height), (40, 40, 40), -1)
    cv2.putText(frame, step.message, (10, top + 31), cv2.FONT_HERSHEY_SIMPLEX, 0.8, (255, 255, 255), 2, cv2.LINE_AA)
    if step.need:
        cv2.rectangle(frame, (0, top), (int(width * min(step.have / step.need, 1.0)), top + 4), (80, 200, 80), -1)
    if step.grab:  # a flash, so the person sees the capture
        cv2.rectangle(frame, (0, 0), (width - 1, frame.shape[0] - 1), (255, 255, 255), 6)
    return frame


# ---------------------------------------------------------------- calibrate: a personal head


#: Held-out share of each emotion's captures: its LATEST captures (by capture time), never stored in the memory.
DEFAULT_HOLDOUT = 0.3
#: Cosine similarity to the nearest capture at which a face takes the captures' vote (below: the base head).
#: Measured on compact-fer2013 and a real session (README, "Personal calibration"): at 0.97 FER-2013 val
#: moves 71.0% -> 70.9% and the session's time-held-out captures 2% -> 17%; at 0.96, 25% but FER-2013 val 69.5%.
DEFAULT_GATE = 0.97
#: Gates tried when FER-2013 val is given: the lowest one that keeps its accuracy within FER_TOLERANCE is used.
GATE_GRID = (0.93, 0.94, 0.95, 0.96, 0.97, 0.98, 0.99)
FER_TOLERANCE = 0.005
#: A gate above any cosine similarity: the captures never decide (the base model as it was).
GATE_OFF = 1.1
PROTECTION = ("the base head is kept unchanged; your captures act only on faces within cosine {gate:.2f} of "
              "one of them ({how})")


@dataclass
class CalibrationResult:
    """Accuracy on the held-out captures (the latest of each emotion) with the starting model (`before`) and
    the calibrated one (`after`); FER-2013 val before/after when it was given."""

    before: dict                 # classification reports (fer_app.metrics)
    after: dict
    held_out: int
    trained_on: int
    gate: float
    protection: str
    seconds: float
    saved_to: Path | None
    fer_before: dict | None = None
    fer_after: dict | None = None
    holdout: float = DEFAULT_HOLDOUT
    split: str = "time"


def load_captures(captures_root: str | Path) -> FaceSet:
    """All captures under a session folder (each emotion's in capture order: the file names sort by time),
    checked to be enough to calibrate on."""
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


def time_split(faces: FaceSet, holdout: float) -> tuple[FaceSet, FaceSet]:
    """(earlier, later): per emotion, the last `holdout` share of its captures in capture order is held out
    (at least one, and at least one left to learn from). Neighbouring frames of one take look alike: a random
    split would score near-duplicates of trained captures."""
    if not 0 < holdout < 1:
        raise ValueError(f"the held-out share must be between 0 and 1, not {holdout}")
    held = np.zeros(len(faces), bool)
    for label in np.unique(faces.labels):
        members = np.flatnonzero(faces.labels == label)
        n = min(max(round(len(members) * holdout), 1), len(members) - 1)
        if n < 1:
            raise DataError(f"{CLASSES[label]}: one capture only; nothing to hold out")
        held[members[len(members) - n:]] = True

    def part(mask: np.ndarray, what: str) -> FaceSet:
        return FaceSet(faces.images[mask], faces.labels[mask], source=f"{faces.source} ({what})")

    return part(~held, "earlier captures"), part(held, "latest captures, held out")


def embed_views(model: Classifier, faces: FaceSet, report: Callable[[int, int], None] | None = None,
                batch: int = 128) -> torch.Tensor:
    """Embeddings (N, views, D) of each face in each of the model's test-time views (frozen encoder)."""
    views, out, n = model.views(), [], len(faces)
    encoder = model.encoder.eval()
    with torch.inference_mode():
        for i in range(0, n, batch):
            pixels = encoder.preprocess(list(faces.images[i:i + batch]))
            out.append(torch.stack([encoder(model.view(pixels, v)).float() for v in range(views)], 1))
            if report:
                report(min(i + batch, n), n)
    return torch.cat(out) if out else torch.zeros((0, views, encoder.embed_dim))


def _probs(head: Head, base: torch.Tensor, emb: torch.Tensor, gate: float | None = None) -> torch.Tensor:
    """The personal head's probabilities averaged over the views, from the base's (N, views, C) and embeddings."""
    with torch.inference_mode():
        return torch.stack([head.personal_probabilities(emb[:, v], base[:, v], gate)
                            for v in range(emb.shape[1])]).mean(0)


def _accuracy(head: Head, base: torch.Tensor, emb: torch.Tensor, labels: np.ndarray, gate: float) -> float:
    return float((_probs(head, base, emb, gate).argmax(1).numpy() == labels).mean())


def _base_probs(head: nn.Module, emb: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return torch.stack([torch.softmax(head(emb[:, v]).float(), 1) for v in range(emb.shape[1])], 1)


def _phases(callback: Callback | None) -> Callable[[str], Callable[[int, int], None]]:
    """Progress of a calibration for a training callback: one phase at a time, each on its own clock
    (`fer_app.training.phase_reporter`), shown at once."""

    def start(phase: str) -> Callable[[int, int], None]:
        report = phase_reporter(phase, callback or Callback())
        report(0, 1)
        return report

    return start


def calibrate(base_model: str | Path, captures_root: str | Path, fer_splits: Splits | None = None, *,
              holdout: float = DEFAULT_HOLDOUT, gate: float | None = None, name: str | None = None,
              threads: int = 0, overwrite: bool = False, callback: Callback | None = None,
              command: str = "") -> CalibrationResult:
    """A personal copy of `base_model`: its encoder and head unchanged, plus a memory of the captures.

    The latest `holdout` share of each emotion's captures is held out (`time_split`): accuracy on it
    before and after is the figure reported. The rest are embedded (every test-time view) into a
    personal head (`fer_app.heads.Head`, kind "personal"): a face within cosine `gate` of a capture takes
    the nearest captures' vote, any other face keeps the base head's output, so the base forgets
    nothing it knew about faces unlike the person's. `gate` None: chosen on FER-2013 val when
    `fer_splits` has a val split (the lowest of GATE_GRID within FER_TOLERANCE of the base), else
    DEFAULT_GATE. The int8 encoder, its reference batch and the TTA views of the base are kept.
    Saved as models/<name> when `name` is given (never over the starting model).
    """
    began = time.perf_counter()
    if name is not None and check_name(name, "model name") == Path(base_model).name:
        raise ValueError(f"save the calibrated model under another name than its starting model {name!r}")
    phases = _phases(callback)
    loading = phases("load")
    torch.set_num_threads(threads or runtimes.TORCH_DEFAULT_THREADS)  # 0/None: torch's default, not the last model's
    captures = load_captures(captures_root)
    try:
        learn, held = time_split(captures, holdout)
    except DataError as exc:
        raise DataError(f"{captures_root}: too few captures to hold out {holdout:.0%} and still learn ({exc}); "
                        "capture more, or lower the held-out share") from None
    base = load_model(base_model, runtime="torch")
    base_head = base.head
    if base_head.kind == "personal":  # calibrating a calibrated model again: start from its base head
        base_head = Head(base_head.in_dim, base_head.num_classes, base_head.base, base_head.hidden,
                         base_head.dropout_p)
        base_head.net.load_state_dict(base.head.net.state_dict())
        base.head = base_head
    if base_head.kind not in ("linear", "mlp"):
        raise ValueError(f"{base_model}: a {base_head.kind} head cannot be calibrated (linear or mlp only)")
    loading(1, 1)
    before = evaluate(base, held)
    learn_emb = embed_views(base, learn, phases("embed"))
    views = learn_emb.shape[1]
    head = Head(base_head.in_dim, base_head.num_classes, "personal", base_head.hidden, base_head.dropout_p,
                base=base_head.kind, memory=len(learn) * views, gate=gate if gate is not None else DEFAULT_GATE)
    head.net.load_state_dict(base_head.net.state_dict())
    head.remember(learn_emb.reshape(-1, learn_emb.shape[-1]), torch.from_numpy(learn.labels).repeat_interleave(views))
    head.eval()
    fer_val = (fer_splits or {}).get("val") or (fer_splits or {}).get("test")
    fer_before = fer_after = None
    how = f"the default gate, measured on compact-fer2013 with FER-2013 val: {DEFAULT_GATE}"
    if fer_val is not None:
        emb = embed_views(base, fer_val, phases("fer-check"))
        probs = _base_probs(base_head, emb)
        base_acc = _accuracy(head, probs, emb, fer_val.labels, 2.0)  # a gate above any cosine: the base alone
        if gate is None:
            ok = [g for g in GATE_GRID if _accuracy(head, probs, emb, fer_val.labels, g) >= base_acc - FER_TOLERANCE]
            head.gate = ok[0] if ok else GATE_OFF
            how = (f"chosen on {len(fer_val)} FER-2013 val faces: the lowest gate keeping their accuracy within "
                   f"{FER_TOLERANCE:.1%} of the base's" if ok else
                   f"no gate kept {len(fer_val)} FER-2013 val faces within {FER_TOLERANCE:.1%} of the base's "
                   "accuracy: your captures are switched off (they look like FER-2013 faces of other emotions)")
        else:
            how = "the gate you set; checked on FER-2013 val"
        fer_before = classification_report(fer_val.labels, probs.mean(1).argmax(1).numpy(), tuple(base.classes))
        fer_after = classification_report(fer_val.labels, _probs(head, probs, emb).argmax(1).numpy(),
                                          tuple(base.classes))
    elif gate is not None:
        how = "the gate you set; FER-2013 not given, not checked"
    protection = PROTECTION.format(gate=head.gate, how=how)
    meta = {k: v for k, v in base.meta.items() if k not in ("created", "metrics", "description", DIGEST_KEY)}
    calibrated = Classifier(base.encoder, head, name=name or "", classes=base.classes, tta_flip=base.tta_flip,
                            tta_zooms=base.tta_zooms, meta=meta).eval()
    after = evaluate(calibrated, held)
    seconds = time.perf_counter() - began
    result = CalibrationResult(before, after, len(held), len(learn), head.gate, protection, seconds, None,
                               fer_before, fer_after, holdout)
    record = {"base_model": str(base_model), "captures": str(captures_root),
              "captures_per_class": captures.class_counts(), "held_out": len(held), "trained_on": len(learn),
              "split": "time: the latest captures of each emotion held out", "holdout": holdout,
              "gate": head.gate, "protection": protection, "with_fer2013": fer_val is not None,
              "held_out_accuracy": {"before": before["accuracy"], "after": after["accuracy"]},
              "fer2013_val_accuracy": {"before": fer_before["accuracy"], "after": fer_after["accuracy"],
                                       "n": len(fer_val)} if fer_val is not None else None,
              "seconds": round(seconds, 1)}
    calibrated.meta["training"] = {**base.meta.get("training", {}), "calibration": record}
    calibrated.meta["description"] = f"{Path(base_model).name} calibrated on the captures of {Path(captures_root).name}"
    if fer_after is not None:
        calibrated.meta["metrics"] = {"val": fer_after}
    if name is not None:
        extra = _kept_files(base_model, calibrated)
        extra["confusion.png"] = confusion_png(after["confusion"])
        card = with_section(render_card(name, {**calibrated.config(), "name": name}, command or
                                        "(calibrated on the Training page)"), calibration_section(record))
        result.saved_to = save_model(calibrated, name, overwrite=overwrite, card=card, extra_files=extra)
    return result


def _kept_files(base_model: str | Path, calibrated: Classifier) -> dict[str, bytes]:
    """The base's int8 encoder and reference batch (same encoder weights), with the `quantized` entry
    pointing at its encoder tensors (`fer_app.model.ENCODER_DIGEST`); nothing when the base has none valid."""
    from fer_app.runtimes import REFERENCE_FILE

    folder = model_dir(base_model)
    try:
        cfg = read_config(folder)
    except (ModelError, OSError):
        return {}
    if cfg.get(QUANTIZED_KEY) is None or shipped_problem(folder, cfg) is not None:
        calibrated.meta.pop(QUANTIZED_KEY, None)
        return {}
    entry = dict(cfg[QUANTIZED_KEY])
    entry.setdefault(ENCODER_DIGEST, encoder_sha256(folder / WEIGHTS_FILE))
    calibrated.meta[QUANTIZED_KEY] = entry
    files = {QUANTIZED_FILE: (folder / QUANTIZED_FILE).read_bytes()}
    if (folder / REFERENCE_FILE).is_file():
        files[REFERENCE_FILE] = (folder / REFERENCE_FILE).read_bytes()
    return files


CALIBRATION_TITLE = "## Personal calibration"


def calibration_section(record: dict) -> str:
    """The model card's section on a calibration: what was held out, before/after, FER-2013 val, the gate."""
    acc = record["held_out_accuracy"]
    lines = [CALIBRATION_TITLE,
             f"- started from `{record['base_model']}`; captures `{record['captures']}` {record['captures_per_class']}",
             f"- held out by capture time: the latest {record['holdout']:.0%} of each emotion's captures "
             f"({record['held_out']}; never stored, nor used to choose anything); {record['trained_on']} earlier ones "
             "stored in the personal head",
             f"- accuracy on the held-out captures: {acc['before']:.1%} before, {acc['after']:.1%} after",
             f"- protection of the base: {record['protection']}"]
    fer = record.get("fer2013_val_accuracy")
    lines.append(f"- FER-2013 val ({fer['n']} faces): {fer['before']:.2%} before, {fer['after']:.2%} after" if fer
                 else "- FER-2013 val: not measured (not given); the val figure of the base does not apply as is")
    lines.append(f"- time: {record['seconds']:.1f} s")
    return "\n".join(lines) + "\n"


def start_calibration(base_model: str, captures_root: str | Path, fer_splits: Splits | None = None, *, name: str,
                      **options: object) -> Job:
    """`calibrate` as a background job (see fer_app.jobs): the page polls it like a training run."""
    def work(job: Job) -> CalibrationResult:
        return calibrate(base_model, captures_root, fer_splits, name=name, callback=job,
                         **options)  # type: ignore[arg-type]

    return start_job("calibrate", f"calibrating {base_model} on {Path(captures_root).name}", name, work)
