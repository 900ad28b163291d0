"""Training page: data -> preview -> model and settings -> a background job with live progress -> results, save.

A view over the library: `fer_app.mixing` (sources, zip uploads, preview), `fer_app.jobs` (the
server's one background job, what can be trained here, checkpoints, saving), `fer_app.training`
(settings and their defaults) and `fer_app.calibration` (captures review, calibrate). The job lives
in the server process, so a reloaded page shows it; while it runs, a fragment polls it every second.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict
from pathlib import Path

import pandas as pd
import streamlit as st

from fer_app import calibration, distributed, jobs, mixing
from fer_app import model as model_module
from fer_app.cli import train_command
from fer_app.config import CLASSES
from fer_app.data import DataError, Splits
from fer_app.metrics import confusion_image
from fer_app.model import ModelError, ModelInfo
from fer_app.training import EpochStats, TrainConfig, device_name, pick_device
from fer_app.ui import common

POLL_S = 1.0
THUMBS_PER_ROW = 8
SERVER, UPLOAD, CAPTURES = "Server path", "Uploaded zip", "Calibration captures"
PHASES = {"start": "Starting", "embed": "Computing embeddings (cached for the next run)",
          "compare": "Evaluating the model in use on the same val split", "done": "Finishing",
          "load": "Loading the model and the captures", "fer-check": "Checking on FER-2013 val (choosing the gate)",
          "teachers": "The teacher models' predictions on the train faces (cached for a resume)",
          "haar-views": "Framing the train faces as the app does: pasted into real scenes, found, cut (cached)"}
#: Phases whose progress has a pace of its own (an ETA from the phase's own clock).
TIMED_PHASES = ("train", "embed", "fer-check", "teachers", "haar-views")


def rate(lr: float) -> str:
    """A learning rate for people: "0.001", "3e-05"; "–" before the first batch has set one."""
    return f"{lr:.3g}" if math.isfinite(lr) and lr > 0 else "–"


def change(value: float, versus: str) -> dict:
    """st.metric's delta arguments for a change in a share: no arrow nor colour where it rounds to 0.0%."""
    if round(value * 1000) == 0:
        return {"delta": f"±0.0% vs {versus}", "delta_color": "off", "delta_arrow": "off"}
    return {"delta": f"{value:+.1%} vs {versus}"}


def duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min" if hours else f"{minutes} min {secs:02d} s" if minutes else f"{secs} s"


@st.cache_resource(max_entries=4, show_spinner="Loading data…")
def load_data(key: tuple[tuple[str, float, str, float], ...], val_fraction: float, seed: int, on_error: str) -> Splits:
    """The mixed splits of the sources in `key` (path, weight, FER+ path, change stamp), shared by sessions."""
    sources = [mixing.Source(Path(path), weight, Path(ferplus) if ferplus else None)
               for path, weight, ferplus, _ in key]
    return mixing.load_sources(sources, val_fraction=val_fraction, seed=seed, on_error=on_error)


def source_key(sources: list[mixing.Source]) -> tuple[tuple[str, float, str, float], ...]:
    return tuple((str(s.path), s.weight, str(s.ferplus or ""), mixing.data_stamp(s.path)) for s in sources)


# ---------------------------------------------------------------- the job panel (top of the page)


def history_charts(history: tuple[EpochStats, ...] | list[EpochStats]) -> None:
    if not history:
        st.caption("Loss and accuracy curves appear after the first epoch.")
        return
    table = pd.DataFrame([asdict(h) for h in history]).set_index("epoch")
    left, right = st.columns(2)
    left.line_chart(table[["train_loss", "val_loss"]], x_label="epoch", y_label="loss")
    right.line_chart(table[["train_accuracy", "val_accuracy", "val_macro_f1"]], x_label="epoch", y_label="accuracy")


@st.fragment(run_every=POLL_S)
def running_panel(job: jobs.Job) -> None:
    """Progress of the running job, refreshed every second; a full rerun shows the results when it ends."""
    status = job.status()
    if not status.running:
        st.rerun()
    st.subheader(f"Running: {status.title}")
    what = (f"Epoch {status.epoch}/{status.epochs}, batch {status.step}/{status.steps}" if status.phase == "train"
            else PHASES.get(status.phase, status.phase))
    eta = f" · about {duration(status.eta)} left" if math.isfinite(status.eta) and status.phase in TIMED_PHASES \
        and status.fraction > 0 else ""
    if status.kind == "calibrate" and status.phase not in ("train",):
        what = PHASES.get(status.phase, status.phase) + (f" ({status.step}/{status.steps})" if status.steps > 1 else "")
        if status.phase == "start":
            what = f"Starting (loading torch and the model; {duration(status.elapsed)} so far)"
        elif status.phase == "load":
            what = f"{PHASES['load']} ({duration(status.elapsed)} so far)"
    st.progress(min(max(status.fraction, 0.0), 1.0), text=what + eta)
    cols = st.columns(4)
    cols[0].metric("Batch loss", f"{status.loss:.3f}" if math.isfinite(status.loss) else "–")
    cols[1].metric("Learning rate", rate(status.lr) if status.phase == "train" else "–")
    cols[2].metric("Elapsed", duration(status.elapsed))
    best = max((h.val_accuracy for h in status.history), default=None)
    cols[3].metric("Best val accuracy", f"{best:.1%}" if best is not None else "–")
    history_charts(status.history)
    if status.stop_requested:
        st.info("Stopping at the next batch; the best epoch so far is kept.")
    elif st.button("Stop", key="job-stop", help="Stop at the next batch and keep the best epoch so far"):
        job.stop()
        st.info("Stopping at the next batch; the best epoch so far is kept.")


def save_form(job: jobs.Job, status: jobs.JobStatus) -> None:
    if status.saved_to is not None:
        st.success(f"Saved as **{status.saved_to.name}** ({status.saved_to}); the model pickers list it now.")
        return
    name = st.text_input("Save as", value=status.run_name, key="save-name",
                         help="The folder name under models/. Nothing is saved until you press Save.")
    exists = jobs.model_exists(name)
    overwrite = False
    if exists:
        st.warning(f"A model named {name.strip()!r} exists: choose another name, or tick Overwrite.")
        overwrite = st.checkbox(f"Overwrite {name.strip()}", key="save-overwrite")
    if st.button("Save model", key="save", type="primary", disabled=exists and not overwrite):
        try:
            job.save(name, overwrite=overwrite)
        except (ModelError, ValueError, OSError) as exc:
            st.error(f"Not saved: {jobs.error_message(exc)}")
        else:
            st.rerun()  # the sidebar's model picker lists the new model


def training_results(job: jobs.Job, status: jobs.JobStatus) -> None:
    result = status.result
    rep = result.report
    how = "stopped early" if result.stopped_early else "finished"
    st.success(f"{status.title}: {how} after {len(result.history)} epochs ({duration(result.seconds)} on "
               f"{result.device}); the best epoch's weights are kept.")
    base = status.baseline
    cols = st.columns(2)
    for col, key, label in ((cols[0], "accuracy", "Val accuracy"), (cols[1], "macro_f1", "Val macro-F1")):
        col.metric(label, f"{rep[key]:.1%}", **(change(rep[key] - base[key], status.baseline_name) if base else {}))
    if base:
        st.caption(f"The model in use, {status.baseline_name}, on the same val split: accuracy {base['accuracy']:.1%}, "
                   f"macro-F1 {base['macro_f1']:.1%}.")
    elif status.baseline_error:
        st.warning(f"The model in use could not be evaluated for comparison: {status.baseline_error}")
    history_charts(result.history)
    left, right = st.columns(2)
    per_class = pd.DataFrame(rep["per_class"]).T
    if "support" in per_class:
        per_class["support"] = per_class["support"].round().astype(int)  # faces: whole numbers
    left.dataframe(per_class, column_config={
        **{c: st.column_config.NumberColumn(c, format="percent") for c in ("precision", "recall", "f1")},
        "support": st.column_config.NumberColumn("support", format="localized", help="Val faces of the class")})
    right.image(confusion_image(rep["confusion"]), channels="BGR", caption="Confusion matrix on val (rows: true)")
    save_form(job, status)


def calibration_figures(record: dict, held_out: int | None = None) -> None:
    """Before/after on the held-out captures (by capture time) and FER-2013 val, from a calibration record."""
    acc = record["held_out_accuracy"]
    cols = st.columns(2)
    cols[0].metric("Your latest captures (held out), before", f"{acc['before']:.1%}")
    cols[1].metric("... and after calibration", f"{acc['after']:.1%}", **change(acc["after"] - acc["before"],
                                                                                   "before"))
    st.caption(f"Held out by capture time: the latest {record['holdout']:.0%} of each emotion's captures "
               f"({record['held_out']}), never learnt from nor used to choose anything; the earlier "
               f"{record['trained_on']} are what the calibrated model learnt. A random split would score frames "
               "next to learnt ones and flatter the result.")
    fer = record.get("fer2013_val_accuracy")
    if fer:
        st.caption(f"FER-2013 val ({fer['n']} faces): {fer['before']:.1%} before, {fer['after']:.1%} after.")
    st.caption(f"Protection of the base model: {record['protection']}.")


def calibration_results(status: jobs.JobStatus) -> None:
    result: calibration.CalibrationResult = status.result
    where = f"saved as **{result.saved_to.name}**; the model pickers list it now" if result.saved_to else "not saved"
    st.success(f"{status.title}: done in {duration(result.seconds)}, {where}. These figures stay in its model "
               "card (the Calibration tab shows them for the model in use).")
    calibration_figures({"held_out_accuracy": {"before": result.before["accuracy"], "after": result.after["accuracy"]},
                         "holdout": result.holdout, "held_out": result.held_out, "trained_on": result.trained_on,
                         "protection": result.protection,
                         "fer2013_val_accuracy": {"n": result.fer_before["n"], "before": result.fer_before["accuracy"],
                                                  "after": result.fer_after["accuracy"]}
                         if result.fer_before else None})


def job_panel() -> None:
    """The server's job: its live progress while it runs, else how the last one ended (until dismissed)."""
    job = jobs.current_job()
    if job is None:
        return
    status = job.status()
    if status.running:
        running_panel(job)
        return
    with st.container(border=True):
        if status.result is None:
            ended = "was stopped" if status.state == jobs.STOPPED else "failed"
            st.error(f"{status.title} {ended}: {status.error}")
            st.caption(f"Nothing was saved: the models in use are intact. Finished epochs stay checkpointed in "
                       f"{jobs.run_dir(status.run_name)}.")
        elif status.kind == "calibrate":
            calibration_results(status)
        else:
            training_results(job, status)
        st.button("Dismiss", key="job-dismiss", on_click=jobs.clear_job, args=(job,))


# ---------------------------------------------------------------- 1. data


def weight_input(key: str, default: float, shown: bool) -> float:
    if not shown:
        return default
    return st.number_input("Weight", 0.01, 100.0, default, 0.5, key=f"weight-{key}",
                           help="How much this source counts: 2 repeats each train face twice, 0.5 keeps half.")


def data_sources() -> list[mixing.Source]:
    kinds = st.multiselect("Data sources", [SERVER, UPLOAD, CAPTURES], default=[SERVER], key="data-kinds",
                           help="Several sources are mixed by weight (e.g. FER-2013 + your captures weighted up).")
    several = len(kinds) > 1
    sources = []
    for kind in kinds:
        with st.container(border=True):
            if kind == SERVER:
                path = st.text_input("Data on the server", key="data-path",
                                     placeholder="Type a path on the server, e.g. …/fer2013.csv",
                                     help="fer2013.csv, a folder (train/<class>/*.png + test/<class>/*.png, or "
                                          "<class>/*.png), the dev .npz, or a .zip of the folder layout.")
                ferplus = st.text_input("FER+ votes (fer2013new.csv), optional", key="data-ferplus",
                                        help="Use FER+ majority labels; the path above must be the matching "
                                             "fer2013.csv.")
                weight = weight_input("server", 1.0, several)
                if path.strip():
                    sources.append(mixing.Source(Path(path.strip()).expanduser(), weight,
                                                 Path(ferplus.strip()).expanduser() if ferplus.strip() else None))
            elif kind == UPLOAD:
                upload = st.file_uploader("Zip of the folder layout", type=["zip"], key="data-zip",
                                          help="train/<class>/*.png and test/<class>/*.png (or <class>/*.png), "
                                               "at the top of the zip or under one folder.")
                weight = weight_input("zip", 1.0, several)
                if upload is not None:
                    try:
                        sources.append(mixing.Source(mixing.extract_upload(upload.getvalue()), weight))
                    except (DataError, ValueError, OSError) as exc:
                        st.error(f"{upload.name}: {jobs.error_message(exc)}")
            else:
                names = calibration.list_sessions()
                if not names:
                    st.info("No calibration captures yet: capture them on the Live webcam page.")
                    continue
                name = st.selectbox("Captures of", names, key="data-captures")
                weight = weight_input("captures", 5.0, several)
                sources.append(mixing.Source(calibration.CalibrationSession(name).folder, weight))
    return sources


def data_section() -> tuple[Splits | None, list[mixing.Source], dict]:
    """The chosen sources loaded and previewed; (splits or None, sources, loading options)."""
    st.subheader("1. Data")
    sources = data_sources()
    cols = st.columns(3)
    on_error = cols[0].radio("Bad rows or images", ["skip", "stop"], key="data-on-error", horizontal=True,
                             format_func={"skip": "skip and count", "stop": "stop with an error"}.get)
    val_fraction = cols[1].number_input("Val share", 0.05, 0.5, 0.1, 0.05, key="data-val",
                                        help="Held out for validation from sources without a val split.")
    seed = cols[2].number_input("Seed", 0, 2 ** 31 - 1, TrainConfig().seed, key="data-seed",
                                help="For the validation split, the mixing and training.")
    options = {"val_fraction": float(val_fraction), "on_error": on_error, "seed": int(seed)}
    if not sources:
        st.info("Choose a data source to see a preview.")
        return None, sources, options
    try:
        splits = load_data(source_key(sources), float(val_fraction), int(seed), on_error)
    except (DataError, ValueError, OSError) as exc:
        st.error(f"The data cannot be used: {jobs.error_message(exc)}")
        return None, sources, options
    info = mixing.preview(splits)
    counts = pd.DataFrame(info["counts"]).reindex(list(CLASSES)).fillna(0).astype(int)
    left, right = st.columns(2)
    left.dataframe(counts)
    right.bar_chart(counts, stack=False)
    st.caption(" · ".join(f"{split}: {n} faces" for split, n in info["totals"].items()))
    st.image(mixing.sample_grid(splits["train"]), caption="Random train faces per class")
    for warning in info["warnings"]:
        st.warning(warning)
    if info["skip_reasons"]:
        with st.expander("Skipped rows and files: the first ones"):
            st.code("\n".join(info["skip_reasons"]), language=None)
    return splits, sources, options


# ---------------------------------------------------------------- 2. model and settings


def ints(text: str, what: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.replace(",", " ").split())
    except ValueError:
        values = ()
    if not values or min(values) < 1:
        raise ValueError(f"{what}: give positive whole numbers, e.g. 32, 64, 128")
    return values


def model_section(current: ModelInfo | None, seed: int) -> TrainConfig | None:
    """The run's settings (defaults from TrainConfig), or None (with an error shown) when they are invalid."""
    st.subheader("2. Model")
    device = pick_device()
    st.caption(f"Device in use: {device_name(device)}")
    gpu_list = distributed.gpus()
    st.caption(distributed.gpu_summary(gpu_list))
    if len(gpu_list) > 1:  # one training process per GPU, through torchrun (DistributedDataParallel)
        st.number_input("GPUs to use", 1, len(gpu_list), len(gpu_list), key="model-gpus",
                        help="More than one: the run's command runs under torchrun, one process per GPU, the "
                             "batch size split between them (the data must be a path on this server).")
    starts = ["scratch"] + (["current"] if current else [])
    start_choice = st.radio("Starting point", starts, key="model-start", horizontal=True,
                            format_func={"scratch": "From scratch",
                                         "current": f"From the model in use ({current.name if current else ''})"}.get)
    start = current if start_choice == "current" else None
    choices = jobs.training_choices(start, device)
    available = [c for c in choices if c.available]
    for c in choices:
        if not c.available:
            st.caption(f"Not available: {c.label}: {c.note}.")
    if not available:
        st.error("Nothing can be trained from this starting point here.")
        return None
    label = st.radio("What to train", [c.label for c in available], key=f"model-what-{start_choice}")
    choice = next(c for c in available if c.label == label)
    if choice.warning:
        st.warning(f"{choice.label}: {choice.warning}.")
    clip_full = (choice.encoder, choice.mode) == ("clip-vit-b32", "full")
    d = TrainConfig()
    head = st.radio("Head", ["linear", "mlp"], index=["linear", "mlp"].index(d.head), key="model-head",
                    horizontal=True, help="linear: one layer on the embeddings; mlp: a hidden layer of 256.")
    with st.expander("Settings", expanded=False):
        cols = st.columns(3)
        epochs = cols[0].number_input("Epochs", 1, 1000, d.epochs, key="set-epochs",
                                      help="Passes over the train faces; the best epoch on val is kept.")
        batch = cols[1].number_input("Batch size", 1, 4096, d.batch_size, key="set-batch")
        optimizer = cols[2].selectbox("Optimizer", ["sgd", "adamw"],
                                      key=f"set-optimizer-{choice.mode}" + ("-clip" if clip_full else ""),
                                      index=1 if choice.mode == "head" or clip_full else
                                      ["sgd", "adamw"].index(d.optimizer),
                                      help="SGD with Nesterov momentum, or AdamW (the default for heads and CLIP).")
        lr = cols[0].number_input("Peak learning rate", min_value=1e-8,
                                  value=jobs.default_lr(optimizer, choice.encoder, choice.mode), step=1e-3,
                                  format="%.6g", key=f"set-lr-{optimizer}" + ("-clip" if clip_full else ""),
                                  help="The schedule's highest learning rate" +
                                  (" (the head's: CLIP's encoder fine-tunes at a tenth of it)." if clip_full else "."))
        schedules = ["onecycle", "cosine", "constant"]
        schedule = cols[1].selectbox("Schedule", schedules, index=schedules.index(d.schedule), key="set-schedule",
                                     help="onecycle: warm-up then cosine decay; cosine: decay only; constant.")
        weight_decay = cols[2].number_input("Weight decay", 0.0, 1.0, d.weight_decay, 1e-4, format="%.6g",
                                            key="set-wd")
        balances = ["none", "sqrt", "inverse"]
        balance = cols[0].selectbox("Class balancing", balances, index=balances.index(d.balance), key="set-balance",
                                    help="Loss weights against imbalance (disgust is rare): 1/sqrt(n) or 1/n.")
        smoothing = cols[1].number_input("Label smoothing", 0.0, 0.5, d.label_smoothing, 0.05, key="set-smoothing")
        patience = cols[2].number_input("Early stopping patience", 0, 1000, d.patience, key="set-patience",
                                        help="Stop after this many epochs without val improvement (0: off).")
        augment = cols[0].checkbox("Augmentation", d.augment, key="set-augment", disabled=choice.mode == "head",
                                   help="Flips, small affine moves, jitter, erasing (full training only).")
        tta = cols[1].checkbox("Mirror-image averaging", d.tta_flip, key="set-tta",
                               help="Predict on the face and its mirror image and average.")
        threads = cols[2].number_input("CPU threads", 0, 256, d.threads, key="set-threads",
                                       help="0: torch's default.")
        scratch_compact = start is None and choice.encoder == "compact"
        widths = st.text_input("Channels per stage", ", ".join(map(str, d.widths)), key="set-widths",
                               disabled=not scratch_compact, help="Compact CNN from scratch only.")
        convs = st.text_input("Convolutions per stage", ", ".join(map(str, d.convs_per_stage)), key="set-convs",
                              disabled=not scratch_compact)
    try:
        return TrainConfig(encoder=start.encoder if start else choice.encoder, mode=choice.mode, head=head,
                           init_from=start.name if start else None,
                           widths=ints(widths, "channels per stage"), convs_per_stage=ints(convs, "convolutions"),
                           epochs=int(epochs), batch_size=int(batch), optimizer=optimizer, lr=float(lr),
                           weight_decay=float(weight_decay), schedule=schedule, label_smoothing=float(smoothing),
                           balance=balance, augment=augment, tta_flip=tta, patience=int(patience),
                           seed=seed, threads=int(threads))
    except ValueError as exc:
        st.error(f"Invalid settings: {exc}")
        return None


def start_section(cfg: TrainConfig | None, splits: Splits | None, sources: list[mixing.Source], options: dict,
                  current: ModelInfo | None) -> None:
    st.subheader("3. Run")
    st.session_state.setdefault("run-name", f"run-{time.strftime('%Y%m%d-%H%M%S')}")
    run_name = st.text_input("Run name", key="run-name",
                             help="Checkpoints go to ~/.fer_app/runs/<run name> each epoch: a run cut short (server "
                                  "restart) resumes from there. You name the model when you save it.")
    resume, checkpoint = False, None
    try:
        checkpoint = jobs.find_checkpoint(run_name)
    except ValueError as exc:
        st.error(str(exc))
        run_name = ""
    if checkpoint:
        st.info(f"This run has a checkpoint at epoch {checkpoint.epoch}/{checkpoint.config.epochs} (best val "
                f"accuracy {checkpoint.best_accuracy:.1%}).")
        resume = st.checkbox("Resume it (with its own settings, on the same data)", key="run-resume")
        if resume:
            cfg = checkpoint.config
    if cfg is not None and sources:
        with st.expander("The same run from the command line"):
            st.code(train_command(cfg, sources, workdir=jobs.run_dir(run_name) if run_name else None,
                                  val_fraction=options["val_fraction"], on_error=options["on_error"]),
                    language="bash")
    blocked = []  # why "Start training" is disabled, in the page's order
    if not sources:
        blocked.append("choose the data under 1. Data (a path on the server, a zip or your captures)")
    elif splits is None:
        blocked.append("the data under 1. Data cannot be used (see its message)")
    if cfg is None:
        blocked.append("fix the settings under 2. Model")
    if not run_name:
        blocked.append("give the run a valid name")
    reason = "To start training, " + "; ".join(blocked) + "." if blocked else None
    if st.button("Start training", key="start", type="primary", disabled=bool(blocked), help=reason):
        assert cfg is not None and splits is not None
        command = train_command(cfg, sources, workdir=jobs.run_dir(run_name), val_fraction=options["val_fraction"],
                                on_error=options["on_error"])
        try:
            jobs.start_training(cfg, splits, run_name=run_name, resume=resume,
                                baseline=current.name if current else None, command=command,
                                processes=int(st.session_state.get("model-gpus", 1)))
        except (jobs.JobRunning, ValueError) as exc:
            st.error(jobs.error_message(exc))
        else:
            st.rerun()
    if reason:
        st.caption(reason)


# ---------------------------------------------------------------- calibration


def calibration_record(current: ModelInfo | None) -> dict | None:
    """The calibration record of a calibrated model (its config), None for others."""
    if current is None or current.path is None:
        return None
    try:
        return model_module.read_config(current.path).get("training", {}).get("calibration")
    except (ModelError, OSError):
        return None


def captures_review(session: calibration.CalibrationSession) -> None:
    counts = session.counts()
    st.caption(" · ".join(f"{c}: {n}" for c, n in counts.items()) + f" (aim: {session.per_class} each)")
    undo = st.session_state.get("cal-undo")
    if undo and undo["session"] == session.name:
        cols = st.columns([4, 1])
        cols[0].info(f"Deleted a {undo['label']} capture.")
        cols[1].button("Undo", key="cal-undo-button", on_click=undo_delete, args=(session,))
    for label in CLASSES:
        files = session.list(label)
        with st.expander(f"{label}: {len(files)} captures", expanded=st.session_state.get("cal-open") == label):
            for start in range(0, len(files), THUMBS_PER_ROW):
                cols = st.columns(THUMBS_PER_ROW)
                for col, path in zip(cols, files[start:start + THUMBS_PER_ROW], strict=False):
                    col.image(str(path), width=64)
                    col.button("Delete", key=f"delete-{label}-{path.name}", on_click=delete_capture,
                               args=(session, path))


def delete_capture(session: calibration.CalibrationSession, path: Path) -> None:
    """Delete one capture, keeping its bytes for Undo and its emotion's section open."""
    data = path.read_bytes() if path.is_file() else None
    session.delete(path)
    st.session_state["cal-open"] = path.parent.name
    if data is not None:
        st.session_state["cal-undo"] = {"session": session.name, "label": path.parent.name, "path": str(path),
                                        "data": data}


def undo_delete(session: calibration.CalibrationSession) -> None:
    undo = st.session_state.pop("cal-undo", None)
    if undo and undo["session"] == session.name:
        path = Path(undo["path"])
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(undo["data"])
        st.session_state["cal-open"] = undo["label"]


def calibration_section(current: ModelInfo | None) -> None:
    st.caption("Capture your own faces per emotion on the Live webcam page (Calibration capture, in its sidebar), "
               "review them here, then calibrate: the model in use gets a memory of your captures that decides "
               "only for faces very like them (its encoder and head stay as they are), and its accuracy on your "
               "latest captures, held out by capture time, is shown before and after.")
    record = calibration_record(current)
    if record is not None:
        with st.container(border=True):
            st.markdown(f"**{current.name}** is a calibrated model (from its model card):")
            calibration_figures(record)
    names = calibration.list_sessions()
    if not names:
        st.info("No calibration captures yet.")
        return
    kept = st.session_state.get("cal-session-kept")
    if "cal-session" not in st.session_state and kept in names:
        st.session_state["cal-session"] = kept
    name = st.selectbox("Captures of", names, key="cal-session",
                        on_change=lambda: st.session_state.update(
                            {"cal-session-kept": st.session_state["cal-session"]}))
    session = calibration.CalibrationSession(name)
    captures_review(session)
    if current is None:
        st.info("Pick the model to calibrate in the sidebar.")
        return
    fer = st.text_input("FER-2013 to check on (optional)", key="cal-fer",
                        placeholder="Type a path on the server, e.g. …/fer2013.csv",
                        help="Any data format with a val split: the gate is chosen on it (the lowest that keeps "
                             "FER-2013 val accuracy within 0.5 points), and FER-2013 val is shown before/after.")
    st.caption("Protection of the base model: its head is kept unchanged; your captures act only on faces within "
               + (f"a cosine gate chosen on FER-2013 val ({fer.strip()})." if fer.strip() else
                  f"cosine {calibration.DEFAULT_GATE} of one of them (the default, measured on compact-fer2013: "
                  "FER-2013 val 71.0% → 70.9%). FER-2013 is not given: not checked here."))
    holdout = st.number_input("Held-out share (latest captures of each emotion)", 0.1, 0.6,
                              calibration.DEFAULT_HOLDOUT, 0.05, key="cal-holdout",
                              help="Held out by capture time: never learnt from; accuracy is measured on them.")
    out = st.text_input("Save as", f"{current.name}-calibrated-{name}", key="cal-name")
    exists = jobs.model_exists(out)
    overwrite = exists and st.checkbox(f"Overwrite {out.strip()}", key="cal-overwrite")
    if exists and not overwrite:
        st.warning(f"A model named {out.strip()!r} exists: choose another name, or tick Overwrite.")
    if st.button("Calibrate", key="cal-start", type="primary", disabled=exists and not overwrite):
        try:
            fer_splits = load_data(source_key([mixing.Source(Path(fer.strip()))]), 0.1, 0, "skip") \
                if fer.strip() else None
            calibration.start_calibration(current.name, session.folder, fer_splits, name=out.strip(),
                                          holdout=float(holdout), overwrite=overwrite)
        except (jobs.JobRunning, DataError, ValueError, OSError) as exc:
            st.error(jobs.error_message(exc))
        else:
            st.rerun()


# ---------------------------------------------------------------- the page

st.title("Training")
model_in_use = common.model_picker()
job_panel()
# A radio, not st.tabs: the page stays on the tab in use across reruns (after Calibrate, a job ending, Dismiss).
tab = st.radio("Section", ["Train a model", "Calibration"], key="train-tab", horizontal=True,
               label_visibility="collapsed")
if tab == "Train a model":
    data, chosen, loading = data_section()
    config = model_section(model_in_use, loading["seed"])
    start_section(config, data, chosen, loading, model_in_use)
else:
    calibration_section(model_in_use)
