"""`python -m fer_app bench` and `check-runtime` run end to end on the tiny CLIP and a tiny compact model.

Timings are not asserted: only that every section is measured and reported.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from fer_app import bench, cli, runtimes
from fer_app.cli import main
from fer_app.runtimes import RUNTIMES, TORCH

CHEAP = ["torch", "onnx-fp32"]


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_bench_quick_json(capsys: pytest.CaptureFixture[str], tiny_clip_dir: Path, tiny_model: Path,
                          models_dir: Path) -> None:
    code, out, err = run(capsys, "bench", "--quick", "--json", "--clip", str(tiny_clip_dir), "--model",
                         str(tiny_model), "--batches", "1", "2", "--threads", "1", "--pipeline")
    assert code == 0, err
    report = json.loads(out)  # progress went to stderr: stdout is pure JSON
    assert {"machine", "memory_method", "clip", "runtimes", "best", "detection", "compact"} <= report.keys()
    assert [r["runtime"] for r in report["runtimes"]] == list(RUNTIMES)
    torch_row = report["runtimes"][0]
    assert [t["batch"] for t in torch_row["timings"]] == [1, 2]
    assert all(t["ratio_to_torch"] == 1.0 for t in torch_row["timings"])
    for row in report["runtimes"]:
        if row["error"] is None:
            assert {"median_ms", "p95_ms", "faces_per_s", "ratio_to_torch"} <= row["timings"][0].keys()
            assert row["peak_rss_mb"] is not None and row["check"]["n"] > 0
        else:
            assert runtimes.unavailable_reason(row["runtime"]) is not None
    assert report["best"]["runtime"] in RUNTIMES
    assert [d["faces"] for d in report["detection"]] == [1, 3]
    assert all(d["found"] == d["faces"] for d in report["detection"])  # the synthetic frames' faces are found
    assert report["compact"]["model"] == "tiny" and len(report["compact"]["forward"]) == 2
    assert report["compact"]["int8"] is None  # the tiny model ships no int8 encoder
    assert (models_dir / ".onnx-cache").is_dir()
    if bench.live_pipeline_ready():
        pipeline = report["pipeline"]
        feeds = ["back to back", "camera 30 FPS"]
        assert [(p["model"].split()[0], p["feed"], p["faces"]) for p in pipeline] == [
            (model, feed, faces) for model in ("tiny", "clip") for feed in feeds for faces in (1, 3)]
        assert all(p["fps"] > 0 and p["frame_p95_ms"] >= p["frame_p50_ms"] for p in pipeline)
        video = report["video"]
        assert video["frames"] == 30 and video["width"] == 640 and video["height"] == 360
        # the clip shows the astronaut's face in every frame (both detectors find it in all 30 when written)
        assert video["frames_with_faces"] >= 27 and video["processing_fps"] > 0 and video["model"] == "tiny"
        fer = video["fer_package_detection"]  # the `fer` package's Haar set-up, on the same clip
        assert fer["frames"] == 30 and 27 <= fer["frames_with_faces"] <= 30 and fer["detect_ms"] > 0
        eq = report["equalization"]  # needs ../shared's FER-2013 val faces
        if "missing" not in eq:
            assert [r["equalize"] for r in eq["rows"]] == ["clahe", "global", "none"] and eq["faces"] == 30
            rows = {r["equalize"]: r for r in eq["rows"]}
            assert all(r["found"] <= 30 and r["dim_found"] <= 30 and r["false"] <= 3 and r["median_ms"] > 0
                       for r in eq["rows"])
            # when written: found 21 / 14 / 21, found dim 24 / 15 / 12 (clahe / global / none)
            assert rows["clahe"]["found"] >= 17 and rows["clahe"]["dim_found"] >= 18
            assert rows["global"]["found"] >= 9 and rows["none"]["found"] >= 17
            assert rows["clahe"]["dim_found"] > rows["none"]["dim_found"]  # the README's point: CLAHE rescues dim faces
    else:
        assert "missing" in report["pipeline"]


def test_bench_quick_table(capsys: pytest.CaptureFixture[str], tiny_clip_dir: Path, models_dir: Path) -> None:
    code, out, _ = run(capsys, "bench", "--quick", "--clip", str(tiny_clip_dir), "--runtimes", "onnx-fp32",
                       "--batches", "1", "--threads", "1", "--model", "no-such-model")
    assert code == 0
    for heading in ("median ms/face", "p95 ms/face", "faces/s", "x torch", "peak MB", "accuracy vs torch fp32"):
        assert heading in out
    lines = out.splitlines()
    assert any(line.startswith("torch ") for line in lines) and any(line.startswith("onnx-fp32") for line in lines)
    assert "best runtime passing the check" in out
    assert "Haar detection per 640x480 frame" in out
    assert "compact model no-such-model: missing" in out
    assert f"machine: {runtimes.cpu_text(runtimes.cpu_info())}; 1 inference thread(s)" in out  # the card's wording too


def test_bench_rejects_an_unknown_runtime(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "bench", "--runtimes", "tensorrt")
    assert code == 1 and "unknown runtime 'tensorrt'" in err


def test_check_runtime(capsys: pytest.CaptureFixture[str], tiny_clip_dir: Path, models_dir: Path) -> None:
    code, out, err = run(capsys, "check-runtime", "--clip", str(tiny_clip_dir), "--runtimes", *CHEAP, "--json",
                         "--fer-count", "5", "--threads", "1")
    assert code == 0, err
    results = json.loads(out)["results"]
    assert [r["runtime"] for r in results] == CHEAP
    assert all(r["passed"] and r["cosine_mean"] > 0.9999 for r in results)
    assert "random linear head" in results[0]["head"] and "astronaut" in results[0]["crops"]
    code, out, _ = run(capsys, "check-runtime", "--clip", str(tiny_clip_dir), "--runtime", "onnx-fp32",
                       "--fer-count", "0", "--threads", "1")
    assert code == 0 and "onnx-fp32: passes" in out


def test_check_runtime_fails_loudly(capsys: pytest.CaptureFixture[str], tiny_clip_dir: Path, models_dir: Path,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    real = runtimes.AccuracyCheck.__call__

    def always_fails(self: runtimes.AccuracyCheck, encoder: object) -> runtimes.CheckResult:
        return runtimes.CheckResult(**dict(real(self, encoder).to_dict(), passed=False))

    monkeypatch.setattr(runtimes.AccuracyCheck, "__call__", always_fails)
    code, out, _ = run(capsys, "check-runtime", "--clip", str(tiny_clip_dir), "--runtime", TORCH,
                       "--fer-count", "0", "--threads", "1")
    assert code == 1 and "torch: FAILS" in out


def test_check_runtime_without_clip_weights(capsys: pytest.CaptureFixture[str], models_dir: Path,
                                            monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import huggingface_hub.constants as hub_constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path / "empty-hf-cache"))
    code, _, err = run(capsys, "check-runtime")
    assert code == 1 and "CLIP ViT-B/32 weights were not found" in err


#: Where synthetic_frame pastes its faces (top-left of each 170 px square), before the shift.
FACE_PLACES = ((30, 60), (235, 250), (440, 40))


@pytest.mark.parametrize("shift", [0, 4])
@pytest.mark.parametrize("count", [0, 1, 2, 3])
def test_synthetic_frames_have_their_faces(count: int, shift: int) -> None:
    from fer_app.config import DetectorConfig
    from fer_app.detection import FaceDetector
    from fer_app.tracking import iou
    from fer_app.types import Face

    frame = bench.synthetic_frame(count, shift=shift)
    assert frame.shape == (480, 640, 3) and frame.dtype.name == "uint8"
    background = bench.gradient_background(640, 480).astype(np.uint8)
    side = bench.FACE_SIDE
    pasted = np.zeros(frame.shape[:2], bool)
    expected = []
    for i, (x, y) in enumerate(FACE_PLACES[:count]):
        x += shift if i % 2 == 0 else -shift
        square = frame[y:y + side, x:x + side].astype(int)
        assert np.abs(square - background[y:y + side, x:x + side]).mean() > 20  # a face, not the gradient
        pasted[y:y + side, x:x + side] = True
        pad = side * 0.4 / 1.8  # the face with 40% of its side around it on each side, resized to 170 px
        expected.append(Face(round(x + pad), round(y + pad), round(side - 2 * pad), round(side - 2 * pad)))
    assert np.array_equal(frame[~pasted], background[~pasted])  # nothing else on the frame
    found = FaceDetector(DetectorConfig()).detect(frame)
    assert len(found) == count
    for face in expected:  # each face is found where it was pasted
        assert max(iou(face, f) for f in found) > 0.7, (face, found)


def test_help_lists_every_runtime() -> None:
    assert cli.RUNTIME_NAMES.split(", ") == list(RUNTIMES)


# ------------------------------------------------------------------ real footage (../shared/media)

from fer_app import bench_footage  # noqa: E402

needs_media = pytest.mark.skipif(bench_footage.media(bench_footage.ONE_FACE_CLIP) is None
                                 or bench_footage.media(bench_footage.FACE_FREE_PHOTO) is None,
                                 reason="../shared/media is not here")


@needs_media
def test_the_composite_has_three_real_faces():
    from fer_app.config import VIDEO_DETECTOR
    from fer_app.detection import FaceDetector

    frames = list(bench_footage.composite_frames(10))
    assert all(f.shape == (480, 640, 3) for f in frames)
    detector = FaceDetector(VIDEO_DETECTOR)
    found = [len(detector.detect(f)) for f in frames]
    assert sum(n == 3 for n in found) >= 8, found  # one per clip tile, none in the face-free photo's


@needs_media
def test_tracked_scans_find_the_faces_a_full_scan_finds_on_real_clips():
    rows = bench_footage.bench_scan(((320, "clahe", 1), (320, "clahe", 10)), limit=80)
    by = {(r["clip"], r["full_every"]): r for r in rows}
    for clip in {r["clip"] for r in rows}:
        full, tracked = by[(clip, 1)], by[(clip, 10)]
        assert full["frames_with_faces"] >= 0.9 * full["frames"]
        assert tracked["faces_vs_full_scan"] >= 0.95 and tracked["tracks"] <= full["tracks"] + 1, (full, tracked)


@needs_media
def test_footage_bench_quick_report(tiny_model: Path):
    from fer_app.model import load_model

    report = bench_footage.run_footage_bench(load_model(tiny_model, runtime="torch"), quick=True)
    video = report["video"]
    assert video["tracked"]["frames"] == 40 and video["tracked"]["frames_with_faces"] >= 36
    assert video["tracked"]["full_scans"] < video["full_scan_all_views"]["full_scans"] == 40
    assert [(r["faces"], r["engine"]) for r in report["live"]] == [
        (f, e) for f in (1, 3) for e in ("tracked, 1 view/frame", "tracked, eyes levelled", "full scan, all views")]
    assert all(r["fps"] > 0 for r in report["live"])
    text = "\n".join(bench_footage.format_footage(report))
    assert "fer package: not measured" in text and "3-face composite" in text


@needs_media
def test_photo_bench_runs_the_photo_pages_engine_for_each_model(tiny_model: Path, tmp_path: Path):
    import shutil

    from fer_app.config import DetectorConfig
    from fer_app.detection import FaceDetector
    from fer_app.imageio import load_image
    from fer_app.model import load_model
    from fer_app.pipeline import analyze_image

    fast = load_model(tiny_model, runtime="torch")
    viewed = shutil.copytree(tiny_model, tmp_path / "tiny-views")  # the same net with more views per face
    config = json.loads((viewed / "config.json").read_text())
    config["name"], config["tta_zooms"] = "tiny-views", [0.9]
    (viewed / "config.json").write_text(json.dumps(config))
    stills = load_model(viewed, runtime="torch")
    assert stills.views() == 2 * fast.views()

    report = bench_footage.bench_photos([fast, stills], repeats=1, limit=3, peer=False)
    paths = sorted((bench_footage.MEDIA_DIR / bench_footage.PHOTOS).rglob("*.jpg"))[:3]
    detector = FaceDetector(DetectorConfig())
    found = [len(analyze_image(load_image(p), fast, detector)) for p in paths]
    assert report["photos"] == 3 and report["faces"] == sum(found) > 0  # what the Photo page finds
    assert report["photos_with_faces"] == sum(n > 0 for n in found)
    assert [(r["model"], r["views"]) for r in report["models"]] == [(fast.name, fast.views()),
                                                                      ("tiny-views", 2 * fast.views())]
    for row in report["models"]:
        assert 0 < row["classify_ms_per_face"] and row["photo_ms_median"] <= row["photo_ms_max"]
        assert row["photo_ms_max"] <= report["detect_ms_total"] + row["classify_ms_total"]
    text = "\n".join(bench_footage.format_footage({"media": "m", "photos": report}))
    assert "the Photo page's engine on 3 real photos" in text and "tiny-views" in text
    assert "fer package's classifier: not measured" in text and "live pipeline" not in text


@needs_media
def test_footage_parts_run_only_what_is_named(tiny_model: Path, models_dir: Path, capsys: pytest.CaptureFixture[str]):
    from fer_app.model import load_model

    model = load_model(tiny_model, runtime="torch")
    report = bench_footage.run_footage_bench(model, stills=model, quick=True, parts=("photos",))
    assert report.keys() == {"media", "photos"} and len(report["photos"]["models"]) == 1  # the same model once
    with pytest.raises(ValueError, match="unknown real-footage part"):
        bench_footage.run_footage_bench(model, parts=("photo",))
    # the CLI: only the photos, no CLIP runtimes; models/ has no stills model, so the bundled one alone
    code, out, err = run(capsys, "bench", "--footage", "photos", "--quick", "--json", "--model", str(tiny_model))
    assert code == 0, err
    report = json.loads(out)
    assert report.keys() == {"machine", "footage"} and set(report["footage"]) == {"media", "photos", "model"}
    assert [r["model"] for r in report["footage"]["photos"]["models"]] == ["tiny"]
    code, out, err = run(capsys, "bench", "--footage", "photos", "--quick", "--model", str(tiny_model))
    assert code == 0 and "REAL FOOTAGE" in out and "the Photo page's engine" in out and "CLIP" not in out
