"""Benchmarks on real footage (`../shared/media`), with the `fer` package side by side in the same run.

Synthetic frames (a face pasted on a gradient) flatter a Haar cascade: real backgrounds have texture
that every window of the scan must reject. These benchmarks use the real clips and photos of
`../shared/media` (read its README) and say so; where the folder is missing they report that.

- `bench_video_cli`: `python -m fer_app video`'s engine (the CLI's settings) on a real clip, against
  the same engine scanning every frame whole with all TTA views per frame (the pre-tracking way),
  and the `fer` package (`../shared/peers/fer_peer.py video`, run in its own venv, never a dependency).
- `bench_live`: the live pipeline fed real frames at a camera's pace: 1 face (a real clip) and 3
  faces (`composite_frames`: tiles of real clips and a real face-free photo, no synthetic faces);
  tracked with one view per frame, the same with crops levelled on the eyes, and a full scan.
- `bench_scan`: the detect-and-track settings and the contrast step on the real clips: frames with
  a face against a full scan of every frame, tracks (fragmentation), ms per frame.
- `bench_tta_spread`: label accuracy per track with all TTA views every frame vs one view per frame,
  on FER-2013 val faces moving over a real background for several frames each.
- `bench_photos`: the Photo page's engine on the real photos, per model (the bundled one and the
  accurate stills model), and the `fer` package's classifier (`fer_peer.py classify`) in the same run.
"""

from __future__ import annotations

import functools
import json
import os
import statistics
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np

from fer_app import config
from fer_app.config import FOOTAGE_PARTS, VIDEO_DETECTOR, DetectorConfig, ScanConfig

MEDIA_DIR = config.MEDIA_DIR
PEERS_DIR = config.PROJECT_ROOT.parent / "shared" / "peers"
#: The peer's venv (`../shared/peers/setup-fer-peer`); FER_PEER_PYTHON overrides.
PEER_PYTHON = Path(os.environ.get("FER_PEER_PYTHON", Path.home() / ".cache" / "fer-peer-venv" / "bin" / "python"))
ONE_FACE_CLIP = "videos/woman2.mp4"
SECOND_CLIP = "videos/fer_test.mp4"
FACE_FREE_PHOTO = "photos/other/fer_no-faces.jpg"
PHOTOS = "photos"


def media(name: str) -> Path | None:
    """A file of ../shared/media, or None when it is not there."""
    path = MEDIA_DIR / name
    return path if path.is_file() else None


def read_frames(path: Path, limit: int | None = None) -> list[np.ndarray]:
    """The decoded BGR frames of a clip (all, or the first `limit`)."""
    capture = cv2.VideoCapture(str(path))
    frames: list[np.ndarray] = []
    try:
        while limit is None or len(frames) < limit:
            ok, frame = capture.read()
            if not ok:
                break
            frames.append(frame)
    finally:
        capture.release()
    return frames


def composite_frames(count: int, size: tuple[int, int] = (640, 480)) -> Iterator[np.ndarray]:
    """3-face frames from real footage: a 2x2 grid of the one-face clip now, the second clip, the
    one-face clip 7 s later, and a real photo without a face (each tile the source's centre, 4:3)."""
    one, two = read_frames(MEDIA_DIR / ONE_FACE_CLIP), read_frames(MEDIA_DIR / SECOND_CLIP)
    empty = cv2.imread(str(MEDIA_DIR / FACE_FREE_PHOTO))
    tile_w, tile_h = size[0] // 2, size[1] // 2

    def tile(image: np.ndarray) -> np.ndarray:
        h, w = image.shape[:2]
        cw = min(w, int(h * 4 / 3))
        x0 = (w - cw) // 2
        return cv2.resize(image[:, x0:x0 + cw], (tile_w, tile_h), interpolation=cv2.INTER_AREA)

    late = min(len(one) - 1, 210)
    for i in range(count):
        grid = [tile(one[i % len(one)]), tile(two[i % len(two)]), tile(one[(i + late) % len(one)]), tile(empty)]
        yield np.vstack([np.hstack(grid[:2]), np.hstack(grid[2:])])


# ------------------------------------------------------------------------------------ the peer

def run_peer(command: Sequence[str], timeout: float = 900) -> dict:
    """`../shared/peers/fer_peer.py COMMAND... --json` in the peer's venv; {"missing": why} when it can't run."""
    script = PEERS_DIR / "fer_peer.py"
    if not script.is_file():
        return {"missing": f"{script} is not here"}
    if not PEER_PYTHON.is_file():
        return {"missing": f"no peer venv at {PEER_PYTHON} (make it with ../shared/peers/setup-fer-peer)"}
    try:
        done = subprocess.run([str(PEER_PYTHON), str(script), *command, "--json"], capture_output=True,
                              text=True, timeout=timeout, check=True, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
        return json.loads(done.stdout.strip().splitlines()[-1])
    except (subprocess.SubprocessError, OSError, ValueError, IndexError) as exc:
        return {"missing": f"the peer failed: {type(exc).__name__}: {str(exc)[:200]}"}


# ------------------------------------------------------------------------------------ engines

def _settings(scan: ScanConfig | None = None, spread: bool = True):
    """The video CLI's settings (`python -m fer_app video`), with another scan or TTA spread."""
    from fer_app.draw import DrawOptions
    from fer_app.live import LiveSettings

    base = LiveSettings(detector=VIDEO_DETECTOR, draw=DrawOptions(stats=False, track_ids=True), asynchronous=False,
                        spread=spread)
    return replace(base, scan=scan) if scan is not None else base


def run_frames(model, frames: Sequence[np.ndarray], settings) -> dict:
    """The live pipeline over decoded frames, back to back, as the video CLI runs it (no drawing):
    processing FPS without decoding, frames with a face, tracks, median detect/classify ms, full scans."""
    from fer_app.live import LivePipeline

    with_faces, tracks, detect, classify, full = 0, set(), [], [], 0
    with LivePipeline(model, settings, timeline_length=0) as pipeline:
        start = time.perf_counter()
        for frame in frames:
            predictions = pipeline.analyze(frame)
            timing = pipeline.last_timing()
            with_faces += bool(predictions)
            tracks.update(p.track_id for p in predictions)
            detect.append(timing.detect_ms)
            full += timing.full_scan
            if timing.classify_ms is not None:
                classify.append(timing.classify_ms)
        wall = time.perf_counter() - start
    return {"frames": len(frames), "fps": round(len(frames) / wall, 1), "frames_with_faces": with_faces,
            "tracks": len(tracks), "detect_ms": round(statistics.median(detect), 2),
            "classify_ms": round(statistics.median(classify), 2) if classify else None,
            "full_scans": full}


def bench_video_cli(model, clip: str = ONE_FACE_CLIP, peer: bool = True, limit: int | None = None) -> dict:
    """The video CLI's engine on a real clip (decoding excluded, as the peer measures it), against
    the pre-tracking engine (a full scan every frame, all TTA views every frame) and the `fer` package."""
    from fer_app.video import process_video

    path = media(clip)
    if path is None:
        return {"missing": f"{MEDIA_DIR / clip} is not here"}
    frames = read_frames(path, limit)
    run_frames(model, frames[:30], _settings())  # warm-up
    out = {"clip": str(path.relative_to(MEDIA_DIR.parent)), "width": frames[0].shape[1],
           "height": frames[0].shape[0], "frames": len(frames)}
    out["tracked"] = run_frames(model, frames, _settings())
    out["full_scan_all_views"] = run_frames(model, frames, _settings(ScanConfig(full_every=1), spread=False))
    started = time.perf_counter()
    summary = process_video(path, model, _settings()).summary
    out["cli_with_decoding_fps"] = round(summary.frames / (time.perf_counter() - started), 1)
    if peer and limit is None:
        out["fer_package"] = run_peer(["video", str(path)])
    else:
        out["fer_package"] = {"missing": "not run (--quick)"}
    return out


def bench_live(model, frames: int = 300, camera_fps: float = 30.0) -> list[dict]:
    """The live page's pipeline (its detector and scan settings) on real frames at camera pace."""
    from fer_app.bench import feed_pipeline
    from fer_app.live import LiveSettings

    if media(ONE_FACE_CLIP) is None or media(SECOND_CLIP) is None or media(FACE_FREE_PHOTO) is None:
        return [{"missing": f"the real clips of {MEDIA_DIR} are not here"}]
    settings = LiveSettings(detector=VIDEO_DETECTOR)
    one = read_frames(MEDIA_DIR / ONE_FACE_CLIP)
    rows = []
    for name, source, faces in ((f"{ONE_FACE_CLIP} ({one[0].shape[1]}x{one[0].shape[0]})",
                                 [one[i % len(one)] for i in range(frames)], 1),
                                ("3-face composite of real clips (640x480)", list(composite_frames(frames)), 3)):
        for label, s in (("tracked, 1 view/frame", settings),
                         ("tracked, eyes levelled", replace(settings, detector=replace(VIDEO_DETECTOR, align=True))),
                         ("full scan, all views", replace(settings, scan=ScanConfig(full_every=1), spread=False))):
            rows.append({"footage": name, "faces": faces, "engine": label,
                         **feed_pipeline(model, source, s, camera_fps, settle=30)})
    return rows


#: (detection width, contrast step, full-scan interval) tried by `bench_scan`; each (width, step) with 1 first.
SCAN_GRID: tuple[tuple[int, str, int], ...] = (
    (320, "clahe", 1), (320, "clahe", 5), (320, "clahe", 10), (320, "clahe", 20),
    (400, "clahe", 1), (400, "clahe", 10), (320, "none", 1), (320, "none", 10))


def bench_scan(grid: Sequence[tuple[int, str, int]] = SCAN_GRID, limit: int | None = None) -> list[dict]:
    """Detection only (no classifier) on the real clips, for each (detection width, contrast step,
    full-scan interval): frames with a face and faces found relative to a full scan of every frame
    at the same width and contrast step, tracks (more = fragmented), ms per frame."""
    from fer_app.detection import FaceDetector
    from fer_app.scan import Scanner
    from fer_app.tracking import FaceTracker

    clips = [(c, read_frames(MEDIA_DIR / c, limit)) for c in (ONE_FACE_CLIP, SECOND_CLIP) if media(c)]
    if media(FACE_FREE_PHOTO) and media(ONE_FACE_CLIP) and media(SECOND_CLIP):
        clips.append(("3-face composite", list(composite_frames(min(150, limit or 150)))))
    rows = []
    for clip, frames in clips:
        reference: dict[tuple[int, str], tuple[int, int]] = {}
        for width, mode, every in grid:
            detector = FaceDetector(replace(VIDEO_DETECTOR, detection_width=width, equalize=mode))
            scanner, tracker = Scanner(detector, ScanConfig(full_every=every)), FaceTracker()
            with_face, found, ids, ms = 0, 0, set(), []
            for frame in frames:
                t = time.perf_counter()
                result = scanner.detect(frame, tracker.tracks)
                ms.append((time.perf_counter() - t) * 1000)
                matched = tracker.update(result.faces)
                scanner.after(matched)
                with_face += bool(matched)
                found += len(matched)
                ids.update(m.id for m in matched)
            ref = reference.setdefault((width, mode), (with_face, found))
            rows.append({"clip": clip, "width": width, "equalize": mode, "full_every": every,
                         "frames": len(frames), "frames_with_faces": with_face,
                         "vs_full_scan": round(with_face / max(1, ref[0]), 3), "faces_found": found,
                         "faces_vs_full_scan": round(found / max(1, ref[1]), 3), "tracks": len(ids),
                         "detect_ms_mean": round(float(np.mean(ms)), 2)})
    return rows


def bench_tta_spread(model, faces: int = 600, frames_per_face: int = 8, data: Path | None = None) -> dict:
    """Label accuracy per track, all TTA views every frame vs one view per frame in turn (the live
    pipeline's tracker and smoothing, the model's real views), on FER-2013 val faces: each face moves
    and changes scale slightly over `frames_per_face` frames; the track's label after its last frame
    is scored against the face's label."""
    from fer_app.live import LiveSettings
    from fer_app.tracking import FaceTracker
    from fer_app.types import Face

    path = Path(data) if data is not None else config.PROJECT_ROOT.parent / "shared" / "data" / "fer2013-trainval.npz"
    if not path.is_file():
        return {"missing": f"{path} is not here"}
    with np.load(path) as d:
        images, labels = d["val_x"], d["val_y"].astype(np.int64)
    picks = np.linspace(0, len(images) - 1, min(faces, len(images))).astype(int)
    smoothing, count = LiveSettings().smoothing, model.views()
    rng = np.random.default_rng(0)
    correct = {"all views every frame": 0, "one view per frame": 0}
    for index in picks:
        big = cv2.resize(images[index], (144, 144), interpolation=cv2.INTER_CUBIC)
        crops = []
        for _ in range(frames_per_face):  # the face a few pixels off and a few percent bigger or smaller each frame
            dx, dy = rng.integers(-6, 7, 2)
            s = int(rng.integers(118, 131))
            x0, y0 = max(0, 13 + dx), max(0, 13 + dy)
            crops.append(big[y0:y0 + s, x0:x0 + s])
        for mode in correct:
            tracker = FaceTracker(smoothing=smoothing)
            (track,) = tracker.update([Face(0, 0, 10, 10)])
            for f, crop in enumerate(crops):
                if mode == "all views every frame":
                    tracker.add_probabilities(track.id, model.predict_proba([crop])[0], float(f))
                else:
                    view = track.classified % count
                    tracker.add_probabilities(track.id, model.predict_views([crop], [view])[0], float(f), view)
            correct[mode] += int(np.argmax(track.probabilities) == labels[index])
    return {"faces": len(picks), "frames_per_face": frames_per_face, "views": count, "smoothing": smoothing,
            "accuracy": {m: round(c / len(picks), 4) for m, c in correct.items()}}


def bench_photos(models: Sequence, *, repeats: int = 3, limit: int | None = None, peer: bool = True) -> dict:
    """The Photo page's engine (`fer_app.pipeline.analyze_image`'s steps, the photo detector defaults
    `DetectorConfig()`) on every real photo of ../shared/media/photos, for each model in one run.

    Per photo, the fastest of `repeats` runs: detection (the same for every model, so timed once) and
    classification of all its faces in one batch with each model's own TTA views. Then each model on one
    real face at batch 1, against the `fer` package's classifier on one face (`fer_peer.py classify`,
    batch 1, one view) run right after; the peer has no photo command, so its detection is not in it."""
    from fer_app.bench import measure
    from fer_app.detection import FaceDetector
    from fer_app.imageio import load_image
    from fer_app.runtimes import time_calls

    def fastest(call, warmup: int = 1) -> float:  # ms, the fastest of `repeats` calls after the warm-up
        return min(time_calls(call, repeats, warmup)) * 1000

    folder = MEDIA_DIR / PHOTOS
    paths = sorted(folder.rglob("*.jpg"))[:limit] if folder.is_dir() else []
    if not paths:
        return {"missing": f"no photos in {folder}"}
    detector = FaceDetector(DetectorConfig())
    detect_ms, crops, sides = [], [], []
    for path in paths:
        image = load_image(path)
        sides.append(max(image.shape[:2]))
        crops.append(detector.crop(image, detector.detect(image)))  # the detection's warm-up too
        detect_ms.append(fastest(functools.partial(detector.detect, image), warmup=0))
    faces = sum(len(c) for c in crops)
    out = {"photos": len(paths), "folder": str(folder.relative_to(MEDIA_DIR.parent)), "faces": faces,
           "photos_with_faces": sum(bool(c) for c in crops), "longest_side_median": int(statistics.median(sides)),
           "detect_ms_median": round(statistics.median(detect_ms), 1), "detect_ms_total": round(sum(detect_ms), 1)}
    one = next(([c[0]] for c in crops if c), None)
    rows = []
    for model in models:
        classify = [fastest(functools.partial(model.predict_proba, c)) if c else 0.0 for c in crops]
        per_photo = [d + c for d, c in zip(detect_ms, classify)]
        single = measure(functools.partial(model.predict_proba, one), 1, 20) if one is not None else None
        rows.append({"model": model.name, "views": model.views(), "classify_ms_total": round(sum(classify), 1),
                     "classify_ms_per_face": round(sum(classify) / faces, 2) if faces else None,
                     "photo_ms_median": round(statistics.median(per_photo), 1),
                     "photo_ms_max": round(max(per_photo), 1),
                     "face_batch1_ms": single.median_ms if single else None})
    out["models"] = rows
    out["fer_package"] = run_peer(["classify"]) if peer else {"missing": "not run (--quick)"}
    return out


def run_footage_bench(model, *, stills=None, quick: bool = False, peer: bool = True,
                      parts: Sequence[str] = FOOTAGE_PARTS) -> dict:
    """The `parts` above for one model (and, for the photos, `stills`: the accurate photo model, when it
    is another one), as a JSON-serialisable report. quick: a smoke test, a few frames of each, no peer."""
    unknown = set(parts) - set(FOOTAGE_PARTS)
    if unknown:
        raise ValueError(f"unknown real-footage part(s) {sorted(unknown)}; choose from {FOOTAGE_PARTS}")
    if not MEDIA_DIR.is_dir():
        return {"missing": f"{MEDIA_DIR} is not here: no real-footage figures"}
    photo_models = [model] + ([stills] if stills is not None and stills.name != model.name else [])
    run = {"video": lambda: bench_video_cli(model, peer=peer and not quick, limit=40 if quick else None),
           "live": lambda: bench_live(model, 40 if quick else 300),
           "scan": lambda: bench_scan(((320, "clahe", 1), (320, "clahe", 10)), limit=40) if quick else bench_scan(),
           "tta_spread": lambda: bench_tta_spread(model, 20, 4) if quick else bench_tta_spread(model, 600),
           "photos": lambda: bench_photos(photo_models, repeats=1 if quick else 3, limit=4 if quick else None,
                                          peer=peer and not quick)}
    return {"media": str(MEDIA_DIR), **{part: run[part]() for part in FOOTAGE_PARTS if part in parts}}


def _format_video(v: dict) -> list[str]:
    if "missing" in v:
        return [f"video CLI: {v['missing']}"]
    t, f, peer = v["tracked"], v["full_scan_all_views"], v["fer_package"]
    lines = [f"python -m fer_app video engine on {v['clip']} ({v['width']}x{v['height']}, {v['frames']} "
             "frames), decoding excluded:",
             f"  {'engine':<44}{'FPS':>7}{'frames with faces':>19}{'tracks':>8}{'detect ms':>11}{'classify ms':>13}"]
    for name, row in (("tracked, 1 view/frame (the CLI's default)", t),
                      ("full scan every frame, all views per frame", f)):
        lines.append(f"  {name:<44}{row['fps']:>7.1f}{row['frames_with_faces']:>19}{row['tracks']:>8}"
                     f"{row['detect_ms']:>11.1f}{row['classify_ms'] or 0:>13.1f}")
    if "missing" in peer:
        lines.append(f"  the fer package: not measured ({peer['missing']})")
    else:
        lines.append(f"  {'the fer package (same clip, same run)':<44}{peer['processing_fps']:>7.1f}"
                     f"{peer['frames_with_faces']:>19}")
        lines.append(f"  ratio to the fer package: {t['fps'] / peer['processing_fps']:.2f}x the FPS, "
                     f"{t['frames_with_faces'] / max(1, peer['frames_with_faces']):.3f}x the frames with faces")
    lines.append(f"  the CLI with decoding: {v['cli_with_decoding_fps']:.1f} FPS")
    return lines


def _format_live(rows: list[dict]) -> list[str]:
    lines = [f"live pipeline on real frames   {'engine':<24}{'FPS':>6}{'p50 ms':>8}{'p95 ms':>8}"
             f"{'faces':>7}{'labels/s':>10} mode"]
    for row in rows:
        if "missing" in row:
            lines.append(f"  {row['missing']}")
            continue
        lines.append(f"{row['footage'][:30]:<31}{row['engine']:<24}{row['fps']:>6.1f}{row['frame_p50_ms']:>8.1f}"
                     f"{row['frame_p95_ms']:>8.1f}{row['faces_found_mean']:>7.2f}{row['label_refresh_hz']:>10.1f} "
                     f"{'async' if row['asynchronous'] else 'sync'}")
    return lines


def _format_scan(rows: list[dict]) -> list[str]:
    lines = [f"detect-and-track settings   {'width':>6}{'contrast':>9}{'full every':>11}{'frames w/ face':>15}"
             f"{'vs full':>8}{'faces':>7}{'vs full':>8}{'tracks':>7}{'ms/frame':>9}"]
    for row in rows:
        lines.append(f"{row['clip'][:27]:<28}{row['width']:>6}{row['equalize']:>9}{row['full_every']:>11}"
                     f"{row['frames_with_faces']:>10}/{row['frames']:<4}{row['vs_full_scan']:>8.3f}"
                     f"{row['faces_found']:>7}{row['faces_vs_full_scan']:>8.3f}{row['tracks']:>7}"
                     f"{row['detect_ms_mean']:>9.2f}")
    return lines


def _format_tta_spread(s: dict) -> list[str]:
    if "missing" in s:
        return [f"TTA spread: {s['missing']}"]
    return [f"TTA spread over frames, {s['faces']} FER-2013 val faces x {s['frames_per_face']} frames each "
            f"(moving, rescaled), {s['views']} views, smoothing {s['smoothing']}: label accuracy per track "
            + ", ".join(f"{k} {v:.2%}" for k, v in s["accuracy"].items())]


def _format_photos(p: dict) -> list[str]:
    from fer_app.bench import _fmt

    if "missing" in p:
        return [f"photos: {p['missing']}"]
    lines = [f"the Photo page's engine on {p['photos']} real photos ({p['folder']}, longest side median "
             f"{p['longest_side_median']} px), photo detector defaults: {p['faces']} faces in "
             f"{p['photos_with_faces']} photos; detection {p['detect_ms_median']:.1f} ms a photo (median), "
             f"{p['detect_ms_total']:.0f} ms for all; fastest of the repeats per photo",
             f"  {'model':<34}{'views':>6}{'classify ms':>12}{'ms/face':>9}{'photo ms p50':>13}"
             f"{'max':>8}{'1 face ms':>10}"]
    for r in p["models"]:
        lines.append(f"  {r['model'][:33]:<34}{r['views']:>6}{r['classify_ms_total']:>12.0f}"
                     f"{_fmt(r['classify_ms_per_face']):>9}{r['photo_ms_median']:>13.1f}"
                     f"{r['photo_ms_max']:>8.0f}{_fmt(r['face_batch1_ms'], '.2f'):>10}")
    peer = p["fer_package"]
    if "missing" in peer:
        lines.append(f"  the fer package's classifier: not measured ({peer['missing']})")
    else:
        lines.append(f"  the fer package's classifier on 1 face (batch 1, 1 view, TFLite), same run: "
                     f"{peer['classify_ms_per_face_batch1']:.2f} ms")
    return lines


#: Each part's printer, in `FOOTAGE_PARTS` order.
_FORMATTERS = {"video": _format_video, "live": _format_live, "scan": _format_scan, "tta_spread": _format_tta_spread,
               "photos": _format_photos}


def format_footage(report: dict) -> list[str]:
    """Printed tables of `run_footage_bench` (the parts it ran)."""
    if "missing" in report:
        return [f"real footage: {report['missing']}"]
    lines = [f"real footage from {report['media']}"]
    for part in FOOTAGE_PARTS:
        if part in report:
            lines += ([""] if len(lines) > 1 else []) + _FORMATTERS[part](report[part])
    return lines
