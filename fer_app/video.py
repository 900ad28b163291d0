"""Video files: run the live frame pipeline over every frame, write the annotated video and a CSV.

`process_video` decodes with PyAV (FFmpeg: mp4, webm, avi, mov, mkv, ... with the rotation a phone
stores honoured) and runs the same `LivePipeline` as the webcam page, forced into synchronous mode
so that a file always gives the same rows. It returns one row per face and frame (frame, time,
track, box, label, the 7 probabilities) and a summary; with `out_path` it also writes the annotated
frames as H.264 (libx264 through PyAV; MPEG-4 part 2, "mp4v", where libx264 is missing), to a
temporary file renamed at the end so a failure never leaves half a video. A missing, unreadable or
non-video file raises a `ValueError` that names it.
"""

from __future__ import annotations

import csv
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from fractions import Fraction
from pathlib import Path
from statistics import median

import av
import numpy as np

from fer_app.config import CLASSES
from fer_app.live import FrameTiming, LivePipeline, LiveSettings
from fer_app.model import Classifier
from fer_app.types import Prediction

__all__ = ["CSV_COLUMNS", "Cancelled", "VideoReader", "VideoResult", "VideoSummary", "VideoWriter", "process_video",
           "write_csv"]

#: Columns of the per-face rows and of the CSV, for models with the standard classes.
CSV_COLUMNS: tuple[str, ...] = ("frame", "time", "track", "x", "y", "w", "h", "label", *CLASSES)
#: Output containers by file suffix.
_OUT_FORMATS = {".mp4": "mp4", ".m4v": "mp4", ".mov": "mov", ".mkv": "matroska"}
#: Frame rate assumed when a file does not say.
_DEFAULT_FPS = 30.0
#: A file whose decoded frames fall short of its header's count by more than this share (and more than
#: 2 frames) is reported as truncated: processed to its end, with a warning.
TRUNCATED_SHORTFALL = 0.05

#: progress(done, total): after each decoded frame; returning False (not None) cancels the run (`Cancelled`).
Progress = Callable[[int, int | None], bool | None]


class Cancelled(Exception):
    """`process_video` was stopped by its progress callback; no annotated video was left behind."""


@dataclass(frozen=True)
class VideoSummary:
    """What a run over a video found, and how fast it went (medians of the per-frame ms)."""

    path: str
    model: str
    width: int
    height: int
    fps: float  # the video's frame rate
    frames: int  # frames processed (every `every`-th decoded frame)
    frames_decoded: int
    frames_with_faces: int
    faces_found: int  # faces summed over the processed frames
    tracks: int  # distinct faces followed (track ids)
    processing_fps: float  # processed frames per second of wall time, decoding and writing included
    detect_ms: float
    classify_ms: float  # per frame with faces (one batch)
    draw_ms: float
    out_path: str | None = None
    frames_expected: int | None = None  # the header's frame count (an estimate; None when unknown)
    truncated: bool = False  # decoded frames fell well short of frames_expected: a cut or damaged file

    @property
    def warning(self) -> str | None:
        """The line to show when the file looks truncated, else None."""
        if not self.truncated:
            return None
        return f"{self.path}: decoded {self.frames_decoded} of {self.frames_expected} frames (truncated?)"

    def to_dict(self) -> dict:
        return {k: round(v, 3) if isinstance(v, float) else v for k, v in asdict(self).items()}


@dataclass(frozen=True)
class VideoResult:
    rows: list[dict]  # one per face and processed frame; keys: CSV_COLUMNS
    summary: VideoSummary


class VideoReader:
    """The frames of a video file, decoded by PyAV: iterate for (seconds from the start, BGR frame)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise ValueError(f"{self.path}: no such file" if not self.path.exists() else f"{self.path}: not a file")
        try:
            self._container = av.open(str(self.path))
        except (av.error.FFmpegError, ValueError, OSError) as exc:
            raise ValueError(f"{self.path}: not a readable video ({_reason(exc)})") from None
        fmt = self._container.format.name
        if fmt.endswith("_pipe") or fmt == "image2" or not self._container.streams.video:
            self._container.close()
            kind = "a still image" if fmt.endswith("_pipe") or fmt == "image2" else "no video stream"
            raise ValueError(f"{self.path}: not a video ({kind}, format {fmt})")
        self._stream = self._container.streams.video[0]
        self._stream.thread_type = "AUTO"
        rate = self._stream.average_rate or self._stream.guessed_rate
        self.fps = float(rate) if rate else _DEFAULT_FPS
        self.width, self.height = self._stream.codec_context.width, self._stream.codec_context.height
        duration = self._container.duration / av.time_base if self._container.duration else 0.0
        #: Frames in the file as its header says (an estimate; None when unknown).
        self.frame_count: int | None = self._stream.frames or round(duration * self.fps) or None
        #: Frames decoded by a complete iteration (None until one has ended).
        self.frames_decoded: int | None = None

    @property
    def truncated(self) -> bool:
        """Whether a complete iteration decoded well short of the header's frame count (`TRUNCATED_SHORTFALL`)."""
        if self.frame_count is None or self.frames_decoded is None:
            return False
        return self.frame_count - self.frames_decoded > max(2, TRUNCATED_SHORTFALL * self.frame_count)

    def __iter__(self) -> Iterator[tuple[float, np.ndarray]]:
        first: float | None = None
        index = 0
        try:
            for frame in self._container.decode(self._stream):
                t = frame.time if frame.time is not None else index / self.fps
                first = t if first is None else first
                image = frame.to_ndarray(format="bgr24")
                if frame.rotation:  # degrees counterclockwise, as players apply it
                    image = np.ascontiguousarray(np.rot90(image, round(frame.rotation / 90) % 4))
                yield t - first, image
                index += 1
        except av.error.FFmpegError as exc:
            raise ValueError(f"{self.path}: decoding failed at frame {index} ({_reason(exc)})") from None
        if index == 0:
            raise ValueError(f"{self.path}: no video frame could be decoded")
        self.frames_decoded = index

    def close(self) -> None:
        self._container.close()

    def __enter__(self) -> VideoReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class VideoWriter:
    """BGR frames to a video file: H.264 (yuv420p) through PyAV, MPEG-4 part 2 where libx264 is missing.

    Odd frame sides are rounded down to even ones (yuv420p needs them) by the encoder's scaler.
    """

    def __init__(self, path: str | Path, fps: float, width: int, height: int, *, container_format: str = "mp4") -> None:
        self.path = Path(path)
        self._container = av.open(str(self.path), mode="w", format=container_format)
        rate = Fraction(fps).limit_denominator(1001)
        try:
            self._stream = self._container.add_stream("libx264", rate=rate)
            self._stream.options = {"crf": "23", "preset": "veryfast"}
        except (av.error.FFmpegError, ValueError):
            self._stream = self._container.add_stream("mpeg4", rate=rate)
        self._stream.width, self._stream.height = max(2, width - width % 2), max(2, height - height % 2)
        self._stream.pix_fmt = "yuv420p"
        self._closed = False

    @property
    def codec(self) -> str:
        return self._stream.codec_context.name

    def write(self, frame: np.ndarray) -> None:
        self._container.mux(self._stream.encode(av.VideoFrame.from_ndarray(frame, format="bgr24")))

    def close(self) -> None:
        """Flush the encoder and finish the file (once; later calls do nothing)."""
        if self._closed:
            return
        self._closed = True
        try:
            self._container.mux(self._stream.encode(None))
        finally:
            self._container.close()

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def process_video(path: str | Path, model: Classifier, settings: LiveSettings | None = None, *,
                  out_path: str | Path | None = None, every: int = 1,
                  progress: Progress | None = None) -> VideoResult:
    """Faces, tracks and smoothed emotions of every `every`-th frame of a video file.

    The pipeline runs synchronously (deterministic). With `out_path` (.mp4, .m4v, .mov or .mkv) the
    processed frames are written annotated, at the video's frame rate divided by `every`.
    `progress(done, total)` is called after each decoded frame; total is the header's frame count
    (None when unknown). When it returns False (or raises `Cancelled`) the run stops with `Cancelled`,
    and the partial annotated video is removed.
    """
    if every < 1:
        raise ValueError(f"every must be >= 1, got {every}")
    out = _check_out_path(Path(out_path), Path(path)) if out_path is not None else None
    settings = replace(settings or LiveSettings(), asynchronous=False)
    rows: list[dict] = []
    timings: list[FrameTiming] = []
    frames = with_faces = decoded = 0
    started = time.perf_counter()
    with VideoReader(path) as reader, LivePipeline(model, settings, timeline_length=0) as pipeline, \
            _annotated_output(out, reader.fps / every, reader.width, reader.height) as writer:
        for decoded, (t, frame) in enumerate(reader, 1):
            if (decoded - 1) % every == 0:
                if writer is not None:
                    writer.write(pipeline.process(frame))
                else:
                    pipeline.analyze(frame)
                predictions = pipeline.predictions()
                rows.extend(_row(decoded - 1, t, p) for p in predictions)
                timings.append(pipeline.last_timing())
                frames += 1
                with_faces += bool(predictions)
            if progress is not None and progress(decoded, reader.frame_count) is False:
                raise Cancelled(f"{path}: cancelled after {decoded} frames")
    seconds = time.perf_counter() - started
    summary = VideoSummary(
        path=str(path), model=pipeline.model.name, width=reader.width, height=reader.height, fps=reader.fps,
        frames=frames, frames_decoded=decoded, frames_with_faces=with_faces, faces_found=len(rows),
        tracks=len({r["track"] for r in rows}), processing_fps=frames / seconds if seconds > 0 else 0.0,
        detect_ms=_median([t.detect_ms for t in timings]),
        classify_ms=_median([t.classify_ms for t in timings if t.classify_ms is not None]),
        draw_ms=_median([t.draw_ms for t in timings]) if out else 0.0,
        out_path=str(out) if out else None, frames_expected=reader.frame_count, truncated=reader.truncated)
    return VideoResult(rows, summary)


@contextmanager
def _annotated_output(out: Path | None, fps: float, width: int, height: int) -> Iterator[VideoWriter | None]:
    """A writer to a temporary file beside `out`, renamed to `out` when the block succeeds (None: no output)."""
    if out is None:
        yield None
        return
    tmp = out.with_name(f".{out.stem}.tmp-{os.getpid()}{out.suffix}")
    writer = VideoWriter(tmp, fps, width, height, container_format=_OUT_FORMATS[out.suffix.lower()])
    try:
        yield writer
        writer.close()
        os.replace(tmp, out)
    finally:
        writer.close()
        tmp.unlink(missing_ok=True)


def write_csv(rows: list[dict], path: str | Path) -> Path:
    """Write `process_video`'s rows as CSV (header `CSV_COLUMNS`, or the rows' own keys for other classes)."""
    path = Path(path)
    columns = list(rows[0]) if rows else list(CSV_COLUMNS)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    return path


def _row(frame: int, t: float, p: Prediction) -> dict:
    x, y, w, h = p.face.box
    return {"frame": frame, "time": round(t, 3), "track": p.track_id, "x": x, "y": y, "w": w, "h": h,
            "label": p.label, **{c: round(float(v), 4) for c, v in zip(p.classes, p.probabilities)}}


def _check_out_path(out: Path, source: Path) -> Path:
    if out.suffix.lower() not in _OUT_FORMATS:
        raise ValueError(f"{out}: the annotated video must end in {', '.join(_OUT_FORMATS)}")
    if out.exists() and source.exists() and out.resolve() == source.resolve():
        raise ValueError(f"{out}: is the input video; choose another output file")
    if not out.parent.is_dir():
        raise ValueError(f"{out.parent}: no such folder")
    return out


def _median(values: list[float]) -> float:
    return float(median(values)) if values else 0.0


def _reason(exc: BaseException) -> str:
    """FFmpeg's message without the file name PyAV appends."""
    return getattr(exc, "strerror", None) or str(exc)
