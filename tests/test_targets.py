"""fer_app.targets and the engine's soft-target runs: FER+ vote shares, distillation, mixup, CutMix (tiny data)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from conftest import TINY_COMPACT, make_faces
from fer_app.cli import main
from fer_app.config import CLASSES
from fer_app.data import FaceSet
from fer_app.model import load_model
from fer_app.targets import (base_targets, blend, export_teacher_targets, online_teachers, read_teacher_targets,
                             sharpen, smoothed_one_hot, soft_loss, targets_file_meta, teacher_targets)
from fer_app.training import TrainConfig, TrainingError, class_weights, train
from test_training import interrupted_and_resumed

K = len(CLASSES)


def test_soft_loss_on_smoothed_labels_is_the_engines_cross_entropy():
    logits = torch.randn(12, K, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([0, 1, 2, 3, 4, 5, 6, 6, 5, 3, 3, 1])
    weights = class_weights(labels.numpy(), "sqrt")
    expected = F.cross_entropy(logits, labels, weight=weights)  # class weights: each sample weighs its label's
    got = soft_loss(logits, smoothed_one_hot(labels, 0.0), None, weights[labels], 0.5, 2.0)
    assert got.item() == pytest.approx(expected.item(), rel=1e-5)
    expected = F.cross_entropy(logits, labels, label_smoothing=0.1)  # smoothing: the same targets as torch's
    got = soft_loss(logits, smoothed_one_hot(labels, 0.1), None, torch.ones(12), 0.5, 2.0)
    assert got.item() == pytest.approx(expected.item(), rel=1e-5)
    assert smoothed_one_hot(labels, 0.1).sum(1).allclose(torch.ones(12))


def test_distillation_term_at_its_temperature():
    logits = torch.randn(5, K, generator=torch.Generator().manual_seed(1))
    teacher = torch.softmax(torch.randn(5, K, generator=torch.Generator().manual_seed(2)), 1)
    base = smoothed_one_hot(torch.tensor([0, 1, 2, 3, 4]), 0.0)
    ones = torch.ones(5)
    kd = -(sharpen(teacher, 3.0) * F.log_softmax(logits / 3.0, 1)).sum(1).mean() * 9
    assert soft_loss(logits, base, teacher, ones, 1.0, 3.0).item() == pytest.approx(kd.item(), rel=1e-5)
    plain = soft_loss(logits, base, None, ones, 0.0, 3.0)
    half = soft_loss(logits, base, teacher, ones, 0.5, 3.0)
    assert half.item() == pytest.approx(0.5 * plain.item() + 0.5 * kd.item(), rel=1e-5)
    assert soft_loss(logits, base, teacher, ones, 0.0, 3.0).item() == pytest.approx(plain.item())


def test_sharpen_is_softmax_at_a_temperature():
    logits = torch.tensor([[2.0, 0.5, -1.0, 0, 0, 0, 0]])
    assert sharpen(torch.softmax(logits, 1), 2.0).allclose(torch.softmax(logits / 2.0, 1), atol=1e-6)
    assert sharpen(torch.softmax(logits, 1), 1.0).allclose(torch.softmax(logits, 1), atol=1e-6)


def test_ferplus_shares_replace_the_label_where_there_are_votes():
    faces = make_faces(1, 0)
    shares = np.full((K, K), np.nan, np.float32)
    shares[0] = [0.6, 0, 0.4, 0, 0, 0, 0]  # face 0: angry 6 votes, fear 4
    shares[1] = [0, 0, 0, 0, 0, 0, 0]      # no votes counted: the label
    faces = replace(faces, soft_labels=shares)
    out = base_targets(faces, "ferplus", 0.1)
    assert out[0].tolist() == pytest.approx([0.6, 0, 0.4, 0, 0, 0, 0])
    assert out[1].tolist() == pytest.approx(smoothed_one_hot(torch.tensor([faces.labels[1]]), 0.1)[0].tolist())
    assert out[2:].allclose(smoothed_one_hot(torch.from_numpy(faces.labels[2:]), 0.1))
    assert base_targets(faces, "none", 0.0).argmax(1).tolist() == faces.labels.tolist()
    with pytest.raises(ValueError, match="FER\\+ votes"):
        base_targets(make_faces(1, 0), "ferplus", 0.1)


def test_ferplus_weight_blends_the_votes_with_the_smoothed_label():
    faces = make_faces(1, 0)
    shares = np.full((K, K), np.nan, np.float32)
    shares[0] = [0.0, 0, 0.4, 0, 0.6, 0, 0]  # face 0 (angry): FER+ says sad 6, fear 4
    faces = replace(faces, soft_labels=shares)
    label = smoothed_one_hot(torch.from_numpy(faces.labels), 0.1)
    out = base_targets(faces, "ferplus", 0.1, ferplus_weight=0.25)
    assert out[0].tolist() == pytest.approx((0.25 * torch.tensor(shares[0]) + 0.75 * label[0]).tolist())
    assert out[0].argmax().item() == faces.labels[0] and out.sum(1).allclose(torch.ones(K))
    assert out[1:].allclose(label[1:])  # no votes: the label alone, whatever the weight
    assert base_targets(faces, "ferplus", 0.1, ferplus_weight=1.0)[0].tolist() == pytest.approx(shares[0].tolist())
    for weight in (0.0, 1.5):
        with pytest.raises(ValueError, match="ferplus_weight"):
            base_targets(faces, "ferplus", 0.1, ferplus_weight=weight)
    with pytest.raises(ValueError, match="ferplus_weight"):
        TrainConfig(ferplus_weight=0.5)  # without soft_targets="ferplus" it would do nothing


def test_mixup_blends_inputs_targets_and_weights_alike():
    x = torch.arange(4 * 2, dtype=torch.float32).reshape(4, 2)
    base = smoothed_one_hot(torch.tensor([0, 1, 2, 3]), 0.0)
    w = torch.tensor([1.0, 2.0, 3.0, 4.0])
    torch.manual_seed(5)
    mx, (mb, mt), mw = blend(x, [base, None], w, torch.Generator().manual_seed(9), mixup=0.4)
    torch.manual_seed(5)
    lam = float(torch.distributions.Beta(0.4, 0.4).sample())
    perm = torch.randperm(4, generator=torch.Generator().manual_seed(9))
    assert 0 <= lam <= 1 and mt is None
    assert mx.allclose(lam * x + (1 - lam) * x[perm]) and mw.allclose(lam * w + (1 - lam) * w[perm])
    assert mb.allclose(lam * base + (1 - lam) * base[perm]) and mb.sum(1).allclose(torch.ones(4))
    same, (b0,), w0 = blend(x, [base], w, torch.Generator())  # neither: off
    assert same.equal(x) and b0.equal(base) and w0.equal(w)


def _cutmix_batch(seed: int, **alphas):
    """Four 6x8 images, image i filled with i, blended with a generator seeded `seed`: (out, targets, weights)."""
    x = torch.arange(4, dtype=torch.float32).view(4, 1, 1, 1).expand(4, 1, 6, 8).clone()
    torch.manual_seed(seed)
    out, (targets,), weights = blend(x, [smoothed_one_hot(torch.arange(4), 0.0)], torch.ones(4),
                                     torch.Generator().manual_seed(seed), **alphas)
    return out, targets, weights


def test_cutmix_pastes_one_box_of_the_partner_and_blends_targets_by_its_area():
    pasted_shares = set()
    for seed in range(20):
        out, targets, weights = _cutmix_batch(seed, cutmix=1.0)
        for i in range(4):
            own = out[i, 0] == i
            other = out[i, 0][~own]
            if other.numel():  # the pasted pixels: all from one other image, in one rectangle
                source = int(other[0])
                assert (other == source).all() and source != i
                rows, cols = (~own).nonzero(as_tuple=True)
                assert (~own)[rows.min():rows.max() + 1, cols.min():cols.max() + 1].all()
                # the target gives the partner exactly the share of the image it covers
                assert float(targets[i, source]) == pytest.approx(other.numel() / own.numel())
                pasted_shares.add(round(other.numel() / own.numel(), 3))
            assert float(targets[i, i]) == pytest.approx(float(own.float().mean()))
            assert float(targets[i].sum()) == pytest.approx(1.0)
        assert weights.allclose(torch.ones(4))  # equal weights blend to the same
    assert len(pasted_shares) > 3  # boxes of many sizes
    with pytest.raises(ValueError, match="images"):
        blend(torch.zeros(4, 5), [None], torch.ones(4), torch.Generator(), cutmix=1.0)


def test_mixup_and_cutmix_together_take_one_of_the_two_per_batch():
    kinds = set()
    for seed in range(16):
        out, targets, _ = _cutmix_batch(seed, mixup=0.4, cutmix=1.0)
        whole = [bool((out[i, 0] == out[i, 0, 0, 0]).all()) for i in range(4)]
        integer = bool((out == out.round()).all())  # CutMix copies pixels; mixup blends them
        kinds.add("cutmix" if integer else "mixup")
        if not integer:
            assert all(whole)  # mixup: every pixel of an image blended alike
    assert kinds == {"cutmix", "mixup"}


class _Fixed:
    """A stand-in teacher: the same probabilities for every face."""

    def __init__(self, probs) -> None:
        self.probs = np.asarray(probs, np.float32)

    def predict_proba(self, crops):
        return np.tile(self.probs, (len(crops), 1))


def test_teacher_targets_average_the_teachers_and_are_cached(tmp_path: Path):
    faces = make_faces(2, 0)
    one, two = np.eye(K)[0], np.eye(K)[3]
    loaded = []
    teachers = {"a": _Fixed(one), "b": _Fixed(two)}
    probs = teacher_targets(["a", "b"], faces, tmp_path, load=lambda n: loaded.append(n) or teachers[n],
                            batch_size=5)
    assert probs.shape == (len(faces), K) and probs[:, 0].allclose(torch.full((len(faces),), 0.5))
    assert probs[:, 3].allclose(torch.full((len(faces),), 0.5)) and loaded == ["a", "b"]
    again = teacher_targets(["a", "b"], faces, tmp_path, load=lambda n: pytest.fail("cached: nothing to load"))
    assert again.equal(probs)
    other = teacher_targets(["a"], faces, tmp_path, load=lambda n: pytest.fail("a's own share is cached"))
    assert other[:, 0].allclose(torch.ones(len(faces)))  # another ensemble: its own mean, from a's share


def test_teacher_targets_stopped_part_way_compute_only_the_missing_teachers(tmp_path: Path):
    faces = make_faces(2, 0)
    teachers = {"a": _Fixed(np.eye(K)[0]), "b": _Fixed(np.eye(K)[3])}

    def stopped_at_b(name):
        if name == "b":
            raise KeyboardInterrupt  # the session ends while b runs
        return teachers[name]

    with pytest.raises(KeyboardInterrupt):
        teacher_targets(["a", "b"], faces, tmp_path, load=stopped_at_b)
    assert len(list(tmp_path.glob("teacher-*.safetensors"))) == 1 and not list(tmp_path.glob("teachers-*"))
    loaded = []
    probs = teacher_targets(["a", "b"], faces, tmp_path, load=lambda n: loaded.append(n) or teachers[n])
    assert loaded == ["b"] and probs[:, 0].allclose(torch.full((len(faces),), 0.5))
    next(tmp_path.glob("teacher-*")).write_bytes(b"damaged")  # a torn file is computed again
    for f in tmp_path.glob("teachers-*"):
        f.unlink()
    loaded.clear()
    again = teacher_targets(["a", "b"], faces, tmp_path, load=lambda n: loaded.append(n) or teachers[n])
    assert len(loaded) == 1 and again.equal(probs)


def test_teacher_targets_progress_counts_only_the_teachers_computed_now(tmp_path: Path):
    faces = make_faces(2, 0)
    teachers = {"a": _Fixed(np.eye(K)[0]), "b": _Fixed(np.eye(K)[3])}
    teacher_targets(["a"], faces, tmp_path, load=lambda n: teachers[n])  # a's share is cached
    reports: list[tuple[int, int]] = []
    teacher_targets(["a", "b"], faces, tmp_path, load=lambda n: teachers[n], batch_size=5,
                    report=lambda done, total: reports.append((done, total)))
    # only b is computed: the phase runs from nothing to all of b's faces, not from half (a counted as just done)
    assert reports and {total for _, total in reports} == {len(faces)}
    assert reports[0][0] < len(faces) and reports[-1] == (len(faces), len(faces))


def _rolled(splits: dict) -> dict:
    """The same faces, every label moved to the next class: a teacher trained on it is wrong on purpose."""
    return {s: replace(f, labels=(f.labels + 1) % K) for s, f in splits.items()}


@pytest.mark.parametrize("kd_online", [False, True])
def test_a_student_distilled_from_a_teacher_learns_what_the_teacher_says(models_dir, tiny_splits, tmp_path,
                                                                         kd_online):
    train(TrainConfig(**{**TINY_COMPACT, "epochs": 6}), _rolled(tiny_splits), name="rolled",
          workdir=tmp_path / "teacher")
    teacher = load_model("rolled", runtime="torch")
    val = tiny_splits["val"]
    says = teacher.predict_proba(list(val.images)).argmax(1)
    assert (says == (val.labels + 1) % K).mean() > 0.5  # the teacher learned the rolled labels
    cfg = TrainConfig(**{**TINY_COMPACT, "epochs": 6}, teachers=("rolled",), kd_weight=1.0, kd_temperature=1.0,
                      kd_online=kd_online)
    # trained on the true labels with all the loss on the teacher (val rolled too, or the best epoch on val
    # would be the one least like the teacher): it follows the teacher, not the labels
    student = train(cfg, {"train": tiny_splits["train"], "val": _rolled(tiny_splits)["val"]}, name="student",
                    workdir=tmp_path / "student")
    thinks = load_model("student", runtime="torch").predict_proba(list(val.images)).argmax(1)
    assert (thinks == says).mean() > 0.5 and (thinks == val.labels).mean() < 0.3
    assert student.report["accuracy"] > 0.5  # on the rolled val
    plain = train(TrainConfig(**{**TINY_COMPACT, "epochs": 6}), {"train": tiny_splits["train"],
                  "val": _rolled(tiny_splits)["val"]}, workdir=tmp_path / "plain")
    assert plain.report["accuracy"] < 0.3  # without the teacher the same run learns the true labels
    # cached for a resume; online, the teachers run every step and nothing is cached
    assert bool(list((tmp_path / "student").glob("teachers-*.safetensors"))) != kd_online


def test_online_teachers_see_each_batch_as_the_student_does(models_dir, tiny_splits, tmp_path, monkeypatch):
    """Consistent teaching: every step the teachers get the very batch the student trains on, after the
    augmentation and mixup (not the plain faces), and their targets are not cached."""
    from fer_app import targets

    train(TrainConfig(**{**TINY_COMPACT, "epochs": 2}), tiny_splits, name="teacher", workdir=tmp_path / "t")
    student_batches, teacher_batches = [], []
    real_blend, real_online = targets.blend, targets.online_teachers

    def recorded_blend(x, *args, **kwargs):
        out = real_blend(x, *args, **kwargs)
        student_batches.append(out[0].detach().clone())
        return out

    def recorded_online(*args, **kwargs):
        nets = real_online(*args, **kwargs)
        for net in nets:
            net.register_forward_pre_hook(lambda module, inputs: teacher_batches.append(inputs[0].detach().clone()))
        return nets

    monkeypatch.setattr(targets, "blend", recorded_blend)
    monkeypatch.setattr(targets, "online_teachers", recorded_online)
    cfg = TrainConfig(**{**TINY_COMPACT, "epochs": 1, "augment": True}, teachers=("teacher",), kd_online=True,
                      mixup=0.4)
    train(cfg, tiny_splits, workdir=tmp_path / "s")
    assert len(student_batches) == len(teacher_batches) > 1
    assert all(torch.equal(t.float(), s.float()) for t, s in zip(teacher_batches, student_batches))
    assert not list((tmp_path / "s").glob("teachers-*.safetensors"))
    with pytest.raises(ValueError, match="kd_online needs teachers"):
        TrainConfig(kd_online=True)
    with pytest.raises(ValueError, match="kd_online needs teachers"):
        TrainConfig(kd_online=True, teachers=("teacher",), mode="head")


def test_online_teachers_must_take_the_students_pixels():
    from fer_app.encoders.compact import CompactEncoder
    from fer_app.targets import online_teachers

    class Net(torch.nn.Module):
        def __init__(self, mean: float) -> None:
            super().__init__()
            self.encoder = CompactEncoder((8, 16), 1, mean=mean, std=0.25)

    student = CompactEncoder((8, 16), 1, mean=0.5, std=0.25)
    nets = {"same": Net(0.5), "other": Net(0.4)}
    assert len(online_teachers(["same"], student.normalize, load=nets.__getitem__)) == 1
    with pytest.raises(ValueError, match=r"teacher other: its input is not the student's \(another normalisation"):
        online_teachers(["same", "other"], student.normalize, load=nets.__getitem__)
    with pytest.raises(ValueError, match=r"\(pixels \(1, 48, 48\), the student's \(3, 56, 56\)\)"):
        online_teachers(["same"], lambda grey: torch.zeros(len(grey), 3, 56, 56), load=nets.__getitem__)


@pytest.mark.parametrize("blending", [{"mixup": 0.2, "ferplus_weight": 0.5}, {"mixup": 0.2, "cutmix": 1.0}])
def test_mixup_cutmix_and_ferplus_runs_learn_and_resume_exactly(models_dir, tiny_splits, tmp_path, blending):
    train_set = tiny_splits["train"]
    votes = np.eye(K, dtype=np.float32)[train_set.labels] * 0.8 + 0.2 / K  # mostly the label
    splits = {**tiny_splits, "train": replace(train_set, soft_labels=votes)}
    cfg = TrainConfig(**{**TINY_COMPACT, "epochs": 3}, soft_targets="ferplus", **blending)
    resumed = interrupted_and_resumed(cfg, splits, tmp_path)
    assert resumed.report["accuracy"] > 0.5
    with pytest.raises(ValueError, match="soft_targets"):
        TrainConfig(soft_targets="votes")
    with pytest.raises(ValueError, match="kd_weight"):
        TrainConfig(kd_weight=1.5)
    with pytest.raises(ValueError, match="cutmix"):
        TrainConfig(cutmix=-1.0)


def test_soft_targets_refuse_streamed_data(tmp_path):
    from fer_app.streaming import StreamingSet

    files = StreamingSet([str(tmp_path / "a.png")], np.array([0]))  # never read: refused before
    with pytest.raises(TrainingError, match="in memory"):
        train(TrainConfig(mixup=0.2), {"train": files, "val": files}, workdir=tmp_path)


def test_cutmix_is_refused_in_head_mode(tiny_splits, tmp_path):
    with pytest.raises(TrainingError, match="CutMix"):
        train(TrainConfig(mode="head", cutmix=1.0), tiny_splits, workdir=tmp_path)


def test_cli_train_with_a_teacher(capsys, tiny_model: Path, tmp_path: Path):
    from test_cli import write_fer2013_csv

    data = write_fer2013_csv(tmp_path / "fer2013.csv", {"train": make_faces(12, 1), "val": make_faces(4, 2)})
    code = main(["train", str(data), "--name", "distilled", "--widths", "8", "16", "--convs", "1", "1",
                 "--epochs", "2", "--batch-size", "16", "--threads", "1", "--teacher", "tiny", "--kd-weight", "0.7",
                 "--mixup", "0.2", "--cutmix", "1.0", "--workdir", str(tmp_path / "w")])
    assert code == 0
    settings = load_model("distilled").meta["training"]["config"]
    assert settings["teachers"] == ["tiny"] and settings["kd_weight"] == 0.7 and settings["mixup"] == 0.2
    assert settings["cutmix"] == 1.0
    assert "--teacher tiny" in (tiny_model.parent / "distilled" / "README.md").read_text()


def test_faceset_without_soft_labels_is_untouched_by_default(tiny_splits):
    assert not TrainConfig().soft and TrainConfig(mixup=0.1).soft and TrainConfig(teachers=("x",)).soft
    assert TrainConfig(cutmix=1.0).soft
    assert isinstance(tiny_splits["train"], FaceSet)


def test_a_targets_file_counts_each_of_its_teachers_as_one(tmp_path: Path):
    faces = make_faces(2, 0)
    teachers = {"a": _Fixed(np.eye(K)[0]), "b": _Fixed(np.eye(K)[3]), "c": _Fixed(np.eye(K)[5])}
    file = export_teacher_targets(["a", "b"], faces, tmp_path / "ab.safetensors", tmp_path / "cache",
                                  load=lambda n: teachers[n])
    assert json.loads(targets_file_meta(file)["teachers"]) == ["a", "b"]
    direct = teacher_targets(["a", "b", "c"], faces, tmp_path / "w1", load=lambda n: teachers[n])
    by_file = teacher_targets([str(file), "c"], faces, tmp_path / "w2",
                              load=lambda n: pytest.fail("a and b are in the file") if n != "c" else teachers[n])
    assert by_file.equal(direct) and by_file[:, 0].allclose(torch.full((len(faces),), 1 / 3))  # not half the file
    again = export_teacher_targets([str(file), "c"], faces, tmp_path / "abc.safetensors", tmp_path / "cache",
                                   load=lambda n: teachers[n])  # a file of a file names the teachers inside
    assert json.loads(targets_file_meta(again)["teachers"]) == ["a", "b", "c"]
    with pytest.raises(ValueError, match="other faces"):
        teacher_targets([str(file)], make_faces(2, 1), tmp_path / "w3")
    with pytest.raises(ValueError, match="not online"):
        online_teachers([str(file)], lambda x: x.float())
    with pytest.raises(ValueError, match="must end in"):
        export_teacher_targets(["a"], faces, tmp_path / "a.pt", tmp_path / "cache", load=lambda n: teachers[n])


def test_cli_a_targets_file_teaches_as_the_teacher_itself(capsys, tiny_model: Path, tmp_path: Path):
    from test_cli import write_fer2013_csv

    data = write_fer2013_csv(tmp_path / "fer2013.csv", {"train": make_faces(12, 1), "val": make_faces(4, 2)})
    file = tmp_path / "tiny-targets.safetensors"
    assert main(["targets", str(data), "--teacher", "tiny", "--out", str(file)]) == 0
    assert "1 teachers' targets on 84 train faces" in capsys.readouterr().out
    assert main(["targets", str(data), "--teacher", str(file), "tiny", "--out", str(tmp_path / "two.safetensors")]) == 0
    assert "2 teachers' targets" in capsys.readouterr().out  # the file's teacher and tiny: each counts
    run = ["train", str(data), "--widths", "8", "16", "--convs", "1", "1", "--epochs", "2", "--batch-size", "16",
           "--threads", "1", "--kd-weight", "0.7"]
    assert main([*run, "--name", "by-model", "--teacher", "tiny", "--workdir", str(tmp_path / "w1")]) == 0
    assert main([*run, "--name", "by-file", "--teacher", str(file), "--workdir", str(tmp_path / "w2")]) == 0
    taught = [next((tmp_path / w).glob("teachers-*.safetensors")) for w in ("w1", "w2")]
    assert load_file(taught[0])["probs"].equal(load_file(taught[1])["probs"])
    by_model, by_file = load_model("by-model", runtime="torch"), load_model("by-file", runtime="torch")
    for k, v in by_model.state_dict().items():  # the same targets: the same run, weight for weight
        assert v.equal(by_file.state_dict()[k]), k
    assert "tiny" in {r["model"] for r in by_file.meta["runs"]}  # the teacher's run, read from the file
    other = write_fer2013_csv(tmp_path / "other.csv", {"train": make_faces(12, 3), "val": make_faces(4, 2)})
    assert main([*run, "--teacher", str(file), "--workdir", str(tmp_path / "w3")]) == 0  # same data: fine
    assert main(["train", str(other), *run[2:], "--teacher", str(file), "--workdir", str(tmp_path / "w4")]) != 0
    assert "other faces" in capsys.readouterr().err


def test_a_missing_targets_file_is_refused_as_one(tmp_path: Path):
    with pytest.raises(ValueError, match="not a targets file this app wrote"):
        teacher_targets([str(tmp_path / "gone.safetensors")], make_faces(2, 0), tmp_path / "w")


def test_the_committed_five_teachers_targets_fit_the_dev_data():
    """assets/five-teachers.safetensors (issue #12's runs on a GPU) is read against FER-2013's train faces: five
    teachers, a distribution per face, and the teachers named as the plan names them."""
    from fer_app.data import load_npz
    from fer_app.runtimes import FER_DEV_DATA

    file = Path(__file__).resolve().parent.parent / "assets" / "five-teachers.safetensors"
    if not FER_DEV_DATA.is_file():
        pytest.skip(f"{FER_DEV_DATA} (FER-2013 dev data) is not here")
    shares = read_teacher_targets(file, load_npz(FER_DEV_DATA)["train"])
    assert len(shares) == 5 and all(s.shape == (28709, K) for s in shares)
    assert all(torch.allclose(s.sum(1), torch.ones(28709), atol=1e-4) for s in shares)
    names = json.loads(targets_file_meta(file)["teachers"])
    assert [Path(n).name for n in names] == ["compact-fer2013-soup3", "compact-fer2013-soup", "teacher-wide",
                                             "teacher-wide-s13-mixup", "teacher-wide-s14-mixup"]
    runs = {r["model"] for r in json.loads(targets_file_meta(file)["runs"])}  # for the student's card
    assert {"teacher-wide-s13-mixup", "teacher-wide-s14-mixup", "compact-fer2013-kd-swa"} <= runs
