"""The training engine on tiny synthetic data: learns, checkpoints, resumes, stops, refuses to overwrite."""

from __future__ import annotations

import json

import numpy as np
import torch
import pytest

from conftest import TINY_COMPACT
from fer_app.evaluate import evaluate
from fer_app.model import ModelError, load_model
from fer_app.training import (Callback, TrainConfig, TrainingError, class_weights, lr_at, read_checkpoint_meta, train,
                              use_bf16)


class StopAfterFirstEpoch(Callback):
    def __init__(self):
        self.epochs = 0

    def on_epoch(self, stats, progress):
        self.epochs += 1

    def should_stop(self):
        return self.epochs >= 1


def interrupted_and_resumed(cfg, splits, tmp_path):
    """A run stopped after epoch 1 then resumed; checked to end like an uninterrupted one (same seeds,
    restored optimizer and RNG state). Returns the resumed run's result."""
    first = train(cfg, splits, workdir=tmp_path / "run", callback=StopAfterFirstEpoch())
    assert len(first.history) == 1 and first.stopped_early
    resumed = train(cfg, splits, workdir=tmp_path / "run", resume=True)
    full = train(cfg, splits, workdir=tmp_path / "fresh")
    assert resumed.history[-1].train_loss == pytest.approx(full.history[-1].train_loss, rel=1e-4)
    return resumed


def test_trains_saves_and_reports(tiny_model, tiny_splits):
    model = load_model(tiny_model)
    report = evaluate(model, tiny_splits["val"])
    assert report["accuracy"] > 0.5  # chance is 1/7; the class is drawn into the image
    cfg = json.loads((tiny_model / "config.json").read_text())
    assert cfg["metrics"]["val"]["accuracy"] == pytest.approx(report["accuracy"], abs=1e-6)
    assert cfg["training"]["epochs_run"] == 3 and len(cfg["training"]["history"]) == 3
    assert (tiny_model / "confusion.png").stat().st_size > 1000


def test_resume_continues_from_checkpoint(models_dir, tiny_splits, tmp_path):
    cfg = TrainConfig(**TINY_COMPACT)

    resumed = interrupted_and_resumed(cfg, tiny_splits, tmp_path)
    assert [h.epoch for h in resumed.history] == [1, 2, 3]
    other = TrainConfig(**{**TINY_COMPACT, "lr": 0.01})
    with pytest.raises(TrainingError, match="other settings"):
        train(other, tiny_splits, workdir=tmp_path / "run", resume=True)


def test_a_resumed_runs_eta_is_its_own_pace_not_the_earlier_sessions(models_dir, tiny_splits, tmp_path):
    """The first session is slowed to 0.2 s a step; the resumed one runs at full speed, and its ETA says so
    (the run's total seconds over its total steps would carry the slow session's pace into the estimate)."""
    import time

    class SlowFirstEpoch(StopAfterFirstEpoch):
        def on_progress(self, progress):
            time.sleep(0.2)

    class Seen(Callback):
        def __init__(self):
            self.seen = []

        def on_progress(self, progress):
            self.seen.append((progress.done, progress.steps_before, progress.elapsed, progress.eta,
                              progress.epochs * progress.steps))

    cfg = TrainConfig(**TINY_COMPACT)
    train(cfg, tiny_splits, workdir=tmp_path / "run", callback=SlowFirstEpoch())
    seen = Seen()
    train(cfg, tiny_splits, workdir=tmp_path / "run", resume=True, callback=seen)
    steps = seen.seen[0][4] // cfg.epochs
    assert seen.seen[0][:2] == (steps + 1, steps)  # epoch 2's first step, epoch 1's steps done before
    for done, _, elapsed, eta, total in seen.seen:
        assert elapsed < 0.2 * (done - steps)  # this process's clock only
        assert 0 <= eta < 0.1 * (total - done) or done == total


def test_diverged_run_keeps_previous_model(tiny_model, tiny_splits, models_dir):
    before = (tiny_model / "model.safetensors").read_bytes()
    cfg = TrainConfig(**{**TINY_COMPACT, "lr": 1e12, "optimizer": "sgd"})
    with pytest.raises(TrainingError, match="diverged"):
        train(cfg, tiny_splits, name="tiny", overwrite=True, workdir=models_dir.parent / "div")
    assert (tiny_model / "model.safetensors").read_bytes() == before


def test_reading_the_loss_every_few_steps_changes_nothing_but_the_progress_calls(tiny_splits, tmp_path, monkeypatch):
    """A GPU reads the loss on the host every few steps (`HOST_READ_EVERY`); tried here on the CPU: the same run,
    epoch for epoch, with progress at every 4th step and each epoch's last."""
    import fer_app.training as training

    class Steps(Callback):
        def __init__(self):
            self.steps = []

        def on_progress(self, progress):
            self.steps.append((progress.epoch, progress.step, progress.steps))

    runs = {}
    for every in (1, 4):
        monkeypatch.setitem(training.HOST_READ_EVERY, "cpu", every)
        seen = Steps()
        result = train(TrainConfig(**TINY_COMPACT), tiny_splits, workdir=tmp_path / str(every), callback=seen)
        runs[every] = ([{k: v for k, v in vars(h).items() if k != "seconds"} for h in result.history], seen.steps)
    assert runs[4][0] == runs[1][0]  # losses, accuracies, val: the same sums in the same order
    per_epoch = runs[1][1][0][2]
    assert [s for _, s, _ in runs[1][1]] == list(range(1, per_epoch + 1)) * TINY_COMPACT["epochs"]
    assert [s for _, s, _ in runs[4][1]] == [*range(4, per_epoch + 1, 4), per_epoch] * TINY_COMPACT["epochs"]


def test_a_divergence_is_caught_between_reads_and_keeps_the_previous_model(tiny_model, tiny_splits, models_dir,
                                                                          monkeypatch):
    import fer_app.training as training

    monkeypatch.setitem(training.HOST_READ_EVERY, "cpu", 1000)  # only the epoch's end reads
    before = (tiny_model / "model.safetensors").read_bytes()
    with pytest.raises(TrainingError, match="diverged at epoch 1"):
        train(TrainConfig(**{**TINY_COMPACT, "lr": 1e12}), tiny_splits, name="tiny", overwrite=True,
              workdir=models_dir.parent / "div")
    assert (tiny_model / "model.safetensors").read_bytes() == before
    assert not (models_dir.parent / "div" / "checkpoint.safetensors").exists()


def test_existing_name_refused(tiny_model, tiny_splits):
    with pytest.raises(ModelError, match="exists"):
        train(TrainConfig(**TINY_COMPACT), tiny_splits, name="tiny")


def test_head_on_cached_embeddings(tiny_model, tiny_splits, models_dir, monkeypatch):
    import fer_app.training as training

    calls = []
    real = training.compute_embeddings
    monkeypatch.setattr(training, "compute_embeddings", lambda *a, **k: calls.append(1) or real(*a, **k))
    cfg = TrainConfig(mode="head", init_from="tiny", head="mlp", optimizer="adamw", lr=1e-2, epochs=5, threads=1)
    first = train(cfg, tiny_splits, name="tiny-head", workdir=models_dir.parent / "h1")
    assert len(calls) == 2  # train + val embedded once
    train(cfg, tiny_splits, workdir=models_dir.parent / "h2")
    assert len(calls) == 2  # ... and read from the cache the second time
    model = load_model("tiny-head")
    assert model.head.kind == "mlp"
    assert evaluate(model, tiny_splits["val"])["accuracy"] == pytest.approx(first.report["accuracy"], abs=1e-6)


def test_early_stopping(models_dir, tiny_splits, tmp_path):
    cfg = TrainConfig(**{**TINY_COMPACT, "epochs": 30, "lr": 1e-6, "patience": 1, "schedule": "constant"})
    result = train(cfg, tiny_splits, workdir=tmp_path / "es")
    assert result.stopped_early and len(result.history) < 30


def test_class_weights_and_schedule():
    labels = np.array([0] * 100 + [1] * 25 + [2] * 4)
    w = class_weights(labels, "sqrt", 3).numpy()
    assert w[2] > w[1] > w[0]
    assert float((w[labels]).mean()) == pytest.approx(1.0, rel=1e-5)
    assert np.allclose(class_weights(labels, "none", 3).numpy(), 1)
    cfg = TrainConfig(lr=0.1, schedule="onecycle")
    lrs = [lr_at(cfg, s, 100) for s in range(100)]
    assert max(lrs) == pytest.approx(0.1, rel=0.05) and lrs[0] < 0.05 and lrs[-1] < 0.01


def test_bad_config_rejected():
    with pytest.raises(ValueError, match="balance"):
        TrainConfig(balance="weird")
    with pytest.raises(TrainingError, match="val"):
        train(TrainConfig(**TINY_COMPACT), {"train": None})  # type: ignore[dict-item]


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_precision_learns_and_reports_fp32(tiny_splits, tmp_path, precision):
    result = train(TrainConfig(**{**TINY_COMPACT, "precision": precision}), tiny_splits, workdir=tmp_path)
    assert result.report["accuracy"] > 0.5
    assert result.model.meta["training"]["precision"] == ("bf16 autocast" if precision == "bf16" else "fp32")
    # the returned model runs in plain fp32 NCHW, as loading it later would
    assert all(p.dtype == torch.float32 and p.is_contiguous() for p in result.model.parameters())


def test_threads_0_trains_on_torchs_default_not_the_count_a_model_left(tiny_splits, tmp_path, monkeypatch) -> None:
    """A model sets torch's count per thread, which also sets the count new threads start with (a live page's
    frame thread: 1). Training asked for torch's default (threads 0, the Train page's default, in a job thread of
    its own) gets torch's count at import, not that one."""
    import threading

    from fer_app import runtimes

    monkeypatch.setattr(runtimes, "TORCH_DEFAULT_THREADS", 3)
    before = torch.get_num_threads()
    results = []

    def job() -> None:
        results.append(train(TrainConfig(**{**TINY_COMPACT, "threads": 0, "epochs": 1}), tiny_splits, workdir=tmp_path))

    try:
        runtimes.use_torch_threads(1)  # as a model around an int8 encoder leaves it
        worker = threading.Thread(target=job)
        worker.start()
        worker.join()
    finally:
        torch.set_num_threads(before)
    assert results and results[0].device.endswith("3 threads)")


def test_auto_precision_follows_the_hardware():
    cpu = torch.device("cpu")
    assert use_bf16("fp32", cpu) is False and use_bf16("bf16", cpu) is True
    assert use_bf16("auto", cpu) == bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    with pytest.raises(ValueError, match="precision"):
        TrainConfig(precision="fp8")


# ---------------------------------------------------------------- full fine-tune of (tiny) CLIP

#: A full CLIP fine-tune on the tiny randomly initialised CLIP of conftest (224 px input, 32 px patches).
TINY_CLIP = dict(encoder="clip-vit-b32", mode="full", epochs=2, batch_size=16, optimizer="adamw", lr=3e-3,
                 label_smoothing=0.0, seed=0, threads=1)


@pytest.fixture(scope="module")
def small_splits():
    from conftest import make_faces

    return {"train": make_faces(8, seed=1), "val": make_faces(3, seed=2)}


def test_clip_full_fine_tune_learns_saves_and_reloads(models_dir, tiny_clip_dir, small_splits, monkeypatch):
    from safetensors.torch import load_file

    import fer_app.training as training
    from fer_app.encoders.clip import ClipEncoder, load_clip_encoder

    sizes = []
    real = ClipEncoder.normalize
    monkeypatch.setattr(ClipEncoder, "normalize", lambda self, x: sizes.append(len(x)) or real(self, x))
    monkeypatch.setattr(training, "EVAL_FLOATS", 5 * 3 * 224 * 224)  # val in batches of 5 faces
    cfg = TrainConfig(**TINY_CLIP, augment=False, clip_source=str(tiny_clip_dir))
    result = train(cfg, small_splits, name="clip-ft", workdir=models_dir.parent / "run")
    losses = [h.train_loss for h in result.history]
    assert len(losses) == 2 and losses[1] < losses[0], losses
    assert max(sizes) <= 16  # train batches and val batches of 5: the val set is never normalised whole
    # the encoder trains at a tenth of the head's learning rate
    groups = read_checkpoint_meta(models_dir.parent / "run" / "checkpoint.safetensors")["opt_param_groups"]
    assert [g["lr_scale"] for g in groups] == [0.1, 1.0]
    assert groups[0]["lr"] == pytest.approx(0.1 * groups[1]["lr"])

    folder = result.saved_to
    cfg_json = json.loads((folder / "config.json").read_text())
    assert cfg_json["encoder"] == {"type": "clip-vit-b32", "source": str(tiny_clip_dir), "fine_tuned": True}
    keys = set(load_file(str(folder / "model.safetensors")))
    assert any(k.startswith("encoder.vision.") for k in keys) and any(k.startswith("head.") for k in keys)
    base = load_clip_encoder(tiny_clip_dir).state_dict()
    tuned = result.model.encoder.state_dict()
    assert any(not torch.equal(base[k], tuned[k]) for k in base)  # CLIP's own weights did change

    loaded = load_model("clip-ft", runtime="torch")
    assert loaded.encoder.fine_tuned and loaded.tta_flip
    crops = [small_splits["val"].images[i] for i in range(6)] + [np.full((64, 80, 3), 90, np.uint8)]
    np.testing.assert_allclose(loaded.predict_proba(crops), result.model.predict_proba(crops), atol=1e-6)
    assert evaluate(loaded, small_splits["val"])["accuracy"] == pytest.approx(result.report["accuracy"], abs=1e-6)


def test_clip_full_fine_tune_resumes_with_augmentation(models_dir, tiny_clip_dir, small_splits, tmp_path):
    cfg = TrainConfig(**TINY_CLIP, augment=True, clip_source=str(tiny_clip_dir), precision="bf16")

    resumed = interrupted_and_resumed(cfg, small_splits, tmp_path)
    assert [h.epoch for h in resumed.history] == [1, 2]
    assert resumed.model.meta["training"]["precision"] == "bf16 autocast"
    assert all(p.dtype == torch.float32 and p.is_contiguous() for p in resumed.model.parameters())


def test_clip_full_fine_tune_from_the_command_line(models_dir, tiny_clip_dir, small_splits, tmp_path, capsys):
    from test_cli import write_fer2013_csv

    from fer_app.cli import main

    csv = write_fer2013_csv(tmp_path / "fer2013.csv", small_splits)
    code = main(["train", str(csv), "--encoder", "clip-vit-b32", "--mode", "full", "--clip", str(tiny_clip_dir),
                 "--optimizer", "adamw", "--epochs", "1", "--batch-size", "16", "--threads", "1", "--no-augment",
                 "--name", "clip-cli", "--workdir", str(tmp_path / "run")])
    assert code == 0, capsys.readouterr().err
    cfg = json.loads((models_dir / "clip-cli" / "config.json").read_text())
    assert cfg["encoder"]["fine_tuned"] and cfg["training"]["config"]["lr"] == 1e-4  # CLIP's default lr
    assert "--mode full" in (models_dir / "clip-cli" / "README.md").read_text()
    assert load_model("clip-cli", runtime="torch").predict_proba([small_splits["val"].images[0]]).shape == (1, 7)


# ---------------------------------------------------------------- checkpoints: one atomic unit


class Killed(BaseException):
    """Stands for a SIGKILL: nothing in the engine catches it."""


def test_kill_while_writing_a_checkpoint_resumes_from_the_last_whole_one(models_dir, tiny_splits, tmp_path,
                                                                         monkeypatch):
    """The checkpoint is one file (tensors, and the JSON state with the tensors' digest in its header),
    renamed into place: a kill while epoch 2's is written leaves epoch 1's whole, never epoch 2's
    weights with epoch 1's state, and the resumed run ends as an uninterrupted one."""
    import fer_app.files as files
    import fer_app.training as training

    real, calls = files.save_file, []

    def dying_save(tensors, filename, metadata=None):
        calls.append(filename)
        real(tensors, filename, metadata=metadata)
        if metadata and json.loads(metadata[training.CHECKPOINT_META_KEY])["epoch"] == 2:
            with open(filename, "r+b") as f:  # half written when the process dies
                f.truncate(f.seek(0, 2) // 2)
            raise Killed

    cfg = TrainConfig(**TINY_COMPACT)
    monkeypatch.setattr(files, "save_file", dying_save)
    with pytest.raises(Killed):
        train(cfg, tiny_splits, workdir=tmp_path / "run")
    monkeypatch.setattr(files, "save_file", real)
    ckpt = tmp_path / "run" / "checkpoint.safetensors"
    assert read_checkpoint_meta(ckpt)["epoch"] == 1
    resumed = train(cfg, tiny_splits, workdir=tmp_path / "run", resume=True)
    full = train(cfg, tiny_splits, workdir=tmp_path / "fresh")
    assert [h.epoch for h in resumed.history] == [1, 2, 3]
    assert resumed.history[-1].train_loss == pytest.approx(full.history[-1].train_loss, rel=1e-4)
    assert resumed.model.meta["training"]["resumed_after_epochs"] == [1]
    assert not list((tmp_path / "run").glob(".*.tmp"))  # the half-written file was cleared
    best = resumed.model.meta["training"]["best_epoch"]
    assert [p.name for p in (tmp_path / "run").glob("best-*")] == [f"best-{best:04d}.safetensors"]


def test_damaged_or_old_checkpoint_refused_on_resume(models_dir, tiny_splits, tmp_path):
    cfg = TrainConfig(**{**TINY_COMPACT, "epochs": 1})
    train(cfg, tiny_splits, workdir=tmp_path / "run")
    ckpt = tmp_path / "run" / "checkpoint.safetensors"
    data = bytearray(ckpt.read_bytes())
    data[-100] ^= 0xFF  # a flipped byte in the tensor data: safetensors itself does not notice
    ckpt.write_bytes(bytes(data))
    with pytest.raises(TrainingError, match="digest"):
        train(cfg, tiny_splits, workdir=tmp_path / "run", resume=True)
    from safetensors.torch import save_file

    save_file({"model.x": torch.zeros(1)}, str(ckpt))  # the earlier two-file format: state in checkpoint.json
    with pytest.raises(TrainingError, match="not a checkpoint of this version"):
        train(cfg, tiny_splits, workdir=tmp_path / "run", resume=True)


# ---------------------------------------------------------------- AMP: fp16 with a gradient scaler


def test_fp16_with_gradient_scaler_learns_and_resumes(models_dir, tiny_splits, tmp_path):
    """The CUDA fp16 path (autocast + GradScaler, its state in the checkpoint), run on the CPU."""
    cfg = TrainConfig(**{**TINY_COMPACT, "precision": "fp16", "epochs": 2})  # fp16 is slow on a CPU
    resumed = interrupted_and_resumed(cfg, tiny_splits, tmp_path)
    assert resumed.history[1].train_loss < resumed.history[0].train_loss
    assert resumed.model.meta["training"]["precision"] == "fp16 autocast"
    scaler = read_checkpoint_meta(tmp_path / "run" / "checkpoint.safetensors")["scaler"]
    assert scaler["scale"] > 0


def test_amp_dtype_per_device(monkeypatch):
    from fer_app.training import amp_dtype

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert amp_dtype("fp32", cpu) is None and amp_dtype("fp16", cpu) is torch.float16
    assert amp_dtype("bf16", cpu) is torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert amp_dtype("auto", cuda) is torch.float16  # e.g. a V100 or T4
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert amp_dtype("auto", cuda) is torch.bfloat16  # Ampere and later


class FakeHaarViews(list):
    """Stands in for `robustness.haar_views`: records each call's options and returns `views` (the faces
    as given while it is None), every face found."""

    views: np.ndarray | None = None

    def __call__(self, faces, **options):
        self.append(options)
        if options.get("progress"):
            options["progress"](len(faces), len(faces))
        return (self.views if self.views is not None else faces.images.copy()), np.ones(len(faces), bool)


@pytest.fixture()
def fake_haar_views(monkeypatch) -> FakeHaarViews:
    """The engine's Haar views made by a `FakeHaarViews`, with no media read."""
    from fer_app import robustness

    fake = FakeHaarViews()
    monkeypatch.setattr(robustness, "haar_views", fake)
    monkeypatch.setattr(robustness, "real_backgrounds", lambda: [np.zeros((8, 8, 3), np.uint8)])
    return fake


def test_haar_views_reach_the_network_in_their_share(models_dir, tiny_splits, tmp_path, fake_haar_views):
    cfg = TrainConfig(**{**TINY_COMPACT, "epochs": 4})
    learned = train(cfg, tiny_splits, workdir=tmp_path / "plain")
    assert learned.report["accuracy"] > 0.5 and not fake_haar_views  # off by default: no views made
    fake_haar_views.views = np.full_like(tiny_splits["train"].images, 128)  # views with nothing to learn from
    blind = train(TrainConfig(**{**TINY_COMPACT, "epochs": 4}, haar_views=1.0), tiny_splits, workdir=tmp_path / "v")
    assert blind.report["accuracy"] < 0.35  # every face shown as its (blank) view: nothing learned
    assert len(fake_haar_views) == 1 and fake_haar_views[0]["seed"] == 0
    assert list((tmp_path / "v").glob("haar-views-*.safetensors"))  # cached in the work folder


def test_haar_views_are_drawn_per_face_and_a_run_resumes_exactly(models_dir, tiny_splits, tmp_path, fake_haar_views):
    from fer_app import distributed
    from fer_app.training import _InMemory

    x = torch.zeros((200, 4, 4), dtype=torch.uint8)
    views = torch.ones((200, 4, 4), dtype=torch.uint8)
    data = _InMemory(x, torch.zeros(200, dtype=torch.int64), torch.device("cpu"), distributed.Context(),
                     views=views, share=0.3)
    xb = torch.cat([b[0] for b in data.train_batches(64, 0, 1, torch.Generator().manual_seed(0))])
    per_face = xb.flatten(1)
    assert ((per_face == 0).all(1) | (per_face == 1).all(1)).all()  # a face is wholly one view or the other
    assert 0.2 < (per_face == 1).all(1).float().mean() < 0.4
    assert (torch.cat([b[0] for b in data.train_batches(64, 0, 1)]) == 0).all()  # no generator: the faces
    fake_haar_views.views = np.ascontiguousarray(tiny_splits["train"].images[:, ::-1])  # upside down
    interrupted_and_resumed(TrainConfig(**{**TINY_COMPACT, "epochs": 3}, haar_views=0.5), tiny_splits, tmp_path)
    assert len(fake_haar_views) == 2  # made once per work folder: the resumed run read its cache
    with pytest.raises(ValueError, match="haar_views"):
        TrainConfig(haar_views=1.5)
    with pytest.raises(TrainingError, match="head mode"):
        train(TrainConfig(mode="head", haar_views=0.5), tiny_splits, workdir=tmp_path / "head")


def test_cli_train_with_haar_views_and_swa(models_dir, tmp_path, capsys, fake_haar_views):
    from conftest import make_faces
    from fer_app.cli import main
    from test_cli import write_fer2013_csv

    data = write_fer2013_csv(tmp_path / "fer2013.csv", {"train": make_faces(6, 1), "val": make_faces(2, 2)})
    code = main(["train", str(data), "--name", "framed", "--widths", "8", "16", "--convs", "1", "1", "--epochs", "1",
                 "--batch-size", "16", "--threads", "1", "--haar-views", "0.5", "--swa-epochs", "1",
                 "--workdir", str(tmp_path / "w")])
    assert code == 0 and len(fake_haar_views) == 1
    assert "haar-views 42/42" in capsys.readouterr().err  # a log file sees the phase before the epochs
    training = load_model("framed").meta["training"]
    assert training["config"]["haar_views"] == 0.5 and training["config"]["swa_epochs"] == 1
    assert training["swa"]["epochs_averaged"] == 1
    card = (models_dir / "framed" / "README.md").read_text()
    assert "--haar-views 0.5" in card and "--swa-epochs 1" in card  # the recipe reproduces it
    assert "weight mean of the last 1 epoch (SWA)" in card


# ---------------------------------------------------------------- stochastic weight averaging


def test_running_mean_of_states():
    from fer_app.training import _accumulate_mean

    mean: dict[str, torch.Tensor] = {}
    count = 0
    for i in range(3):
        count = _accumulate_mean(mean, {"w": torch.full((2, 2), float(i)), "n": torch.tensor(i)}, count)
    assert count == 3 and torch.equal(mean["w"], torch.full((2, 2), 1.0))
    assert int(mean["n"]) == 2  # integer counters (BatchNorm's batches seen) take the latest value


def test_swa_mean_of_the_last_epochs_survives_a_resume_and_is_chosen_on_val(tiny_splits, tmp_path, monkeypatch):
    from safetensors.torch import load_file

    from fer_app import training

    folded: list[dict[str, torch.Tensor]] = []
    accumulate = training._accumulate_mean

    def recording(mean, state, count):
        folded.append({k: v.detach().float().clone() for k, v in state.items()})
        return accumulate(mean, state, count)

    monkeypatch.setattr(training, "_accumulate_mean", recording)
    cfg = TrainConfig(**{**TINY_COMPACT, "schedule": "constant", "lr": 0.02, "swa_epochs": 2})
    resumed = interrupted_and_resumed(cfg, tiny_splits, tmp_path)
    # folded: epochs 2 and 3 of the resumed run, then of the fresh one (epoch 1 is outside the window)
    assert len(folded) == 4
    saved = load_file(str(tmp_path / "run" / "checkpoint.safetensors"))
    w = next(k for k, v in folded[0].items() if v.dim() == 4)  # the first conv's weights
    assert torch.allclose(saved[f"swa.{w}"], (folded[0][w] + folded[1][w]) / 2, atol=1e-6)
    assert torch.allclose(folded[0][w], folded[2][w], atol=1e-5)  # the resumed run retraced the fresh one
    swa = resumed.model.meta["training"]["swa"]
    assert swa["epochs_averaged"] == 2
    best_epoch = max(h.val_accuracy for h in resumed.history)
    assert swa["chosen"] == (swa["val_accuracy"] > best_epoch)
    assert resumed.report["accuracy"] == pytest.approx(max(best_epoch, swa["val_accuracy"]))
    if swa["chosen"]:
        assert torch.allclose(resumed.model.state_dict()[w], saved[f"swa.{w}"], atol=1e-6)


def test_a_weight_mean_not_yet_begun_may_be_asked_for_on_resume(tiny_splits, tmp_path):
    """A run started without a weight mean gets one on resume while no epoch run lies in its window; the run is the
    one its new settings make from scratch (the mean never steers training), and the change is on record."""
    cfg = TrainConfig(**TINY_COMPACT)  # 3 epochs, no weight mean
    train(cfg, tiny_splits, workdir=tmp_path / "run", callback=StopAfterFirstEpoch())
    too_late = TrainConfig(**{**TINY_COMPACT, "swa_epochs": 3})  # would have averaged epoch 1, already run
    with pytest.raises(TrainingError, match="other settings"):
        train(too_late, tiny_splits, workdir=tmp_path / "run", resume=True)
    with_mean = TrainConfig(**{**TINY_COMPACT, "swa_epochs": 2})
    resumed = train(with_mean, tiny_splits, workdir=tmp_path / "run", resume=True)
    fresh = train(with_mean, tiny_splits, workdir=tmp_path / "fresh")
    assert resumed.history[-1].train_loss == pytest.approx(fresh.history[-1].train_loss, rel=1e-4)
    training = resumed.model.meta["training"]
    assert training["swa"]["epochs_averaged"] == 2
    assert training["swa"]["val_accuracy"] == pytest.approx(fresh.model.meta["training"]["swa"]["val_accuracy"])
    assert training["config"]["swa_epochs"] == 2
    assert training["changed_on_resume"] == [{"after_epoch": 1, "setting": "swa_epochs", "was": 0, "now": 2}]
    assert "changed_on_resume" not in fresh.model.meta["training"]


def test_batchnorm_statistics_measured_anew_over_the_batches():
    from torch import nn

    from fer_app.training import refresh_batchnorm

    net = nn.Sequential(nn.Conv2d(1, 1, 1, bias=False), nn.BatchNorm2d(1))
    nn.init.constant_(net[0].weight, 2.0)
    net.eval()
    batches = [torch.full((4, 1, 3, 3), 1.0), torch.full((4, 1, 3, 3), 3.0)]
    batches[1][:, :, 0, 0] = 5.0  # a batch whose variance is not zero
    refresh_batchnorm(net, batches, prepare=lambda x: x - 1.0)
    seen = torch.cat([b - 1.0 for b in batches]) * 2.0  # through the prepare step and the conv
    assert net[1].running_mean.item() == pytest.approx(seen.mean().item())
    per_batch_var = [((b - 1.0) * 2.0).var().item() for b in batches]  # unbiased, as BatchNorm keeps it
    assert net[1].running_var.item() == pytest.approx(sum(per_batch_var) / 2)
    assert net[1].momentum == 0.1 and not net.training  # restored
    head = nn.Linear(2, 2)
    before = {k: v.clone() for k, v in head.state_dict().items()}
    refresh_batchnorm(head, [torch.ones(3, 2)])  # nothing to measure
    assert all(torch.equal(v, before[k]) for k, v in head.state_dict().items())


def test_swa_window_checked():
    with pytest.raises(ValueError, match="swa_epochs"):
        TrainConfig(epochs=3, swa_epochs=4)
