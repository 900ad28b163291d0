"""The Streamlit pages under `streamlit.testing.v1.AppTest`, and the WebRTC configuration (`fer_app.ui.rtc`).

The pages load a tiny model trained for the test (`tiny_model`, in a temporary models/), so they
never depend on the bundled one. `webrtc_streamer` needs a real Streamlit server, so the live page
runs with it replaced by `FakeStreamer`, which records its arguments and plays for a few loop turns.
"""

from __future__ import annotations

import ast
import json
import re
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest
import streamlit_webrtc
from streamlit.testing.v1 import AppTest

from fer_app.compat import ast_parse_race
from fer_app.imageio import load_image
from fer_app.ui.rtc import ENV_VAR, RtcConfigError, ice_servers, rtc_configuration

ROOT = Path(__file__).resolve().parent.parent
APP = ROOT / "app.py"
PAGES = ROOT / "fer_app" / "ui"
ASTRONAUT = ROOT / "assets" / "astronaut.png"
TIMEOUT = 300  # seconds per AppTest run: generous, for a machine busy training


# ---------------------------------------------------------------- rtc_configuration


def test_rtc_default_is_an_empty_ice_server_list() -> None:
    # An empty LIST: {} or {"iceServers": None} would make streamlit-webrtc fall back to a public STUN server.
    assert rtc_configuration(environ={}, secrets={}) == {"iceServers": []}
    assert rtc_configuration(environ={ENV_VAR: "  "}, secrets={"rtc": {}}) == {"iceServers": []}


def test_rtc_from_environment_variable() -> None:
    servers = [{"urls": ["turn:turn.example.org:3478"], "username": "u", "credential": "p"}, "stun:stun.example.org"]
    config = rtc_configuration(environ={ENV_VAR: json.dumps(servers)}, secrets={})
    assert config == {"iceServers": [servers[0], {"urls": "stun:stun.example.org"}]}


def test_rtc_from_secrets_toml() -> None:
    # [rtc]
    # ice_servers = [{ urls = "stun:stun.example.org:3478" }, { urls = ["turn:t.example.org"], username = "u", ... }]
    secrets = {"rtc": {"ice_servers": [{"urls": "stun:stun.example.org:3478"},
                                       {"urls": ["turn:t.example.org"], "username": "u", "credential": "p"}]}}
    assert ice_servers(environ={}, secrets=secrets) == [
        {"urls": "stun:stun.example.org:3478"}, {"urls": ["turn:t.example.org"], "username": "u", "credential": "p"}]


def test_rtc_environment_wins_over_secrets() -> None:
    secrets = {"rtc": {"ice_servers": ["stun:from-secrets.example.org"]}}
    assert ice_servers(environ={ENV_VAR: '["stun:from-env.example.org"]'}, secrets=secrets) == [
        {"urls": "stun:from-env.example.org"}]


@pytest.mark.parametrize(("value", "message"), [
    ("not json", "not valid JSON"),
    ('{"urls": "stun:x"}', "expected a list"),
    ("[42]", "expected a URL or a table"),
    ('[{"url": "stun:x"}]', "unknown key(s) url"),
    ('[{"urls": []}]', "non-empty list"),
    ('["http://example.org"]', "is not a stun:"),
])
def test_rtc_malformed_lists_are_clear_errors(value: str, message: str) -> None:
    with pytest.raises(RtcConfigError, match=r"FER_APP_ICE_SERVERS.*" + re.escape(message)):
        rtc_configuration(environ={ENV_VAR: value}, secrets={})


# ---------------------------------------------------------------- helpers


class FakeStreamer:
    """Stands in for `webrtc_streamer`: records each call; its context plays for `plays` reads of `state`."""

    def __init__(self, plays: int = 0) -> None:
        self.plays = plays
        self.calls: list[dict[str, Any]] = []

    def __call__(self, **kwargs: Any) -> Any:
        self.calls.append(kwargs)
        fake = self

        class State:
            @property
            def playing(self) -> bool:
                fake.plays -= 1
                return fake.plays >= 0

        class Context:
            state = State()

        return Context()

    def callback(self):
        return self.calls[-1]["video_frame_callback"]


@pytest.fixture()
def streamer(monkeypatch: pytest.MonkeyPatch) -> FakeStreamer:
    fake = FakeStreamer()
    monkeypatch.setattr(streamlit_webrtc, "webrtc_streamer", fake)
    monkeypatch.delenv(ENV_VAR, raising=False)
    return fake


def run_page(name: str) -> AppTest:
    at = AppTest.from_file(str(PAGES / f"{name}.py"), default_timeout=TIMEOUT)
    at.run()
    assert not at.exception, at.exception
    return at


def run_live() -> AppTest:
    """The live page once its model has loaded: the first run starts the load in the background (the page shows
    at once, with a "Loading model" status while it lasts), a later run finds it done."""
    at = run_page("live")
    deadline = time.monotonic() + TIMEOUT
    while "live-pipeline" not in at.session_state:
        assert time.monotonic() < deadline, "the model never loaded"
        time.sleep(0.1)
        at.run()
        assert not at.exception, at.exception
    return at


def camera_frame() -> av.VideoFrame:
    """A 640x480 webcam-like frame with the astronaut's face in it."""
    frame = np.full((480, 640, 3), 90, np.uint8)
    frame[:, 64:576] = load_image(ASTRONAUT)[32:512]
    return av.VideoFrame.from_ndarray(frame, format="bgr24")


def feed_until_classified(callback, pipeline, *, frames: int, timeout: float = 120) -> None:
    """Send at least `frames` frames through the page's callback, and more until the face has a label
    (classification may run in the pipeline's worker thread)."""
    deadline = time.monotonic() + timeout
    for _ in range(frames):
        callback(camera_frame())
    while not pipeline.predictions():
        assert time.monotonic() < deadline, "the face was never classified"
        time.sleep(0.05)
        callback(camera_frame())


# ---------------------------------------------------------------- navigation


def test_app_starts_on_the_live_page_and_switches_pages(tiny_model: Path, streamer: FakeStreamer) -> None:
    at = AppTest.from_file(str(APP), default_timeout=TIMEOUT)
    at.run()
    assert not at.exception, at.exception
    assert at.title[0].value == "Live webcam"
    for page, title in [("photo", "Photo"), ("video", "Video file"), ("train", None), ("live", "Live webcam")]:
        at.switch_page(str(PAGES / f"{page}.py"))
        at.run()
        assert not at.exception, (page, at.exception)
        if title:
            assert at.title[0].value == title
    # pages parse while the model loads in a thread (numpy's header parse): they take turns where CPython needs it
    assert getattr(ast.parse, "__fer_app_serialized__", False) is ast_parse_race()


@pytest.mark.parametrize("page", ["live", "photo", "video", "train"])
def test_each_page_renders(page: str, tiny_model: Path, streamer: FakeStreamer) -> None:
    at = run_page(page)
    if page != "train":  # the training page is another issue's: it only has to render
        assert at.title
        assert at.sidebar.selectbox(key="model").value == "tiny"


def test_pages_say_so_when_there_is_no_model(models_dir: Path, streamer: FakeStreamer) -> None:
    for page in ("live", "photo", "video"):
        at = run_page(page)
        assert "No model found" in at.sidebar.error[0].value
    assert not streamer.calls


# ---------------------------------------------------------------- live page


def test_live_page_starts_the_streamer_with_an_empty_ice_list(tiny_model: Path, streamer: FakeStreamer) -> None:
    at = run_live()
    assert all(call["key"] == "live" for call in streamer.calls)
    call = streamer.calls[-1]
    assert call["rtc_configuration"] == {"iceServers": []}
    assert call["media_stream_constraints"] == {"video": True, "audio": False}
    assert callable(call["video_frame_callback"])
    out = call["video_frame_callback"](camera_frame())
    assert isinstance(out, av.VideoFrame) and (out.width, out.height) == (640, 480)
    pipeline = at.session_state["live-pipeline"]
    assert pipeline.stats().frames == 1 and pipeline.stats().faces == 1


def test_live_page_ice_servers_from_secrets(tiny_model: Path, streamer: FakeStreamer) -> None:
    at = AppTest.from_file(str(PAGES / "live.py"), default_timeout=TIMEOUT)
    at.secrets["rtc"] = {"ice_servers": [{"urls": "turn:turn.example.org", "username": "u", "credential": "p"}]}
    at.run()
    assert not at.exception
    assert streamer.calls[0]["rtc_configuration"] == {
        "iceServers": [{"urls": "turn:turn.example.org", "username": "u", "credential": "p"}]}


def test_live_page_bad_ice_servers_is_an_error_not_a_crash(tiny_model: Path, streamer: FakeStreamer,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_VAR, "[not json")
    at = run_page("live")
    assert "Invalid ICE server configuration" in at.error[0].value
    assert streamer.calls[0]["rtc_configuration"] == {"iceServers": []}


def test_live_sidebar_changes_reach_the_running_pipeline(tiny_model: Path, streamer: FakeStreamer) -> None:
    at = run_live()
    pipeline = at.session_state["live-pipeline"]
    assert pipeline.settings.smoothing == pytest.approx(0.6) and pipeline.settings.draw.bars
    at.sidebar.slider(key="live-smoothing").set_value(0.3)
    at.sidebar.checkbox(key="live-bars").uncheck()
    at.sidebar.slider(key="det-nb").set_value(3)
    assert pipeline.settings.mirror is None
    at.sidebar.radio(key="live-mirror").set_value("Off")
    at.run()
    assert not at.exception
    assert at.session_state["live-pipeline"] is pipeline  # the same pipeline: the stream keeps running
    assert all(call["key"] == "live" for call in streamer.calls)
    streamer.callback()(camera_frame())  # updates apply from the next frame
    assert pipeline.settings.smoothing == pytest.approx(0.3)
    assert not pipeline.settings.draw.bars and pipeline.settings.draw.boxes
    assert pipeline.settings.detector.min_neighbors == 3 and pipeline.settings.mirror is False


def test_live_stats_and_timeline_while_playing(tiny_model: Path, streamer: FakeStreamer, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    stats_file = tmp_path / "stats.json"
    monkeypatch.setenv("FER_APP_STATS_FILE", str(stats_file))
    at = run_live()  # not playing yet: no stats, an empty timeline
    assert not at.metric
    pipeline = at.session_state["live-pipeline"]
    feed_until_classified(streamer.callback(), pipeline, frames=8)
    frames = pipeline.stats().frames
    streamer.plays = 2  # the next run loops twice (refreshing stats, timeline, stats file), then stops
    at.run()
    assert not at.exception
    metrics = {m.label: m.value for m in at.metric}
    assert list(metrics) == ["FPS", "Faces", "Labels/s"]  # three short metrics: readable at 390 px too
    assert metrics["Faces"] == "1"
    table = next(m.value for m in at.markdown if m.value.startswith("| ms |"))
    assert [line.split("|")[1].strip() for line in table.splitlines()[2:]] == ["Detect", "Classify", "Draw"]
    assert any("Model **tiny**" in c.value for c in at.caption)
    assert at.get("vega_lite_chart")
    assert [b.label for b in at.get("download_button")] == ["Download timeline CSV (all faces)"]
    written = json.loads(stats_file.read_text())
    assert written["frames"] == frames and written["faces"] == 1 and written["model"] == "tiny"
    assert len(written["predictions"]) == 1 and written["predictions"][0]["label"] in written["predictions"][0][
        "probabilities"]
    # one source of truth: the page's metrics are the overlay's snapshot, and the overlay says the same
    shown = written["shown"]
    assert metrics["Faces"] == str(shown["faces"]) and metrics["Labels/s"] == f"{shown['label_refresh_hz']:.1f}"
    assert written["overlay"][0].startswith(f"{shown['fps']:.1f} FPS  faces {shown['faces']}  "
                                            f"labels {shown['label_refresh_hz']:.1f}/s")


def test_two_sessions_get_their_own_pipeline_and_share_the_model(tiny_model: Path, streamer: FakeStreamer) -> None:
    first = run_live()
    first_callback = streamer.callback()
    second = run_live()
    one, two = first.session_state["live-pipeline"], second.session_state["live-pipeline"]
    assert one is not two
    assert one.model is two.model  # st.cache_resource: loaded once per process
    first_callback(camera_frame())
    assert (one.stats().frames, two.stats().frames) == (1, 0)


# ---------------------------------------------------------------- photo page


def upload(at: AppTest, key: str, name: str, data: bytes, mime: str) -> AppTest:
    at.file_uploader(key=key).set_value((name, data, mime))
    at.run()
    assert not at.exception, at.exception
    return at


def test_photo_upload_gives_faces_and_downloads(tiny_model: Path) -> None:
    at = upload(run_page("photo"), "photo-upload", "astronaut.png", ASTRONAUT.read_bytes(), "image/png")
    assert not at.error
    table = at.dataframe[0].value
    assert len(table) == 1
    assert table.iloc[0].idxmax() in {"angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"}
    assert 98 <= table.iloc[0].sum() <= 102  # whole percentages
    assert table.filter(["angry", "happy", "neutral"]).shape[1] == 3
    assert at.get("image")
    assert at.get("vega_lite_chart") or at.get("arrow_bar_chart")
    assert [b.label for b in at.get("download_button")] == ["Download annotated PNG", "Download JSON result"]


def test_photo_starts_on_the_accurate_model_and_a_picked_model_is_kept(tiny_model: Path, monkeypatch) -> None:
    """The Photo page starts on `STILLS_MODEL` (the accurate ensemble) when models/ has it, the other pages on
    the default; a model the user picks is kept across pages."""
    import shutil

    import fer_app.config as config

    shutil.copytree(tiny_model, tiny_model.parent / "tiny-accurate")
    monkeypatch.setattr(config, "STILLS_MODEL", "tiny-accurate")
    at = AppTest.from_file(str(APP), default_timeout=TIMEOUT)
    at.run()
    shown = {}
    for page in ("video", "photo"):
        at.switch_page(str(PAGES / f"{page}.py"))
        at.run()
        assert not at.exception, at.exception
        shown[page] = at.sidebar.selectbox(key="model").value
    assert shown == {"video": "tiny", "photo": "tiny-accurate"}
    at.sidebar.selectbox(key="model").set_value("tiny")
    at.run()
    for page in ("video", "photo"):
        at.switch_page(str(PAGES / f"{page}.py"))
        at.run()
        assert not at.exception, at.exception
        assert at.sidebar.selectbox(key="model").value == "tiny", page


def test_photo_faces_are_numbered_and_all_classes_shown_in_the_app_order(tiny_model: Path) -> None:
    """Two faces: numbered 1, 2 left to right in the table and the charts (the same numbers are drawn on
    the image, `test_draw`); the table's columns are narrow enough for all 7 classes; bars in CLASSES order."""
    import cv2

    from fer_app.config import CLASSES

    photo = load_image(ASTRONAUT)
    two = np.concatenate([photo, np.full((512, 100, 3), 90, np.uint8), photo], axis=1)
    at = upload(run_page("photo"), "photo-upload", "two.png", cv2.imencode(".png", two)[1].tobytes(), "image/png")
    table = at.dataframe[0]
    assert list(table.value.index) == [1, 2] and list(table.value.columns) == list(CLASSES)
    widths = {name: c["width"] for name, c in json.loads(table.proto.columns).items()}
    assert set(widths) == {"face", *CLASSES} and sum(widths.values()) <= 540  # 1024 px, sidebar open: 562 px
    assert [m.value.split(":")[0] for m in at.markdown if m.value.startswith("**Face")] == ["**Face 1", "**Face 2"]
    charts = [json.loads(c.proto.spec) for c in at.get("vega_lite_chart")]
    assert len(charts) == 2
    for spec in charts:
        assert spec["mark"]["type"] == "bar" if isinstance(spec["mark"], dict) else spec["mark"] == "bar"
        assert spec["encoding"]["y"]["sort"] == list(CLASSES)  # the app's order, not alphabetical
        assert spec["encoding"]["y"]["axis"]["labelAngle"] == 0 and spec["encoding"]["x"]["type"] == "quantitative"


@pytest.mark.parametrize(("name", "data", "expected"), [
    ("notes.jpg", b"this is text, not a JPEG\n" * 4, "not a recognised image file"),
    ("cut.png", ASTRONAUT.read_bytes()[:5000], "truncated image file"),
])
def test_photo_bad_upload_is_an_error_message(tiny_model: Path, name: str, data: bytes, expected: str) -> None:
    at = upload(run_page("photo"), "photo-upload", name, data, "image/jpeg")
    assert len(at.error) == 1
    assert name in at.error[0].value and expected in at.error[0].value
    assert not at.dataframe and not at.get("download_button")


def test_photo_camera_is_drawn_only_when_chosen(tiny_model: Path) -> None:
    at = run_page("photo")
    assert at.get("file_uploader") and not at.get("camera_input")
    at.radio(key="photo-source").set_value("Take a picture")
    at.run()
    assert not at.exception
    assert at.get("camera_input") and not at.get("file_uploader")
    assert any("take a picture" in i.value for i in at.info)


def test_photo_without_a_face_says_so(tiny_model: Path) -> None:
    import cv2

    blank = cv2.imencode(".png", np.full((200, 300, 3), 128, np.uint8))[1].tobytes()
    at = upload(run_page("photo"), "photo-upload", "wall.png", blank, "image/png")
    assert not at.error
    assert any("No face found" in i.value for i in at.info)
    assert not at.dataframe


# ---------------------------------------------------------------- video page


@pytest.fixture(scope="module")
def tiny_mp4(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """A 12-frame H.264 clip: the astronaut's photo drifting right."""
    from fer_app.video import VideoWriter

    photo = load_image(ASTRONAUT)
    path = tmp_path_factory.mktemp("video") / "clip.mp4"
    with VideoWriter(path, 12, 640, 512) as writer:
        for i in range(12):
            frame = np.full((512, 640, 3), 100, np.uint8)
            frame[:, 4 * i : 4 * i + 512] = photo
            writer.write(frame)
    return path.read_bytes()


def processed(at: AppTest) -> AppTest:
    """Wait for the page's background processing to end, then rerun (as its polling fragment does)."""
    task = at.session_state["video-result"]
    assert task.wait(TIMEOUT), "the video was not processed in time"
    at.run()
    assert not at.exception, at.exception
    return at


def slow_processing(monkeypatch: pytest.MonkeyPatch, seconds: float) -> None:
    """`process_video` taking `seconds` more per frame, so that the page can be seen while it works."""
    import fer_app.video

    real = fer_app.video.process_video

    def slow(*args: Any, progress: Any = None, **kwargs: Any) -> Any:
        def paced(done: int, total: int | None) -> Any:
            time.sleep(seconds)
            return progress(done, total)
        return real(*args, progress=paced, **kwargs)

    monkeypatch.setattr(fer_app.video, "process_video", slow)


def test_video_upload_gives_video_timeline_and_csv(tiny_model: Path, tiny_mp4: bytes) -> None:
    at = processed(upload(run_page("video"), "video-upload", "clip.mp4", tiny_mp4, "video/mp4"))
    assert not at.error
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Frames"] == "12" and metrics["Faces followed"] == "1"
    assert at.get("video")
    assert [b.label for b in at.get("download_button")] == ["Download CSV (one row per face and frame)",
                                                            "Download annotated MP4"]
    assert any("Face #" in m.value for m in at.markdown)
    assert at.get("arrow_line_chart") or at.get("vega_lite_chart")
    task = at.session_state["video-result"]
    at.run()  # a rerun (e.g. after a download) reuses the result instead of processing again
    assert at.session_state["video-result"] is task and task.result[0].summary.frames == 12
    assert task.key[-1].draw.badges  # the track ids are drawn on the annotated video


def test_video_progress_eta_and_cancel(tiny_model: Path, tiny_mp4: bytes, monkeypatch: pytest.MonkeyPatch) -> None:
    """Processing runs in the background: the page shows frames done of the total, elapsed and ETA, and
    a Cancel button that stops it; "Process again" starts over and then shows the results."""
    slow_processing(monkeypatch, 0.4)
    at = upload(run_page("video"), "video-upload", "clip.mp4", tiny_mp4, "video/mp4")
    task = at.session_state["video-result"]
    assert task.running and at.button(key="video-cancel")
    while task.done < 2:
        time.sleep(0.05)
    at.run()
    text = at.get("progress")[0].proto.text
    assert re.fullmatch(r"Processing frame \d+ of 12 · \d+ s elapsed · about \d+ s left", text), text
    assert not at.get("video") and not at.metric
    at.button(key="video-cancel").click()
    at.run()
    assert not at.exception and task.cancelling
    assert task.wait(30) and 0 < task.done < 12
    at.run()
    assert not at.exception
    assert re.fullmatch(r"Cancelled after \d+ of 12 frames \(\d+ s\); nothing was kept\.", at.warning[0].value)
    assert not at.get("video") and not at.get("download_button")
    at.button(key="video-again").click()
    at.run()
    again = at.session_state["video-result"]
    assert again is not task and again.running
    at = processed(at)
    assert {m.label: m.value for m in at.metric}["Frames"] == "12" and at.get("video")


def test_video_hides_short_tracks_and_shares_one_time_axis(tiny_model: Path, tmp_path: Path) -> None:
    """A face seen throughout and a second one seen in 2 frames only: one chart, a note that one face was
    hidden; the chart's time axis spans the whole clip."""
    from fer_app.video import VideoWriter

    face = load_image(ASTRONAUT)
    path = tmp_path / "two.mp4"
    with VideoWriter(path, 10, 1124, 512) as writer:
        for i in range(20):
            frame = np.full((512, 1124, 3), 100, np.uint8)
            frame[:, :512] = face
            # at the full scans of frames 11 and 12 (detect-and-track: every 10th, then a new track's)
            if i in (11, 12):
                frame[:, 612:] = face
            writer.write(frame)
    at = processed(upload(run_page("video"), "video-upload", "two.mp4", path.read_bytes(), "video/mp4"))
    rows = at.session_state["video-result"].result[0].rows
    counts = {t: sum(r["track"] == t for r in rows) for t in {r["track"] for r in rows}}
    assert len(counts) == 2 and sorted(counts.values())[0] < 5, counts  # the clip has a short track
    assert [m.value.split(":")[0] for m in at.markdown if m.value.startswith("**Face #")] == [
        f"**Face #{max(counts, key=counts.get)}**"]
    assert any("1 face(s) seen in fewer than 5 frames are hidden" in c.value for c in at.caption)
    assert {m.label: m.value for m in at.metric}["Faces followed"] == "1"
    spec = json.loads(at.get("vega_lite_chart")[0].proto.spec)
    assert spec["encoding"]["x"]["scale"]["domain"] == [0, pytest.approx(1.9)]  # 20 frames at 10 FPS


def test_video_bad_upload_is_an_error_message(tiny_model: Path) -> None:
    at = upload(run_page("video"), "video-upload", "holiday.mp4", b"this is not a video" * 10, "video/mp4")
    assert len(at.error) == 1 and "holiday.mp4" in at.error[0].value
    assert "fer-app-video-" not in at.error[0].value  # the temporary path is not shown
    assert not at.get("video")


def test_live_calibration_capture_stores_face_crops(tiny_model: Path, streamer: FakeStreamer, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    import fer_app.config as config

    monkeypatch.setattr(config, "APP_HOME", tmp_path / "home")
    at = run_live()
    at.sidebar.text_input(key="calib-name").input("tester")
    at.run()
    at.sidebar.toggle(key="calib-on").set_value(True)
    at.run()
    assert not at.exception
    recorder = at.session_state["calib-capture"]["recorder"]
    ticks = iter(range(0, 10_000))
    recorder._clock = lambda: float(next(ticks))  # one second per frame: past the countdown at once
    callback = streamer.callback()
    for _ in range(8):
        out = callback(camera_frame())
        assert (out.width, out.height) == (640, 480)
    saved = sorted((tmp_path / "home" / "calibration" / "tester").rglob("*.png"))
    assert saved, "no face crop was captured from the stream"
    assert recorder.last_step() is not None
    at.sidebar.toggle(key="calib-on").set_value(False)
    at.run()
    assert at.session_state["calib-capture"] == {}


def test_live_page_shows_at_once_while_the_model_loads(tiny_model: Path, streamer: FakeStreamer,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Cold start: the model loads in the background; the page (and START) is there at once, with a status."""
    import threading

    import fer_app.ui.common as common

    gate, real = threading.Event(), common.load_model
    monkeypatch.setattr(common, "load_model", lambda name: (gate.wait(60), real(name))[1])
    started = time.monotonic()
    at = run_page("live")
    assert time.monotonic() - started < 30
    assert "live-pipeline" not in at.session_state
    assert any("Loading model tiny" in s.label and s.icon == "spinner" for s in at.get("status")), "no spinner"
    assert streamer.calls, "START is not offered while the model loads"
    frame = camera_frame()
    out = streamer.callback()(frame)  # a frame before the model: back with a note, no error
    assert (out.width, out.height) == (640, 480)
    assert not np.array_equal(out.to_ndarray(format="bgr24"), frame.to_ndarray(format="bgr24"))
    gate.set()
    at = run_live()
    assert not at.get("status") and streamer.callback()(camera_frame()).width == 640
    assert at.session_state["live-pipeline"].stats().frames == 1


def test_live_page_does_not_loop_while_playing(tiny_model: Path, streamer: FakeStreamer) -> None:
    """The stats refresh in a fragment (run_every), not in a loop that keeps the script (and Streamlit's own
    Running / Stop indicator) going for the whole stream: a run reads the stream's state once and ends."""
    at = run_live()
    streamer.plays = 1000
    started = time.monotonic()
    at.run()
    assert not at.exception and time.monotonic() - started < 10
    assert streamer.plays == 999  # one read of ctx.state.playing: no refresh loop
    assert {m.label for m in at.metric} == {"FPS", "Faces", "Labels/s"}
    # the fragment's short runs would each flash Streamlit's own Running / Stop: hidden while the stream plays
    hidden = [h for h in at.get("html") if "stStatusWidget" in h.proto.body]
    assert len(hidden) == 1 and "visibility: hidden" in hidden[0].proto.body
    streamer.plays = 0
    at.run()
    assert not [h for h in at.get("html") if "stStatusWidget" in h.proto.body]  # stopped: shown as usual


def test_live_timeline_chart_breaks_at_gaps_and_says_whose_face(tiny_model: Path, streamer: FakeStreamer) -> None:
    import fer_app.live as live_module
    from fer_app.config import CLASSES

    at = run_live()
    pipeline = at.session_state["live-pipeline"]
    row = {"largest": True, "label": "happy", "confidence": 0.9, **{c: 0.1 for c in CLASSES}}
    rows = [{**row, "t": t, "track": track} for t, track in [(0.0, 1), (0.2, 1), (5.0, 1), (5.2, 1), (5.4, 2)]]
    segments = [r["segment"] for r in live_module._segmented(rows, pipeline.gap_s, per_track=False)]
    assert segments == [1, 1, 2, 2, 3]  # a gap of 4.8 s, then another face: new lines each time
    assert not at.get("vega_lite_chart")  # nothing seen yet: no chart, a caption
    assert any("appears here once a face" in c.value for c in at.caption)
    streamer.callback()(camera_frame())
    with pipeline._lock:
        pipeline._timeline.clear()
        pipeline._timeline.extend({k: v for k, v in r.items()} for r in rows)
    streamer.plays = 1
    at.run()
    (chart,) = at.get("vega_lite_chart")
    spec = json.loads(chart.proto.spec)
    assert spec["encoding"]["detail"]["field"] == "line"  # one line per class and segment: no line across a gap
    # one face's lines (the track most often the largest), said on the chart, with the others counted
    assert "Largest face: #1 (+1 not shown)" in json.dumps(spec["title"])
    assert any("A gap: that face was not seen" in c.value for c in at.caption)
    assert spec["encoding"]["detail"]["field"] == "line"


# ---------------------------------------------------------------- calibration capture: the flow
# (fer_app/ui/calibration.py)


def test_calibration_capture_flow_name_model_skip_and_caption(tiny_model: Path, streamer: FakeStreamer,
                                                              tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil

    import fer_app.config as config
    from fer_app.ui.calibration import NEED_NAME

    monkeypatch.setattr(config, "APP_HOME", tmp_path / "home")
    shutil.copytree(tiny_model, tiny_model.parent / "tiny-two")
    at = AppTest.from_file(str(APP), default_timeout=TIMEOUT)
    at.run()
    assert not at.exception, at.exception
    toggle = at.sidebar.toggle(key="calib-on")
    assert toggle.disabled and toggle.proto.help == NEED_NAME  # "Capture now" says why it is disabled
    assert NEED_NAME in [c.value for c in at.sidebar.caption]
    at.sidebar.text_input(key="calib-name").input("tester")
    at.sidebar.selectbox(key="model").set_value("tiny-two")
    at.run()
    for page in ("photo", "live"):  # the name and the model choice outlive page changes
        at.switch_page(str(PAGES / f"{page}.py"))
        at.run()
        assert not at.exception, at.exception
        assert at.sidebar.selectbox(key="model").value == "tiny-two"
    assert at.sidebar.text_input(key="calib-name").value == "tester"
    at.sidebar.toggle(key="calib-on").set_value(True)
    at.run()
    recorder = at.session_state["calib-capture"]["recorder"]
    ticks = iter(range(0, 10_000))
    recorder._clock = lambda: float(next(ticks))  # one second per frame: past the countdown at once
    callback = streamer.callback()
    for _ in range(6):
        callback(camera_frame())
    at.run()
    step = recorder.last_step()
    assert step.label == "angry" and step.message in [c.value for c in at.sidebar.caption]  # follows the capture
    skip = at.sidebar.button(key="calib-skip")
    assert skip.label == "Skip ANGRY"
    skip.click()
    at.run()
    assert recorder.scheduler.current() == "disgust"
    assert any(c.value.startswith("Skipped: angry") for c in at.sidebar.caption)
    assert recorder.skip("angry") is False and recorder.scheduler.current() == "disgust"  # a stale click skips nothing


def test_live_page_offers_start_before_the_slow_imports(tiny_model: Path, streamer: FakeStreamer,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """START (the component) is rendered before the model list (whose first call imports torch and transformers,
    5-10 s on a cold server) is read: here that list fails, and the component is there all the same."""
    import fer_app.ui.common as common

    def broken():
        raise RuntimeError("the model list is slow")

    monkeypatch.setattr(common, "model_picker", broken)
    at = AppTest.from_file(str(PAGES / "live.py"), default_timeout=TIMEOUT)
    at.run()
    assert at.exception and len(streamer.calls) == 1


def _detector_page() -> None:
    import streamlit as st

    from fer_app.config import VIDEO_DETECTOR
    from fer_app.ui.common import detector_settings

    st.session_state["config"] = detector_settings("t", VIDEO_DETECTOR)


def test_detector_settings_keep_the_defaults_and_turn_eye_alignment_on():
    from fer_app.config import VIDEO_DETECTOR

    at = AppTest.from_function(_detector_page, default_timeout=TIMEOUT).run()
    assert not at.exception and at.session_state["config"] == VIDEO_DETECTOR
    at.checkbox(key="t-align").check().run()
    assert at.session_state["config"] == replace(VIDEO_DETECTOR, align=True)
