"""Damaged files never pass silently; saves stay atomic under a kill (issue 14).

Every damaged file is made here: random bytes inside a model's tensor data, malformed configs, a
clip cut to 30%, a save killed (SIGKILL) between its renames. Models are tiny untrained classifiers
saved with `save_model` (fast), in the temporary models/ of the `models_dir` fixture.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from PIL import Image

from conftest import BUNDLED
from fer_app.cli import main
from fer_app.config import CLASSES
from fer_app.encoders.compact import CompactEncoder
from fer_app.heads import Head
from fer_app.model import DIGEST_KEY, Classifier, ModelError, list_models, load_model, save_model

ROOT = Path(__file__).resolve().parent.parent
ASTRONAUT = ROOT / "assets" / "astronaut.png"


def classifier(seed: int = 0) -> Classifier:
    torch.manual_seed(seed)
    enc = CompactEncoder((8, 16), (1, 1))
    return Classifier(enc, Head(enc.embed_dim, len(CLASSES)), name="m", tta_flip=True).eval()


def damage(path: Path, data: bytes | None = None, size: int = 4096) -> None:
    """Overwrite `size` bytes inside the tensor data of a safetensors file (its header stays valid)."""
    raw = bytearray(path.read_bytes())
    start = 8 + int.from_bytes(raw[:8], "little")
    size = min(size, len(raw) - start)
    raw[start:start + size] = data[:size] if data is not None else np.random.default_rng(0).bytes(size)
    path.write_bytes(bytes(raw))


def cli(capsys, *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()  # only this command's output (loading a model may log, e.g. the runtime check)
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def one_error_line(err: str) -> bool:
    return err.count("\n") == 1 and err.startswith("error: ") and "Traceback" not in err


# ---------------------------------------------------------------- 1. weights digest, no NaN


def test_damaged_weights_are_a_model_error_naming_the_file(models_dir, capsys):
    path = save_model(classifier(), "m1")
    weights = path / "model.safetensors"
    assert (json.loads((path / "config.json").read_text())[DIGEST_KEY]
            == hashlib.sha256(weights.read_bytes()).hexdigest())
    load_model("m1")
    damage(weights)  # safetensors reads it: the header is intact
    with pytest.raises(ModelError, match=r"m1/model\.safetensors: damaged or changed since it was saved"):
        load_model("m1")
    code, out, err = cli(capsys, "predict", str(ASTRONAUT), "--model", "m1", "--json")
    assert code == 1 and out == "" and one_error_line(err) and "model.safetensors" in err


def test_weights_are_hashed_once_per_version_of_the_file(models_dir, monkeypatch):
    from types import SimpleNamespace

    import fer_app.model as model

    path = save_model(classifier(), "m1")
    calls = []
    monkeypatch.setattr(model, "hashlib", SimpleNamespace(sha256=lambda *a: calls.append(1) or hashlib.sha256(*a)))
    for _ in range(3):
        load_model("m1")
        list_models()
    assert len(calls) == 0  # hashed once, at save time, in this process
    save_model(classifier(1), "m1", overwrite=True)
    load_model("m1")
    assert len(calls) == 1  # the new file, once (while saving)
    os.utime(path / "model.safetensors")  # touched: hashed again, still matches
    load_model("m1")
    assert len(calls) == 2


def test_bundled_model_records_its_weights_digest():
    cfg = json.loads((BUNDLED / "config.json").read_text())
    digest = hashlib.sha256((BUNDLED / "model.safetensors").read_bytes()).hexdigest()
    assert cfg[DIGEST_KEY] == digest == cfg["quantized"]["weights_sha256"]


def test_damaged_copy_of_the_bundled_model_is_refused_not_run(models_dir):
    """It used to fall back from the int8 file ("quantize again") and run the damaged weights in torch."""
    copy = models_dir / "copy"
    shutil.copytree(BUNDLED, copy)
    damage(copy / "model.safetensors")
    for runtime in ("auto", "torch"):
        with pytest.raises(ModelError, match=r"copy/model\.safetensors: damaged"):
            load_model("copy", runtime=runtime)


def test_non_finite_probabilities_are_an_error_never_nan_in_json(models_dir, capsys):
    path = save_model(classifier(), "old")
    cfg = json.loads((path / "config.json").read_text())
    del cfg[DIGEST_KEY]  # as a model saved before digests were recorded: nothing to check against
    (path / "config.json").write_text(json.dumps(cfg))
    damage(path / "model.safetensors", b"\xff" * (1 << 20), size=1 << 20)  # every float32 a NaN
    model = load_model("old", runtime="torch")
    with pytest.raises(ModelError, match="'old' gave non-finite probabilities"):
        model.predict_proba([np.full((48, 48), 100, np.uint8)])
    code, out, err = cli(capsys, "predict", str(ASTRONAUT), "--model", "old", "--json", "--runtime", "torch")
    assert code == 1 and "NaN" not in out and one_error_line(err) and "non-finite" in err
    code, out, err = cli(capsys, "predict", str(ASTRONAUT), "--model", "old", "--json")  # auto may refuse at load
    assert code == 1 and "NaN" not in out and err.splitlines()[-1].startswith("error: ") and "Traceback" not in err


# ---------------------------------------------------------------- 2. one bad folder, the others usable


def test_a_malformed_folder_is_listed_as_unusable_the_others_stay_usable(models_dir, capsys):
    save_model(classifier(), "good")
    bad = save_model(classifier(), "broken")
    cfg = json.loads((bad / "config.json").read_text())
    (bad / "config.json").write_text(json.dumps(dict(cfg, encoder="compact")))
    (models_dir / "junk").mkdir()
    (models_dir / "junk" / "config.json").write_text("{not json")
    clip_like = models_dir / "clip-vit-base-patch32"
    clip_like.mkdir()
    (clip_like / "config.json").write_text(json.dumps({"model_type": "clip"}))  # CLIP's weights, not a model
    models = {m.name: m for m in list_models(include_zero_shot=False)}
    assert set(models) == {"good", "broken", "junk"}
    assert models["good"].usable and models["good"].encoder == "compact"
    assert not models["broken"].usable and "broken/config.json" in models["broken"].problem
    assert "'encoder' must be an object" in models["broken"].problem
    assert "junk/config.json: not valid JSON" in models["junk"].problem
    code, out, _ = cli(capsys, "models")
    lines = {line.split()[0]: line for line in out.splitlines()}
    assert code == 0 and "val acc" not in lines["broken"] and "unusable: " in lines["broken"]
    assert "unusable" not in lines["good"]
    with pytest.raises(ModelError, match="no model 'nope'.*available: "):  # used to crash listing the names
        load_model("nope")
    load_model("good")


def test_page_selector_lists_an_unusable_model_and_says_why(models_dir):
    from test_ui import run_page

    save_model(classifier(), "good")
    bad = save_model(classifier(), "broken")
    (bad / "config.json").write_text(json.dumps(dict(json.loads((bad / "config.json").read_text()), head=None)))
    at = run_page("photo")
    box = at.sidebar.selectbox(key="model")
    assert box.options == ["broken (unusable)", "good"] and box.value == "good"
    box.set_value("broken").run()
    assert not at.exception
    assert any("'head' must be an object" in e.value for e in at.sidebar.error)
    assert any("Cannot load model 'broken'" in e.value for e in at.error)


# ---------------------------------------------------------------- 3. configs validated completely


@pytest.mark.parametrize(("change", "message"), [
    ({"encoder": "compact"}, r"'encoder' must be an object with a 'type'"),
    ({"head": None}, r"'head' must be an object"),
    ({"classes": ["a", "b", "c"]}, r"3 classes for a head with 7 outputs"),
    ({"encoder": {"type": "resnet50"}}, r"unknown encoder type \"resnet50\""),
    ({"head": {"type": "svm", "in_dim": 16, "num_classes": 7}}, r"unknown head type \"svm\""),
    ({"encoder": {"type": "compact", "widths": "wide"}}, r"encoder 'widths' must be a list"),
    ({"head": {"type": "linear", "in_dim": "16", "num_classes": 7}}, r"head 'in_dim' must be a positive"),
    ({"classes": "angry"}, r"'classes' must be a list"),
    ({"metrics": [1, 2]}, r"'metrics' must be an object"),
    ({"tta_flip": "yes"}, r"'tta_flip' must be true or false"),
    ({DIGEST_KEY: 42}, r"'weights_sha256' must be a sha256"),
])
def test_malformed_config_is_one_line_error_naming_the_file(models_dir, capsys, change, message):
    path = save_model(classifier(), "m1")
    cfg = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**cfg, **change}))
    with pytest.raises(ModelError, match=r"m1/config\.json: " + message):
        load_model("m1")
    code, out, err = cli(capsys, "predict", str(ASTRONAUT), "--model", "m1")
    assert code == 1 and out == "" and one_error_line(err) and "m1/config.json" in err
    (path / "config.json").write_text("[" * 100_000 + "]" * 100_000)  # deeper than json can recurse
    with pytest.raises(ModelError, match="not valid JSON"):
        load_model("m1")


# ---------------------------------------------------------------- 4. truncated video


def write_clip(path: Path, frames: int = 100, fmt: str = "mp4") -> Path:
    options = {"movflags": "faststart"} if fmt == "mp4" else {}
    with av.open(str(path), mode="w", format=fmt, options=options) as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 160, 120, "yuv420p"
        rng = np.random.default_rng(0)
        for i in range(frames):
            frame = rng.integers(0, 255, (120, 160, 3), dtype=np.uint8)
            frame[:, :80] = 2 * i
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="bgr24")))
        container.mux(stream.encode(None))
    return path


def cut(path: Path, share: float = 0.3) -> Path:
    out = path.with_name("cut-" + path.name)
    data = path.read_bytes()
    out.write_bytes(data[: int(len(data) * share)])
    return out


@pytest.mark.parametrize("fmt", ["mp4", "matroska"])
def test_truncated_video_is_processed_and_reported(tmp_path, fmt):
    from test_live import DETECTOR, FakeModel

    from fer_app.live import LiveSettings
    from fer_app.video import process_video

    whole = write_clip(tmp_path / f"clip.{'mkv' if fmt == 'matroska' else 'mp4'}", fmt=fmt)
    complete = process_video(whole, FakeModel(), LiveSettings(detector=DETECTOR)).summary
    assert complete.frames_decoded == complete.frames_expected == 100
    assert not complete.truncated and complete.warning is None and complete.to_dict()["truncated"] is False
    short = process_video(cut(whole), FakeModel(), LiveSettings(detector=DETECTOR)).summary
    assert short.truncated and 0 < short.frames_decoded < 60 and short.frames_expected == 100
    assert short.warning == f"{short.path}: decoded {short.frames_decoded} of 100 frames (truncated?)"


def test_cli_video_warns_about_a_truncated_clip(models_dir, tmp_path, capsys):
    save_model(classifier(), "m1")
    clip = cut(write_clip(tmp_path / "clip.mp4"))
    code, out, err = cli(capsys, "video", str(clip), "--model", "m1", "--json")
    report = json.loads(out)
    assert code == 0 and report["truncated"] is True and report["frames_expected"] == 100
    warnings = [line for line in err.splitlines() if line.startswith("warning: ")]
    assert warnings == [f"warning: {clip}: decoded {report['frames_decoded']} of 100 frames (truncated?)"]
    code, out, err = cli(capsys, "video", str(write_clip(tmp_path / "whole.mp4")), "--model", "m1", "--json")
    assert code == 0 and json.loads(out)["truncated"] is False and "warning: " not in err


def test_video_page_shows_the_truncation_warning(models_dir, tmp_path):
    from test_ui import processed, run_page, upload

    save_model(classifier(), "m1")
    data = cut(write_clip(tmp_path / "clip.mp4")).read_bytes()
    at = processed(upload(run_page("video"), "video-upload", "holiday.mp4", data, "video/mp4"))
    warnings = [w.value for w in at.warning]
    assert any(w.startswith("holiday.mp4: decoded ") and "of 100 frames (truncated?)" in w for w in warnings), warnings


# ---------------------------------------------------------------- 5. a save killed between its renames

_KILLED_SAVE = textwrap.dedent("""
    import os, signal, sys
    from pathlib import Path

    import torch

    from fer_app.encoders.compact import CompactEncoder
    from fer_app.heads import Head
    from fer_app.model import Classifier, save_model

    root, stage = Path(sys.argv[1]), sys.argv[2]
    torch.manual_seed(1)
    encoder = CompactEncoder((8, 16), (1, 1))
    model = Classifier(encoder, Head(encoder.embed_dim, 7), name="new")
    real = os.replace

    def replace(src, dst):
        real(src, dst)
        if Path(dst).name == f".m1.{stage}":
            os.kill(os.getpid(), signal.SIGKILL)  # no cleanup, no except clause, no atexit

    os.replace = replace
    save_model(model, "m1", models_dir=root, overwrite=True)
    print("not killed")
""")


def killed_save(models_dir: Path, stage: str) -> None:
    proc = subprocess.run([sys.executable, "-c", _KILLED_SAVE, str(models_dir), stage], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stdout + proc.stderr


def swap_folders(models_dir: Path) -> list[str]:
    """The model folder and any leftovers of its saves (other entries, such as runtime caches, left out)."""
    return sorted(p.name for p in models_dir.iterdir() if p.name == "m1" or p.name.startswith(".m1."))


def digest(folder: Path) -> str:
    return json.loads((folder / "config.json").read_text())[DIGEST_KEY]


def test_save_killed_between_the_renames_is_finished_by_the_next_load(models_dir, capsys):
    target = save_model(classifier(), "m1")
    old = digest(target)
    killed_save(models_dir, "old")  # the old model moved aside, the new one not yet in place
    assert not target.exists() and (models_dir / ".m1.old").is_dir() and (models_dir / ".m1.new").is_dir()
    assert load_model("m1").name == "m1"  # finished: the complete new model is moved in
    assert digest(target) != old
    assert swap_folders(models_dir) == ["m1"]
    killed_save(models_dir, "old")
    code, out, _ = cli(capsys, "models")  # `models` recovers too
    assert code == 0 and out.split()[0] == "m1" and "unusable" not in out
    assert swap_folders(models_dir) == ["m1"]


def test_save_killed_without_a_complete_new_folder_is_rolled_back(models_dir):
    target = save_model(classifier(), "m1")
    old = digest(target)
    killed_save(models_dir, "old")
    shutil.rmtree(models_dir / ".m1.new")  # nothing complete to finish with: roll back
    assert [m.name for m in list_models(include_zero_shot=False)] == ["m1"]
    assert digest(target) == old and swap_folders(models_dir) == ["m1"]
    load_model("m1")


def test_save_killed_before_the_swap_keeps_the_old_model(models_dir):
    target = save_model(classifier(), "m1")
    old = digest(target)
    killed_save(models_dir, "new")  # the new folder complete, the old model still in place
    load_model("m1")
    assert digest(target) == old and swap_folders(models_dir) == ["m1"]
    save_model(classifier(2), "m1", overwrite=True)  # a later save works as usual
    assert digest(target) != old and swap_folders(models_dir) == ["m1"]


def test_save_failing_between_the_renames_puts_the_old_model_back(models_dir, monkeypatch):
    import fer_app.model as model

    target = save_model(classifier(), "m1")
    old = digest(target)
    real, failed = os.replace, []

    def replace(src, dst):
        if Path(dst) == target and not failed:  # the new model into place: fails once
            failed.append(dst)
            raise OSError(28, "No space left on device")
        real(src, dst)

    monkeypatch.setattr(model.os, "replace", replace)
    with pytest.raises(OSError, match="No space left"):
        save_model(classifier(1), "m1", overwrite=True)
    monkeypatch.setattr(model.os, "replace", real)
    assert digest(target) == old and swap_folders(models_dir) == ["m1"]
    load_model("m1")


# ---------------------------------------------------------------- 8. the smaller items


def test_saved_model_folder_is_created_like_the_bundled_one(models_dir):
    umask = os.umask(0o022)
    try:
        path = save_model(classifier(), "m1")
    finally:
        os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o755  # was 0700 (tempfile.mkdtemp)
    assert {(p.stat().st_mode & 0o777) for p in path.iterdir()} == {0o644}


@pytest.mark.parametrize("command", ["predict", "video"])
@pytest.mark.parametrize("option", [("--min-neighbors", "-1"), ("--scale-factor", "1"), ("--scale-factor", "nan"),
                                    ("--detection-width", "0"), ("--min-face", "0"), ("--min-face", "big")])
def test_invalid_detector_options_are_usage_errors(capsys, command, option):
    with pytest.raises(SystemExit) as exc:
        main([command, "x", *option])
    assert exc.value.code == 2
    assert f"argument {option[0]}" in capsys.readouterr().err


def test_evaluate_reports_rows_skipped_in_splits_not_evaluated(models_dir, tmp_path, capsys):
    from conftest import make_faces
    from test_cli import write_fer2013_csv

    save_model(classifier(), "m1")
    data = write_fer2013_csv(tmp_path / "fer2013.csv", {"train": make_faces(2, 5), "test": make_faces(2, 6)})
    with open(data, "a") as f:
        f.write("3,1 2 3,Training\n9," + " ".join(["0"] * 2304) + ",Training\n")
    code, out, err = cli(capsys, "evaluate", str(data), "--split", "PrivateTest", "--on-error", "skip", "--json",
                         "--model", "m1")
    assert code == 0 and json.loads(out)["skipped_rows_other_splits"] == {"train": 2}
    assert "bad rows skipped in splits not evaluated: train 2" in err


def test_boxes_of_a_downscaled_photo_are_in_the_files_pixels(models_dir, tmp_path, capsys):
    save_model(classifier(), "m1")
    code, out, _ = cli(capsys, "predict", str(ASTRONAUT), "--model", "m1", "--json")
    small = json.loads(out)["results"][0]
    assert small["scale"] == 1 and len(small["faces"]) == 1
    big = Image.new("RGB", (6000, 3000), (90, 90, 90))
    big.paste(Image.open(ASTRONAUT).convert("RGB").resize((1500, 1500)), (3000, 1000))
    big.save(tmp_path / "big.jpg", quality=90)
    code, out, _ = cli(capsys, "predict", str(tmp_path / "big.jpg"), "--model", "m1", "--json")
    res = json.loads(out)["results"][0]
    assert code == 0 and (res["width"], res["height"]) == (6000, 3000) and res["scale"] == pytest.approx(4096 / 6000)
    (x, y, w, h), (x0, y0, w0, h0) = res["faces"][0]["box"], small["faces"][0]["box"]
    k = 1500 / 512  # where the astronaut's face is in the big file's own pixels
    assert abs(x + w / 2 - (3000 + k * (x0 + w0 / 2))) < 0.1 * k * w0
    assert abs(y + h / 2 - (1000 + k * (y0 + h0 / 2))) < 0.1 * k * h0
    assert 0.8 < w / (k * w0) < 1.25
