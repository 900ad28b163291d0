"""The Training page under AppTest, end to end on tiny generated data: preview -> train -> results -> save.

Training runs in the server's background job (fer_app.jobs), so the tests rerun the page until the
job has ended, as the page's polling fragment does in a browser. Tiny networks come from the page's
own settings (channels 8, 16; one convolution per stage).
"""

from __future__ import annotations

import io
import json
import math
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from conftest import make_faces
from streamlit.testing.v1 import AppTest
from test_calibration import synthetic_frame
from test_cli import write_fer2013_csv
from test_mixing import layout_files, png

from fer_app import config
from fer_app.calibration import CalibrationSession, CaptureRecorder, CaptureScheduler
from fer_app.config import CLASSES
from fer_app.jobs import STOPPED, current_job, find_checkpoint
from fer_app.model import list_models
from fer_app.types import Face

PAGE = Path(__file__).resolve().parent.parent / "fer_app" / "ui" / "train.py"
TIMEOUT = 600  # seconds per AppTest run (AppTest's default is 3): the first run imports torch; busy machines
WAIT = 1800  # seconds for a background job to end


pytestmark = pytest.mark.usefixtures("no_job_left")


@pytest.fixture()
def fer_csv(tmp_path: Path) -> Path:
    return write_fer2013_csv(tmp_path / "fer2013.csv", {"train": make_faces(12, 1), "val": make_faces(4, 2)})


def page() -> AppTest:
    at = AppTest.from_file(str(PAGE), default_timeout=TIMEOUT)
    return run(at)


def run(at: AppTest) -> AppTest:
    at.run()
    assert not at.exception, at.exception
    return at


def texts(at: AppTest) -> str:
    return "\n".join(str(e.value) for kind in ("subheader", "caption", "markdown", "info", "error", "warning",
                                               "success")
                     for e in at.get(kind))


def tiny_settings(at: AppTest, *, epochs: int = 2, run_name: str = "ui-run") -> AppTest:
    if not at.text_input(key="set-widths").disabled:  # a compact CNN from scratch
        at.text_input(key="set-widths").set_value("8, 16")
        at.text_input(key="set-convs").set_value("1, 1")
    at.number_input(key="set-epochs").set_value(epochs)
    at.number_input(key="set-batch").set_value(16)
    at.number_input(key="set-threads").set_value(1)
    if not at.checkbox(key="set-augment").disabled:
        at.checkbox(key="set-augment").set_value(False)
    at.text_input(key="run-name").set_value(run_name)
    return run(at)


def with_data(at: AppTest, path: Path) -> AppTest:
    at.text_input(key="data-path").set_value(str(path))
    return run(at)


def until_done(at: AppTest) -> AppTest:
    """Wait for the job to end, then rerun the page: the results (as the page's polling fragment would)."""
    job = current_job()
    if job is not None:
        assert not job.wait(WAIT).running, "the job did not end in time"
    return run(at)


def start(at: AppTest) -> AppTest:
    assert not at.button(key="start").disabled, texts(at)
    at.button(key="start").click()
    return run(at)


def table_with(at: AppTest, column: str):
    """The first table shown with `column`."""
    return next(df.value for df in at.dataframe if column in df.value.columns)


def listed(at: AppTest, name: str) -> bool:
    """Whether the sidebar's model picker offers `name` (its labels add the val accuracy)."""
    return any(option.split(" (")[0] == name for option in at.sidebar.selectbox(key="model").options)


def zip_of(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, data in files.items():
            z.writestr(name, data)
    return buf.getvalue()


# ---------------------------------------------------------------- end to end


def test_preview_train_compare_save_and_listed(tiny_model, fer_csv):
    at = with_data(page(), fer_csv)
    counts = table_with(at, "train")
    assert list(counts.index) == list(CLASSES) and counts.loc["happy", "train"] == 12
    assert counts.loc["happy", "val"] == 4 and at.image  # the table, and the sample grid
    assert "fewer than 20 faces" in texts(at) and "Device in use: CPU" in texts(at)
    at = start(tiny_settings(at))
    at = until_done(at)
    assert "finished after 2 epochs" in at.success[0].value
    accuracy = at.metric[0]
    assert accuracy.label == "Val accuracy" and "vs tiny" in accuracy.delta  # against the model in use
    assert "The model in use, tiny, on the same val split" in texts(at)
    per_class = table_with(at, "f1")
    assert set(per_class.index) == set(CLASSES) and "f1" in per_class.columns
    assert len(at.image) >= 2  # the sample grid and the confusion matrix
    assert "ui-model" not in [m.name for m in list_models()]  # nothing saved until asked

    at.text_input(key="save-name").set_value("tiny")
    run(at)
    assert "A model named 'tiny' exists" in texts(at) and at.button(key="save").disabled
    at.text_input(key="save-name").set_value("ui-model")
    run(at)
    at.button(key="save").click()
    run(at)
    assert "Saved as **ui-model**" in texts(at)
    assert "ui-model" in [m.name for m in list_models()]
    assert listed(at, "ui-model")  # the pickers list it at once
    card = (config.MODELS_DIR / "ui-model" / "README.md").read_text()
    assert "python -m fer_app train" in card and "--widths 8 16" in card and "--name ui-model" in card


def test_clip_head_on_frozen_embeddings(models_dir, fer_csv, tiny_clip_dir, monkeypatch):
    monkeypatch.setattr(config, "CLIP_LOCAL_DIR", tiny_clip_dir)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    at = with_data(page(), fer_csv)
    at.radio(key="model-what-scratch").set_value("CLIP ViT-B/32: head on frozen embeddings")
    run(at)
    assert at.checkbox(key="set-augment").disabled  # no augmentation on cached embeddings
    at = start(tiny_settings(at, run_name="clip-run"))
    at = until_done(at)
    assert "finished after 2 epochs" in at.success[0].value, texts(at)
    at.text_input(key="save-name").set_value("clip-head")
    run(at)
    at.button(key="save").click()
    run(at)
    saved = {m.name: m for m in list_models()}
    assert saved["clip-head"].encoder == "clip-vit-b32"
    assert listed(at, "clip-head")


def test_clip_full_fine_tune_on_the_cpu(models_dir, fer_csv, tiny_clip_dir, monkeypatch):
    monkeypatch.setattr(config, "CLIP_LOCAL_DIR", tiny_clip_dir)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    at = with_data(page(), fer_csv)
    assert "CLIP ViT-B/32: full fine-tune" in at.radio(key="model-what-scratch").options
    assert "no GPU here" not in texts(at)  # the warning comes with the choice
    at.radio(key="model-what-scratch").set_value("CLIP ViT-B/32: full fine-tune")
    run(at)
    assert "CLIP ViT-B/32: full fine-tune: no GPU here" in texts(at) and "hours per epoch" in texts(at)
    assert not at.checkbox(key="set-augment").disabled and at.text_input(key="set-widths").disabled
    assert at.selectbox(key="set-optimizer-full-clip").value == "adamw"
    assert at.number_input(key="set-lr-adamw-clip").value == pytest.approx(1e-4)  # CLIP's encoder: a tenth
    at = tiny_settings(at, epochs=1, run_name="clip-full")
    assert "--encoder clip-vit-b32" in at.code[0].value and "--optimizer adamw" in at.code[0].value
    at = until_done(start(at))
    assert "finished after 1 epochs" in at.success[0].value, texts(at)
    at.text_input(key="save-name").set_value("clip-full")
    run(at)
    at.button(key="save").click()
    run(at)
    saved = config.MODELS_DIR / "clip-full"
    assert json.loads((saved / "config.json").read_text())["encoder"]["fine_tuned"] is True
    assert listed(at, "clip-full")


def test_reload_shows_the_running_job_second_start_refused_stop_keeps_best(models_dir, fer_csv):
    first = start(tiny_settings(with_data(page(), fer_csv), epochs=500, run_name="long-run"))
    assert current_job() is not None and current_job().running
    while not current_job().status().history:
        time.sleep(0.1)
    reloaded = page()  # a new session: the job lives in the server process
    assert "Running: training long-run" in texts(reloaded)
    assert any(p.text.startswith("Epoch") for p in reloaded.get("progress"))
    reloaded = start(tiny_settings(with_data(reloaded, fer_csv), run_name="another"))
    assert "a job is already running (training long-run)" in texts(reloaded)
    reloaded.button(key="job-stop").click()
    run(reloaded)
    assert current_job().status().stop_requested
    reloaded = until_done(reloaded)
    assert "stopped early" in reloaded.success[0].value
    assert current_job().status().state == STOPPED
    first = until_done(first)
    assert "stopped early" in first.success[0].value
    first.button(key="job-dismiss").click()
    run(first)
    assert current_job() is None and "Running" not in texts(first)


# ---------------------------------------------------------------- bad inputs: a clear message, nothing lost


def test_diverging_run_fails_clearly_and_keeps_the_model_in_use(tiny_model, fer_csv):
    before = (tiny_model / "model.safetensors").read_bytes()
    at = tiny_settings(with_data(page(), fer_csv))
    at.number_input(key="set-lr-sgd").set_value(1e12)
    at = until_done(start(run(at)))
    assert "failed: training diverged" in at.error[0].value and "Nothing was saved" in texts(at)
    assert (tiny_model / "model.safetensors").read_bytes() == before
    assert [m.name for m in list_models()] == ["tiny"]


def test_killed_run_resumes_from_its_checkpoint(models_dir, fer_csv):
    at = start(tiny_settings(with_data(page(), fer_csv), epochs=4, run_name="cut"))
    while not current_job().status().history:
        time.sleep(0.05)
    current_job().stop()  # as if the server had been killed after epoch 1
    at = until_done(at)
    at.button(key="job-dismiss").click()
    run(at)
    checkpoint = find_checkpoint("cut")
    assert checkpoint is not None and checkpoint.epoch >= 1
    assert f"checkpoint at epoch {checkpoint.epoch}/4" in texts(at)
    at.checkbox(key="run-resume").set_value(True)
    at = until_done(start(run(at)))
    assert "finished after 4 epochs" in at.success[0].value
    assert [h.epoch for h in current_job().status().result.history] == [1, 2, 3, 4]


@pytest.mark.parametrize(("files", "message"), [
    ({"pictures/a.png": b"x", "notes.txt": b"x"}, "not the folder layout"),
    ({"../evil.png": b"x", "train/happy/1.png": b"x"}, "leaves its folder"),
])
def test_bad_zip_uploads(models_dir, files, message, tmp_path):
    at = page()
    at.multiselect(key="data-kinds").set_value(["Uploaded zip"])
    run(at)
    at.file_uploader(key="data-zip").upload("faces.zip", zip_of(files), "application/zip")
    run(at)
    assert message in texts(at) and at.button(key="start").disabled
    assert not (tmp_path / "evil.png").exists()


def test_zip_upload_with_unknown_class_folders(models_dir):
    faces = make_faces(3, 1)
    files = {**layout_files(faces, "fer/train/"), "fer/train/contempt/1.png": png(faces.images[0])}
    at = page()
    at.multiselect(key="data-kinds").set_value(["Uploaded zip"])
    run(at)
    at.file_uploader(key="data-zip").upload("faces.zip", zip_of(files), "application/zip")
    run(at)
    assert "bad rows or files were skipped" in texts(at) and "unknown class folder 'contempt'" in texts(at)
    assert not at.button(key="start").disabled  # skipping is allowed; with "stop" it is an error
    at.radio(key="data-on-error").set_value("stop")
    run(at)
    assert "The data cannot be used" in texts(at) and "contempt" in texts(at) and at.button(key="start").disabled


def test_csv_with_bad_rows_empty_classes_and_too_small(models_dir, tmp_path):
    faces = make_faces(4, 1)
    no_disgust = faces.labels != CLASSES.index("disgust")
    faces.images, faces.labels = faces.images[no_disgust], faces.labels[no_disgust]
    csv = write_fer2013_csv(tmp_path / "fer2013.csv", {"train": faces})
    with open(csv, "a") as f:
        f.write("3,1 2 3,Training\n")
    at = with_data(page(), csv)
    assert "no faces of disgust" in texts(at) and "1 bad rows or files were skipped" in texts(at)
    assert "pixels has 3 values" in at.code[0].value  # the first skipped lines
    at.radio(key="data-on-error").set_value("stop")
    run(at)
    assert "line 26" in texts(at) and at.button(key="start").disabled
    tiny = write_fer2013_csv(tmp_path / "small.csv", {"train": make_faces(1, 1)})
    at = with_data(at, tiny)
    assert "too few faces to split off a validation set" in texts(at) and at.button(key="start").disabled
    at = with_data(at, tmp_path / "missing.csv")
    assert "no such file" in texts(at)


# ---------------------------------------------------------------- calibration


def calibration_tab(at: AppTest) -> AppTest:
    at.radio(key="train-tab").set_value("Calibration")
    return run(at)


def test_calibration_review_delete_and_calibrate(tiny_model):
    session = CalibrationSession("ivy", per_class=4)
    recorder = CaptureRecorder(session, CaptureScheduler(per_class=4, countdown=0.5, interval=0.1))
    box, t, faces = Face(100, 60, 100, 100), 0.0, make_faces(4, 9)
    while (label := recorder.scheduler.current()) is not None:  # the capture path, on synthetic frames
        index = np.flatnonzero(faces.labels == CLASSES.index(label))[recorder.scheduler.counts()[label]]
        recorder.on_frame(synthetic_frame(faces.images[index], box), [box], now=t)
        t += 0.05
    assert session.counts() == {c: 4 for c in CLASSES}
    at = calibration_tab(page())
    assert "angry: 4 captures" in [e.label for e in at.expander]
    first = session.list("angry")[0]
    at.button(key=f"delete-angry-{first.name}").click()
    run(at)
    assert not first.exists() and "angry: 3 captures" in [e.label for e in at.expander]
    # the section stays open after a Delete, and Undo puts the capture back
    assert next(e for e in at.expander if e.label == "angry: 3 captures").proto.expanded
    assert any("Deleted a angry capture" in i.value for i in at.info)
    at.button(key="cal-undo-button").click()
    run(at)
    assert first.exists() and "angry: 4 captures" in [e.label for e in at.expander]
    at.button(key=f"delete-angry-{first.name}").click()
    run(at)
    assert "the default, measured on compact-fer2013" in texts(at)  # which protection is used, without FER-2013
    at.button(key="cal-start").click()
    at = until_done(run(at))
    assert at.radio(key="train-tab").value == "Calibration"  # the page stays where it was
    assert "saved as **tiny-calibrated-ivy**" in at.success[0].value
    assert at.metric[0].label.startswith("Your latest captures (held out)")
    assert "Held out by capture time" in texts(at) and "Protection of the base model" in texts(at)
    assert "tiny-calibrated-ivy" in [m.name for m in list_models()]
    # the model picker says what each figure is measured on
    options = at.sidebar.selectbox(key="model").options
    assert any(o.startswith("tiny-calibrated-ivy (your held-out captures ") for o in options), options
    assert not any("val acc" in o for o in options)
    # Dismiss: the figures stay with the model (its card and the Calibration tab)
    at.button(key="job-dismiss").click()
    run(at)
    at.sidebar.selectbox(key="model").set_value("tiny-calibrated-ivy")
    run(at)
    assert "is a calibrated model" in texts(at) and at.metric[0].label.startswith("Your latest captures")
    card = (config.MODELS_DIR / "tiny-calibrated-ivy" / "README.md").read_text()
    assert "## Personal calibration" in card


# ---------------------------------------------------------------- what a person reads: reasons, placeholders, numbers


def test_start_button_says_why_it_is_disabled(models_dir, tmp_path):
    at = page()
    path = at.text_input(key="data-path")
    assert path.value == "" and path.proto.placeholder.startswith("Type a path")  # not a filled-in look
    assert at.button(key="start").disabled
    reason = "To start training, choose the data under 1. Data"
    assert reason in texts(at) and at.button(key="start").proto.help.startswith(reason)
    at = with_data(at, tmp_path / "missing.csv")
    assert "the data under 1. Data cannot be used" in texts(at)
    at.text_input(key="set-widths").set_value("eight")
    at.text_input(key="run-name").set_value("")
    run(at)
    assert "cannot be used (see its message); fix the settings under 2. Model; give the run a valid name." in texts(at)


class FakeJob:
    """Stands in for the server's job: the page only reads `status()`."""

    def __init__(self, status):
        self._status = status

    def status(self):
        return self._status

    def stop(self):
        pass


def fake_status(**fields):
    from fer_app.jobs import RUNNING, JobStatus

    defaults = dict(kind="train", title="training ui-run", run_name="ui-run", state=RUNNING, phase="start", epoch=0,
                    epochs=2, step=0, steps=1, fraction=0.0, eta=math.inf, elapsed=1.0, loss=math.nan, lr=0.0,
                    history=(), stop_requested=False, error=None, result=None, baseline_name=None, baseline=None,
                    baseline_error=None, saved_to=None)
    return JobStatus(**{**defaults, **fields})


def test_job_numbers_are_for_people(models_dir, monkeypatch):
    """Starting: no "0.00e+00" learning rate; training: "0.0003"; results: a change of +0.0% has no arrow nor
    colour; support counts are whole numbers; precision, recall and F1 are percentages."""
    from types import SimpleNamespace

    from fer_app import jobs

    status = fake_status()
    monkeypatch.setattr(jobs, "current_job", lambda: FakeJob(status))
    metrics = {m.label: m.value for m in page().metric}
    assert metrics["Learning rate"] == "–" and metrics["Batch loss"] == "–"
    status = fake_status(phase="train", step=1, steps=10, epoch=1, lr=3e-4, loss=1.5, fraction=0.05, eta=30.0)
    metrics = {m.label: m.value for m in page().metric}
    assert metrics["Learning rate"] == "0.0003" and metrics["Batch loss"] == "1.500"

    per_class = {c: {"precision": 0.5, "recall": 0.25, "f1": 1 / 3, "support": 2.0} for c in CLASSES}
    report = {"accuracy": 0.5, "macro_f1": 0.4, "per_class": per_class, "confusion": np.eye(7, dtype=int).tolist()}
    result = SimpleNamespace(report=report, history=[], stopped_early=False, seconds=5.0, device="cpu")
    status = fake_status(state=jobs.FINISHED, phase="done", result=result, baseline_name="tiny",
                         baseline={**report, "macro_f1": 0.3})
    at = page()
    same, better = at.metric[0], at.metric[1]
    assert same.label == "Val accuracy" and same.delta == "±0.0% vs tiny"
    assert same.proto.color == same.proto.MetricColor.GRAY and same.proto.direction == same.proto.MetricDirection.NONE
    assert better.delta == "+10.0% vs tiny" and better.proto.color == better.proto.MetricColor.GREEN
    table = table_with(at, "support")
    assert table["support"].dtype.kind == "i" and list(table["support"]) == [2] * 7
    formats = {name: c.get("type_config", {}).get("format") for name, c in json.loads(
        next(df for df in at.dataframe if "support" in df.value.columns).proto.columns).items()}
    assert formats["precision"] == formats["recall"] == formats["f1"] == "percent"


def test_calibration_job_says_what_it_is_doing_with_an_honest_eta(models_dir, monkeypatch):
    """Starting shows time passing; each phase its own progress; the ETA comes from the phase's own pace
    (not from the time spent loading), e.g. the FER-2013 check."""
    from fer_app import jobs

    status = fake_status(kind="calibrate", title="calibrating tiny on ivy", phase="start", elapsed=14.0)
    monkeypatch.setattr(jobs, "current_job", lambda: FakeJob(status))
    progress = page().get("progress")[0]
    assert "Starting (loading torch and the model; 14 s so far)" in progress.proto.text
    status = fake_status(kind="calibrate", phase="fer-check", step=900, steps=3589, fraction=900 / 3589, eta=95.0,
                         elapsed=300.0)
    text = page().get("progress")[0].proto.text
    assert "Checking on FER-2013 val" in text and "(900/3589)" in text and "about 1 min 35 s left" in text
