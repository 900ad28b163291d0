"""fer_app.jobs: one background training job per process, its progress, stop, resume, failures, saving."""

from __future__ import annotations

import time

import pytest
import torch
from conftest import TINY_COMPACT

from fer_app import jobs
from fer_app.evaluate import evaluate
from fer_app.jobs import (
    FAILED,
    FINISHED,
    STOPPED,
    JobRunning,
    check_name,
    clear_job,
    current_job,
    find_checkpoint,
    run_dir,
    start_job,
    start_training,
    training_choices,
)
from fer_app.model import ModelError, ModelInfo, list_models, load_model
from fer_app.training import TrainConfig, TrainResult, train


pytestmark = pytest.mark.usefixtures("no_job_left")


#: Generous: the tests also run on a busy 2-core machine next to a long training run.
WAIT = 1800.0


def tiny(**changes) -> TrainConfig:
    return TrainConfig(**{**TINY_COMPACT, **changes})


def wait_for(predicate, timeout: float = WAIT) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.02)


def test_job_runs_in_background_and_saves_on_request(models_dir, tiny_splits):
    job = start_training(tiny(epochs=2), tiny_splits, run_name="run1", command="python -m fer_app train data.csv")
    assert current_job() is job
    status = job.wait(WAIT)
    assert status.state == FINISHED and status.error is None and not status.running
    assert isinstance(status.result, TrainResult)
    assert [h.epoch for h in status.history] == [1, 2] and status.fraction == pytest.approx(1.0)
    assert status.phase == "done" and status.eta == 0.0 and status.baseline is None
    assert (run_dir("run1") / "checkpoint.safetensors").is_file()
    assert "saved" not in [m.name for m in list_models()]  # nothing is saved until asked

    path = job.save("saved")
    assert job.status().saved_to == path and "saved" in [m.name for m in list_models()]
    assert "python -m fer_app train data.csv --name saved" in (path / "README.md").read_text()
    assert (path / "confusion.png").is_file()
    with pytest.raises(ModelError, match="exists"):
        job.save("saved")
    job.save("saved", overwrite=True)
    with pytest.raises(ValueError, match="not allowed"):
        job.save("../escape")


def test_model_in_use_is_evaluated_on_the_same_val_split(tiny_model, tiny_splits):
    status = start_training(tiny(epochs=1), tiny_splits, run_name="run2", baseline="tiny").wait(WAIT)
    assert status.state == FINISHED and status.baseline_name == "tiny"
    assert status.baseline["accuracy"] == pytest.approx(evaluate(load_model("tiny"), tiny_splits["val"])["accuracy"])
    job = start_training(tiny(epochs=1), tiny_splits, run_name="run3", baseline="no-such-model")
    status = job.wait(WAIT)
    assert status.state == FINISHED and status.baseline is None and "no-such-model" in status.baseline_error


def test_second_job_refused_while_one_runs_then_stop_keeps_the_best(models_dir, tiny_splits):
    job = start_training(tiny(epochs=500), tiny_splits, run_name="long")
    wait_for(lambda: job.status().history)
    with pytest.raises(JobRunning, match="already running"):
        start_training(tiny(), tiny_splits, run_name="other")
    with pytest.raises(JobRunning):
        clear_job()
    assert current_job() is job and job.status().running
    job.stop()
    status = job.wait(WAIT)
    assert status.state == STOPPED and status.stop_requested
    assert status.result.stopped_early and len(status.result.history) < 500
    assert job.save("stopped-best").is_dir()  # the best epoch so far is saved on request
    clear_job()
    assert current_job() is None


def test_stopped_run_resumes_from_its_checkpoint(models_dir, tiny_splits):
    cfg = tiny(epochs=4)
    job = start_training(cfg, tiny_splits, run_name="resumable")
    wait_for(lambda: job.status().history)  # epoch 1 done and checkpointed
    job.stop()
    assert job.wait(WAIT).state == STOPPED
    checkpoint = find_checkpoint("resumable")
    assert checkpoint is not None and checkpoint.config == cfg and checkpoint.epoch >= 1
    assert not checkpoint.complete
    # a new process would find the same checkpoint; a new job with resume=True carries on from it
    resumed = start_training(checkpoint.config, tiny_splits, run_name="resumable", resume=True).wait(WAIT)
    assert resumed.state == FINISHED
    assert [h.epoch for h in resumed.history] == [1, 2, 3, 4]
    assert resumed.history[0] == checkpoint.history[0]
    assert find_checkpoint("resumable").complete


def test_stop_before_the_first_epoch_is_stopped_with_a_message(models_dir, tiny_splits):
    def work(job):
        job.stop()
        return train(tiny(), tiny_splits, workdir=run_dir("early"), callback=job)

    status = start_job("train", "training early", "early", work).wait(WAIT)
    assert status.state == STOPPED and status.result is None and "no epoch finished" in status.error


def test_failures_end_the_job_with_a_clear_message(tiny_model, tiny_splits, caplog):
    before = (tiny_model / "model.safetensors").read_bytes()
    status = start_training(tiny(lr=1e12), tiny_splits, run_name="diverge").wait(WAIT)
    assert status.state == FAILED and "diverged" in status.error and "lower learning rate" in status.error
    assert (tiny_model / "model.safetensors").read_bytes() == before
    clear_job()
    status = start_training(tiny(), {"train": tiny_splits["train"]}, run_name="noval").wait(WAIT)
    assert status.state == FAILED and "need a train and a val split" in status.error
    clear_job()

    def broken(job):
        raise TypeError("a bug")

    status = start_job("train", "broken", "broken", broken).wait(WAIT)
    assert status.state == FAILED and status.error == "a bug"
    assert "broken" in caplog.text  # an unexpected error is logged with its traceback
    with pytest.raises(ModelError, match="no trained model"):
        current_job().save("x")


def test_run_names_and_checkpoints(models_dir, tiny_splits):
    assert check_name("  compact-v2.1_b ") == "compact-v2.1_b"
    for bad in ("", "../x", "a/b", ".hidden", "x" * 65, "a b"):
        with pytest.raises(ValueError, match="not allowed"):
            check_name(bad)
    assert run_dir("r").parent.name == "runs"
    assert find_checkpoint("never-ran") is None
    folder = run_dir("corrupt")
    folder.mkdir(parents=True)
    (folder / "checkpoint.safetensors").write_bytes(b"x")
    (folder / "checkpoint.json").write_text("{not json")
    assert find_checkpoint("corrupt") is None


def test_training_choices():
    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    by_key = {(c.encoder, c.mode): c for c in training_choices(None, cpu, clip=False)}
    assert by_key["compact", "full"].available and not by_key["compact", "head"].available
    assert "nothing to freeze" in by_key["compact", "head"].note
    assert not by_key["clip-vit-b32", "head"].available and "fetch-clip" in by_key["clip-vit-b32", "head"].note
    assert not by_key["clip-vit-b32", "full"].available and "fetch-clip" in by_key["clip-vit-b32", "full"].note
    compact = ModelInfo("tiny", None, "compact")
    by_key = {(c.encoder, c.mode): c for c in training_choices(compact, cpu, clip=True)}
    assert by_key["compact", "head"].available and by_key["compact", "full"].available
    assert not by_key["clip-vit-b32", "head"].available and "compact encoder" in by_key["clip-vit-b32", "head"].note
    assert not by_key["clip-vit-b32", "full"].available
    by_key = {(c.encoder, c.mode): c for c in training_choices(None, cpu, clip=True)}
    assert by_key["clip-vit-b32", "full"].available
    assert "no GPU here" in by_key["clip-vit-b32", "full"].warning  # offered on the CPU, with a warning
    clip = ModelInfo("clip-vit-b32-zero-shot", None, "clip-vit-b32")
    by_key = {(c.encoder, c.mode): c for c in training_choices(clip, gpu, clip=True)}
    assert by_key["clip-vit-b32", "head"].available and not by_key["compact", "full"].available
    assert by_key["clip-vit-b32", "full"].available and not by_key["clip-vit-b32", "full"].warning


def test_default_lr_matches_the_cli():
    from fer_app.cli import _train_config, build_parser

    for optimizer, lr in jobs.DEFAULT_LR.items():
        args = build_parser().parse_args(["train", "data.csv", "--optimizer", optimizer])
        assert _train_config(args).lr == lr == jobs.default_lr(optimizer)
    for optimizer, lr in jobs.CLIP_FULL_LR.items():
        args = build_parser().parse_args(["train", "data.csv", "--optimizer", optimizer, "--encoder", "clip-vit-b32"])
        assert _train_config(args).lr == lr == jobs.default_lr(optimizer, "clip-vit-b32", "full")
    assert jobs.default_lr("adamw", "clip-vit-b32", "head") == jobs.DEFAULT_LR["adamw"]


def test_a_resumed_runs_pace_reaches_the_page_through_the_progress_file(tmp_path):
    """A torchrun job's progress is written by the CLI and read back by the page's job: `steps_before`
    (the epochs an earlier process did) travels with it, so the page's ETA is the pace of this process."""
    import json

    from fer_app.training import Progress

    p = Progress("train", 3, 10, 5, 100, elapsed=21.0, steps_before=200)  # 5 steps here in 21 s
    jobs.ProgressFile(tmp_path / "progress.jsonl", None).on_progress(p)
    record = json.loads((tmp_path / "progress.jsonl").read_text())["progress"]
    job = jobs.Job("train", "t", "run", lambda job: None)
    job.on_progress(Progress(**record))
    assert job.status().eta == pytest.approx(21.0 / 5 * (1000 - 205))
    assert job.status().fraction == pytest.approx(205 / 1000)
