"""Background training jobs for the Streamlit server: one job at a time per server process.

A job runs `fer_app.training.train` (or any work built on it, such as calibration) in a thread
and records what the training page shows: progress (fraction, ETA, epoch/step, loss, lr), the
history of `EpochStats`, and at the end the result or a one-line error message. `Job.stop()` makes
the engine stop at the next batch; it then keeps the best epoch's weights, which the page saves.

Global state: `_MANAGER` below, a singleton guarded by its lock, is (with the cached model of
`fer_app.ui.common`) the only module-level mutable state of the app. It is what lets a reloaded
page, a new Streamlit session, find the running job, and what refuses a second job in the same
process (two runs would fight over the CPU cores and the page shows one).

With several GPUs (`processes` > 1) the job runs the equivalent CLI command under torch's launcher
(`python -m torch.distributed.run --nproc_per_node N -m fer_app train ...`, one process per GPU,
`fer_app.distributed`); the command reports through a JSON-lines progress file and stops when a
stop file appears, and its model is read back from the run folder when it ends.

Each run keeps its checkpoints in APP_HOME/runs/<run name> (the engine writes one per epoch): when
the server is killed, a new job with the same run name and `resume=True` carries on from the last
finished epoch. The job itself never saves a model over another: `Job.save` needs `overwrite=True`.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shlex
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from fer_app import config
from fer_app import model as model_module
from fer_app.data import DataError, Splits
from fer_app.evaluate import evaluate
from fer_app.metrics import confusion_png
from fer_app.model import ModelError, ModelInfo, load_model, save_model
from fer_app.modelcard import render_card
from fer_app.training import (Callback, EpochStats, Progress, TrainConfig, TrainingError, TrainResult, pick_device,
                              read_checkpoint_meta, train)

log = logging.getLogger(__name__)

#: Default peak learning rate per optimizer (the page's and the CLI's default).
DEFAULT_LR = {"sgd": 0.05, "adamw": 1e-3}
#: ... for a full fine-tune of CLIP: the head's rate; CLIP's encoder trains at a tenth of it
#: (`training.ENCODER_LR_SCALE`), 1e-5 with AdamW, the usual rate for fine-tuning a pretrained ViT.
CLIP_FULL_LR = {"sgd": 0.05, "adamw": 1e-4}
#: Job states; all but "running" are final.
RUNNING, FINISHED, STOPPED, FAILED = "running", "finished", "stopped", "failed"
#: Our own errors: their message is the whole story (no traceback is logged).
EXPECTED_ERRORS = (TrainingError, DataError, ModelError, FileNotFoundError)
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


class JobRunning(RuntimeError):
    """A job is already running in this server process."""


def check_name(name: str, what: str = "name") -> str:
    """`name` stripped, when it is safe as a folder name (models/<name>, runs/<name>); ValueError otherwise."""
    name = name.strip()
    if not _NAME.fullmatch(name):
        raise ValueError(f"{what} {name!r} is not allowed: use 1-64 letters, digits, '.', '_' or '-', "
                         "starting with a letter or digit")
    return name


def run_dir(run_name: str) -> Path:
    """The checkpoint folder of a run: APP_HOME/runs/<run name>."""
    return config.APP_HOME / "runs" / check_name(run_name, "run name")


def model_exists(name: str) -> bool:
    """Whether models/<name> exists (saving there needs overwrite=True)."""
    return (model_module.MODELS_DIR / name.strip()).exists()


def error_message(exc: BaseException) -> str:
    """The first line of an exception's message (its type name when it has none)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def default_lr(optimizer: str, encoder: str = "compact", mode: str = "full") -> float:
    """The default peak learning rate of a run (the page's and the CLI's)."""
    return (CLIP_FULL_LR if (encoder, mode) == ("clip-vit-b32", "full") else DEFAULT_LR)[optimizer]


# ---------------------------------------------------------------- what can be trained here


@dataclass(frozen=True)
class TrainingChoice:
    """An encoder / mode pair the page offers; `available` False comes with a `note` saying why.

    `warning`: what to know before choosing an available one (CLIP's full fine-tune on a CPU is very slow).
    """

    label: str
    encoder: str
    mode: str
    available: bool
    note: str = ""
    warning: str = ""


def clip_available() -> bool:
    """Whether CLIP ViT-B/32 weights are on this machine (nothing is downloaded)."""
    try:
        from fer_app.encoders.clip import resolve_clip_source

        resolve_clip_source()
    except (ImportError, OSError):
        return False
    return True


def training_choices(start: ModelInfo | None = None, device: torch.device | None = None,
                     clip: bool | None = None) -> list[TrainingChoice]:
    """What can be trained from `start` (None: from scratch) on `device`, each available or with a note why not.

    The compact CNN trains fully anywhere; its head alone only on top of a trained encoder. CLIP's
    head trains on cached frozen embeddings, and all of CLIP fine-tunes, when its weights are here;
    the full fine-tune is meant for a GPU: on a CPU it is offered with a warning (very slow).
    """
    device = device or pick_device()
    clip = clip_available() if clip is None else clip
    encoder = start.encoder if start else None
    no_clip = "CLIP weights not found: put them in models/clip-vit-base-patch32 (`python -m fer_app fetch-clip`)"
    wrong_encoder = f"the starting model {start.name!r} has the {encoder} encoder" if start else ""
    gpu = device.type in ("cuda", "mps")
    clip_ok, clip_note = clip and encoder in (None, "clip-vit-b32"), no_clip if not clip else wrong_encoder
    slow = "" if gpu else ("no GPU here: on the CPU every face goes through all of ViT-B/32, forward and backward "
                           "(about 20x the compute of the compact CNN): expect hours per epoch of FER-2013 on a "
                           "few cores. A CUDA or Apple GPU is recommended")
    return [
        TrainingChoice("Compact CNN: train encoder + head", "compact", "full",
                       encoder in (None, "compact"), wrong_encoder),
        TrainingChoice("Compact CNN: head only (frozen encoder)", "compact", "head", encoder == "compact",
                       wrong_encoder if start else "a compact encoder from scratch has learnt nothing to freeze: "
                       "train it fully, or start from a trained compact model"),
        TrainingChoice("CLIP ViT-B/32: head on frozen embeddings", "clip-vit-b32", "head", clip_ok, clip_note),
        TrainingChoice("CLIP ViT-B/32: full fine-tune", "clip-vit-b32", "full", clip_ok, clip_note, slow),
    ]


# ---------------------------------------------------------------- checkpoints of earlier runs


@dataclass(frozen=True)
class CheckpointInfo:
    """The last checkpoint of a run: resuming it continues after `epoch` with its `config`."""

    run_name: str
    folder: Path
    config: TrainConfig
    epoch: int
    best_accuracy: float
    history: list[EpochStats]

    @property
    def complete(self) -> bool:
        return self.epoch >= self.config.epochs


def find_checkpoint(run_name: str) -> CheckpointInfo | None:
    """The checkpoint the engine left in APP_HOME/runs/<run name>, or None (none, or unreadable)."""
    folder = run_dir(run_name)
    if not (folder / "checkpoint.safetensors").is_file():
        return None
    try:  # the state is in the checkpoint's own header: one file, replaced at once
        meta = read_checkpoint_meta(folder / "checkpoint.safetensors")
        return CheckpointInfo(run_name, folder, TrainConfig(**meta["config"]), int(meta["epoch"]),
                              float(meta["best_acc"]), [EpochStats(**h) for h in meta["history"]])
    except (OSError, ValueError, KeyError, TypeError, TrainingError):
        return None


# ---------------------------------------------------------------- jobs


@dataclass(frozen=True)
class JobStatus:
    """A consistent snapshot of a job, for the page (which never reads a job's fields directly)."""

    kind: str                          # "train" or "calibrate"
    title: str
    run_name: str
    state: str                         # RUNNING, FINISHED, STOPPED or FAILED
    phase: str                         # "start", "embed", "teachers", "train", "compare", "done"
    epoch: int
    epochs: int
    step: int
    steps: int
    fraction: float
    eta: float
    elapsed: float
    loss: float
    lr: float
    history: tuple[EpochStats, ...]
    stop_requested: bool
    error: str | None
    result: Any                        # TrainResult, CalibrationResult (kind "calibrate"), or None
    baseline_name: str | None          # the model in use, evaluated on the same val split
    baseline: dict | None              # ... its classification report
    baseline_error: str | None
    saved_to: Path | None

    @property
    def running(self) -> bool:
        return self.state == RUNNING


@dataclass
class _Record:
    """A job's mutable fields, written under the job's lock."""

    state: str = RUNNING
    phase: str = "start"
    progress: Progress = field(default_factory=lambda: Progress("start", 1, 1, 0, 1))
    history: tuple[EpochStats, ...] = ()
    error: str | None = None
    result: Any = None
    baseline: dict | None = None
    baseline_error: str | None = None
    saved_to: Path | None = None
    finished_at: float | None = None


class Job(Callback):
    """Work run in a thread; it is its own engine callback (progress, epochs, the stop flag)."""

    def __init__(self, kind: str, title: str, run_name: str, work: Callable[[Job], Any], *,
                 baseline_name: str | None = None, command: str = "") -> None:
        self.kind, self.title, self.run_name = kind, title, check_name(run_name, "run name")
        self.baseline_name, self.command = baseline_name, command
        self.started_at = time.time()
        self._work: Callable[[Job], Any] | None = work
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._record = _Record()
        self._thread = threading.Thread(target=self._run, name=f"fer-app-job-{run_name}", daemon=True)

    # ---- the engine's callback (called from the job's thread)

    def on_progress(self, progress: Progress) -> None:
        with self._lock:
            self._record.phase = progress.phase
            self._record.progress = replace(progress, history=[])  # the history is kept once, below
            if len(progress.history) != len(self._record.history):
                self._record.history = tuple(progress.history)

    def on_epoch(self, stats: EpochStats, progress: Progress) -> None:
        self.on_progress(progress)

    def should_stop(self) -> bool:
        return self._stop.is_set()

    # ---- what the work function may record besides progress

    def note(self, *, phase: str | None = None, baseline: dict | None = None,
             baseline_error: str | None = None) -> None:
        with self._lock:
            if phase is not None:
                self._record.phase = phase
            if baseline is not None:
                self._record.baseline = baseline
            if baseline_error is not None:
                self._record.baseline_error = baseline_error

    # ---- control, from the page

    @property
    def running(self) -> bool:
        with self._lock:
            return self._record.state == RUNNING

    def stop(self) -> None:
        """Stop at the next batch; the best epoch so far is kept (and can be saved)."""
        self._stop.set()

    def wait(self, timeout: float | None = None) -> JobStatus:
        self._thread.join(timeout)
        return self.status()

    def status(self) -> JobStatus:
        with self._lock:
            r, p = self._record, self._record.progress
            end = r.finished_at or time.time()
            return JobStatus(
                kind=self.kind, title=self.title, run_name=self.run_name, state=r.state, phase=r.phase,
                epoch=p.epoch, epochs=p.epochs, step=p.step, steps=p.steps, fraction=p.fraction,
                eta=p.eta if r.state == RUNNING else 0.0, elapsed=end - self.started_at, loss=p.loss, lr=p.lr,
                history=r.history, stop_requested=self._stop.is_set(), error=r.error, result=r.result,
                baseline_name=self.baseline_name, baseline=r.baseline, baseline_error=r.baseline_error,
                saved_to=r.saved_to)

    def save(self, name: str, *, overwrite: bool = False, command: str = "") -> Path:
        """Save a finished training job's model as models/<name>; ModelError when it exists and not `overwrite`.

        `command` (for the model card) defaults to the job's command with `--name <name>`.
        """
        with self._lock:
            result = self._record.result
        if not isinstance(result, TrainResult):
            raise ModelError("there is no trained model to save (the job has not finished, or failed)")
        command = command or (f"{self.command} --name {shlex.quote(name.strip())}" if self.command else "")
        path = save_trained(result, name, overwrite=overwrite, command=command)
        with self._lock:
            self._record.saved_to = path
        return path

    # ---- the thread

    def _start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        state, result, error = FINISHED, None, None
        try:
            assert self._work is not None
            result = self._work(self)
        except Exception as exc:
            if not isinstance(exc, EXPECTED_ERRORS):
                log.exception("job %s failed", self.title)
            error = error_message(exc)
            # stopped before an epoch ended: the engine says there is nothing to save
            state = STOPPED if self._stop.is_set() and isinstance(exc, TrainingError) else FAILED
        if state == FINISHED and self._stop.is_set():
            state = STOPPED
        with self._lock:
            self._work = None  # drops the data the work held
            self._record.state, self._record.result, self._record.error = state, result, error
            self._record.phase, self._record.finished_at = "done", time.time()


class _Manager:
    """Holds the one job of this process; `start` refuses a second while the first runs."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._job: Job | None = None

    def start(self, job: Job) -> Job:
        with self._lock:
            if self._job is not None and self._job.running:
                raise JobRunning(f"a job is already running ({self._job.title}); stop it or wait until it ends")
            self._job = job
            job._start()
        return job

    def current(self) -> Job | None:
        with self._lock:
            return self._job

    def clear(self, job: Job | None = None) -> None:
        with self._lock:
            if job is not None and self._job is not job:
                return
            if self._job is not None and self._job.running:
                raise JobRunning(f"a job is running ({self._job.title}); stop it first")
            self._job = None


_MANAGER = _Manager()


def current_job() -> Job | None:
    """The running job, or the last one that ended (until `clear_job`), of this server process."""
    return _MANAGER.current()


def clear_job(job: Job | None = None) -> None:
    """Forget the last job (its result); JobRunning while it runs. With `job`: only if it is still the current one."""
    _MANAGER.clear(job)


def start_job(kind: str, title: str, run_name: str, work: Callable[[Job], Any], *,
              baseline_name: str | None = None, command: str = "") -> Job:
    """Run `work(job)` in a background thread (the job is the engine callback); JobRunning if one runs."""
    return _MANAGER.start(Job(kind, title, run_name, work, baseline_name=baseline_name, command=command))


def start_training(cfg: TrainConfig, splits: Splits, *, run_name: str, resume: bool = False,
                   baseline: str | None = None, command: str = "", processes: int = 1) -> Job:
    """Train per `cfg` in the background, checkpointing to APP_HOME/runs/<run_name> (resumable).

    `processes` > 1 (one per GPU): `command` runs under torchrun instead of the engine in this process
    (see `torchrun_command`); it must then be given, and name data on this machine's disk.

    When `baseline` names the model in use, it is evaluated on the same val split at the end, for
    comparison. The trained model is not saved: the page calls `Job.save` with the name the user picks.
    `command` is the equivalent CLI command (`fer_app.cli.train_command`), for the model card.
    """
    workdir = run_dir(run_name)

    if processes > 1:
        if not command:
            raise ValueError("several processes run the CLI command: give `command`")
        argv = shlex.split(command)[3:]  # after "python -m fer_app"
        drop = {"--name": 1, "--workdir": 1, "--overwrite": 0}
        argv = [a for i, a in enumerate(argv) if a not in drop and not (i and drop.get(argv[i - 1]) == 1)]

    def work(job: Job) -> TrainResult:
        if processes > 1:
            result = _run_launched(job, argv, processes, workdir, resume)
        else:
            result = train(cfg, splits, workdir=workdir, resume=resume, callback=job)
        if baseline:
            job.note(phase="compare")
            try:
                job.note(baseline=evaluate(load_model(baseline), splits["val"]))
            except (ValueError, OSError, RuntimeError) as exc:
                job.note(baseline_error=f"{baseline}: {error_message(exc)}")
        return result

    return start_job("train", f"training {run_name}", run_name, work, baseline_name=baseline, command=command)


# ---------------------------------------------------------------- several processes (torchrun)


class ProgressFile(Callback):
    """The CLI's side of a job run under torchrun: progress (at most every `every` s) and epochs appended
    to `path` as JSON lines; `should_stop` once `stop_file` exists. Wraps the CLI's own callback."""

    def __init__(self, path: Path | None, stop_file: Path | None, inner: Callback | None = None,
                 every: float = 0.5) -> None:
        self.path, self.stop_file, self.inner, self.every = path, stop_file, inner or Callback(), every
        self._last = 0.0

    def _write(self, record: dict) -> None:
        if self.path is not None:
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")

    def on_progress(self, progress: Progress) -> None:
        self.inner.on_progress(progress)
        now = time.monotonic()
        if now - self._last >= self.every:
            self._last = now
            self._write({"progress": {k: getattr(progress, k) for k in
                                      ("phase", "epoch", "epochs", "step", "steps", "loss", "lr", "elapsed",
                                       "steps_before")}})

    def on_epoch(self, stats: EpochStats, progress: Progress) -> None:
        self.inner.on_epoch(stats, progress)
        self._write({"epoch": asdict(stats)})

    def should_stop(self) -> bool:
        return (self.stop_file is not None and self.stop_file.exists()) or self.inner.should_stop()


def torchrun_command(argv: list[str], processes: int, workdir: Path, *, resume: bool = False) -> list[str]:
    """The launcher command a job runs for `processes` processes on this machine: `argv` is the CLI's
    (`train DATA ...`, as `fer_app.cli.train_command` writes it, without --name/--workdir); the model
    goes to workdir/out/result, progress to workdir/progress.jsonl."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes),
            "-m", "fer_app", *argv, "--workdir", str(workdir), "--name", "result", "--overwrite",
            "--models-dir", str(workdir / "out"), "--progress-file", str(workdir / "progress.jsonl"),
            "--stop-file", str(workdir / "STOP"), *(["--resume"] if resume else [])]


def _run_launched(job: Job, argv: list[str], processes: int, workdir: Path, resume: bool) -> TrainResult:
    """Run the training command under torchrun, relaying its progress file to `job`; its result read back."""
    workdir.mkdir(parents=True, exist_ok=True)
    for name in ("progress.jsonl", "STOP"):
        (workdir / name).unlink(missing_ok=True)
    log_file = workdir / "torchrun.log"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(config.PROJECT_ROOT), os.environ.get("PYTHONPATH", "")])}
    with open(log_file, "w") as log_out:
        proc = subprocess.Popen(torchrun_command(argv, processes, workdir, resume=resume), cwd=config.PROJECT_ROOT,
                                env=env, stdout=log_out, stderr=subprocess.STDOUT)
        history: list[EpochStats] = []
        offset = 0
        while True:
            done = proc.poll() is not None
            if job.should_stop():
                (workdir / "STOP").touch()
            if (workdir / "progress.jsonl").is_file():
                with open(workdir / "progress.jsonl") as f:
                    f.seek(offset)
                    lines = f.readlines()
                    if lines and not lines[-1].endswith("\n"):  # a line still being written
                        lines.pop()
                    offset += sum(len(line) for line in lines)
                for line in lines:
                    record = json.loads(line)
                    if "epoch" in record:
                        history.append(EpochStats(**record["epoch"]))
                    p = record.get("progress") or {}
                    if p or history:
                        base = job.status()
                        job.on_progress(Progress(p.get("phase", "train"), p.get("epoch", base.epoch),
                                                 p.get("epochs", base.epochs), p.get("step", base.step),
                                                 p.get("steps", base.steps), p.get("loss", base.loss),
                                                 p.get("lr", base.lr), p.get("elapsed", base.elapsed),
                                                 history=list(history), steps_before=p.get("steps_before", 0)))
            if done:
                break
            time.sleep(0.5)
    if proc.returncode != 0:
        errors = [line for line in log_file.read_text(errors="replace").splitlines() if line.startswith("error: ")]
        raise TrainingError((errors[0][7:] if errors else f"the training processes failed (exit {proc.returncode})")
                            + f"; see {log_file}")
    model = load_model(workdir / "out" / "result", runtime="torch")
    meta = model.meta["training"]
    return TrainResult(model, [EpochStats(**h) for h in meta["history"]], model.meta["metrics"]["val"], None,
                       job.should_stop() or meta["epochs_run"] < meta["config"]["epochs"], meta["seconds"],
                       f"{meta['device']} x {meta.get('processes', processes)} processes")


def save_trained(result: TrainResult, name: str, *, overwrite: bool = False, command: str = "") -> Path:
    """Save a training result as models/<name> with its model card and confusion image (as the engine does)."""
    name = check_name(name, "model name")
    card = render_card(name, result.model.config(), command or "(trained on the Training page)")
    return save_model(result.model, name, overwrite=overwrite, card=card,
                      extra_files={"confusion.png": confusion_png(result.report["confusion"])})
