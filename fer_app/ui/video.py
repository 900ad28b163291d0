"""Video file page: upload a video -> annotated video, emotion timeline per face and a CSV (`fer_app.video`)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pandas as pd
import streamlit as st
from streamlit.runtime.uploaded_file_manager import UploadedFile

from fer_app.config import VIDEO_DETECTOR
from fer_app.live import DrawOptions, LiveSettings
from fer_app.model import Classifier
from fer_app.ui import common
from fer_app.video import VideoResult, process_video, write_csv

VIDEO_TYPES = ["mp4", "webm", "avi", "mov"]
RESULT_KEY = "video-result"
#: Timelines drawn on the page (the longest tracks); the CSV has them all.
MAX_CHARTS = 6


def sidebar_settings() -> LiveSettings:
    detector = common.detector_settings(defaults=VIDEO_DETECTOR)
    smoothing = st.sidebar.slider("Smoothing", 0.0, 0.95, LiveSettings().smoothing, 0.05, key="video-smoothing",
                                  help="Weight of the past in each face's running average (0: off).")
    return LiveSettings(detector=detector, smoothing=smoothing, draw=DrawOptions(stats=False))


def run(upload: UploadedFile, model: Classifier, settings: LiveSettings) -> tuple[VideoResult, bytes, bytes]:
    """Process the upload in a temporary folder: the result, the annotated MP4 and the CSV (bytes).

    Raises ValueError (naming the upload) for a file that is not a readable video, OSError when writing fails.
    """
    bar = st.progress(0.0, text="Processing…")
    shown = -1

    def progress(done: int, total: int | None) -> None:
        nonlocal shown
        percent = min(100, 100 * done // total) if total else 0
        if percent != shown or done % 50 == 0:  # a message per percent, not per frame
            shown = percent
            bar.progress(percent / 100, text=f"Processing frame {done}" + (f" of about {total}" if total else ""))

    with tempfile.TemporaryDirectory(prefix="fer-app-video-") as tmp:
        source = Path(tmp) / f"upload{Path(upload.name).suffix.lower()}"
        source.write_bytes(upload.getvalue())
        try:
            result = process_video(source, model, settings, out_path=Path(tmp) / "annotated.mp4", progress=progress)
        except ValueError as exc:
            raise ValueError(str(exc).replace(str(source), upload.name)) from None
        finally:
            bar.empty()
        csv = write_csv(result.rows, Path(tmp) / "faces.csv").read_bytes()
        return result, Path(result.summary.out_path).read_bytes(), csv


st.title("Video file")
st.caption("Upload a video: every frame goes through the live pipeline (detection, tracking, smoothing). "
           "You get the annotated video, each face's emotions over time and a CSV.")

info = common.model_picker()
settings = sidebar_settings()
model = common.require_model(info)

upload = st.file_uploader("Video (MP4, WebM, AVI or MOV)", type=VIDEO_TYPES, key="video-upload")
if upload is None:
    st.info("Upload a video to start.")
    st.stop()

# Reruns (a download click, a chart interaction) reuse the result while the file and settings are unchanged.
key = (upload.file_id, info.name, id(model), settings)
cached = st.session_state.get(RESULT_KEY)
if cached is None or cached[0] != key:
    try:
        cached = (key, *run(upload, model, settings))
    except (ValueError, OSError) as exc:
        st.session_state.pop(RESULT_KEY, None)
        st.error(str(exc))
        st.stop()
    st.session_state[RESULT_KEY] = cached
_, result, video_bytes, csv_bytes = cached
summary = result.summary

cols = st.columns(4)
cols[0].metric("Frames", summary.frames, help=f"{summary.width}x{summary.height} at {summary.fps:.1f} FPS")
cols[1].metric("Frames with faces", summary.frames_with_faces)
cols[2].metric("Faces followed", summary.tracks)
cols[3].metric("Processing FPS", f"{summary.processing_fps:.1f}",
               help=f"median ms per frame: detect {summary.detect_ms:.1f}, classify {summary.classify_ms:.1f}, "
                    f"draw {summary.draw_ms:.1f}")

st.video(video_bytes, format="video/mp4")
stem = Path(upload.name).stem or "video"
left, right = st.columns(2)
left.download_button("Download CSV (one row per face and frame)", csv_bytes, file_name=f"{stem}-faces.csv",
                     mime="text/csv", key="video-csv")
right.download_button("Download annotated MP4", video_bytes, file_name=f"{stem}-annotated.mp4", mime="video/mp4",
                      key="video-mp4")

if not result.rows:
    st.info("No face found in this video. Try lowering *Min neighbours* or *Min face size* under *Face detection*.")
    st.stop()

st.subheader("Emotions over time, per face")
table = pd.DataFrame(result.rows)
tracks = table["track"].value_counts()
if len(tracks) > MAX_CHARTS:
    st.caption(f"The {MAX_CHARTS} faces seen longest of {len(tracks)}; the CSV has them all.")
classes = [c for c in model.classes if c in table]
for track in tracks.index[:MAX_CHARTS]:
    face = table[table["track"] == track]
    label = face["label"].mode().iloc[0]
    st.markdown(f"**Face #{track}**: {len(face)} frames, mostly *{label}*")
    st.line_chart(face.set_index("time")[classes], x_label="seconds", y_label="probability", height=220)
