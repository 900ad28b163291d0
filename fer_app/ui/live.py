"""Live webcam page: the browser's camera over WebRTC -> `LivePipeline` (one per session) -> annotated video back.

The video callback runs in streamlit-webrtc's worker thread: it only calls the session's
`LivePipeline` (thread-safe) and never touches `st.*`. The page itself applies the sidebar
settings to the running pipeline on every rerun.

The page shows at once: the model loads in a background thread (one per process and model, behind
a "Loading model" status that a fragment polls), and frames that arrive before it is ready come back
with a note. While the stream plays, two `st.fragment(run_every=...)` refresh the page: the stats
twice a second, the emotion timeline chart every 2 s (a chart costs tens of ms of the server's
CPU to build and send, per session: that time is taken from the video threads); the script itself
ends at once (no loop in it), and Streamlit's own "Running… / Stop" indicator, which each of those
short fragment runs would flash beside the component's STOP, is hidden while the stream plays.

Test hook: when the environment variable `FER_APP_STATS_FILE` names a file, the page writes the
pipeline's stats and current predictions there as JSON on every refresh (see `_write_stats_file`).
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import av
import cv2
import numpy as np
import streamlit as st
from streamlit_webrtc import WebRtcMode, webrtc_streamer

from fer_app import config
from fer_app.ui.rtc import RtcConfigError, rtc_configuration

# The rest (torch, the model registry, which imports transformers: 5-10 s on a first run) is imported below,
# after the video component: START shows at once on a cold server.

STATS_FILE_ENV = "FER_APP_STATS_FILE"
PIPELINE_KEY = "live-pipeline"
SLOT_KEY = "live-slot"
REFRESH_S = 0.5  # seconds between refreshes of the stats
CHART_REFRESH_S = 2.0  # seconds between redraws of the timeline chart (heavier than the metrics)
CHART_SECONDS = 60.0  # the chart shows the last this many seconds of its face (the CSV has everything)
LOAD_POLL_S = 0.5  # how often the page looks whether the model has loaded


@st.cache_resource(show_spinner=False)
def _model_loader(name: str, stamp: float) -> common.BackgroundTask:
    """The model's loading, in a thread of its own: one per process and model (stamp: its config's mtime)."""
    return common.BackgroundTask(lambda progress: common.cached_model(name, stamp), key=(name, stamp))


def background_model(info: ModelInfo | None) -> Classifier | None:
    """The picked model once loaded (None while it loads, in the background); the page stops without one."""
    if info is None:
        st.stop()
    if info.problem:
        st.error(f"Cannot load model {info.name!r}: {info.problem}")
        st.stop()
    stamp = (info.path / "config.json").stat().st_mtime if info.path else 0.0
    task = _model_loader(info.name, stamp)
    if task.running:
        return None
    if task.error is not None:
        _model_loader.clear()  # the next run tries again
        st.error(f"Cannot load model {info.name!r}: {task.error}")
        st.stop()
    return common.cached_model(info.name, stamp)  # loaded by the task: a cache hit


def _loading_note(frame: np.ndarray) -> np.ndarray:
    """A frame that came before the model: the camera's picture with "Loading model..." on it."""
    out = frame.copy()
    cv2.putText(out, "Loading model...", (12, 32), cv2.FONT_HERSHEY_SIMPLEX, 0.8, (255, 255, 255), 2, cv2.LINE_AA)
    return out


def sidebar_settings() -> LiveSettings:
    detector = common.detector_settings(defaults=config.VIDEO_DETECTOR)
    defaults = LiveSettings()
    smoothing = st.sidebar.slider("Smoothing", 0.0, 0.95, defaults.smoothing, 0.05, key="live-smoothing",
                                  help="Weight of the past in each face's running average: higher is steadier, "
                                       "slower to react. 0 turns it off.")
    mirrors = {"Auto": None, "On": True, "Off": False}
    mirror = st.sidebar.radio("Test-time augmentation", list(mirrors), horizontal=True, key="live-mirror",
                              help="Average each face's probabilities over the model's views of it (the mirror "
                                   "image, zoomed copies; see its model card). Auto: on when the model runs in the "
                                   "video thread; off for slow models classified in the background, where the "
                                   "smoothing averages over frames and labels refresh more often.")
    d = defaults.draw
    with st.sidebar.expander("Draw on the video", expanded=True):
        draw = DrawOptions(boxes=st.checkbox("Face boxes", d.boxes, key="live-boxes"),
                           labels=st.checkbox("Labels", d.labels, key="live-labels"),
                           bars=st.checkbox("Probability bars", d.bars, key="live-bars"),
                           stats=st.checkbox("FPS / latency overlay", d.stats, key="live-overlay"),
                           badges=st.checkbox("Track ids", d.badges, key="live-ids",
                                              help="Each face's track number beside its label, as on the timeline."))
    return LiveSettings(detector=detector, smoothing=smoothing, draw=draw, mirror=mirrors[mirror])


def session_pipeline(model: Classifier, settings: LiveSettings) -> LivePipeline:
    """This session's pipeline, created on its first run; later runs push a changed model or settings into it."""
    pipeline: LivePipeline | None = st.session_state.get(PIPELINE_KEY)
    if pipeline is None:
        pipeline = st.session_state[PIPELINE_KEY] = LivePipeline(model, settings)
    elif pipeline.model is not model or pipeline.settings != settings:
        pipeline.update(model=model, settings=settings)  # applied from the next frame, the stream goes on
    return pipeline


def frame_callback(pipeline: LivePipeline | dict, capture: dict | None = None,
                   ) -> Callable[[av.VideoFrame], av.VideoFrame]:
    """The per-frame function for webrtc_streamer (runs in its worker thread: no st.* here).

    `pipeline`: the session's pipeline, or its slot (a dict whose "pipeline" is missing while the model
    loads: frames then come back with a "Loading model..." note).

    `capture` is this session's calibration state: while it holds a recorder, the largest face's
    crop is stored when the recorder's prompt says so, and the prompt is drawn on the video.
    """

    def process(frame: av.VideoFrame) -> av.VideoFrame:
        from fer_app.calibration import draw_capture_prompt  # imported by the page by then: a lookup

        image = frame.to_ndarray(format="bgr24")
        current = pipeline.get("pipeline") if isinstance(pipeline, dict) else pipeline
        if current is None:
            return av.VideoFrame.from_ndarray(_loading_note(image), format="bgr24")
        annotated = current.process(image)
        recorder = (capture or {}).get("recorder")
        if recorder is not None:
            step = recorder.on_frame(image, [p.face for p in current.predictions()], crop=current.crop)
            annotated = draw_capture_prompt(annotated, step)
        return av.VideoFrame.from_ndarray(annotated, format="bgr24")

    return process


def stats_table(stats: LiveStats) -> str:
    """The stage times as a compact Markdown table: a row per stage, median and p95 in ms."""
    rows = [("Detect", stats.detect_ms), ("Classify", stats.classify_ms), ("Draw", stats.draw_ms)]
    return "\n".join(["| ms | median | p95 |", "|:--|--:|--:|",
                      *(f"| {name} | {m:.1f} | {p:.1f} |" for name, (m, p) in rows)])


def render_stats(stats: LiveStats) -> None:
    """Three short metrics (the same figures as the video's overlay), the stage times as a small table,
    and a caption: readable from a phone (columns stack) to a wide window."""
    cols = st.columns(3)
    cols[0].metric("FPS", f"{stats.fps:.1f}", help=f"frames processed a second; {stats.frames} in this session")
    cols[1].metric("Faces", stats.faces, help="faces in the last frame (the video's overlay says the same)")
    cols[2].metric("Labels/s", f"{stats.label_refresh_hz:.1f}",
                   help="how often each face's label is refreshed, a second (mean over the faces)")
    left, right = st.columns([1, 1])
    left.markdown(stats_table(stats))
    right.caption(f"Model **{stats.model}**, encoder in **{stats.runtime}** ({stats.runtime_reason}), classifying "
                  f"{'in a background thread' if stats.asynchronous else 'in the video thread'}. "
                  f"{stats.frames} frames so far.")
    if stats.error:
        st.warning(f"Classification failed: {stats.error}")


def timeline_table(rows: list[dict], classes: tuple[str, ...]) -> pd.DataFrame:
    """Timeline rows (`LivePipeline.timeline`) as a table, with its columns even when empty."""
    return pd.DataFrame(rows) if rows else pd.DataFrame(columns=["t", "track", "largest", "label", "confidence",
                                                                 *classes])


def chart_rows(pipeline: LivePipeline) -> tuple[list[dict], str]:
    """The rows the timeline chart shows, and its title: one face's, the track that was the largest face most
    often in the last rows (a steady choice: two faces of about one size would otherwise take turns)."""
    largest = pipeline.timeline(largest=True)
    if not largest:
        return [], ""
    counts = Counter(r["track"] for r in largest[-50:])
    track = max(counts, key=lambda t: (counts[t], t))
    others = len({r["track"] for r in largest[-50:]}) - 1
    title = f"Largest face: #{track}" + (f" (+{others} not shown)" if others else "")  # short: fits at 390 px
    return pipeline.timeline(track=track), title


def timeline_chart(rows: list[dict], classes: tuple[str, ...], title: str = "") -> tuple[pd.DataFrame, dict]:
    """One face's class probabilities over time, as data and a Vega-Lite spec for `st.vega_lite_chart`: a line
    per class and unbroken stretch (`segment`), so stretches without the face are gaps; the title says whose
    face it is. The spec is written out, not built with altair: altair's schema validation alone cost ~50 ms a
    draw, taken from the video threads every refresh of every session."""
    table = pd.DataFrame(rows)
    long = table.melt(id_vars=["t", "segment", "track"], value_vars=[c for c in classes if c in table],
                      var_name="class", value_name="probability")
    long["line"] = long["class"] + "-" + long["segment"].astype(str)
    if not title:
        tracks = sorted(table["track"].dropna().astype(int).unique())
        title = "Track " + ", ".join(f"#{t}" for t in tracks)
    colours = [f"#{r:02x}{g:02x}{b:02x}" for b, g, r in (class_colour(c) for c in classes)]
    spec = {"title": {"text": title, "fontSize": 13, "anchor": "start"}, "mark": {"type": "line"},
            "encoding": {"x": {"field": "t", "type": "quantitative", "title": "seconds"},
                         "y": {"field": "probability", "type": "quantitative", "scale": {"domain": [0, 1]}},
                         "color": {"field": "class", "type": "nominal", "sort": list(classes),
                                   "scale": {"domain": list(classes), "range": colours}},
                         "detail": {"field": "line", "type": "nominal"},
                         "tooltip": [{"field": f, "type": k} for f, k in (("t", "quantitative"), ("class", "nominal"),
                                                                          ("probability", "quantitative"),
                                                                          ("track", "quantitative"))]}}
    return long, spec


def _write_stats_file(path: str, pipeline: LivePipeline) -> None:
    """Test hook: stats and predictions as JSON, replaced atomically (readers never see half a file)."""
    target = Path(path)
    lines, box = pipeline.overlay()
    payload = {"time": time.time(), **asdict(pipeline.stats()), "shown": asdict(pipeline.shown_stats()),
               "overlay": lines, "overlay_box": box, "predictions": [p.to_dict() for p in pipeline.predictions()]}
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    with os.fdopen(fd, "w") as f:
        json.dump(payload, f)
    os.replace(tmp, target)


st.title("Live webcam")
st.caption("Press START and allow the camera: faces are detected and their expressions classified on the server, "
           "frame by frame. Sidebar changes apply to the running stream.")

slot: dict = st.session_state.setdefault(SLOT_KEY, {})  # the video thread's way to this session's pipeline
capture: dict = st.session_state.setdefault("calib-capture", {})  # calibration_sidebar's state, read by the callback
ctx = None
if config.MODELS_DIR.is_dir() and any((d / "config.json").exists() for d in config.MODELS_DIR.iterdir()):
    try:
        rtc = rtc_configuration()
    except RtcConfigError as exc:
        st.error(f"Invalid ICE server configuration, using none: {exc}")
        rtc = {"iceServers": []}
    ctx = webrtc_streamer(
        key="live",
        mode=WebRtcMode.SENDRECV,
        rtc_configuration=rtc,
        media_stream_constraints={"video": True, "audio": False},
        video_frame_callback=frame_callback(slot, capture),
        async_processing=True,
    )

starting = st.empty()
starting.caption("Starting: reading the models…")  # the first run of a cold server imports torch here
import pandas as pd  # noqa: E402 - after the component, see the imports above

from fer_app.draw import class_colour  # noqa: E402
from fer_app.live import DrawOptions, LivePipeline, LiveSettings, LiveStats  # noqa: E402
from fer_app.model import Classifier, ModelInfo  # noqa: E402, F401 - ModelInfo: in annotations
from fer_app.ui import common  # noqa: E402
from fer_app.ui.calibration import calibration_sidebar  # noqa: E402

info = common.model_picker()
starting.empty()
settings = sidebar_settings()
capture = calibration_sidebar()
model = background_model(info)
if model is not None:
    slot["pipeline"] = pipeline = session_pipeline(model, settings)
else:
    pipeline = None

    @st.fragment(run_every=LOAD_POLL_S)
    def _wait_for_model() -> None:
        """Polls the background loading; the whole page reruns (with the model) once it is done."""
        stamp = (info.path / "config.json").stat().st_mtime if info.path else 0.0
        if not _model_loader(info.name, stamp).running:
            st.rerun()
        st.status(f"Loading model {info.name}… (START works already: labels come once it is loaded)",
                  state="running")

    _wait_for_model()

if ctx is None:  # a models folder without a model: the picker said so
    st.stop()
playing = bool(ctx.state.playing)  # read once a run: START and STOP rerun the page
if playing:
    # The twice-a-second refresh below is a fragment run each time, and Streamlit shows its own "Running… / Stop"
    # for every run that lasts a moment: a second Stop beside the component's STOP, flickering. While the stream
    # plays, that indicator is hidden (the component's STOP stops the stream; reruns need no stopping).
    st.html("<style>[data-testid='stStatusWidget'] { visibility: hidden !important; }</style>")
stats_file = os.environ.get(STATS_FILE_ENV)


refreshing = playing and pipeline is not None


@st.fragment(run_every=REFRESH_S if refreshing else None)
def stats_panel() -> None:
    """The stats: refreshed by Streamlit every REFRESH_S while the stream plays (the script does not loop, so
    Streamlit shows no "Running" indicator of its own), drawn once otherwise."""
    if pipeline is None:
        return
    if not playing:
        pipeline.close()  # stop the worker thread (a new START restarts it)
    shown = pipeline.shown_stats()
    if playing or shown.frames:
        render_stats(shown)
    if stats_file and playing:
        _write_stats_file(stats_file, pipeline)


@st.fragment(run_every=CHART_REFRESH_S if refreshing else None)
def timeline_panel() -> None:
    """The emotion timeline of one face over the last CHART_SECONDS, redrawn every CHART_REFRESH_S."""
    if pipeline is None:
        return
    st.subheader("Emotion timeline")
    rows, title = chart_rows(pipeline)
    rows = [r for r in rows if r["t"] >= rows[-1]["t"] - CHART_SECONDS] if rows else rows
    if rows:
        data, spec = timeline_chart(rows, model.classes, title)
        st.vega_lite_chart(data, spec, width="stretch")
        st.caption("One face's probabilities over the last minute: the track that was the largest face most often "
                   "lately (its number shows on the video with Track ids on, under Draw on the video). A gap: that "
                   "face was not seen.")
    else:
        st.caption("The emotion timeline of the largest face appears here once a face has been seen.")


stats_panel()
timeline_panel()
if pipeline is not None:
    st.download_button("Download timeline CSV (all faces)",
                       lambda: timeline_table(pipeline.timeline(), model.classes).to_csv(index=False),
                       file_name="emotion-timeline.csv", mime="text/csv", key="live-csv")
