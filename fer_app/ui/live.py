"""Live webcam page: the browser's camera over WebRTC -> `LivePipeline` (one per session) -> annotated video back.

The video callback runs in streamlit-webrtc's worker thread: it only calls the session's
`LivePipeline` (thread-safe) and never touches `st.*`. The page itself applies the sidebar
settings to the running pipeline on every rerun and, while the stream plays, refreshes the
stats and the emotion timeline twice a second.

Test hook: when the environment variable `FER_APP_STATS_FILE` names a file, the page writes the
pipeline's stats and current predictions there as JSON on every refresh (see `_write_stats_file`).
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import av
import pandas as pd
import streamlit as st
from streamlit_webrtc import WebRtcMode, webrtc_streamer

from fer_app.calibration import CaptureRecorder, draw_capture_prompt
from fer_app.config import VIDEO_DETECTOR
from fer_app.live import DrawOptions, LivePipeline, LiveSettings, LiveStats
from fer_app.model import Classifier
from fer_app.ui import common
from fer_app.ui.rtc import RtcConfigError, rtc_configuration

STATS_FILE_ENV = "FER_APP_STATS_FILE"
PIPELINE_KEY = "live-pipeline"
REFRESH_S = 0.5
CHART_EVERY = 4  # refreshes between timeline chart redraws (the chart is heavier than the metrics)


def sidebar_settings() -> LiveSettings:
    detector = common.detector_settings(defaults=VIDEO_DETECTOR)
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
                           stats=st.checkbox("FPS / latency overlay", d.stats, key="live-overlay"))
    return LiveSettings(detector=detector, smoothing=smoothing, draw=draw, mirror=mirrors[mirror])


def session_pipeline(model: Classifier, settings: LiveSettings) -> LivePipeline:
    """This session's pipeline, created on its first run; later runs push a changed model or settings into it."""
    pipeline: LivePipeline | None = st.session_state.get(PIPELINE_KEY)
    if pipeline is None:
        pipeline = st.session_state[PIPELINE_KEY] = LivePipeline(model, settings)
    elif pipeline.model is not model or pipeline.settings != settings:
        pipeline.update(model=model, settings=settings)  # applied from the next frame, the stream goes on
    return pipeline


def frame_callback(pipeline: LivePipeline, capture: dict | None = None) -> Callable[[av.VideoFrame], av.VideoFrame]:
    """The per-frame function for webrtc_streamer (runs in its worker thread: no st.* here).

    `capture` is this session's calibration state: while it holds a recorder, the largest face's
    crop is stored when the recorder's prompt says so, and the prompt is drawn on the video.
    """

    def process(frame: av.VideoFrame) -> av.VideoFrame:
        image = frame.to_ndarray(format="bgr24")
        annotated = pipeline.process(image)
        recorder = (capture or {}).get("recorder")
        if recorder is not None:
            step = recorder.on_frame(image, [p.face for p in pipeline.predictions()])
            annotated = draw_capture_prompt(annotated, step)
        return av.VideoFrame.from_ndarray(annotated, format="bgr24")

    return process


def calibration_sidebar() -> dict:
    """Sidebar controls for personal calibration capture; returns the state the video thread reads."""
    capture = st.session_state.setdefault("calib-capture", {})
    with st.sidebar.expander("Calibration capture", expanded=False):
        who = st.text_input("Your name", key="calib-name",
                            help="Captures go to ~/.fer_app/calibration/<name>/; review them and calibrate "
                                 "on the Training page.")
        per_class = int(st.number_input("Faces per emotion", 5, 100, 20, key="calib-n"))
        if st.toggle("Capture now", key="calib-on", disabled=not who.strip()):
            if capture.get("for") != (who.strip(), per_class):
                try:
                    capture.update({"for": (who.strip(), per_class),
                                    "recorder": CaptureRecorder.for_session(who.strip(), per_class=per_class)})
                except ValueError as exc:
                    st.error(str(exc))
                    capture.clear()
            if "recorder" in capture:
                step = capture["recorder"].last_step()
                st.caption(step.message if step is not None else "Press START and show each emotion in turn.")
                st.button("Skip this emotion", on_click=capture["recorder"].skip, key="calib-skip")
        else:
            capture.clear()
    return capture


def render_stats(stats: LiveStats) -> None:
    def ms(pair: tuple[float, float]) -> str:
        return f"{pair[0]:.1f} / {pair[1]:.1f} ms"

    cols = st.columns(6)
    cols[0].metric("Processed FPS", f"{stats.fps:.1f}", help=f"{stats.frames} frames processed in this session")
    cols[1].metric("Detect (median / p95)", ms(stats.detect_ms))
    cols[2].metric("Classify (median / p95)", ms(stats.classify_ms),
                   help=f"each face's label is refreshed about {stats.label_refresh_hz:.1f} times a second")
    cols[3].metric("Draw (median / p95)", ms(stats.draw_ms))
    cols[4].metric("Faces", stats.faces)
    cols[5].metric("Model", stats.model)
    if stats.error:
        st.warning(f"Classification failed: {stats.error}")


def timeline_table(rows: list[dict], classes: tuple[str, ...]) -> pd.DataFrame:
    """Timeline rows (`LivePipeline.timeline`) as a table, with its columns even when empty."""
    return pd.DataFrame(rows) if rows else pd.DataFrame(columns=["t", "track", "largest", "label", "confidence",
                                                                 *classes])


def render_timeline(pipeline: LivePipeline, classes: tuple[str, ...]) -> None:
    """Class probabilities over time of the largest face of each frame."""
    table = timeline_table(pipeline.timeline(largest=True), classes)
    if table.empty:
        st.caption("The emotion timeline of the largest face appears here once a face has been seen.")
        return
    st.line_chart(table.set_index("t")[[c for c in classes if c in table]], x_label="seconds",
                  y_label="probability")


def _write_stats_file(path: str, pipeline: LivePipeline) -> None:
    """Test hook: stats and predictions as JSON, replaced atomically (readers never see half a file)."""
    target = Path(path)
    payload = {"time": time.time(), **asdict(pipeline.stats()),
               "predictions": [p.to_dict() for p in pipeline.predictions()]}
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    with os.fdopen(fd, "w") as f:
        json.dump(payload, f)
    os.replace(tmp, target)


st.title("Live webcam")
st.caption("Press START and allow the camera: faces are detected and their expressions classified on the server, "
           "frame by frame. Sidebar changes apply to the running stream.")

info = common.model_picker()
settings = sidebar_settings()
capture = calibration_sidebar()
model = common.require_model(info)
pipeline = session_pipeline(model, settings)

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
    video_frame_callback=frame_callback(pipeline, capture),
    async_processing=True,
)

stats_area = st.empty()
st.subheader("Emotion timeline")
chart_area = st.empty()
st.download_button("Download timeline CSV (all faces)",
                   lambda: timeline_table(pipeline.timeline(), model.classes).to_csv(index=False),
                   file_name="emotion-timeline.csv", mime="text/csv", key="live-csv")

stats_file = os.environ.get(STATS_FILE_ENV)
refreshes = 0
while ctx.state.playing:
    with stats_area.container():
        render_stats(pipeline.stats())
    if refreshes % CHART_EVERY == 0:
        with chart_area.container():
            render_timeline(pipeline, model.classes)
    if stats_file:
        _write_stats_file(stats_file, pipeline)
    refreshes += 1
    time.sleep(REFRESH_S)

# Not playing: stop the pipeline's worker thread (a new START restarts it); show where the session got to.
pipeline.close()
final = pipeline.stats()
if final.frames:
    with stats_area.container():
        render_stats(final)
with chart_area.container():
    render_timeline(pipeline, model.classes)
