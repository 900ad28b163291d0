"""Video file page: upload a video -> annotated video, emotion timeline per face and a CSV (`fer_app.video`).

The video is processed in a background thread (`common.BackgroundTask`) while a fragment polls it, so
the page shows frames done, elapsed time and ETA, and a Cancel button that works during processing.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

import altair as alt
import pandas as pd
import streamlit as st

from fer_app.config import VIDEO_DETECTOR
from fer_app.draw import class_colour
from fer_app.live import DrawOptions, LiveSettings
from fer_app.model import Classifier
from fer_app.ui import common
from fer_app.video import Cancelled, VideoResult, process_video, write_csv

VIDEO_TYPES = ["mp4", "webm", "avi", "mov"]
#: The session's processing task (`common.BackgroundTask`; its result: VideoResult, MP4 bytes, CSV bytes).
RESULT_KEY = "video-result"
#: Timelines drawn on the page (the longest tracks); the CSV has them all.
MAX_CHARTS = 6
#: Tracks seen in fewer frames get no chart (a passing false detection, a face lost at once); the CSV has them.
MIN_TRACK_FRAMES = 5
#: Seconds between refreshes of the progress panel.
POLL_S = 0.5


def sidebar_settings() -> LiveSettings:
    detector = common.detector_settings(defaults=VIDEO_DETECTOR)
    smoothing = st.sidebar.slider("Smoothing", 0.0, 0.95, LiveSettings().smoothing, 0.05, key="video-smoothing",
                                  help="Weight of the past in each face's running average (0: off).")
    return LiveSettings(detector=detector, smoothing=smoothing, draw=DrawOptions(stats=False, badges=True))


def work(data: bytes, name: str, model: Classifier, settings: LiveSettings) -> Callable:
    """What the background task runs: the upload processed in a temporary folder -> (result, MP4, CSV bytes).

    Raises ValueError (naming the upload) for a file that is not a readable video, OSError when writing
    fails, `Cancelled` when the page's Cancel was pressed.
    """
    def run(progress: Callable[[int, int | None], bool]) -> tuple[VideoResult, bytes, bytes]:
        with tempfile.TemporaryDirectory(prefix="fer-app-video-") as tmp:
            source = Path(tmp) / f"upload{Path(name).suffix.lower()}"
            source.write_bytes(data)
            try:
                result = process_video(source, model, settings, out_path=Path(tmp) / "annotated.mp4",
                                       progress=progress)
            except ValueError as exc:
                raise ValueError(str(exc).replace(str(source), name)) from None
            csv = write_csv(result.rows, Path(tmp) / "faces.csv").read_bytes()
            return result, Path(result.summary.out_path).read_bytes(), csv
    return run


@st.fragment(run_every=POLL_S)
def progress_panel(task: common.BackgroundTask) -> None:
    """Frames done of the total, elapsed time and ETA, and Cancel; the whole page reruns when the task ends."""
    if not task.running:
        st.rerun()
    done, total = task.done, task.total
    if not done:
        text = f"Opening the video… · {common.duration(task.elapsed())} elapsed"
    else:
        text = f"Processing frame {done} of {total}" if total else f"Processing frame {done}"
        text += f" · {common.duration(task.elapsed())} elapsed"
        eta = task.eta()
        text += f" · about {common.duration(eta)} left" if eta is not None else ""
    st.progress(min(done / total, 1.0) if total else 0.0, text=text)
    if task.cancelling:
        st.info("Cancelling…")
    else:
        st.button("Cancel", key="video-cancel", on_click=task.cancel,
                  help="Stop processing this video; nothing is kept.")


def forget_task() -> None:
    st.session_state.pop(RESULT_KEY, None)


def timeline_chart(face: pd.DataFrame, classes: list[str], seconds: float) -> alt.Chart:
    """One face's class probabilities over time, on the clip's full time axis (the same for every face)."""
    long = face.melt(id_vars="time", value_vars=classes, var_name="emotion", value_name="probability")
    colours = ["#{2:02x}{1:02x}{0:02x}".format(*class_colour(c)) for c in classes]  # BGR -> #rrggbb
    return alt.Chart(long, height=220).mark_line().encode(
        x=alt.X("time:Q", title="seconds", scale=alt.Scale(domain=[0, seconds], nice=False)),
        y=alt.Y("probability:Q", scale=alt.Scale(domain=[0, 1]), axis=alt.Axis(format="%")),
        color=alt.Color("emotion:N", sort=classes, scale=alt.Scale(domain=classes, range=colours),
                        legend=alt.Legend(orient="right", title=None)),
        tooltip=["time", "emotion", alt.Tooltip("probability:Q", format=".1%")])


st.title("Video file")
st.caption("Upload a video: every frame goes through the live pipeline (detection, tracking, smoothing). "
           "You get the annotated video, each face's emotions over time and a CSV.")

info = common.model_picker()
settings = sidebar_settings()
model = common.require_model(info)

upload = st.file_uploader("Video (MP4, WebM, AVI or MOV)", type=VIDEO_TYPES, key="video-upload")
task: common.BackgroundTask | None = st.session_state.get(RESULT_KEY)
if upload is None:
    if task is not None:
        task.cancel()  # the file was removed: stop working on it
        forget_task()
    st.info("Upload a video to start.")
    st.stop()

# Reruns (a download click, a chart interaction) reuse the task while the file and settings are unchanged;
# a new file or new settings cancel the old one and start again.
key = (upload.file_id, info.name, id(model), settings)
if task is None or task.key != key:
    if task is not None:
        task.cancel()
    task = common.BackgroundTask(work(upload.getvalue(), upload.name, model, settings), key=key)
    st.session_state[RESULT_KEY] = task
    task.wait(POLL_S)  # a short clip is done before the first poll
if task.running:
    progress_panel(task)
    st.stop()
if isinstance(task.error, Cancelled):
    frames = f"{task.done} of {task.total}" if task.total else f"{task.done}"
    st.warning(f"Cancelled after {frames} frames ({common.duration(task.elapsed())}); nothing was kept.")
    st.button("Process again", key="video-again", on_click=forget_task)
    st.stop()
if isinstance(task.error, (ValueError, OSError)):
    st.error(str(task.error))
    st.stop()
if task.error is not None:
    raise task.error
result, video_bytes, csv_bytes = task.result
summary = result.summary
table = pd.DataFrame(result.rows)
tracks = table["track"].value_counts() if result.rows else pd.Series(dtype=int)
shown = tracks[tracks >= MIN_TRACK_FRAMES]
hidden = len(tracks) - len(shown)

cols = st.columns(4)
cols[0].metric("Frames", summary.frames, help=f"{summary.width}x{summary.height} at {summary.fps:.1f} FPS")
cols[1].metric("Frames with faces", summary.frames_with_faces)
cols[2].metric("Faces followed", len(shown),
               help=f"Faces seen in at least {MIN_TRACK_FRAMES} frames" +
               (f"; {hidden} more seen in fewer are left out here (they are in the CSV)." if hidden else "."))
cols[3].metric("Processing FPS", f"{summary.processing_fps:.1f}",
               help=f"median ms per frame: detect {summary.detect_ms:.1f}, classify {summary.classify_ms:.1f}, "
                    f"draw {summary.draw_ms:.1f}")

if summary.truncated:  # a cut file: processed to where it ends, and said so
    st.warning(f"{upload.name}: decoded {summary.frames_decoded} of {summary.frames_expected} frames "
               "(truncated?). The file ends early: the results cover the part that could be read.")
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
notes = ["Each face's number in the video (#1, #2, …) is the one in its chart's title."]
if hidden:
    notes.append(f"{hidden} face(s) seen in fewer than {MIN_TRACK_FRAMES} frames are hidden (the CSV has them).")
if len(shown) > MAX_CHARTS:
    notes.append(f"The {MAX_CHARTS} faces seen longest of {len(shown)} are shown; the CSV has them all.")
st.caption(" ".join(notes))
if shown.empty:
    st.info(f"No face was followed for {MIN_TRACK_FRAMES} frames or more.")
    st.stop()
classes = [c for c in model.classes if c in table]
seconds = max(float(table["time"].max()), (summary.frames_decoded - 1) / summary.fps if summary.fps else 0.0) or 1.0
for track in shown.index[:MAX_CHARTS]:
    face = table[table["track"] == track]
    label = face["label"].mode().iloc[0]
    st.markdown(f"**Face #{track}**: {len(face)} frames, mostly *{label}*")
    st.altair_chart(timeline_chart(face, classes, seconds), width="stretch")
