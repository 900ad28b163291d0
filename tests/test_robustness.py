"""fer_app.robustness: faces pasted into real scenes, found by the detector, cropped and scored."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from fer_app.cli import main
from fer_app.config import CLASSES
from fer_app.data import FaceSet
from fer_app.detection import FaceDetector
from fer_app.evaluate import evaluate
from fer_app.imageio import load_image
from fer_app.model import load_model
from fer_app.robustness import (
    RobustnessError,
    _feather,
    format_recrop,
    haar_views,
    paste_scene,
    real_backgrounds,
    recrop_report,
)
from fer_app.runtimes import astronaut_crops

ASSETS = Path(__file__).resolve().parent.parent / "assets"


def _background() -> np.ndarray:
    """A real photo with texture: the astronaut picture, its face covered by a flat patch."""
    image = load_image(ASSETS / "astronaut.png").copy()
    face = FaceDetector().detect(image)[0]
    image[face.y:face.y + face.h, face.x:face.x + face.w] = 90
    return image


@pytest.fixture(scope="module")
def real_faces() -> FaceSet:
    """Twelve 48x48 grey faces framed as FER-2013 frames them: the astronaut's, with margin, at 3 gains."""
    crops = [c for i, c in enumerate(astronaut_crops()) if i >= 30 and i % 2 == 0][:12]
    images = np.stack([cv2.resize(cv2.cvtColor(c, cv2.COLOR_BGR2GRAY), (48, 48), interpolation=cv2.INTER_AREA)
                       for c in crops])
    return FaceSet(images=images, labels=np.arange(len(images)) % len(CLASSES), source="astronaut")


def test_feather_is_one_inside_and_fades_to_the_edges():
    alpha = _feather(100)[..., 0]  # FEATHER 4%: a 4 px seam on a 100 px face
    assert alpha.shape == (100, 100) and alpha[50, 50] == 1.0 and alpha[4:96, 4:96].min() == 1.0
    assert alpha[0, 50] < 0.2 and alpha[0, 0] < alpha[0, 50] and np.allclose(alpha, alpha[::-1, ::-1])
    assert alpha[3, 50] < 1.0


def test_paste_scene_puts_the_face_in_its_box(real_faces: FaceSet):
    rng = np.random.default_rng(3)
    scene, box = paste_scene(real_faces.images[0], _background(), rng, size=(640, 360))
    assert scene.shape == (360, 640, 3) and scene.dtype == np.uint8
    assert 100 <= box.w == box.h <= 220 and box.x + box.w <= 640 and box.y + box.h <= 360
    inner = scene[box.y + box.h // 4:box.y + 3 * box.h // 4, box.x + box.w // 4:box.x + 3 * box.w // 4]
    face = cv2.resize(real_faces.images[0], (box.w, box.h), interpolation=cv2.INTER_CUBIC)
    expected = face[box.h // 4:3 * box.h // 4, box.w // 4:3 * box.w // 4]
    assert np.abs(inner.astype(int) - expected[..., None]).max() <= 1  # the face itself, grey in all channels
    again, same = paste_scene(real_faces.images[0], _background(), np.random.default_rng(3), size=(640, 360))
    assert same == box and np.array_equal(again, scene)


class _Recorder:
    """A stand-in classifier: records the crops it gets and calls each face its label in `truth`."""

    classes = CLASSES

    def __init__(self) -> None:
        self.calls: list[list[np.ndarray]] = []

    def predict_proba(self, crops):
        self.calls.append([np.asarray(c) for c in crops])
        return np.tile(np.eye(len(CLASSES), dtype=np.float32)[3], (len(crops), 1))  # always "happy"


def test_recrop_report_crops_the_found_box_with_each_margin(real_faces: FaceSet):
    model = _Recorder()
    report = recrop_report(model, real_faces, backgrounds=[_background()], margins=(0.0, 0.3), seed=1)
    assert report.faces == 12 and 9 <= report.found <= 12  # a frontal face on a real photo: found nearly always
    cropped, given = model.calls[0:2], model.calls[2]
    tight, wide = cropped
    assert len(tight) == len(wide) == len(given) == report.found
    assert all(g.shape == (48, 48) for g in given)
    for a, b in zip(tight, wide):  # the same box, 1.6x the side with margin 0.3 (unless at the scene's edge)
        assert b.shape[0] <= round(a.shape[0] * 1.6) + 1 and b.shape[0] >= a.shape[0]
        assert 60 <= a.shape[0] <= 230 and a.ndim == 3
    assert [r.margin for r in report.rows] == [None, 0.0, 0.3]
    happy = [i for i in range(12) if real_faces.labels[i] == 3]
    for row in report.rows:  # "happy" for everything: right exactly on the found happy faces
        assert row.recall["happy"] == 1.0 and row.recall["angry"] == 0.0
        assert 0 < row.accuracy <= round(len(happy) / report.found, 4)
    assert report.best_margin() == 0.0  # a tie goes to the smaller margin


def test_recrop_report_with_a_model_matches_evaluate_on_the_faces_as_given(tiny_model: Path, real_faces: FaceSet):
    model = load_model(tiny_model, runtime="torch")
    report = recrop_report(model, real_faces, backgrounds=[_background()], margins=(0.1,), seed=2)
    assert report.found == 12 or report.found >= 9
    assert report.rows[0].framing.startswith("as given") and report.rows[1].margin == 0.1
    if report.found == len(real_faces):
        assert report.rows[0].accuracy == pytest.approx(evaluate(model, real_faces)["accuracy"], abs=1e-4)
    again = recrop_report(model, real_faces, backgrounds=[_background()], margins=(0.1,), seed=2)
    assert again.to_dict() == report.to_dict()  # deterministic for a seed
    text = format_recrop(report)
    assert "Haar box + margin 0.1" in text and "as given" in text and "fear" in text


def test_recrop_report_refuses_what_it_cannot_measure(real_faces: FaceSet):
    with pytest.raises(RobustnessError, match="background"):
        recrop_report(_Recorder(), real_faces, backgrounds=[])
    with pytest.raises(RobustnessError, match="margins"):
        recrop_report(_Recorder(), real_faces, backgrounds=[_background()], margins=(-0.5,))
    with pytest.raises(RobustnessError, match="faces"):
        recrop_report(_Recorder(), FaceSet(images=np.zeros((0, 48, 48), np.uint8), labels=np.zeros(0, np.int64)),
                      backgrounds=[_background()])


def test_a_face_that_is_not_found_is_not_scored():
    flat = FaceSet(images=np.full((3, 48, 48), 128, np.uint8), labels=np.array([0, 1, 2]))
    report = recrop_report(_Recorder(), flat, backgrounds=[np.full((360, 640, 3), 128, np.uint8)])
    assert report.found == 0 and report.rows == [] and "nothing to score" in format_recrop(report)


def test_real_backgrounds_reads_photos_and_video_frames(tmp_path: Path):
    (tmp_path / "photos" / "set").mkdir(parents=True)
    (tmp_path / "videos").mkdir()
    cv2.imwrite(str(tmp_path / "photos" / "set" / "a.jpg"), _background())
    writer = cv2.VideoWriter(str(tmp_path / "videos" / "v.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), 10, (64, 48))
    for i in range(10):
        writer.write(np.full((48, 64, 3), 20 * i, np.uint8))
    writer.release()
    found = real_backgrounds(tmp_path, frames_per_video=3)
    assert len(found) == 4 and found[0].shape[2] == 3 and found[-1].shape == (48, 64, 3)
    assert real_backgrounds(tmp_path / "missing") == []


def test_cli_robustness(capsys, tiny_model: Path, tmp_path: Path, real_faces: FaceSet, monkeypatch):
    import fer_app.robustness as robustness
    from test_cli import write_fer2013_csv

    monkeypatch.setattr(robustness, "real_backgrounds", lambda: [_background()])
    data = write_fer2013_csv(tmp_path / "fer2013.csv", {"val": real_faces})
    assert main(["robustness", str(data), "--model", str(tiny_model), "--count", "6", "--margins", "0.1", "0.2",
                 "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["faces"] == 6 and [r["margin"] for r in report["rows"]][1:] == [0.1, 0.2]
    assert main(["robustness", str(data), "--model", str(tiny_model), "--count", "6", "--margins", "0",
                 "--roll", "10", "--align", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["roll"] == 10 and [r["aligned"] for r in report["rows"]] == [False, False, True]
    assert main(["robustness", str(data), "--model", str(tiny_model), "--split", "train"]) == 1
    assert "train" in capsys.readouterr().err


def test_paste_scene_turns_the_face_by_the_roll(real_faces: FaceSet):
    upright, box = paste_scene(real_faces.images[0], _background(), np.random.default_rng(3))
    turned, same = paste_scene(real_faces.images[0], _background(), np.random.default_rng(3), roll=15)
    assert same == box  # the same place and size: only the face inside turns
    inner = (slice(box.y + box.h // 4, box.y + 3 * box.h // 4), slice(box.x + box.w // 4, box.x + 3 * box.w // 4))
    assert np.abs(turned[inner].astype(int) - upright[inner]).mean() > 5
    big = cv2.resize(real_faces.images[0], (box.w, box.h), interpolation=cv2.INTER_CUBIC).astype(np.float32)
    turn = cv2.getRotationMatrix2D(((box.w - 1) / 2, (box.h - 1) / 2), 15, 1.0)
    expected = cv2.warpAffine(big, turn, (box.w, box.h), borderMode=cv2.BORDER_REPLICATE)
    centre = (slice(box.h // 4, 3 * box.h // 4), slice(box.w // 4, 3 * box.w // 4))
    assert np.abs(turned[inner][..., 0].astype(int) - expected[centre]).max() <= 1


def test_recrop_report_with_align_scores_each_margin_plain_and_levelled(real_faces: FaceSet):
    model = _Recorder()
    report = recrop_report(model, real_faces, backgrounds=[_background()], margins=(0.0, 0.2), seed=1, roll=20,
                           align=True)
    assert report.roll == 20 and 0.0 <= report.eyes_found <= 1.0
    assert [(r.margin, r.aligned) for r in report.rows] == [(None, False), (0.0, False), (0.2, False),
                                                            (0.0, True), (0.2, True)]
    assert report.rows[3].framing == "Haar box + margin 0, eyes level"
    plain, levelled = model.calls[0], model.calls[2]
    assert len(plain) == len(levelled) == report.found
    changed = sum(not np.array_equal(a, b) for a, b in zip(plain, levelled))
    assert changed == round(report.eyes_found * report.found) > 0  # faces turned up to 20 degrees: most levelled
    assert all(a.shape == b.shape for a, b in zip(plain, levelled))
    text = format_recrop(report)
    assert "turned by up to 20 degrees" in text and "eyes found and levelled" in text
    assert report.best_margin() == 0.0  # chosen among the plain crops


def test_recrop_report_without_roll_draws_the_scenes_it_always_drew(real_faces: FaceSet):
    a, b = _Recorder(), _Recorder()
    recrop_report(a, real_faces, backgrounds=[_background()], margins=(0.0,), seed=4)
    report = recrop_report(b, real_faces, backgrounds=[_background()], margins=(0.0,), seed=4, align=True)
    assert all(np.array_equal(x, y) for x, y in zip(a.calls[0], b.calls[0]))  # the plain crops are unchanged
    assert report.eyes_found is not None and report.roll == 0
    with pytest.raises(RobustnessError, match="roll"):
        recrop_report(_Recorder(), real_faces, backgrounds=[_background()], roll=-1)


def test_haar_views_are_the_found_faces_cut_from_their_haar_box(real_faces: FaceSet):
    background = _background()
    views, found = haar_views(real_faces, backgrounds=[background], seed=1)
    assert views.shape == real_faces.images.shape and views.dtype == np.uint8 and found.dtype == bool
    assert found.sum() >= 9  # the astronaut's frontal face on a real photo: found nearly always
    # the same scenes as the report's: the faces it finds are the faces found here
    model = _Recorder()
    report = recrop_report(model, real_faces, backgrounds=[background], margins=(0.0,), seed=1)
    assert report.found == found.sum()
    # and each view is the crop the report scores at margin 0, made grey and 48x48 as the model makes it
    scored = [cv2.resize(cv2.cvtColor(c, cv2.COLOR_BGR2GRAY), (48, 48), interpolation=cv2.INTER_AREA)
              for c in model.calls[0]]
    assert np.array_equal(np.stack(scored), views[found])
    assert not any(np.array_equal(v, g) for v, g in zip(views[found], real_faces.images[found]))
    again, found_again = haar_views(real_faces, backgrounds=[background], seed=1)
    assert np.array_equal(again, views) and np.array_equal(found_again, found)  # deterministic for a seed
    other, _ = haar_views(real_faces, backgrounds=[background], seed=2)
    assert not np.array_equal(other, views)


def test_a_face_that_is_not_found_keeps_its_own_image_as_its_view():
    flat = FaceSet(images=np.full((3, 48, 48), 128, np.uint8), labels=np.array([0, 1, 2]))
    seen = []
    views, found = haar_views(flat, backgrounds=[np.full((360, 640, 3), 128, np.uint8)],
                              progress=lambda done, total: seen.append((done, total)))
    assert not found.any() and np.array_equal(views, flat.images) and seen[-1] == (3, 3)
    with pytest.raises(RobustnessError, match="background"):
        haar_views(flat, backgrounds=[])
