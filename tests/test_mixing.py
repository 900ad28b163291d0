"""fer_app.mixing: weighted mixing of sources, safe zip uploads, previews; and the CLI's --mix."""

from __future__ import annotations

import io
import os
import shlex
import stat
import time
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import make_faces
from test_cli import write_fer2013_csv

from fer_app.cli import _train_config, build_parser, main, train_command
from fer_app.config import CLASSES
from fer_app.data import DataError, FaceSet, load_folders
from fer_app.mixing import (
    MAX_ZIP_FILES,
    Source,
    data_stamp,
    extract_upload,
    extract_zip,
    load_sources,
    mix,
    preview,
    sample_grid,
    with_val,
)
from fer_app.training import TrainConfig


def png(image: np.ndarray) -> bytes:
    return cv2.imencode(".png", image)[1].tobytes()


def layout_files(faces: FaceSet, prefix: str = "") -> dict[str, bytes]:
    """Zip member name -> PNG bytes of the folder layout <prefix><class>/<i>.png."""
    return {f"{prefix}{CLASSES[y]}/{i}.png": png(img) for i, (img, y) in enumerate(zip(faces.images, faces.labels))}


def zip_bytes(files: dict[str, bytes], infos: list[tuple[zipfile.ZipInfo, bytes]] = ()) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in files.items():
            z.writestr(name, data)
        for info, data in infos:
            z.writestr(info, data)
    return buf.getvalue()


def write_folder(root: Path, faces: FaceSet) -> Path:
    for name, data in layout_files(faces).items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return root


# ---------------------------------------------------------------- mix


def test_mix_weights_repeat_train_per_class_and_never_repeat_val():
    fer = {"train": make_faces(10, 1), "val": make_faces(4, 2)}
    mine = {"train": make_faces(3, 3), "val": make_faces(2, 4)}
    out = mix([(fer, 1.0), (mine, 5.0)])
    assert len(out["train"]) == 7 * (10 + 15)
    assert out["train"].class_counts() == {c: 25 for c in CLASSES}
    assert len(out["val"]) == 7 * (4 + 2)  # val faces counted once, whatever the weight
    assert "x5" in out["train"].source and "+" in out["train"].source
    # every face of `mine` appears exactly 5 times
    first = mine["train"].images[0]
    assert sum(np.array_equal(first, img) for img in out["train"].images) == 5


def test_mix_subsamples_below_one_and_keeps_every_class():
    faces = make_faces(10, 1)
    keep = (faces.labels != 1) | (np.arange(len(faces)) == np.flatnonzero(faces.labels == 1)[0])
    fer = {"train": FaceSet(images=faces.images[keep], labels=faces.labels[keep]), "val": make_faces(10, 2)}
    out = mix([(fer, 0.3)], seed=1)
    counts = out["train"].class_counts()
    assert counts["angry"] == 3 and counts["disgust"] == 1  # round(1 * 0.3) = 0, but a class present stays
    assert len(out["val"]) == 7 * 3
    again = mix([(fer, 0.3)], seed=1)
    assert np.array_equal(again["train"].images, out["train"].images)  # seeded: the embedding cache hits


def test_mix_single_source_weight_one_is_unchanged():
    splits = {"train": make_faces(3, 1), "val": make_faces(2, 2)}
    out = mix([(splits, 1.0)])
    assert out["train"] is splits["train"] and out["val"] is splits["val"]


@pytest.mark.parametrize("weight", [0, -1, float("nan"), float("inf")])
def test_mix_refuses_bad_weights(weight):
    with pytest.raises(ValueError, match="positive"):
        mix([({"train": make_faces(2)}, weight)])
    with pytest.raises(DataError, match="no data"):
        load_sources([])


def test_mix_keeps_skip_counts_and_soft_labels_only_when_all_have_them():
    a, b = make_faces(2, 1), make_faces(2, 2)
    a.skipped, a.skip_reasons = 3, ["x.csv line 4: bad"]
    b.soft_labels = np.full((len(b), 7), 1 / 7, np.float32)
    out = mix([({"train": a}, 1.0), ({"train": b}, 2.0)])["train"]
    assert out.skipped == 3 and out.skip_reasons == ["x.csv line 4: bad"] and out.soft_labels is None


def test_with_val_splits_only_when_needed():
    both = {"train": make_faces(5, 1), "val": make_faces(2, 2)}
    assert with_val(both) is both
    out = with_val({"train": make_faces(5, 1)}, 0.2, seed=0)
    assert list(out) == ["train", "val"] and len(out["val"]) == 7
    only_test = with_val({"test": make_faces(5, 1)})
    assert list(only_test) == ["train", "val"]
    with pytest.raises(DataError, match="too few faces"):
        with_val({"train": make_faces(1, 1)})


@pytest.mark.parametrize(("spec", "path", "weight"), [
    ("data/fer2013.csv", "data/fer2013.csv", 1.0), ("captures:5", "captures", 5.0), ("a:b", "a:b", 1.0),
    ("x.zip:0.5", "x.zip", 0.5)])
def test_source_parse(spec, path, weight):
    assert Source.parse(spec) == Source(Path(path), weight)


def test_load_sources_mixes_a_csv_and_captures_folder(tmp_path):
    csv = write_fer2013_csv(tmp_path / "fer2013.csv", {"train": make_faces(6, 1), "val": make_faces(3, 2)})
    folder = write_folder(tmp_path / "mine", make_faces(4, 3))
    out = load_sources([Source(csv), Source(folder, 3.0)], val_fraction=0.25, seed=0)
    # the folder (no val split) got its own val *before* mixing: 1 of its 4 per class, the rest x3
    assert out["val"].class_counts()["happy"] == 3 + 1
    assert out["train"].class_counts()["happy"] == 6 + 3 * 3


def test_data_stamp_changes_when_a_capture_is_added(tmp_path):
    folder = write_folder(tmp_path / "mine", make_faces(1, 3))
    before = data_stamp(folder)
    (folder / "happy" / "new.png").write_bytes(png(make_faces(1).images[0]))
    os.utime(folder / "happy", (time.time() + 5, time.time() + 5))
    assert data_stamp(folder) > before
    assert data_stamp(tmp_path / "missing") == 0.0


# ---------------------------------------------------------------- zip uploads


def test_extract_zip_layout_at_top_or_under_one_folder(tmp_path):
    faces = make_faces(2, 1)
    top = extract_zip(zip_bytes(layout_files(faces, "train/")), tmp_path / "a")
    assert top == tmp_path / "a"
    assert len(load_folders(top)["train"]) == 14
    junk = {"__MACOSX/fer/._x": b"mac", "fer/.DS_Store": b"x", "fer/README.txt": b"hello"}
    nested = extract_zip(zip_bytes({**layout_files(faces, "fer/"), **junk}), tmp_path / "b")
    assert nested == tmp_path / "b" / "fer"
    assert load_folders(nested)["train"].class_counts() == {c: 2 for c in CLASSES}
    assert not (tmp_path / "b" / "__MACOSX").exists()


def test_extract_upload_unpacks_once_per_content(tmp_path):
    data = zip_bytes(layout_files(make_faces(1, 1), "set/test/"))
    first = extract_upload(data, tmp_path / "uploads")
    (first / "test" / "happy" / "marker.txt").write_text("kept")
    again = extract_upload(data, tmp_path / "uploads")
    assert again == first and (again / "test" / "happy" / "marker.txt").exists()


@pytest.mark.parametrize(("member", "message"), [
    ("../evil.png", "leaves its folder"), ("train/../../evil.png", "leaves its folder"),
    ("/tmp/evil.png", "absolute path"), ("C:/evil.png", "absolute path"), ("..\\evil.png", "leaves its folder")])
def test_extract_zip_refuses_escaping_paths(tmp_path, member, message):
    (tmp_path / "out").mkdir()
    info = zipfile.ZipInfo(member)
    data = zip_bytes(layout_files(make_faces(1), "train/"), [(info, b"x")])
    with pytest.raises(DataError, match=message):
        extract_zip(data, tmp_path / "out" / "dest")
    assert not (tmp_path / "out" / "evil.png").exists() and not (tmp_path / "evil.png").exists()
    assert not (tmp_path / "out" / "dest").exists() and list((tmp_path / "out").iterdir()) == []


def test_extract_zip_refuses_links_encrypted_and_too_big(tmp_path):
    link = zipfile.ZipInfo("train/happy/link.png")
    link.external_attr = (stat.S_IFLNK | 0o777) << 16
    with pytest.raises(DataError, match="link"):
        extract_zip(zip_bytes({}, [(link, b"/etc/passwd")]), tmp_path / "a")
    files = layout_files(make_faces(3), "train/")
    with pytest.raises(DataError, match="at most 5"):
        extract_zip(zip_bytes(files), tmp_path / "b", max_files=5)
    with pytest.raises(DataError, match="more than"):
        extract_zip(zip_bytes({"train/happy/big.png": bytes(3 * 1024 * 1024)}), tmp_path / "c", max_bytes=1024 ** 2)
    assert not any(p.exists() for p in (tmp_path / "a", tmp_path / "b", tmp_path / "c"))


def test_extract_zip_refuses_what_is_not_the_layout(tmp_path):
    with pytest.raises(DataError, match="not a zip"):
        extract_zip(b"PK\x03\x04 not really", tmp_path / "a")
    with pytest.raises(DataError, match="not the folder layout.*holds: notes.txt, pictures/"):
        extract_zip(zip_bytes({"pictures/a.png": png(make_faces(1).images[0]), "notes.txt": b"x"}), tmp_path / "b")
    with pytest.raises(DataError, match="not the folder layout"):
        extract_zip(zip_bytes({"a/b/train/happy/1.png": png(make_faces(1).images[0])}), tmp_path / "c")
    assert not (tmp_path / "b").exists()
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "x").write_text("x")
    with pytest.raises(ValueError, match="not an empty folder"):
        extract_zip(zip_bytes(layout_files(make_faces(1), "train/")), tmp_path / "d")


# ---------------------------------------------------------------- preview


def test_preview_counts_and_warnings(tmp_path):
    faces = make_faces(30, 1)
    keep = (faces.labels != 1) | np.isin(np.arange(len(faces)), np.flatnonzero(faces.labels == 1)[:3])
    train = FaceSet(images=faces.images[keep], labels=faces.labels[keep], source="t")
    val = FaceSet(images=faces.images[faces.labels != 1], labels=faces.labels[faces.labels != 1], source="v",
                  excluded=4)
    train.skipped, train.skip_reasons = 2, ["fer2013.csv line 7: emotion 9 is not a label 0..6", "line 9: ..."]
    info = preview({"train": train, "val": val})
    assert info["counts"]["train"]["disgust"] == 3 and info["totals"]["val"] == 180
    text = "\n".join(info["warnings"])
    assert "train: fewer than 20 faces of disgust (3)" in text
    assert "val: no faces of disgust" in text
    assert "2 bad rows or files were skipped" in text and "line 7" in text
    assert "4 faces without a clear FER+ majority" in text
    assert info["skip_reasons"][0].startswith("fer2013.csv line 7")
    assert "no val split" in "\n".join(preview({"train": train})["warnings"])


def test_preview_reports_unknown_class_folders_and_bad_csv_rows(tmp_path):
    root = write_folder(tmp_path / "set", make_faces(2, 1))
    (root / "contempt").mkdir()
    (root / "contempt" / "1.png").write_bytes(png(make_faces(1).images[0]))
    info = preview(load_sources([Source(root)], val_fraction=0.5, on_error="skip"))
    assert any("unknown class folder 'contempt'" in r for r in info["skip_reasons"])
    csv = write_fer2013_csv(tmp_path / "fer2013.csv", {"train": make_faces(3, 1), "val": make_faces(2, 2)})
    with open(csv, "a") as f:
        f.write("3,1 2 3,Training\n12,0 0,PublicTest\n")
    info = preview(load_sources([Source(csv)], on_error="skip"))
    assert info["skipped"] == 2 and any("pixels has 3 values" in r for r in info["skip_reasons"])
    with pytest.raises(DataError, match="line 37"):
        load_sources([Source(csv)])


def test_sample_grid_shape_and_empty_cells():
    faces = make_faces(3, 1)
    grid = sample_grid(faces, per_class=5, scale=1)
    assert grid.dtype == np.uint8 and grid.ndim == 2
    assert grid.shape == (7 * 52 + 4, 110 + 5 * 52 + 4)
    empty_cell = grid[4:52, 110 + 4 + 4 * 52:110 + 4 * 52 + 52]
    assert (empty_cell == 225).all()  # only 3 faces per class for 5 columns


# ---------------------------------------------------------------- CLI


def test_cli_train_with_mix(capsys, models_dir, tmp_path):
    csv = write_fer2013_csv(tmp_path / "fer2013.csv", {"train": make_faces(8, 1), "val": make_faces(3, 2)})
    folder = write_folder(tmp_path / "mine", make_faces(3, 3))
    code = main(["train", str(csv), "--mix", f"{folder}:4", "--name", "mixed", "--widths", "8", "16", "--convs", "1",
                 "1", "--epochs", "1", "--batch-size", "32", "--no-augment", "--workdir", str(tmp_path / "w"),
                 "--val-fraction", "0.34"])
    err = capsys.readouterr().err
    assert code == 0, err
    assert "train: 112 faces" in err  # 7 x (8 + 2 x 4): the folder's val face per class is taken first
    cfg = (models_dir / "mixed" / "config.json").read_text()
    assert "x4" in cfg and "--mix" in (models_dir / "mixed" / "README.md").read_text()
    code = main(["train", str(csv), "--mix", f"{tmp_path / 'nowhere'}:2", "--epochs", "1"])
    assert code == 1 and "nowhere" in capsys.readouterr().err


def test_train_command_round_trips_through_the_parser(tmp_path):
    cfg = TrainConfig(encoder="compact", mode="full", head="mlp", widths=(8, 16), convs_per_stage=(1, 1), epochs=3,
                      optimizer="adamw", lr=0.002, augment=False, tta_flip=False, patience=2, seed=7, threads=1,
                      soft_targets="ferplus", ferplus_weight=0.4, teachers=("a", "models/b c"), kd_weight=0.7,
                      kd_temperature=3.0, mixup=0.2)
    sources = [Source(tmp_path / "fer 2013.csv", 1.0, tmp_path / "fer2013new.csv"), Source(tmp_path / "mine", 5.0)]
    command = train_command(cfg, sources, name="m", workdir=tmp_path / "w", val_fraction=0.2, on_error="skip")
    argv = shlex.split(command)[3:]
    args = build_parser().parse_args(argv)
    assert _train_config(args) == cfg
    assert args.mix == [sources[1]] and Source.parse(args.data) == Source(tmp_path / "fer 2013.csv")
    assert args.ferplus == str(tmp_path / "fer2013new.csv") and args.val_fraction == 0.2 and args.on_error == "skip"


# ---------------------------------------------------------------- hostile zips (issue 14, point 7)


def _layout_plus(*extra: str, data: bytes = b"x") -> bytes:
    return zip_bytes({**layout_files(make_faces(1), "train/"), **{name: data for name in extra}})


@pytest.mark.parametrize(("member", "message"), [
    ("train/" + "d/" * 2000 + "deep.png", r"2002 levels deep.*at most 32"),   # was a RecursionError
    ("train/happy/" + "n" * 300 + ".png", r"name too long"),                  # was a raw OSError
    ("train/" + ("b" * 250 + "/") * 20 + "x.png", r"name too long"),          # each name fits, the path does not
])
def test_zip_with_too_deep_or_too_long_paths_is_a_data_error_naming_it(tmp_path, member, message):
    with pytest.raises(DataError, match=r"^faces\.zip holds .*" + message):
        extract_zip(_layout_plus(member), tmp_path / "out", name="faces.zip")
    assert not (tmp_path / "out").exists() and not list(tmp_path.iterdir())


def test_zip_with_a_name_both_file_and_folder_is_a_data_error(tmp_path):
    for files in (("train/happy/x", "train/happy/x/1.png"), ("train/happy/x/1.png", "train/happy/x")):
        with pytest.raises(DataError, match=r"faces\.zip holds 'train/happy/x' both as a file and as a folder"):
            extract_zip(_layout_plus(*files), tmp_path / "out", name="faces.zip")  # was IsADirectoryError
    info = zipfile.ZipInfo("train/happy/y/")  # a folder entry, then a file of the same name
    with pytest.raises(DataError, match="both as a file and as a folder"):
        extract_zip(zip_bytes({**layout_files(make_faces(1), "train/"), "train/happy/y": b"x"}, [(info, b"")]),
                    tmp_path / "out2")
    assert not list(tmp_path.iterdir())


def test_zip_folder_entries_count_toward_the_entry_limit(tmp_path):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, data in layout_files(make_faces(1), "train/").items():
            z.writestr(name, data)
        for i in range(MAX_ZIP_FILES + 1):  # folders only: accepted before while 100,007 files were refused
            z.writestr(zipfile.ZipInfo(f"d{i}/"), b"")
    with pytest.raises(DataError, match=rf"faces\.zip holds {MAX_ZIP_FILES + 8} entries \(files and folders\); "
                                        rf"at most {MAX_ZIP_FILES}"):
        extract_zip(buf.getvalue(), tmp_path / "out", name="faces.zip")


def test_hostile_zip_through_load_sources_names_the_file(tmp_path, monkeypatch):
    import fer_app.config as config

    monkeypatch.setattr(config, "APP_HOME", tmp_path / "home")
    path = tmp_path / "upload.zip"
    path.write_bytes(_layout_plus("train/" + "d/" * 2000 + "deep.png"))
    with pytest.raises(DataError, match=r"upload\.zip holds a path 2002 levels deep"):
        load_sources([Source(path)])
    path.write_bytes(b"PK\x03\x04 not a zip")
    with pytest.raises(DataError, match=r"upload\.zip is not a zip archive"):
        load_sources([Source(path)])
