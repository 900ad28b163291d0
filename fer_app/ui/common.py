"""What the pages share: the cached model (one per process), the model picker, detector settings."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import streamlit as st

from fer_app.config import DEFAULT_MODEL, EQUALIZE_MODES, DetectorConfig
from fer_app.detection import FaceDetector
from fer_app.model import Classifier, ModelError, ModelInfo, list_models, load_model, read_config


@st.cache_resource(show_spinner="Loading model…")
def cached_model(name: str, stamp: float) -> Classifier:
    """The model, loaded once per process and shared by all sessions (stamp: the config's mtime,
    so a model re-saved under the same name is reloaded)."""
    return load_model(name)


def get_model(info: ModelInfo) -> Classifier:
    stamp = (info.path / "config.json").stat().st_mtime if info.path else 0.0
    return cached_model(info.name, stamp)


def require_model(info: ModelInfo | None) -> Classifier:
    """The picked model, or the page stops (with an error in the page when it cannot be loaded)."""
    if info is None:
        st.stop()
    if info.problem:  # a damaged or malformed folder (listed so that the user sees why)
        st.error(f"Cannot load model {info.name!r}: {info.problem}")
        st.stop()
    try:
        return get_model(info)
    except (ModelError, OSError) as exc:
        st.error(f"Cannot load model {info.name!r}: {exc}")
        st.stop()
    raise AssertionError("unreachable")  # st.stop() raises


def model_picker(key: str = "model", default: str = DEFAULT_MODEL) -> ModelInfo | None:
    """Sidebar select box over `list_models()` (re-read on every run, so new models appear at once).

    It starts on `default` (else DEFAULT_MODEL, else the first usable model); a model the user picks is kept
    across pages instead."""
    models = list_models()
    if not models:
        st.sidebar.error("No model found in models/. Train one on the Training page or with "
                         "`python -m fer_app train`.")
        return None
    names = [m.name for m in models]
    usable = [m.name for m in models if m.usable]
    first = next((n for n in (default, DEFAULT_MODEL) if n in usable), usable[0] if usable else None)
    kept = st.session_state.get(f"{key}-kept")  # the user's pick (`_keep_choice`) outlives the page
    st.session_state[key] = kept if kept in names else first or names[0]  # else this page's own default
    labels = {m.name: m.name + (" (unusable)" if m.problem else f" ({figure_label(m)})" if figure_label(m) else "")
              for m in models}
    name = st.sidebar.selectbox("Model", names, key=key, format_func=labels.__getitem__,
                                on_change=_keep_choice, args=(key,))
    picked = next(m for m in models if m.name == name)
    if picked.problem:
        st.sidebar.error(f"This model cannot be used: {picked.problem}")
    if not any(m.encoder == "clip-vit-b32" for m in models):
        st.sidebar.caption("CLIP ViT-B/32 is not available: put its weights in `models/clip-vit-base-patch32/` "
                           "(`python -m fer_app fetch-clip` when online).")
    return picked


def _keep_choice(key: str) -> None:
    st.session_state[f"{key}-kept"] = st.session_state[key]


def figure_label(info: ModelInfo) -> str:
    """A model's headline figure with what it is measured on: "FER-2013 val 71.0%"; for a calibrated
    model, its held-out captures before/after ("your held-out captures 2% → 25% (48)")."""
    try:
        cfg = read_config(info.path) if info.path else {}
    except (ModelError, OSError):
        cfg = {}
    record = cfg.get("training", {}).get("calibration") if isinstance(cfg.get("training"), dict) else None
    if isinstance(record, dict) and "held_out_accuracy" in record:
        acc = record["held_out_accuracy"]
        return f"your held-out captures {acc['before']:.0%} → {acc['after']:.0%} ({record.get('held_out')})"
    if info.val_accuracy is None:
        return ""
    source = str(cfg.get("training", {}).get("data", {}).get("val", {}).get("source", "")) \
        if isinstance(cfg.get("training"), dict) else ""
    on = "FER-2013 val" if "fer2013" in source.lower() else "val"
    return f"{on} {info.val_accuracy:.1%}"


def detector_settings(key: str = "det", defaults: DetectorConfig | None = None) -> DetectorConfig:
    """Sidebar controls for the Haar detector, starting from `defaults` (`DetectorConfig()` if None)."""
    d = defaults or DetectorConfig()
    with st.sidebar.expander("Face detection", expanded=False):
        width = st.slider("Detection width (px)", 160, 1280, d.detection_width, 40, key=f"{key}-width",
                          help="Frames are downscaled to this width before detection: smaller is faster.")
        scale = st.slider("Scale factor", 1.02, 1.5, d.scale_factor, 0.01, key=f"{key}-scale",
                          help="Step between detection scales: smaller finds more faces, slower.")
        neighbours = st.slider("Min neighbours", 1, 12, d.min_neighbors, key=f"{key}-nb",
                               help="Higher: fewer false faces, may miss some.")
        min_face = st.slider("Min face size (px)", 16, 300, d.min_face, 4, key=f"{key}-min",
                             help="Smallest face side in the full-resolution frame.")
        equalize = st.selectbox("Contrast equalisation", EQUALIZE_MODES, EQUALIZE_MODES.index(d.equalize),
                                key=f"{key}-eq", help="clahe: adaptive, evens out lighting locally (default); "
                                "global: one histogram for the frame; none: the grey frame as it is.")
        align = st.checkbox("Level the eyes", d.align, key=f"{key}-align",
                            help="Turn each face crop so its eyes are level (OpenCV's eye cascade) before it is "
                            "classified: for tilted heads; a few ms per face.")
    return replace(d, detection_width=width, scale_factor=scale, min_neighbors=neighbours, min_face=min_face,
                   equalize=equalize, align=align)


@st.cache_resource
def cached_detector(config: DetectorConfig) -> FaceDetector:
    return FaceDetector(config)


def duration(seconds: float | None) -> str:
    """Seconds for people: "8 s", "2 min 05 s", "1 h 03 min" ("?" when unknown)."""
    if seconds is None or not math.isfinite(seconds):
        return "?"
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min" if hours else f"{minutes} min {secs:02d} s" if minutes else f"{secs} s"


class BackgroundTask:
    """`work(progress)` in a thread of its own, so that the page stays responsive (progress, a Cancel button).

    `progress(done, total)` (for `work` to call) records how far it is and returns False once `cancel()`
    was asked, which `fer_app.video.process_video` takes as a request to stop. The thread touches no
    Streamlit element: a page polls the task (e.g. from an `st.fragment(run_every=...)`) and draws it.
    """

    def __init__(self, work: Callable[[Callable[[int, int | None], bool]], Any], key: Any = None) -> None:
        self.key = key
        self.done, self.total = 0, None
        self.result: Any = None
        self.error: BaseException | None = None
        self.started, self.ended = time.monotonic(), None
        self._cancel = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(work,), name="fer-app-task", daemon=True)
        self._thread.start()

    def _run(self, work: Callable) -> None:
        try:
            self.result = work(self.progress)
        except BaseException as exc:  # shown by the page
            self.error = exc
        finally:
            self.ended = time.monotonic()

    def progress(self, done: int, total: int | None) -> bool:
        self.done, self.total = done, total
        return not self._cancel.is_set()

    def cancel(self) -> None:
        self._cancel.set()

    @property
    def cancelling(self) -> bool:
        return self._cancel.is_set()

    @property
    def running(self) -> bool:
        return self.ended is None

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for the work to end (at most `timeout` seconds); whether it has."""
        self._thread.join(timeout)
        return not self.running

    def elapsed(self) -> float:
        return (self.ended or time.monotonic()) - self.started

    def eta(self) -> float | None:
        """Seconds left at the pace so far; None before the first step or without a total."""
        if not self.done or not self.total:
            return None
        return self.elapsed() / self.done * max(self.total - self.done, 0)
