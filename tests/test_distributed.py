"""Several processes through torchrun on the CPU (gloo): the same results as one process with the
same global batch, the same saved model format, a killed rank resumed by torchrun's restart."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

from conftest import make_faces
from fer_app import distributed
from fer_app.training import TrainConfig, _shard_order, train

ROOT = Path(__file__).resolve().parent.parent
TORCHRUN = Path(sys.executable).with_name("torchrun")
#: 8 epochs of the tiny compact net, fp32 (bf16 rounding would add noise to the comparison).
SETTINGS = dict(widths=(8, 16), convs_per_stage=(1, 1), epochs=8, batch_size=16, lr=0.05, seed=0, augment=False,
                label_smoothing=0.0, balance="none", precision="fp32", threads=1, swa_epochs=3)
ARGS = ["--widths", "8", "16", "--convs", "1", "1", "--epochs", "8", "--batch-size", "16", "--lr", "0.05",
        "--no-augment", "--label-smoothing", "0", "--balance", "none", "--precision", "fp32", "--threads", "1",
        "--swa-epochs", "3"]
#: Final val accuracy of 2 processes vs 1 with the same global batch: within 0.1 (6 of 56 val faces).
#: The batches are the same (see test_ranks_share_the_global_batch); what differs is BatchNorm, whose
#: batch statistics each rank takes over its 8 faces instead of 16, and the order of float sums.
TOLERANCE = 0.1

pytestmark = pytest.mark.skipif(not TORCHRUN.is_file() or not torch.distributed.is_gloo_available(),
                                reason="needs torchrun and gloo")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ddp")
    splits = {"train": make_faces(24, seed=1), "val": make_faces(8, seed=2)}
    np.savez(folder / "tiny.npz", train_x=splits["train"].images, train_y=splits["train"].labels,
             val_x=splits["val"].images, val_y=splits["val"].labels)
    return folder, splits


def torchrun(folder: Path, name: str, *extra: str, script: list[str] | None = None, env: dict | None = None,
             restarts: int = 0) -> subprocess.CompletedProcess:
    cmd = [str(TORCHRUN), "--standalone", "--nproc_per_node", "2", "--max-restarts", str(restarts),
           *(script or ["-m", "fer_app"]), "train", str(folder / "tiny.npz"), *ARGS, "--name", name,
           "--workdir", str(folder / f"run-{name}"), *extra]
    env = {**os.environ, "FER_APP_MODELS": str(folder / "models"), "FER_APP_HOME": str(folder / "home"),
           "OMP_NUM_THREADS": "1", **(env or {})}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def saved(folder: Path, name: str) -> tuple[dict, dict[str, tuple]]:
    model = folder / "models" / name
    with safe_open(str(model / "model.safetensors"), "pt") as f:
        shapes = {k: (f.get_slice(k).get_dtype(), tuple(f.get_slice(k).get_shape())) for k in f.keys()}
    return json.loads((model / "config.json").read_text()), shapes


@pytest.fixture(scope="module")
def two_processes(data):
    """The run as the Training page starts it with 2 GPUs: a job running the CLI command under torchrun
    (here on the CPU, gloo), its progress relayed from the command's progress file, saved by the page."""
    from fer_app import config, jobs
    from fer_app import model as model_module
    from fer_app.cli import train_command
    from fer_app.mixing import Source

    folder, _ = data
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(config, "APP_HOME", folder / "home")
        mp.setattr(model_module, "MODELS_DIR", folder / "models")
        cfg = TrainConfig(**SETTINGS)
        job = jobs.start_training(cfg, {}, run_name="ddp", processes=2,
                                  command=train_command(cfg, [Source(folder / "tiny.npz")], name="x"))
        status = job.wait(240)
        log = (folder / "home" / "runs" / "ddp" / "torchrun.log").read_text()
        assert status.state == jobs.FINISHED, (status.error, log[-3000:])
        assert [h.epoch for h in status.history] == list(range(1, 9))  # relayed while it ran
        assert log.count("epoch 8/8") == 1  # rank 0 alone reports
        job.save("ddp")
        jobs.clear_job(job)
    return saved(folder, "ddp")


def test_ranks_share_the_global_batch():
    """Rank r's k-th batch of B/N faces, over all ranks, is one process's k-th batch of B faces."""
    one = _shard_order(100, distributed.Context(), seed=3, epoch=5).split(16)
    ranks = [_shard_order(100, distributed.Context(rank=r, world_size=2), seed=3, epoch=5).split(8) for r in (0, 1)]
    assert len(one) == len(ranks[0]) == len(ranks[1])
    for k, batch in enumerate(one):
        assert sorted(batch.tolist()) == sorted(ranks[0][k].tolist() + ranks[1][k].tolist())


def test_two_processes_match_one_with_the_same_global_batch(data, two_processes, models_dir):
    folder, splits = data
    config, shapes = two_processes
    one = train(TrainConfig(**SETTINGS), splits, name="one", workdir=folder / "run-one")
    assert config["training"]["processes"] == 2 and one.model.meta["training"]["processes"] == 1
    acc2, acc1 = config["metrics"]["val"]["accuracy"], one.report["accuracy"]
    assert acc1 > 0.8 and abs(acc2 - acc1) <= TOLERANCE, (acc1, acc2)
    # the weight mean of the last 3 epochs, its BatchNorm statistics measured by both ranks, scored on val
    assert config["training"]["swa"]["epochs_averaged"] == one.model.meta["training"]["swa"]["epochs_averaged"] == 3
    assert abs(config["training"]["swa"]["val_accuracy"] - one.model.meta["training"]["swa"]["val_accuracy"]) \
        <= TOLERANCE
    # the same format as one process's model: the same tensors, the same config keys
    config1, shapes1 = saved(models_dir.parent, "one")
    assert shapes == shapes1
    assert sorted(config) == sorted(config1) and sorted(config["training"]) == sorted(config1["training"])


def test_a_killed_rank_is_restarted_and_resumes(data, two_processes):
    """Rank 1 dies (SIGKILL) in epoch 3; torchrun restarts both ranks, which resume from the epoch-2
    checkpoint (--resume) and end as the uninterrupted run did."""
    folder, _ = data
    steps = 11  # 84 faces per rank in batches of 8
    torchrun(folder, "killed", "--resume", script=[str(ROOT / "tests" / "ddp_worker.py")], restarts=1,
             env={"FER_TEST_KILL_RANK": "1", "FER_TEST_KILL_STEP": str(2 * steps + 3)})
    config, shapes = saved(folder, "killed")
    uninterrupted, uninterrupted_shapes = two_processes
    assert shapes == uninterrupted_shapes  # saved by the CLI's rank 0 as by the page
    assert config["training"]["resumed_after_epochs"] == [2]
    assert [h["epoch"] for h in config["training"]["history"]] == list(range(1, 9))
    assert config["training"]["history"][-1]["train_loss"] == pytest.approx(
        uninterrupted["training"]["history"][-1]["train_loss"], rel=1e-4)
    assert config["metrics"]["val"]["accuracy"] == pytest.approx(uninterrupted["metrics"]["val"]["accuracy"])


def test_gpu_summary_and_the_page_s_torchrun_command(tmp_path):
    from fer_app.jobs import torchrun_command

    assert "none" in distributed.gpu_summary([]) and "CPU" in distributed.gpu_summary([])
    two = [distributed.Gpu(0, "NVIDIA H100 80GB HBM3", 79.6), distributed.Gpu(1, "NVIDIA H100 80GB HBM3", 79.6)]
    assert distributed.gpu_summary(two) == "GPUs: 0: NVIDIA H100 80GB HBM3, 79.6 GB; 1: NVIDIA H100 80GB HBM3, 79.6 GB"
    cmd = torchrun_command(["train", "data.csv", "--epochs", "3"], 2, tmp_path, resume=True)
    assert cmd[1:7] == ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m"]
    assert cmd[7:11] == ["fer_app", "train", "data.csv", "--epochs"] and cmd[-1] == "--resume"
    assert not distributed.launched() and distributed.setup(torch.device("cpu")).world_size == 1
