"""Tests of fer_app.video and the `video` command: a round trip through real video files.

Videos are written here (cv2.VideoWriter or PyAV, independent of the code under test) from the
640x480 scenes of test_live.py: the astronaut's head moving across a face-free background.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
from test_live import DETECTOR, FakeModel, moving, scene

from fer_app.cli import main
from fer_app.live import LiveSettings
from fer_app.model import load_model
from fer_app.video import CSV_COLUMNS, VideoReader, VideoWriter, process_video, write_csv

FRAMES = 12
SETTINGS = LiveSettings(detector=DETECTOR)


def write_cv2_video(path: Path, frames: list[np.ndarray], fourcc: str, fps: float = 10.0) -> Path:
    height, width = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, (width, height))
    assert writer.isOpened(), f"OpenCV cannot write {fourcc} to {path.suffix}"
    for frame in frames:
        writer.write(frame)
    writer.release()
    return path


def write_av_video(path: Path, frames: list[np.ndarray], codec: str, fps: int = 10) -> Path:
    height, width = frames[0].shape[:2]
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="bgr24")))
        container.mux(stream.encode(None))
    return path


def count_frames(path: Path) -> tuple[int, tuple[int, int]]:
    with av.open(str(path)) as container:
        frames = [f.to_ndarray(format="bgr24") for f in container.decode(video=0)]
    return len(frames), frames[0].shape[:2]


@pytest.fixture(scope="module")
def face_video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 12-frame 640x480 mp4 (mp4v, written by OpenCV) of a face moving across the frame."""
    path = tmp_path_factory.mktemp("video") / "walk.mp4"
    return write_cv2_video(path, [scene(moving(step)) for step in range(FRAMES)], "mp4v")


def test_round_trip(face_video: Path, tiny_model: Path, tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    out = tmp_path / "out" / "annotated.mp4"
    calls = []
    result = process_video(face_video, load_model(tiny_model), SETTINGS, out_path=out,
                           progress=lambda done, total: calls.append((done, total)))
    s = result.summary
    assert s.frames == s.frames_decoded == FRAMES and (s.width, s.height) == (640, 480) and s.fps == 10
    assert s.faces_found >= FRAMES - 1 and s.frames_with_faces == s.faces_found  # one face per frame
    assert s.tracks == 1 and s.model == "tiny" and s.out_path == str(out)
    assert s.processing_fps > 0 and s.detect_ms > 0 and s.classify_ms > 0 and s.draw_ms > 0
    assert calls[-1] == (FRAMES, FRAMES)
    assert [r["frame"] for r in result.rows] == sorted(r["frame"] for r in result.rows)
    row = result.rows[0]
    assert tuple(row) == CSV_COLUMNS and row["time"] == pytest.approx(row["frame"] / 10, abs=1e-3)
    assert sum(row[c] for c in CSV_COLUMNS[8:]) == pytest.approx(1, abs=1e-3)

    n, size = count_frames(out)
    assert n == FRAMES and size == (480, 640)
    with av.open(str(out)) as container:
        assert container.streams.video[0].codec_context.name == "h264"
    assert [p.name for p in out.parent.iterdir()] == ["annotated.mp4"]  # no temporary file left

    table = write_csv(result.rows, tmp_path / "faces.csv")
    with open(table, newline="") as f:
        read = list(csv.DictReader(f))
    assert tuple(read[0]) == CSV_COLUMNS and len(read) == s.faces_found
    assert int(read[0]["track"]) == row["track"] and read[0]["label"] == row["label"]


def test_same_video_same_rows(face_video: Path) -> None:
    model = FakeModel("happy")
    first = process_video(face_video, model, SETTINGS)
    assert process_video(face_video, model, SETTINGS).rows == first.rows  # synchronous: deterministic
    assert first.summary.draw_ms == 0 and first.summary.out_path is None
    assert len(first.rows) >= FRAMES - 1 and all(r["label"] == "happy" for r in first.rows)


def test_every_nth_frame(face_video: Path, tmp_path: Path) -> None:
    result = process_video(face_video, FakeModel(), SETTINGS, every=4, out_path=tmp_path / "every4.mov")
    assert result.summary.frames == 3 and result.summary.frames_decoded == FRAMES
    assert {r["frame"] for r in result.rows} <= {0, 4, 8}
    assert count_frames(tmp_path / "every4.mov")[0] == 3
    with pytest.raises(ValueError, match="every"):
        process_video(face_video, FakeModel(), every=0)


@pytest.mark.parametrize("name, writer", [
    ("clip.avi", lambda p, f: write_cv2_video(p, f, "MJPG")),
    ("clip.mov", lambda p, f: write_av_video(p, f, "mpeg4")),
    ("clip.webm", lambda p, f: write_av_video(p, f, "libvpx")),
    ("clip.mkv", lambda p, f: write_av_video(p, f, "libx264")),
])
def test_reads_common_containers(tmp_path: Path, name: str, writer) -> None:
    frames = [np.full((120, 160, 3), 40 * i, np.uint8) for i in range(5)]
    path = writer(tmp_path / name, frames)
    with VideoReader(path) as reader:
        decoded = list(reader)
        assert (reader.width, reader.height) == (160, 120) and reader.fps == pytest.approx(10)
    assert len(decoded) == 5 and decoded[0][0] == 0.0 and decoded[1][0] == pytest.approx(0.1)
    assert decoded[3][1].shape == (120, 160, 3) and abs(int(decoded[3][1].mean()) - 120) < 8
    assert process_video(path, FakeModel(), SETTINGS).summary.frames == 5


def test_writer_rounds_odd_sides_down(tmp_path: Path) -> None:
    with VideoWriter(tmp_path / "odd.mp4", 12.5, 161, 121) as writer:
        for i in range(3):
            writer.write(np.full((121, 161, 3), 60 * i, np.uint8))
    with VideoReader(tmp_path / "odd.mp4") as reader:
        times = [t for t, _ in reader]
        assert (reader.width, reader.height, reader.fps) == (160, 120, 12.5)
    assert times == pytest.approx([0, 0.08, 0.16])


@pytest.mark.parametrize("kind", ["missing", "text", "image", "empty", "folder", "truncated"])
def test_bad_video_names_the_file(tmp_path: Path, face_video: Path, kind: str) -> None:
    path = tmp_path / {"image": "photo.png", "folder": "a-folder"}.get(kind, "holiday.mp4")
    if kind == "text":
        path.write_text("this is not a video\n" * 50)
    elif kind == "image":
        cv2.imwrite(str(path), scene((200, 100)))
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "folder":
        path.mkdir()
    elif kind == "truncated":
        path.write_bytes(face_video.read_bytes()[:2000])
    with pytest.raises(ValueError, match=path.name):
        process_video(path, FakeModel(), SETTINGS)


def test_bad_output_path(face_video: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="must end in"):
        process_video(face_video, FakeModel(), out_path=tmp_path / "out.gif")
    with pytest.raises(ValueError, match="no such folder"):
        process_video(face_video, FakeModel(), out_path=tmp_path / "nowhere" / "out.mp4")
    with pytest.raises(ValueError, match="input video"):
        process_video(face_video, FakeModel(), out_path=face_video)


def test_failure_leaves_no_partial_output(face_video: Path, tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="boom"):
        process_video(face_video, FakeModel(error=RuntimeError("boom")), SETTINGS, out_path=tmp_path / "out.mp4")
    assert list(tmp_path.iterdir()) == []


# --- the `video` command ----------------------------------------------------------------------------


def test_cli_video_json(capsys, face_video: Path, tiny_model: Path, tmp_path: Path) -> None:
    out, table = tmp_path / "annotated.mp4", tmp_path / "faces.csv"
    code = main(["video", str(face_video), "--model", str(tiny_model), "--json", "--out", str(out),
                 "--csv", str(table), "--detection-width", "320"])
    stdout, _ = capsys.readouterr()
    assert code == 0
    report = json.loads(stdout)
    assert {"frames", "frames_with_faces", "faces_found", "tracks", "processing_fps", "detect_ms",
            "classify_ms", "model", "out_path", "csv"} <= set(report)
    assert report["frames"] == FRAMES and report["tracks"] == 1 and report["faces_found"] >= FRAMES - 1
    assert out.is_file() and table.is_file()

    code = main(["video", str(face_video), "--model", str(tiny_model), "--detection-width", "320"])
    stdout, _ = capsys.readouterr()
    assert code == 0 and f"{FRAMES} frames" in stdout and "1 track(s)" in stdout


def test_cli_video_bad_file_one_line(capsys, tmp_path: Path) -> None:
    path = tmp_path / "notes.mp4"
    path.write_text("not a video")
    code = main(["video", str(path), "--model", "no-such-model-anywhere"])
    _, err = capsys.readouterr()
    assert code == 1 and err.count("\n") == 1 and err.startswith("error:")


def test_progress_callback_can_cancel(face_video: Path, tmp_path: Path) -> None:
    """progress returning False stops the run with `Cancelled` (no partial video); None carries on."""
    from fer_app.draw import DrawOptions
    from fer_app.video import Cancelled

    seen: list[int] = []

    def stop_at_five(done: int, total: int | None) -> bool:
        seen.append(done)
        return done < 5

    with pytest.raises(Cancelled, match="cancelled after 5 frames"):
        process_video(face_video, FakeModel(), SETTINGS, out_path=tmp_path / "out.mp4", progress=stop_at_five)
    assert seen == [1, 2, 3, 4, 5] and list(tmp_path.iterdir()) == []
    badges = LiveSettings(detector=DETECTOR, draw=DrawOptions(stats=False, badges=True))
    result = process_video(face_video, FakeModel(), badges, out_path=tmp_path / "ids.mp4", progress=lambda d, t: None)
    assert result.summary.frames == FRAMES and (tmp_path / "ids.mp4").is_file()


def test_track_ids_are_drawn_on_the_annotated_video(face_video: Path, tmp_path: Path) -> None:
    """With DrawOptions(badges=True) (the Video page's setting) each face's label starts with a white
    "#id" badge: the annotated frames differ from those drawn without it, right above the face box."""
    from fer_app.draw import DrawOptions

    frames = {}
    for badges in (False, True):
        settings = LiveSettings(detector=DETECTOR, draw=DrawOptions(stats=False, bars=False, badges=badges))
        out = tmp_path / f"badges-{badges}.mp4"
        result = process_video(face_video, FakeModel("happy"), settings, out_path=out)
        with av.open(str(out)) as container:
            frames[badges] = [f.to_ndarray(format="bgr24") for f in container.decode(video=0)]
    row = result.rows[-1]
    last_with, last_without = frames[True][row["frame"]], frames[False][row["frame"]]
    above = (slice(max(row["y"] - 30, 0), row["y"]), slice(row["x"], row["x"] + 30))
    white = (last_with[above] > 230).all(axis=2).mean()
    assert white > 0.3 and (last_without[above] > 230).all(axis=2).mean() < white / 2
