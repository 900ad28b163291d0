"""Benchmarks: the CLIP image encoder in each CPU runtime against torch fp32, Haar detection, the
compact model and (with `pipeline=True`) the live pipeline; `python -m fer_app bench` prints them.

Every runtime is timed in the same process and run, on preprocessed real face crops (the astronaut
of assets/), at each batch size: the median and p95 of the ms per face over `repeats` calls (after
warm-up calls), faces per second at the median, and the ratio of its median to torch fp32's at the
same batch. Each runtime also goes through the accuracy check of `fer_app.runtimes` (cosine and
top-1 agreement with torch fp32 on face crops, with a fixed random head unless a model's head is given).

Peak memory is the largest increase of the process's resident set size (RSS) over its size just
before the runtime was loaded, while it loads and runs the timed calls (the accuracy check is not
included); RSS is sampled every 2 ms, with psutil when installed, else from /proc/self/statm. The
torch fp32 reference is loaded before any runtime, so its row counts its activations, not its weights.

Without real CLIP weights, the full-size ViT-B/32 architecture with random weights (seeded, so the
export cache is reused across runs) gives the same arithmetic (about 8.8 GFLOP per face) and speed.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import gc
import os
import platform
import statistics
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from fer_app import runtimes
from fer_app.config import DEFAULT_MODEL, FOOTAGE_PARTS, VIDEO_DETECTOR, DetectorConfig
from fer_app.encoders.base import Encoder
from fer_app.runtimes import ONNX_INT8_STATIC, TORCH, AccuracyCheck, CheckCrops, CheckResult, Progress

DEFAULT_BATCHES = (1, 4, 8)
DEFAULT_REPEATS = 20
QUICK_REPEATS = 3
#: The issue's targets for the best runtime that passes the accuracy check (ms per face).
TARGET_MS = {1: 45.0, 8: 30.0}
FRAME_SIZE = (640, 480)
#: The webcam rate the live pipeline is also fed at (besides back to back).
CAMERA_FPS = 30.0
#: Side of each pasted face in the synthetic frames (the face itself is about 95 px).
FACE_SIDE = 170
#: A special `clip` source: the full-size architecture with random weights.
RANDOM_CLIP = "random"
RANDOM_SEED = 0


# ------------------------------------------------------------------------------------- memory

def _rss_reader() -> tuple[str, Callable[[], int]]:
    """(description, function returning the current RSS in bytes)."""
    try:
        import psutil

        process = psutil.Process()
        return "psutil RSS", lambda: process.memory_info().rss
    except ImportError:
        page = os.sysconf("SC_PAGE_SIZE")

        def statm() -> int:
            with open("/proc/self/statm") as f:
                return int(f.read().split()[1]) * page

        return "/proc/self/statm RSS", statm


MEMORY_METHOD, _rss = _rss_reader()


class PeakRss:
    """Context manager: the peak RSS increase (bytes) over the RSS at entry, sampled in a thread."""

    def __init__(self, interval: float = 0.002) -> None:
        self.interval, self.peak, self.base = interval, 0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, _rss() - self.base)

    def __enter__(self) -> PeakRss:
        _release_memory()
        self.base = _rss()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss() - self.base)

    @property
    def mb(self) -> float:
        return self.peak / 2**20


def _release_memory() -> None:
    """Collect garbage and hand freed heap back to the OS (glibc), so RSS baselines are comparable."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


# ------------------------------------------------------------------------------------- inputs

def random_clip_encoder() -> Encoder:
    """CLIP ViT-B/32's image tower at full size (CLIPVisionConfig's defaults, projection 512), random weights."""
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    from fer_app.encoders.clip import ClipEncoder

    torch.manual_seed(RANDOM_SEED)
    vision = CLIPVisionModelWithProjection(CLIPVisionConfig()).eval()
    return ClipEncoder(vision, source=f"{RANDOM_CLIP} (full-size ViT-B/32 architecture, seed {RANDOM_SEED})").eval()


def clip_encoder(source: str | Path | None, *, random_when_missing: bool = True) -> tuple[Encoder, str]:
    """The CLIP encoder to measure and how to describe it: `source`'s weights, or "random" weights.

    None uses the local CLIP weights when there are some, else (with `random_when_missing`) the
    random full-size architecture; without it, ClipWeightsMissing says where to put the weights.
    """
    from fer_app.encoders.clip import ClipWeightsMissing, load_clip_encoder

    if source is None:
        try:
            encoder = load_clip_encoder(None)
            return encoder, f"CLIP ViT-B/32 weights from {encoder.source}"
        except ClipWeightsMissing:
            if not random_when_missing:
                raise
            source = RANDOM_CLIP
    if str(source) == RANDOM_CLIP:
        return random_clip_encoder(), f"full-size CLIP ViT-B/32 architecture, random weights (seed {RANDOM_SEED})"
    return load_clip_encoder(source), f"CLIP weights from {source}"


def gradient_background(width: int, height: int) -> np.ndarray:
    """A smooth BGR colour gradient (float, 0-255): the face-free background of the bench's frames."""
    ys, xs = np.mgrid[0:height, 0:width]
    return np.stack([90 + 60 * xs / width, 110 + 40 * ys / height, np.full_like(xs, 120.0)], axis=-1)


def synthetic_frame(faces: int, shift: int = 0) -> np.ndarray:
    """A 640x480 BGR frame with `faces` copies (0 to 3) of the astronaut's face at known places.

    shift moves the faces by that many pixels (Haar then misses the lone face in some positions).
    """
    width, height = FRAME_SIZE
    face = _astronaut_face(FACE_SIDE)
    side = FACE_SIDE
    frame = gradient_background(width, height).astype(np.uint8)
    for i, (fx, fy) in enumerate(((30, 60), (235, 250), (440, 40))[:faces]):
        dx = shift if i % 2 == 0 else -shift
        frame[fy:fy + side, fx + dx:fx + dx + side] = face
    return frame


@functools.lru_cache(maxsize=2)
def _astronaut_face(side: int) -> np.ndarray:
    """The astronaut's face with some background around it, resized to side x side (read-only)."""
    import cv2

    from fer_app.detection import FaceDetector
    from fer_app.imageio import load_image

    image = load_image(runtimes.ASSETS_DIR / "astronaut.png")
    x, y, w, h = FaceDetector().detect(image)[0].box
    pad = int(0.4 * w)
    face = cv2.resize(image[max(0, y - pad):y + h + pad, max(0, x - pad):x + w + pad], (side, side),
                      interpolation=cv2.INTER_AREA)
    face.setflags(write=False)
    return face


def write_test_clip(path: Path, frames: int = 300, size: tuple[int, int] = (640, 360), fps: float = 30.0) -> Path:
    """An mp4 clip of the astronaut's face (a real photo) drifting across a gradient, with a second
    copy for the middle third of the clip: known faces for timing `process_video`."""
    import cv2

    width, height = size
    side = 150
    face = _astronaut_face(side)
    background = gradient_background(width, height).astype(np.uint8)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
    try:
        for i in range(frames):
            frame = background.copy()
            t = i / max(1, frames - 1)
            x, y = int(20 + t * (width - side - 40)), int(20 + 0.3 * t * (height - side - 40))
            frame[y:y + side, x:x + side] = face
            if frames // 3 <= i < 2 * frames // 3:
                x2 = width - side - 20 - int(0.5 * t * (width - side - 40))
                if abs(x2 - x) > side:
                    frame[height - side - 10:height - 10, x2:x2 + side] = face
            writer.write(frame)
    finally:
        writer.release()
    return path


def fer_package_detection(clip: Path) -> dict:
    """The `fer` package's face-detection step, reproduced with OpenCV on `clip`, for comparison.

    `fer.FER()` (without MTCNN) runs `haarcascade_frontalface_default.xml` on the full-resolution
    grey frame with scale factor 1.1, 5 neighbours and 50 px minimum faces. The `fer` package itself
    is not installed here (it needs TensorFlow): only its detection is reproduced, not its classifier.
    """
    import cv2

    cascade = cv2.CascadeClassifier(str(Path(cv2.data.haarcascades) / "haarcascade_frontalface_default.xml"))
    capture = cv2.VideoCapture(str(clip))
    found, frames, seconds = 0, 0, []
    try:
        while True:
            ok, frame = capture.read()
            if not ok:
                break
            start = time.perf_counter()
            grey = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)
            faces = cascade.detectMultiScale(grey, scaleFactor=1.1, minNeighbors=5,
                                             flags=cv2.CASCADE_SCALE_IMAGE, minSize=(50, 50))
            seconds.append(time.perf_counter() - start)
            frames += 1
            found += int(len(faces) > 0)
    finally:
        capture.release()
    return {"frames": frames, "frames_with_faces": found,
            "detect_ms": round(statistics.median(seconds) * 1000, 2) if seconds else None}


def bench_video(model_name: str | Path, frames: int = 300) -> dict:
    """`python -m fer_app video`'s engine on a 640x360 clip (`write_test_clip`), with the CLI's defaults."""
    import tempfile

    from fer_app.draw import DrawOptions
    from fer_app.live import LiveSettings
    from fer_app.model import ModelError, load_model
    from fer_app.video import process_video

    try:
        model = load_model(model_name)
    except ModelError as exc:
        return {"model": str(model_name), "missing": str(exc)}
    with tempfile.TemporaryDirectory() as tmp:
        clip = write_test_clip(Path(tmp) / "clip.mp4", frames)
        result = process_video(clip, model, LiveSettings(detector=VIDEO_DETECTOR,
                                                         draw=DrawOptions(stats=False, track_ids=True)))
        reference = fer_package_detection(clip)
    summary = result.summary.to_dict()
    summary["fer_package_detection"] = reference
    summary["path"] = f"synthetic 640x360 clip, {frames} frames (the astronaut photo's face, moving; 2 faces " \
                      f"in the middle third)"
    return dict(summary, runtime=getattr(model.encoder, "runtime", TORCH))


# ------------------------------------------------------------------------------------- timing

@dataclass(frozen=True)
class Timing:
    """One runtime at one batch size; times are per face."""

    batch: int
    median_ms: float
    p95_ms: float
    faces_per_s: float
    ratio_to_torch: float | None = None


def measure(call: Callable[[], object], batch: int, repeats: int, warmup: int = 2) -> Timing:
    """Time `call()` (which handles `batch` faces) `repeats` times after `warmup` calls."""
    seconds = runtimes.time_calls(call, repeats, warmup)
    median = statistics.median(seconds)
    p95 = float(np.percentile(seconds, 95))
    return Timing(batch, round(median * 1000 / batch, 2), round(p95 * 1000 / batch, 2), round(batch / median, 2))


def time_encoder(encoder: Encoder, pixels: torch.Tensor, batches: Sequence[int], repeats: int) -> list[Timing]:
    timings = []
    with torch.inference_mode():
        for batch in batches:
            timings.append(measure(functools.partial(encoder, runtimes.tile_batch(pixels, batch)), batch, repeats))
    return timings


@dataclass
class RuntimeBench:
    """What the benchmark found for one runtime."""

    runtime: str
    export_s: float | None = None  # building its cached file (export, quantization): ~0 when cached
    load_s: float | None = None
    peak_rss_mb: float | None = None
    timings: list[Timing] = field(default_factory=list)
    check: CheckResult | None = None
    error: str | None = None

    def at(self, batch: int) -> Timing | None:
        return next((t for t in self.timings if t.batch == batch), None)

    def to_dict(self) -> dict:
        out = asdict(self)
        out["check"] = self.check.to_dict() if self.check else None
        return out


def bench_runtimes(encoder: Encoder, names: Sequence[str], *, batches: Sequence[int], repeats: int,
                   threads: int, crops: CheckCrops, head: torch.nn.Module | None = None,
                   cache_dir: Path | None = None, progress: Progress | None = runtimes.log) -> list[RuntimeBench]:
    """Load, time and check each runtime in turn (one at a time in memory); ratios are to torch's row.

    A runtime's cached file is built (once) before its memory is measured: peak memory is that of
    loading it from the cache and running it, as in the app.
    """
    say = progress or (lambda message: None)
    pixels = encoder.preprocess(runtimes.astronaut_crops()[:8])
    check = AccuracyCheck(encoder, crops, head)
    cache = runtimes.ExportCache(encoder, cache_dir, progress)
    rows = []
    for name in names:
        row = RuntimeBench(name)
        rows.append(row)
        reason = runtimes.unavailable_reason(name)
        if reason is not None:
            row.error = reason
            continue
        say(f"bench: {name}...")
        try:
            start = time.perf_counter()
            kind = runtimes.artifact_kind(name)
            if kind is not None:
                cache.get(kind)
            row.export_s = round(time.perf_counter() - start, 2)
            with PeakRss() as memory:
                start = time.perf_counter()
                candidate = runtimes.load_runtime(encoder, name, threads=threads, progress=progress, cache=cache)
                row.load_s = round(time.perf_counter() - start, 2)
                row.timings = time_encoder(candidate, pixels, batches, repeats)
            row.peak_rss_mb = round(memory.mb, 1)
            row.check = check(candidate)
            del candidate  # one runtime in memory at a time
        except runtimes.RuntimeUnavailable as exc:
            row.error = str(exc)
        _release_memory()
    reference = next((r for r in rows if r.runtime == TORCH and r.timings), None)
    if reference is not None:
        for row in rows:
            row.timings = [_with_ratio(t, reference.at(t.batch)) for t in row.timings]
    return rows


def _with_ratio(timing: Timing, reference: Timing | None) -> Timing:
    ratio = round(timing.median_ms / reference.median_ms, 3) if reference and reference.median_ms else None
    return Timing(timing.batch, timing.median_ms, timing.p95_ms, timing.faces_per_s, ratio)


def best_runtime(rows: Sequence[RuntimeBench], batches: Sequence[int]) -> dict | None:
    """The fastest runtime that passes its check (by the mean ms per face over `batches`), against the targets."""
    passing = [r for r in rows if r.check is not None and r.check.passed and r.timings]
    if not passing:
        return None
    best = min(passing, key=lambda r: float(np.mean([t.median_ms for t in r.timings])))
    targets = {b: {"target_ms": ms, "median_ms": best.at(b).median_ms, "met": best.at(b).median_ms <= ms}
               for b, ms in TARGET_MS.items() if best.at(b) is not None}
    return {"runtime": best.runtime, "targets": targets}


# ------------------------------------------------------------------------- detection, compact

def bench_detection(repeats: int, faces: Sequence[int] = (1, 3)) -> list[dict]:
    """Haar detection (default DetectorConfig) on 640x480 synthetic frames with 1 and 3 faces."""
    from fer_app.detection import FaceDetector

    detector = FaceDetector(DetectorConfig())
    out = []
    for count in faces:
        frame = synthetic_frame(count)
        found = len(detector.detect(frame))
        timing = measure(functools.partial(detector.detect, frame), 1, max(repeats, 5))
        out.append({"faces": count, "found": found, "median_ms": timing.median_ms, "p95_ms": timing.p95_ms})
    return out


def pasted_faces_frames(faces: Sequence[np.ndarray], size: tuple[int, int] = (640, 360), seed: int = 0,
                        ) -> tuple[list[np.ndarray], list[tuple[int, int, int, int]]]:
    """One BGR frame per face: the face scaled to 110-200 px at a random place on a noisy gradient;
    returns the frames and the faces' boxes."""
    import cv2

    rng = np.random.default_rng(seed)
    width, height = size
    background = gradient_background(width, height)
    frames, boxes = [], []
    for face in faces:
        side = int(rng.integers(110, 200))
        frame = np.clip(background + rng.normal(0, 8, background.shape), 0, 255).astype(np.uint8)
        x, y = int(rng.integers(0, width - side)), int(rng.integers(0, height - side))
        frame[y:y + side, x:x + side] = cv2.resize(face, (side, side), interpolation=cv2.INTER_CUBIC)[..., None]
        frames.append(frame)
        boxes.append((x, y, side, side))
    return frames, boxes


def bench_equalization(count: int = 300, brightness: float = 0.2) -> dict:
    """The video detector with each contrast step on FER-2013 val faces pasted into 640x360 frames,
    and on the same frames dimmed to `brightness`: faces found (IoU >= 0.3), false boxes, ms per frame."""
    from dataclasses import replace

    from fer_app.config import EQUALIZE_MODES
    from fer_app.detection import FaceDetector
    from fer_app.tracking import iou
    from fer_app.types import Face

    faces = runtimes.fer_crops(count=count)
    if not faces:
        return {"missing": f"{runtimes.FER_DEV_DATA} (FER-2013 dev data) not found"}
    frames, boxes = pasted_faces_frames(faces)
    dim = [np.clip(f * brightness + 5, 0, 255).astype(np.uint8) for f in frames]
    rows = []
    for mode in EQUALIZE_MODES:
        detector = FaceDetector(replace(VIDEO_DETECTOR, equalize=mode))
        found = false = dim_found = 0
        seconds = []
        for frame, dimmed, box in zip(frames, dim, boxes):
            truth = Face(*box)
            start = time.perf_counter()
            detected = detector.detect(frame)
            seconds.append(time.perf_counter() - start)
            hits = sum(iou(d, truth) >= 0.3 for d in detected)
            found += hits > 0
            false += len(detected) - min(hits, 1)
            dim_found += any(iou(d, truth) >= 0.3 for d in detector.detect(dimmed))
        rows.append({"equalize": mode, "found": found, "false": false, "dim_found": dim_found,
                     "median_ms": round(statistics.median(seconds) * 1000, 2)})
    return {"faces": len(frames), "brightness": brightness, "rows": rows}


def bench_compact(model_name: str | Path, batches: Sequence[int], repeats: int) -> dict:
    """The compact model's forward (encoder + head) and its whole `predict_proba` (preprocessing,
    mirror-image TTA) per face; {"missing": ...} when there is no such model."""
    from fer_app.model import ModelError, load_model

    try:
        model = load_model(model_name, runtime=TORCH)
    except ModelError as exc:
        return {"model": str(model_name), "missing": str(exc)}
    out = {"model": model.name, "encoder": model.encoder.encoder_id, "tta_flip": model.tta_flip,
           **_time_compact(model, batches, repeats), "int8": None}
    with contextlib.suppress(ModelError):  # timed only where the model ships one
        out["int8"] = {"runtime": ONNX_INT8_STATIC, **_time_compact(load_model(model_name, runtime=ONNX_INT8_STATIC),
                                                                      batches, repeats)}
    return out


def _time_compact(model: torch.nn.Module, batches: Sequence[int], repeats: int) -> dict:
    crops = runtimes.astronaut_crops()[:8]
    pixels = model.encoder.preprocess(crops)
    forward, predict = [], []
    with torch.inference_mode():
        for batch in batches:
            x, batch_crops = runtimes.tile_batch(pixels, batch), _cycle(crops, batch)
            forward.append(asdict(measure(functools.partial(model, x), batch, repeats)))
            predict.append(asdict(measure(functools.partial(model.predict_proba, batch_crops), batch, repeats)))
    return {"forward": forward, "predict_proba": predict}


def bench_clip_preprocessing(encoder: Encoder, batches: Sequence[int], repeats: int) -> list[dict]:
    """CLIP's preprocessing (resize, crop, normalise) per face, which every runtime shares."""
    crops = runtimes.astronaut_crops()[:8]
    return [asdict(measure(functools.partial(encoder.preprocess, _cycle(crops, b)), b, repeats)) for b in batches]


def _cycle(crops: Sequence[np.ndarray], count: int) -> list[np.ndarray]:
    """`count` crops, repeating `crops` cyclically."""
    return [crops[i % len(crops)] for i in range(count)]


# ---------------------------------------------------------------------------------- pipeline

def live_pipeline_ready() -> bool:
    """Whether fer_app.live's LivePipeline is implemented (not the contract stub)."""
    import inspect

    from fer_app import live

    return "NotImplementedError" not in inspect.getsource(live.LivePipeline)


def feed_pipeline(model: torch.nn.Module, frames: Sequence[np.ndarray], settings=None,
                  camera_fps: float | None = None, settle: int = 0) -> dict:
    """A LivePipeline (drawing, as the live page does) fed `frames`: back to back (camera_fps None: the
    most it can do) or one every 1/camera_fps s like a camera (never waiting when behind, so the worker
    gets the CPU the video thread leaves between frames). Processed FPS, frame latency in the video
    thread, faces found and each face's label refreshes per second (median over the frames after the
    first `settle`)."""
    from fer_app.live import LivePipeline, LiveSettings

    latencies, refresh, found = [], [], []
    with LivePipeline(model, settings or LiveSettings(detector=VIDEO_DETECTOR)) as pipeline:
        start = time.perf_counter()
        for i, frame in enumerate(frames):
            if camera_fps:
                time.sleep(max(0.0, start + i / camera_fps - time.perf_counter()))
            t = time.perf_counter()
            pipeline.process(frame)
            latencies.append(time.perf_counter() - t)
            stats = pipeline.stats()
            found.append(stats.faces)
            if i >= settle and stats.label_refresh_hz > 0:
                refresh.append(stats.label_refresh_hz)
        wall = time.perf_counter() - start
    return {"model": stats.model, "frames": len(latencies), "fps": round(len(latencies) / wall, 2),
            "feed": f"camera {camera_fps:g} FPS" if camera_fps else "back to back",
            "faces_found_mean": round(float(np.mean(found)), 2),
            "frame_p50_ms": round(statistics.median(latencies) * 1000, 2),
            "frame_p95_ms": round(float(np.percentile(latencies, 95)) * 1000, 2),
            "classify_p50_ms": round(stats.classify_ms[0], 2),
            "label_refresh_hz": round(float(np.median(refresh)), 2) if refresh else 0.0,
            "asynchronous": stats.asynchronous}


def bench_pipeline(model: torch.nn.Module, frames: int, faces: Sequence[int] = (1, 3),
                   camera_fps: float | None = None) -> list[dict]:
    """`feed_pipeline` with the live page's settings on SYNTHETIC 640x480 stills (faces pasted on a
    gradient: Haar finds them reliably only where they are); the real-footage figures are
    `fer_app.bench_footage`'s."""
    return [dict(feed_pipeline(model, [synthetic_frame(count)] * frames, camera_fps=camera_fps), faces=count)
            for count in faces]


def bench_model_load(model_name: str | Path, repeats: int = 3) -> dict:
    """Seconds to load a model: under `auto` the first time on a machine (the runtime check, with an
    empty cache folder), later (the stored verdict), and with `--runtime torch` (no selection); medians."""
    import tempfile

    from fer_app.model import ModelError, load_model

    def timed(**kwargs) -> float:
        start = time.perf_counter()
        load_model(model_name, **kwargs)
        return time.perf_counter() - start

    try:
        load_model(model_name, runtime=TORCH)  # files in the page cache, modules imported
    except ModelError as exc:
        return {"missing": str(exc)}
    first, later = [], []
    real = runtimes.default_cache_dir
    try:
        for _ in range(repeats):
            with tempfile.TemporaryDirectory() as tmp:
                runtimes.default_cache_dir = lambda: Path(tmp)
                first.append(timed())
                later.append(timed())
    finally:
        runtimes.default_cache_dir = real
    plain = [timed(runtime=TORCH) for _ in range(repeats)]
    return {"model": str(model_name), "first_s": round(statistics.median(first), 3),
            "later_s": round(statistics.median(later), 3), "torch_s": round(statistics.median(plain), 3)}


def _footage(compact: str | Path, quick: bool, parts: Sequence[str] = FOOTAGE_PARTS) -> dict:
    """The real-footage benchmarks (`fer_app.bench_footage`) with the compact model as the app loads it,
    and for the photos also the accurate stills model (`STILLS_MODEL`) when models/ has it."""
    from fer_app.bench_footage import run_footage_bench
    from fer_app.model import ModelError, load_model, stills_model

    try:
        model = load_model(compact)
    except ModelError as exc:
        return {"missing": str(exc)}
    stills = None
    if "photos" in parts:
        with contextlib.suppress(ModelError):  # no stills model here: the photos are timed with `compact` alone
            stills = load_model(stills_model())
    report = run_footage_bench(model, stills=stills, quick=quick, parts=parts)
    report["model"] = f"{model.name} ({runtimes.runtime_choice(model.encoder).summary()})"
    return report


def _pipeline_models(compact: str | Path, encoder: Encoder, runtime: str, threads: int,
                     cache_dir: Path | None, progress: Progress | None) -> list[torch.nn.Module]:
    """The compact model (when it exists) and the CLIP encoder in `runtime` with a random head."""
    from fer_app.heads import Head
    from fer_app.model import Classifier, ModelError, load_model

    models = []
    with contextlib.suppress(ModelError):
        models.append(load_model(compact))  # as the app runs it: its shipped int8 encoder when it has one
    torch.manual_seed(RANDOM_SEED)
    clip = runtimes.load_runtime(encoder, runtime, threads=threads, cache_dir=cache_dir, progress=progress)
    models.append(Classifier(clip, Head(encoder.embed_dim, 7), name=f"clip ({runtime}, random head)",
                             tta_flip=True).eval())
    return models


# ------------------------------------------------------------------------------------ report

def machine() -> dict:
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {"cpu": runtimes.cpu_info(), "python": platform.python_version(),
            "versions": runtimes.versions("torch", "transformers", "onnxruntime", "openvino", "cv2"),
            "load_average": [round(x, 2) for x in load] if load else None}


def run_bench(*, clip: str | Path | None = None, runtime_names: Sequence[str] | None = None,
              batches: Sequence[int] = DEFAULT_BATCHES, repeats: int = DEFAULT_REPEATS, quick: bool = False,
              threads: int | None = None, compact: str | Path = DEFAULT_MODEL, pipeline: bool = False,
              pipeline_frames: int = 60, cache_dir: Path | None = None, footage: Sequence[str] | None = None,
              progress: Progress | None = runtimes.log) -> dict:
    """The whole benchmark as a JSON-serialisable report (see `format_report`); with `footage` (part
    names of `fer_app.bench_footage.FOOTAGE_PARTS`) only those real-footage benchmarks."""
    threads = runtimes.resolve_threads(threads)
    if footage is not None:
        report = {"machine": dict(machine(), threads=threads), "footage": _footage(compact, quick, footage)}
        report["machine"]["load_average_end"] = machine()["load_average"]
        return report
    names = list(runtime_names or runtimes.RUNTIMES)
    runtimes.require_known(names)
    if TORCH not in names:
        names.insert(0, TORCH)  # the reference every ratio is to
    repeats = QUICK_REPEATS if quick else repeats
    crops = runtimes.check_crops(fer_count=20 if quick else 240)
    if quick:
        crops = CheckCrops(crops.crops[::3], crops.source + ", every third")
    report: dict = {"machine": dict(machine(), threads=threads), "memory_method": MEMORY_METHOD,
                    "batches": list(batches), "repeats": repeats}
    encoder, described = clip_encoder(clip)
    report["clip"] = {"weights": described, "embed_dim": encoder.embed_dim,
                      "preprocessing": bench_clip_preprocessing(encoder, batches, repeats)}
    rows = bench_runtimes(encoder, names, batches=batches, repeats=repeats, threads=threads, crops=crops,
                          cache_dir=cache_dir, progress=progress)
    report["runtimes"] = [r.to_dict() for r in rows]
    report["best"] = best_runtime(rows, batches)
    report["detection"] = bench_detection(repeats)
    report["compact"] = bench_compact(compact, batches, repeats)
    report["load"] = bench_model_load(compact, 1 if quick else 3)
    if pipeline:
        if live_pipeline_ready():
            best = report["best"]["runtime"] if report["best"] else TORCH
            frames = 10 if quick else pipeline_frames
            report["pipeline"] = [row for model in _pipeline_models(compact, encoder, best, threads, cache_dir,
                                                                    progress)
                                  for camera in (None, CAMERA_FPS)
                                  for row in bench_pipeline(model, frames if camera is None else frames * 2,
                                                            camera_fps=camera)]
            report["video"] = bench_video(compact, 30 if quick else 300)
            report["equalization"] = bench_equalization(30 if quick else 300)
            report["footage"] = _footage(compact, quick)
        else:
            report["pipeline"] = {"missing": "fer_app.live.LivePipeline is not implemented yet"}
    report["machine"]["load_average_end"] = machine()["load_average"]
    return report


def _fmt(value: float | None, spec: str = ".1f") -> str:
    return "-" if value is None else format(value, spec)


def _check_text(check: dict | None) -> str:
    if not check:
        return "-"
    if check.get("error"):
        return "not checked"
    verdict = "pass" if check["passed"] else "FAIL"
    return (f"{verdict} cos {check['cosine_mean']:.4f} (min {check['cosine_min']:.3f}) "
            f"top-1 {check['top1_agreement']:.1%}")


def format_report(report: dict) -> str:
    """The benchmark as text tables."""
    m = report["machine"]
    lines = [f"machine: {runtimes.cpu_text(m['cpu'])}; "
             f"{m['threads']} inference thread(s); load average {m['load_average']} at the start, "
             f"{m.get('load_average_end')} at the end",
             f"versions: {', '.join(f'{k} {v}' for k, v in m['versions'].items())}"]
    if "runtimes" in report:
        lines += _format_timings(report)
    footage = report.get("footage")
    if footage:
        from fer_app.bench_footage import format_footage

        lines += ["", "=== REAL FOOTAGE (../shared/media) ===" + (f", model {footage['model']}" if "model" in footage
                                                                else "")]
        lines += format_footage(footage)
    return "\n".join(lines)


def _format_timings(report: dict) -> list[str]:
    """The runtimes, detection, compact-model, synthetic-pipeline and load tables of `format_report`."""
    lines = [f"CLIP image encoder: {report['clip']['weights']}; {report['repeats']} timed calls per batch "
             f"after 2 warm-up calls; peak memory = {report['memory_method']} increase while loading and running",
             "",
             f"{'runtime':<14} {'batch':>5} {'median ms/face':>14} {'p95 ms/face':>12} {'faces/s':>8} "
             f"{'x torch':>8} {'peak MB':>8} {'export s':>8} {'load s':>7}  accuracy vs torch fp32"]
    for row in report["runtimes"]:
        if row["error"]:
            lines.append(f"{row['runtime']:<14} {'':>5} unavailable: {row['error']}")
            continue
        for i, t in enumerate(row["timings"]):
            tail = (f"{_fmt(row['peak_rss_mb'], '.0f'):>8} {_fmt(row['export_s']):>8} {_fmt(row['load_s']):>7}  "
                    f"{_check_text(row['check'])}" if i == 0 else "")
            lines.append(f"{row['runtime'] if i == 0 else '':<14} {t['batch']:>5} {t['median_ms']:>14.1f} "
                         f"{t['p95_ms']:>12.1f} {t['faces_per_s']:>8.1f} {_fmt(t['ratio_to_torch'], '.2f'):>8} "
                         f"{tail}".rstrip())
    checks = [r["check"] for r in report["runtimes"] if r["check"]]
    if checks:
        lines.append(f"accuracy check: {checks[0]['n']} crops ({checks[0]['crops']}); top-1 of "
                     f"{checks[0]['head']} ({checks[0]['labels_seen']} distinct labels from torch); pass = mean "
                     f"cosine >= {runtimes.COSINE_MIN} and top-1 agreement >= {runtimes.TOP1_MIN:.0%}")
    best = report["best"]
    if best:
        met = "; ".join(f"batch {b}: {v['median_ms']:.1f} ms/face (target <= {v['target_ms']:.0f}: "
                        f"{'met' if v['met'] else 'NOT met'})" for b, v in best["targets"].items())
        lines.append(f"best runtime passing the check: {best['runtime']}" + (f"; {met}" if met else ""))
    else:
        lines.append("no runtime passed the accuracy check")
    pre = ", ".join(f"batch {t['batch']}: {t['median_ms']:.2f}" for t in report["clip"]["preprocessing"])
    lines += ["", f"CLIP preprocessing, ms per face (shared by every runtime): {pre}"]
    det = "; ".join(f"{d['faces']} face(s), {d['found']} found: median {d['median_ms']:.1f} ms, p95 {d['p95_ms']:.1f}"
                    for d in report["detection"])
    lines.append(f"Haar detection per 640x480 frame (default settings): {det}")
    compact = report["compact"]
    if "missing" in compact:
        lines.append(f"compact model {compact['model']}: missing ({compact['missing']})")
    else:
        for runtime, rows in (("torch", compact), (ONNX_INT8_STATIC, compact.get("int8"))):
            for what in ("forward", "predict_proba") if rows else ():
                cells = ", ".join(f"batch {t['batch']}: {t['median_ms']:.2f} (p95 {t['p95_ms']:.2f})"
                                  for t in rows[what])
                lines.append(f"compact model {compact['model']} ({runtime}) {what}, ms per face: {cells}")
    pipeline = report.get("pipeline")
    if isinstance(pipeline, dict):
        lines.append(f"live pipeline: {pipeline['missing']}")
    elif pipeline:
        lines += ["", f"{'SYNTHETIC live pipeline (640x480 stills)':<40} {'frames fed':<14} {'faces':>5} {'found':>5} "
                      f"{'FPS':>6} {'p50 ms':>7} {'p95 ms':>7} {'classify ms':>11} {'labels/s':>8} mode"]
        for p in pipeline:
            lines.append(f"{p['model'][:40]:<40} {p.get('feed', 'back to back'):<14} {p['faces']:>5} "
                         f"{p['faces_found_mean']:>5.1f} {p['fps']:>6.1f} "
                         f"{p['frame_p50_ms']:>7.1f} "
                         f"{p['frame_p95_ms']:>7.1f} {p['classify_p50_ms']:>11.1f} {p['label_refresh_hz']:>8.1f} "
                         f"{'async' if p['asynchronous'] else 'sync'}")
    video = report.get("video")
    if video and "missing" not in video:
        lines += ["", f"SYNTHETIC: python -m fer_app video engine, {video['path']}, model {video['model']} "
                      f"({video['runtime']}): "
                      f"{video['processing_fps']:.1f} frames/s (decoding included); faces in "
                      f"{video['frames_with_faces']}/{video['frames']} frames, {video['tracks']} track(s); median "
                      f"detect {video['detect_ms']:.1f} ms, classify {video['classify_ms']:.1f} ms per frame"]
        fer = video.get("fer_package_detection")
        if fer:
            lines.append(f"the fer package's Haar set-up on the same clip (default cascade, full resolution, "
                         f"scale 1.1, 5 neighbours, 50 px): faces in {fer['frames_with_faces']}/{fer['frames']} "
                         f"frames, median detect {fer['detect_ms']:.1f} ms per frame")
    eq = report.get("equalization")
    if eq and "missing" not in eq:
        lines += ["", f"video detector's contrast step, {eq['faces']} FER-2013 val faces pasted into 640x360 frames "
                      f"(and the same frames at {eq['brightness']:.0%} brightness)",
                  f"{'equalize':<10}{'found':>7}{'false':>7}{'found dim':>11}{'median ms':>11}"]
        lines += [f"{r['equalize']:<10}{r['found']:>7}{r['false']:>7}{r['dim_found']:>11}{r['median_ms']:>11.1f}"
                  for r in eq["rows"]]
    load = report.get("load")
    if load and "missing" not in load:
        lines += ["", f"loading {load['model']}: {load['first_s']:.2f} s the first time on this machine (auto checks "
                      f"its runtimes), {load['later_s']:.2f} s later (the stored verdict), "
                      f"{load['torch_s']:.2f} s with --runtime torch (no selection): the check costs "
                      f"{load['first_s'] - load['torch_s']:+.2f} s once, "
                      f"{load['later_s'] - load['torch_s']:+.2f} s after"]
    return lines
