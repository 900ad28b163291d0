"""fer_app.calibration: captures on disk, the capture scheduler on synthetic frames and times, calibrate()."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import make_faces

from fer_app.calibration import (
    CalibrationSession,
    CaptureRecorder,
    CaptureScheduler,
    calibrate,
    draw_capture_prompt,
    list_sessions,
    start_calibration,
)
from fer_app.cli import main
from fer_app.config import CLASSES
from fer_app.data import DataError, FaceSet, load_folders
from fer_app.detection import crop_faces
from fer_app.jobs import FINISHED, clear_job, current_job
from fer_app.model import ModelError, list_models, load_model
from fer_app.types import Face


def captures_of(session: CalibrationSession, faces: FaceSet, shift: int = 1) -> None:
    """Store `faces` as a person whose expression of class k looks like FER class k - shift."""
    for image, label in zip(faces.images, faces.labels):
        session.add(CLASSES[(int(label) + shift) % len(CLASSES)], image)


# ---------------------------------------------------------------- captures on disk


def test_session_add_list_count_delete(models_dir):
    session = CalibrationSession("alice", per_class=3)
    bgr = np.dstack([np.full((120, 90), v, np.uint8) for v in (10, 120, 240)])
    path = session.add("happy", bgr)
    assert path.parent == session.folder / "happy" and path.suffix == ".png"
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert image.shape == (48, 48) and image.dtype == np.uint8  # grey 48x48, as FER-2013
    session.add("happy", make_faces(1).images[0])
    assert session.counts()["happy"] == 2 and session.missing()["happy"] == 1 and session.missing()["sad"] == 3
    assert session.list("happy")[0] == path and session.list("fear") == []
    assert list_sessions() == ["alice"]
    with pytest.raises(ValueError, match="not a capture"):
        session.delete(session.folder.parent / "other" / "happy" / path.name)
    with pytest.raises(ValueError, match="not a capture"):
        session.delete(session.folder / "happy" / ".." / ".." / "x.png")
    session.delete(path)
    assert session.counts()["happy"] == 1
    with pytest.raises(ValueError, match="unknown emotion"):
        session.add("contempt", bgr)
    with pytest.raises(ValueError, match="non-empty uint8"):
        session.add("sad", np.zeros((0, 0), np.uint8))
    with pytest.raises(ValueError, match="not allowed"):
        CalibrationSession("../bob")
    # captures are an ordinary folder-layout data set
    assert load_folders(session.folder)["train"].class_counts()["happy"] == 1


# ---------------------------------------------------------------- the scheduler: pure logic


def test_scheduler_countdown_grabs_and_next_emotion():
    s = CaptureScheduler(["happy", "sad"], per_class=2, countdown=3.0, interval=0.5)
    step = s.tick(100.0, face=True)
    assert (step.label, step.grab, step.countdown) == ("happy", False, 3.0) and "Show HAPPY in 3" in step.message
    assert s.tick(101.2, face=True).message.endswith("in 2")
    grab = s.tick(103.0, face=True)
    assert grab.grab and grab.countdown == 0 and grab.have == 0 and grab.need == 2
    s.record("happy")
    assert not s.tick(103.2, face=True).grab  # within the interval
    assert not s.tick(103.6, face=False).grab  # no face: nothing to grab
    assert "no face" in s.tick(103.6, face=False).message
    assert s.tick(103.7, face=True).grab
    s.record("happy")
    step = s.tick(103.8, face=True)  # happy complete: sad starts with its own countdown
    assert step.label == "sad" and not step.grab and step.countdown == pytest.approx(3.0)
    s.skip()
    done = s.tick(104.0, face=True)
    assert done.done and done.label is None and not done.grab
    assert s.counts() == {"happy": 2, "sad": 0}


def test_scheduler_resumes_from_existing_counts():
    s = CaptureScheduler(per_class=5, counts={"angry": 5, "disgust": 2})
    assert s.current() == "disgust"
    with pytest.raises(ValueError, match="classes"):
        CaptureScheduler(["contempt"])


def synthetic_frame(face: np.ndarray, box: Face) -> np.ndarray:
    """A 320x240 BGR frame with a face image drawn into `box` (and a decoy smaller face)."""
    frame = np.full((240, 320, 3), 90, np.uint8)
    frame[box.y:box.y + box.h, box.x:box.x + box.w] = cv2.resize(face, (box.w, box.h))[..., None]
    return frame


def test_recorder_stores_crops_of_the_largest_face_per_the_schedule(models_dir):
    session = CalibrationSession("carol", per_class=3)
    recorder = CaptureRecorder(session, CaptureScheduler(["happy", "surprise"], per_class=3, countdown=1.0,
                                                         interval=0.25))
    faces = make_faces(1, 5)
    big, small = Face(100, 60, 120, 120), Face(10, 10, 40, 40)
    t, grabs = 0.0, []
    while (step := recorder.on_frame(synthetic_frame(faces.images[0], big), [small, big], now=t)).label:
        grabs.append(step.grab)
        if step.grab:
            assert step.have >= 1
        t += 0.1
        assert t < 60
    assert step.done and recorder.last_step() == step
    assert session.counts() == {**{c: 0 for c in CLASSES}, "happy": 3, "surprise": 3}
    assert sum(grabs) == 6 and 3.0 < t < 4.5  # two 1 s countdowns, then a grab every 0.25 s or so
    # the stored crop is the big face (a square box with a margin around it), not the decoy
    frame = synthetic_frame(faces.images[0], big)
    stored = cv2.imread(str(session.list("happy")[0]), cv2.IMREAD_GRAYSCALE)
    for box, same in ((big, True), (small, False)):
        crop = cv2.resize(cv2.cvtColor(crop_faces(frame, [box])[0], cv2.COLOR_BGR2GRAY), (48, 48),
                          interpolation=cv2.INTER_AREA)
        assert np.array_equal(stored, crop) == same
    frame = np.zeros((240, 320, 3), np.uint8)
    out = draw_capture_prompt(frame, recorder.on_frame(frame, [], now=t))
    assert out is frame and frame[:40].any()


def test_recorder_without_faces_never_grabs(models_dir):
    recorder = CaptureRecorder.for_session("dave", per_class=2, countdown=0.0)
    for i in range(20):
        assert not recorder.on_frame(np.zeros((100, 100, 3), np.uint8), [], now=i * 0.5).grab
    assert sum(recorder.session.counts().values()) == 0


# ---------------------------------------------------------------- calibrate


def test_calibrate_improves_held_out_accuracy_and_saves_a_new_model(tiny_model, tiny_splits):
    session = CalibrationSession("erin")
    captures_of(session, make_faces(8, 7))
    before_bytes = (tiny_model / "model.safetensors").read_bytes()
    result = calibrate(tiny_model, session.folder, user_weight=5.0, holdout=0.3, epochs=30, lr=0.05,
                       name="tiny-erin", threads=1)
    assert result.held_out == 7 * 2  # round(8 * 0.3) per class
    assert result.before["accuracy"] < 0.3  # the base model reads erin's faces as the neighbouring class
    assert result.after["accuracy"] > result.before["accuracy"] + 0.4
    assert result.saved_to.name == "tiny-erin" and "tiny-erin" in [m.name for m in list_models()]
    model = load_model("tiny-erin")
    assert model.meta["training"]["calibration"]["held_out"] == 14
    assert model.meta["training"]["config"]["mode"] == "head"
    assert (tiny_model / "model.safetensors").read_bytes() == before_bytes  # the base model is untouched
    with pytest.raises(ModelError, match="exists"):
        calibrate(tiny_model, session.folder, name="tiny-erin", epochs=1)
    with pytest.raises(ValueError, match="another name"):
        calibrate("tiny", session.folder, name="tiny", epochs=1)
    # with FER-2013 mixed in, it still trains (FER's train split, the captures x5)
    mixed = calibrate("tiny", session.folder, tiny_splits, epochs=2, name=None, threads=1)
    assert mixed.saved_to is None and len(mixed.training.history) == 2


def test_calibrate_needs_enough_captures(tiny_model):
    session = CalibrationSession("frank")
    with pytest.raises(DataError, match="no captures yet"):
        calibrate(tiny_model, session.folder)
    captures_of(session, make_faces(2, 1))
    with pytest.raises(DataError, match="too few captures.*need 3\\+ of each"):
        calibrate(tiny_model, session.folder)
    captures_of(session, make_faces(1, 2))
    with pytest.raises(DataError, match="hold out 60%"):
        calibrate(tiny_model, session.folder, holdout=0.6)


def test_calibration_as_a_background_job(tiny_model):
    session = CalibrationSession("gina")
    captures_of(session, make_faces(5, 3))
    try:
        job = start_calibration("tiny", session.folder, name="tiny-gina", epochs=3, threads=1)
        status = job.wait(1800)
        assert status.state == FINISHED, status.error
        assert status.kind == "calibrate" and status.result.saved_to.name == "tiny-gina"
        assert len(status.history) == 3
    finally:
        if current_job() is not None:
            current_job().wait(1800)
        clear_job()


def test_cli_calibrate(capsys, tiny_model):
    session = CalibrationSession("hugo")
    captures_of(session, make_faces(5, 4))
    code = main(["calibrate", "hugo", "--model", str(tiny_model), "--epochs", "2", "--threads", "1"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "held-out captures: 14" in out and "before (" in out and "after (tiny-calibrated-hugo)" in out
    card = (Path(out.strip().splitlines()[-1].removeprefix("saved to ")) / "README.md").read_text()
    assert "python -m fer_app calibrate hugo" in card
    code = main(["calibrate", "nobody", "--model", str(tiny_model)])
    assert code == 1 and "no captures yet" in capsys.readouterr().err
