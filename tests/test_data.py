"""Tests of fer_app.data: every test writes its own tiny data set under tmp_path."""

from __future__ import annotations

import csv
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from fer_app.config import CLASSES
from fer_app.data import (
    DataError,
    FaceSet,
    load_dataset,
    load_fer2013_csv,
    load_ferplus,
    load_folders,
    load_npz,
    pack_npz,
    split_for_validation,
    twins_in,
)

EXPORT_PY = Path(__file__).resolve().parents[2] / "shared/data/export.py"
FERPLUS_HEADER = ["Usage", "Image name", "neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear",
                  "contempt", "unknown", "NF"]
#: FER+ column order of FERPLUS_HEADER's votes -> index in our order (CLASSES, contempt, unknown, NF).
FERPLUS_FROM = [6, 3, 5, 4, 0, 1, 2, 7, 8, 9]


def faces(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 48, 48), dtype=np.uint8)


def pixels_text(image: np.ndarray) -> str:
    return " ".join(map(str, image.reshape(-1).tolist()))


def write_rows(path: Path, header: list[str], rows: list[list]) -> Path:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def write_fer2013(path: Path, images: np.ndarray, labels, usages) -> Path:
    rows = [[label, pixels_text(image), usage] for image, label, usage in zip(images, labels, usages)]
    return write_rows(path, ["emotion", "pixels", "Usage"], rows)


def ferplus_row(usage: str, ours: list[int], name: str = "fer.png") -> list:
    """A fer2013new.csv row from votes given in our order (7 classes, contempt, unknown, NF)."""
    return [usage, name] + [ours[j] for j in FERPLUS_FROM]


@pytest.fixture
def small_csv(tmp_path):
    """12 Training, 6 PublicTest, 3 PrivateTest rows."""
    usages = ["Training"] * 12 + ["PublicTest"] * 6 + ["PrivateTest"] * 3
    images = faces(len(usages))
    labels = [i % 7 for i in range(len(usages))]
    return write_fer2013(tmp_path / "fer2013.csv", images, labels, usages), images, np.array(labels)


# ----------------------------------------------------------------------------- fer2013.csv

def test_csv_by_split(small_csv):
    path, images, labels = small_csv
    out = load_fer2013_csv(path)
    assert list(out) == ["train", "val", "test"]
    assert [len(out[s]) for s in out] == [12, 6, 3]
    np.testing.assert_array_equal(out["val"].images, images[12:18])
    np.testing.assert_array_equal(out["val"].labels, labels[12:18])
    assert out["train"].images.dtype == np.uint8 and out["train"].labels.dtype == np.int64
    assert out["train"].skipped == 0


@pytest.mark.parametrize("wanted", [["train", "val"], ["Training", "publictest"], ("TRAIN", "VALIDATION")])
def test_csv_split_selection(small_csv, wanted):
    out = load_fer2013_csv(small_csv[0], splits=wanted)
    assert list(out) == ["train", "val"]


def test_csv_split_selection_errors(small_csv, tmp_path):
    with pytest.raises(DataError, match="unknown split"):
        load_fer2013_csv(small_csv[0], splits=["holdout"])
    only_train = write_fer2013(tmp_path / "t.csv", faces(3), [0, 1, 2], ["Training"] * 3)
    with pytest.raises(DataError, match="no usable faces in split.s. test"):
        load_fer2013_csv(only_train, splits=["test"])


def test_csv_without_usage_column_is_all_training(tmp_path):
    path = write_rows(tmp_path / "train.csv", ["emotion", "pixels"], [[3, pixels_text(f)] for f in faces(4)])
    out = load_fer2013_csv(path)
    assert list(out) == ["train"] and len(out["train"]) == 4


def test_csv_missing_header_column(tmp_path):
    path = write_rows(tmp_path / "bad.csv", ["emotion", "Usage"], [[1, "Training"]])
    with pytest.raises(DataError, match=r"bad\.csv.*missing column.*pixels"):
        load_fer2013_csv(path)


GOOD = pixels_text(faces(1, seed=5)[0])
BAD_ROWS = {
    "short pixels": (["3", " ".join(["7"] * 2303), "Training"], "2303 values"),
    "long pixels": (["3", " ".join(["7"] * 2305), "Training"], "2305 values"),
    "non-integer pixel": (["3", GOOD.replace(" ", " x ", 1), "Training"], "not an integer"),
    "float pixel": (["3", "1.5 " + GOOD.split(" ", 1)[1], "Training"], "not an integer"),
    "pixel > 255": (["3", "256 " + GOOD.split(" ", 1)[1], "Training"], "outside 0..255"),
    "negative pixel": (["3", "-1 " + GOOD.split(" ", 1)[1], "Training"], "outside 0..255"),
    "label 7": (["7", GOOD, "Training"], "not a label 0..6"),
    "label text": (["happy", GOOD, "Training"], "not an integer label"),
    "unknown usage": (["3", GOOD, "Holdout"], "unknown Usage"),
    "missing column": (["3", GOOD], "missing column"),
}


def csv_with_bad_row(tmp_path: Path, bad: list[str]) -> Path:
    """Four good Training rows with `bad` as the third data row (line 4 of the file)."""
    good = ["0", GOOD, "Training"]
    return write_rows(tmp_path / "fer2013.csv", ["emotion", "pixels", "Usage"], [good, good, bad, good, good])


@pytest.mark.parametrize("kind", BAD_ROWS)
def test_csv_bad_row_stops_with_file_and_line(tmp_path, kind):
    bad, what = BAD_ROWS[kind]
    with pytest.raises(DataError) as err:
        load_fer2013_csv(csv_with_bad_row(tmp_path, bad))
    assert "fer2013.csv line 4" in str(err.value)
    assert what in str(err.value)


@pytest.mark.parametrize("kind", BAD_ROWS)
def test_csv_bad_row_skipped_and_counted(tmp_path, kind):
    bad, what = BAD_ROWS[kind]
    out = load_fer2013_csv(csv_with_bad_row(tmp_path, bad), on_error="skip")
    assert len(out["train"]) == 4
    assert out["train"].skipped == 1
    assert what in out["train"].skip_reasons[0] and "line 4" in out["train"].skip_reasons[0]


def test_csv_skip_counts_per_split_and_keeps_five_reasons(tmp_path):
    good, bad = [GOOD, "1 2 3"]
    rows = [["0", good, "Training"]] * 3 + [["0", bad, "Training"]] * 7 + [["0", good, "PublicTest"],
                                                                            ["0", bad, "PublicTest"]]
    out = load_fer2013_csv(write_rows(tmp_path / "f.csv", ["emotion", "pixels", "Usage"], rows), on_error="skip")
    assert (len(out["train"]), out["train"].skipped, len(out["train"].skip_reasons)) == (3, 7, 5)
    assert (len(out["val"]), out["val"].skipped) == (1, 1)


def test_csv_all_rows_bad_is_an_error(tmp_path):
    path = write_rows(tmp_path / "f.csv", ["emotion", "pixels", "Usage"], [["0", "1 2", "Training"]] * 3)
    with pytest.raises(DataError, match="no usable faces.*3 bad"):
        load_fer2013_csv(path, on_error="skip")


def test_bad_on_error_value(small_csv):
    with pytest.raises(ValueError, match="on_error"):
        load_fer2013_csv(small_csv[0], on_error="ignore")


# ----------------------------------------------------------------------------- folders

def write_image(path: Path, image: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), image)


def test_folders_with_synonyms_and_case(tmp_path):
    images = faces(6)
    write_image(tmp_path / "train/Happy/a.png", images[0])
    write_image(tmp_path / "train/happiness/b.PNG", images[1])
    write_image(tmp_path / "train/ANGER/c.bmp", images[2])
    write_image(tmp_path / "train/Scared/d.png", images[3])
    write_image(tmp_path / "Validation/sad/e.png", images[4])
    write_image(tmp_path / "test/Surprised/f.png", images[5])
    (tmp_path / "train/Happy/notes.txt").write_text("not an image")
    out = load_folders(tmp_path)
    assert list(out) == ["train", "val", "test"]
    train = out["train"]
    assert sorted(train.labels.tolist()) == sorted(CLASSES.index(c) for c in ("happy", "happy", "angry", "fear"))
    np.testing.assert_array_equal(out["val"].images[0], images[4])  # png is lossless
    assert out["val"].labels.tolist() == [CLASSES.index("sad")]
    assert out["test"].labels.tolist() == [CLASSES.index("surprise")]


def test_folders_class_folders_directly_under_root(tmp_path):
    write_image(tmp_path / "neutral/a.png", faces(1)[0])
    write_image(tmp_path / "disgusted/b.jpg", faces(1)[0])
    out = load_folders(tmp_path)
    assert list(out) == ["train"]
    assert sorted(out["train"].labels.tolist()) == [CLASSES.index("disgust"), CLASSES.index("neutral")]


def test_folders_unknown_class_folder(tmp_path):
    write_image(tmp_path / "train/happy/a.png", faces(1)[0])
    write_image(tmp_path / "train/contempt/b.png", faces(1)[0])
    write_image(tmp_path / "train/contempt/c.png", faces(1)[0])
    with pytest.raises(DataError, match="contempt"):
        load_folders(tmp_path)
    out = load_folders(tmp_path, on_error="skip")
    assert len(out["train"]) == 1 and out["train"].skipped == 2
    assert "contempt" in out["train"].skip_reasons[0]


def test_folders_unreadable_image(tmp_path):
    write_image(tmp_path / "train/happy/a.png", faces(1)[0])
    (tmp_path / "train/happy/x.png").write_bytes(b"this is not a png")
    with pytest.raises(DataError, match=r"x\.png"):
        load_folders(tmp_path)
    out = load_folders(tmp_path, on_error="skip")
    assert len(out["train"]) == 1 and out["train"].skipped == 1


def test_folders_resize_non_48_images(tmp_path):
    write_image(tmp_path / "train/fear/big.png", np.full((96, 80), 200, np.uint8))
    write_image(tmp_path / "train/fear/colour.jpg", np.full((30, 30, 3), 90, np.uint8))
    out = load_folders(tmp_path)
    assert out["train"].images.shape == (2, 48, 48)
    assert out["train"].images.dtype == np.uint8
    assert abs(int(out["train"].images[0].mean()) - 200) <= 1


def test_folders_empty_or_unrecognised(tmp_path):
    with pytest.raises(DataError, match="no train/"):
        load_folders(tmp_path)
    (tmp_path / "train/happy").mkdir(parents=True)
    with pytest.raises(DataError, match="no usable faces"):
        load_folders(tmp_path)
    with pytest.raises(DataError, match="no such folder"):
        load_folders(tmp_path / "missing")


# ----------------------------------------------------------------------------- FER+

# (votes in our order: angry, disgust, fear, happy, sad, surprise, neutral, contempt, unknown, NF; expected label)
FERPLUS_CASES = [
    ([0, 0, 0, 8, 0, 0, 2, 0, 0, 0], CLASSES.index("happy")),      # clear winner
    ([0, 0, 0, 5, 0, 0, 5, 0, 0, 0], None),                         # tie -> no majority
    ([1, 1, 1, 0, 3, 0, 2, 1, 1, 0], CLASSES.index("sad")),         # 3/10 wins only once the 1-votes are dropped
    ([0, 0, 0, 2, 0, 0, 0, 8, 0, 0], None),                         # contempt
    ([0, 0, 0, 0, 0, 0, 0, 0, 0, 10], None),                        # not a face
    ([0, 0, 0, 0, 0, 0, 0, 0, 7, 3], None),                         # unknown
    ([0, 6, 0, 0, 0, 0, 0, 0, 0, 0], CLASSES.index("disgust")),
]


@pytest.fixture
def ferplus_files(tmp_path):
    """fer2013.csv rows with FER+ votes: the cases above as Training, plus 2 PublicTest rows (one without votes)."""
    n = len(FERPLUS_CASES) + 2
    usages = ["Training"] * len(FERPLUS_CASES) + ["PublicTest"] * 2
    folder = tmp_path / "ferplus"
    folder.mkdir()
    fer = write_fer2013(folder / "fer2013.csv", faces(n), [0] * n, usages)
    rows = [ferplus_row("Training", votes) for votes, _ in FERPLUS_CASES]
    rows += [ferplus_row("PublicTest", [0, 0, 4, 0, 0, 0, 6, 0, 0, 0]),
             ferplus_row("PublicTest", [0] * 10, name="")]
    return write_rows(folder / "fer2013new.csv", FERPLUS_HEADER, rows), fer


def test_ferplus_majority_rule(ferplus_files):
    ferplus, fer = ferplus_files
    out = load_ferplus(ferplus, fer)
    expected = [label for _, label in FERPLUS_CASES if label is not None]
    assert out["train"].labels.tolist() == expected
    assert out["train"].excluded == len(FERPLUS_CASES) - len(expected)
    assert out["val"].labels.tolist() == [CLASSES.index("neutral")] and out["val"].excluded == 1
    kept_rows = [i for i, (_, label) in enumerate(FERPLUS_CASES) if label is not None]
    np.testing.assert_array_equal(out["train"].images, load_fer2013_csv(fer)["train"].images[kept_rows])
    assert out["train"].soft_labels is None


def test_ferplus_soft_labels(ferplus_files):
    out = load_ferplus(*ferplus_files, soft=True)
    soft = out["train"].soft_labels
    assert soft.shape == (len(out["train"]), 7) and soft.dtype == np.float32
    np.testing.assert_allclose(soft.sum(1), 1, rtol=1e-6)
    np.testing.assert_allclose(soft[0, [3, 6]], [0.8, 0.2])
    np.testing.assert_allclose(soft[1], [0, 0, 0, 0, 0.6, 0, 0.4])  # 1-votes dropped
    assert (soft.argmax(1) == out["train"].labels).all()


def test_ferplus_row_count_mismatch(ferplus_files, tmp_path):
    ferplus, fer = ferplus_files
    lines = ferplus.read_text().splitlines()
    ferplus.write_text("\n".join(lines[:-1]) + "\n")
    with pytest.raises(DataError, match="rows"):
        load_ferplus(ferplus, fer)


def test_ferplus_bad_votes_and_misaligned_usage(ferplus_files):
    ferplus, fer = ferplus_files
    lines = ferplus.read_text().splitlines()
    lines[1] = lines[1].replace(",8,", ",eight,", 1)   # line 2: non-integer vote
    lines[2] = lines[2].replace("Training", "PrivateTest")  # line 3: Usage differs from fer2013.csv
    ferplus.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"fer2013new\.csv line 2: vote count 'eight'"):
        load_ferplus(ferplus, fer)
    out = load_ferplus(ferplus, fer, on_error="skip")
    assert out["train"].skipped == 2
    assert "aligned" in out["train"].skip_reasons[1]


# ----------------------------------------------------------------------------- load_dataset

def test_load_dataset_detects_each_format(small_csv, ferplus_files, tmp_path):
    assert [len(f) for f in load_dataset(small_csv[0]).values()] == [12, 6, 3]
    assert list(load_dataset(small_csv[0], splits=["val"])) == ["val"]

    ferplus, fer = ferplus_files
    out = load_dataset(fer, ferplus=ferplus, soft=True)
    assert out["train"].soft_labels is not None and out["train"].excluded > 0
    with pytest.raises(DataError, match="fer2013.csv"):
        load_dataset(ferplus)

    write_image(tmp_path / "folders/train/happy/a.png", faces(1)[0])
    assert list(load_dataset(tmp_path / "folders")) == ["train"]

    npz = tmp_path / "tiny.npz"
    np.savez(npz, train_x=faces(3), train_y=np.array([0, 1, 2], np.uint8), val_x=faces(2),
             val_y=np.array([3, 4], np.uint8))
    assert list(load_dataset(npz, splits=["validation"])) == ["val"]


def test_load_dataset_errors(small_csv, tmp_path):
    with pytest.raises(DataError, match="no such file or folder"):
        load_dataset(tmp_path / "nothing.csv")
    other = write_rows(tmp_path / "other.csv", ["a", "b"], [[1, 2]])
    with pytest.raises(DataError, match="not a data set"):
        load_dataset(other)
    with pytest.raises(DataError, match="soft labels need FER"):
        load_dataset(small_csv[0], soft=True)
    write_image(tmp_path / "folders/train/happy/a.png", faces(1)[0])
    with pytest.raises(DataError, match="fer2013.csv only"):
        load_dataset(tmp_path / "folders", ferplus=other)


# ----------------------------------------------------------------------------- split_for_validation

def test_split_for_validation_is_stratified():
    labels = np.repeat([0, 3, 6], [10, 20, 4])
    data = FaceSet(images=faces(len(labels)), labels=labels, soft_labels=np.eye(7, dtype=np.float32)[labels],
                   source="x", skipped=2)
    train, val = split_for_validation(data, 0.25, seed=1)
    assert val.class_counts()["angry"] == 2 and val.class_counts()["happy"] == 5 and val.class_counts()["neutral"] == 1
    assert len(train) + len(val) == len(data)
    assert (train.soft_labels.argmax(1) == train.labels).all()
    assert train.skipped == 2 and val.skipped == 0
    together = np.concatenate([train.images, val.images]).reshape(len(data), -1)
    assert len(np.unique(together, axis=0)) == len(data)  # no face on both sides
    again, _ = split_for_validation(data, 0.25, seed=1)
    np.testing.assert_array_equal(again.labels, train.labels)
    np.testing.assert_array_equal(again.images, train.images)


@pytest.mark.parametrize("labels", [[0] * 6, [0] * 10 + [1]])
def test_split_for_validation_too_small(labels):
    data = FaceSet(images=faces(len(labels)), labels=np.array(labels))
    with pytest.raises(DataError, match="too few"):
        split_for_validation(data, 0.2, seed=0)


# ----------------------------------------------------------------------------- shared/data/export.py

def tiny_npz(path: Path) -> dict[str, np.ndarray]:
    """A small npz with the keys of fer2013-trainval.npz (rows in shuffled order, like the real one may be)."""
    rng = np.random.default_rng(3)
    arrays: dict[str, np.ndarray] = {"classes": np.array(CLASSES)}
    start = 0
    for split, n in (("train", 14), ("val", 7)):
        targets = rng.integers(0, 10, n)  # 7..9: contempt / unknown / NF winners
        votes = np.zeros((n, 10), np.uint8)
        votes[np.arange(n), targets] = 8
        votes[np.arange(n), (targets + 1) % 10] = 2
        votes[0] = 0  # a face without FER+ votes
        arrays[f"{split}_x"] = faces(n, seed=start + 1)
        arrays[f"{split}_y"] = rng.integers(0, 7, n).astype(np.uint8)
        arrays[f"{split}_row"] = rng.permutation(np.arange(start, start + n)).astype(np.int32)
        arrays[f"{split}_ferplus_votes"] = votes
        start += n
    np.savez(path, **arrays)
    return arrays


def by_row(arrays: dict[str, np.ndarray], split: str, key: str) -> np.ndarray:
    return arrays[f"{split}_{key}"][np.argsort(arrays[f"{split}_row"], kind="stable")]


def as_set(images: np.ndarray, labels: np.ndarray) -> list[tuple[int, bytes]]:
    return sorted(zip(labels.tolist(), (image.tobytes() for image in images)))


def test_export_py_formats_read_back(tmp_path):
    if not EXPORT_PY.is_file():
        pytest.skip(f"{EXPORT_PY} not found")
    shutil.copy(EXPORT_PY, tmp_path / "export.py")
    arrays = tiny_npz(tmp_path / "fer2013-trainval.npz")
    for fmt in ("csv", "folders", "ferplus"):
        subprocess.run([sys.executable, str(tmp_path / "export.py"), fmt, str(tmp_path / "out")],
                       check=True, capture_output=True, timeout=120)
    out_dir = tmp_path / "out"

    from_csv = load_dataset(out_dir / "fer2013.csv")
    for split in ("train", "val"):
        np.testing.assert_array_equal(from_csv[split].images, by_row(arrays, split, "x"))
        np.testing.assert_array_equal(from_csv[split].labels, by_row(arrays, split, "y"))

    from_folders = load_dataset(out_dir)
    for split, folder_split in (("train", "train"), ("val", "test")):  # export.py writes PublicTest as test/
        assert as_set(from_folders[folder_split].images, from_folders[folder_split].labels) == \
            as_set(arrays[f"{split}_x"], arrays[f"{split}_y"])

    from_ferplus = load_dataset(out_dir / "fer2013.csv", ferplus=out_dir / "fer2013new.csv", soft=True)
    for split in ("train", "val"):
        votes = by_row(arrays, split, "ferplus_votes")
        winners = votes.argmax(1)
        keep = (votes.sum(1) > 0) & (winners < 7)
        np.testing.assert_array_equal(from_ferplus[split].labels, winners[keep])
        np.testing.assert_array_equal(from_ferplus[split].images, by_row(arrays, split, "x")[keep])
        assert from_ferplus[split].excluded == int((~keep).sum())
        np.testing.assert_allclose(from_ferplus[split].soft_labels.sum(1), 1, rtol=1e-6)


# ----------------------------------------------------------------------------- twins_in

def test_twins_in_marks_only_pixel_identical_images():
    train = FaceSet(images=faces(6), labels=np.arange(6) % 7)
    near = train.images[2].copy()
    near[0, 0] ^= 1  # one pixel off: not a twin
    val_images = np.stack([train.images[4], near, faces(9)[8], train.images[0]])
    val = FaceSet(images=val_images, labels=np.array([0, 1, 2, 3]))  # labels play no part
    assert twins_in(val, train).tolist() == [True, False, False, True]
    assert twins_in(val, FaceSet(images=np.zeros((0, 48, 48), np.uint8), labels=np.zeros(0, np.int64))).tolist() \
        == [False] * 4


# ----------------------------------------------------------------------------- packed npz (pack_npz)


def _dev_npz(path: Path) -> Path:
    """A small npz shaped like the dev one: faces with real structure (a gradient and a blob), labels, votes."""
    rng = np.random.default_rng(3)
    ramp = np.linspace(30, 220, 48, dtype=np.float32)
    arrays = {}
    for split, n in (("train", 40), ("val", 12)):
        images = (ramp[None, None, :] + rng.normal(0, 12, (n, 48, 48))).clip(0, 255).astype(np.uint8)
        arrays |= {f"{split}_x": images, f"{split}_y": rng.integers(0, len(CLASSES), n).astype(np.uint8),
                   f"{split}_ferplus_votes": rng.integers(0, 5, (n, 10)).astype(np.uint8)}
    np.savez(path, **arrays, classes=np.array(CLASSES))
    return path


def test_a_packed_npz_reads_as_the_original(tmp_path: Path):
    src = _dev_npz(tmp_path / "dev.npz")
    done: list[tuple[int, int]] = []
    report = pack_npz(src, tmp_path / "packed.npz", progress=lambda d, t: done.append((d, t)))
    assert report.faces == 52 and done[-1] == (52, 52) and report.bytes_after < report.bytes_before
    assert "train_x" not in np.load(report.path).files  # the faces are in there only as WebP files
    original, packed = load_npz(src), load_npz(report.path)
    for split in ("train", "val"):
        assert packed[split].fingerprint() == original[split].fingerprint()  # caches keyed on faces still match
        np.testing.assert_array_equal(packed[split].images, original[split].images)
        np.testing.assert_array_equal(packed[split].soft_labels, original[split].soft_labels)
    assert load_dataset(report.path)["val"].fingerprint() == original["val"].fingerprint()


def test_a_damaged_packed_face_stops_the_load_naming_it(tmp_path: Path):
    report = pack_npz(_dev_npz(tmp_path / "dev.npz"), tmp_path / "packed.npz")
    arrays = dict(np.load(report.path))
    arrays["val_x_webp"] = arrays["val_x_webp"].copy()
    arrays["val_x_webp"][: arrays["val_x_webp_ends"][0]] = 0  # the first face's file overwritten
    np.savez(tmp_path / "damaged.npz", **arrays)
    with pytest.raises(DataError, match="val_x: packed face 0"):
        load_npz(tmp_path / "damaged.npz")
    with pytest.raises(DataError, match="no .N, 48, 48. uint8 face arrays"):
        np.savez(tmp_path / "none.npz", y=np.zeros(3))
        pack_npz(tmp_path / "none.npz", tmp_path / "out.npz")


def test_cli_pack(capsys, tmp_path: Path):
    from fer_app.cli import main

    src = _dev_npz(tmp_path / "dev.npz")
    assert main(["pack", str(src), "--out", str(tmp_path / "p" / "dev-packed.npz")]) == 0
    assert "every command reads it as the original" in capsys.readouterr().out
    assert main(["evaluate", str(tmp_path / "p" / "dev-packed.npz"), "--split", "val", "--runtime", "torch"]) == 0
