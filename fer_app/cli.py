"""The command line: `python -m fer_app predict|video|evaluate|train|calibrate|models|fetch-clip|bench|...`.

A thin layer over the library (the same functions the Streamlit pages call). Errors end with
a one-line message on stderr and a non-zero exit code; never a traceback for bad input.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from fer_app.config import DEFAULT_MODEL, ENSEMBLE_MEANS, EQUALIZE_MODES, FOOTAGE_PARTS, STILLS_MODEL

EXIT_OK, EXIT_ERROR, EXIT_USAGE = 0, 1, 2
#: For help texts: `fer_app.runtimes.RUNTIMES` (a test keeps the two in step).
RUNTIME_NAMES = "torch, torch-int8, onnx-fp32, onnx-int8, openvino-fp32, openvino-bf16"


def _progress_bar(total: int | None, desc: str, unit: str = "img"):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, leave=False, disable=not sys.stderr.isatty())


def _reporter(bar) -> Callable[[int, int | None], None]:
    """A library `progress(done, total)` callback that moves `bar` (its total learned from the calls)."""
    def progress(done: int, total: int | None) -> None:
        bar.total = total
        bar.update(done - bar.n)

    return progress


# ---------------------------------------------------------------- predict


def cmd_predict(args: argparse.Namespace) -> int:
    from fer_app.detection import FaceDetector
    from fer_app.imageio import load_image_with_size
    from fer_app.model import load_model, stills_model
    from fer_app.pipeline import analyze_image

    model = load_model(args.model or stills_model(), clip_source=args.clip, runtime=args.runtime, threads=args.threads)
    detector = FaceDetector(_detector_config(args))
    results, status = [], EXIT_OK
    for path in args.images:
        try:
            image, (width, height) = load_image_with_size(path)
        except ValueError as exc:
            print(f"error: {exc}", file=sys.stderr)
            results.append({"image": path, "error": str(exc)})
            status = EXIT_ERROR
            continue
        preds = analyze_image(image, model, detector)
        # A huge image is analysed downscaled: boxes are given in the file's own pixels, "scale" says by how much.
        sx, sy = width / image.shape[1], height / image.shape[0]
        faces = [p.to_dict() for p in preds]
        for face in faces:
            x, y, w, h = face["box"]
            face["box"] = [round(x * sx), round(y * sy), round(w * sx), round(h * sy)]
        results.append({"image": path, "width": width, "height": height,
                        "scale": round(image.shape[1] / width, 6), "faces": faces})
    if args.json:
        print(json.dumps({"model": model.name, "results": results}, indent=2, allow_nan=False))
        return status
    print(f"model {model.name}")
    for r in results:
        if "error" in r:
            continue
        print(f"{r['image']}: {len(r['faces'])} face(s)")
        for i, f in enumerate(r["faces"], 1):
            probs = "  ".join(f"{c} {p:.2f}" for c, p in sorted(f["probabilities"].items(), key=lambda kv: -kv[1]))
            print(f"  face {i} box={tuple(f['box'])}  {f['label']} ({f['confidence']:.0%})   {probs}")
    return status


def _detector_config(args: argparse.Namespace, defaults=None):
    """The detector settings: `defaults` (photo defaults when None) with the options given."""
    from dataclasses import replace

    from fer_app.config import DetectorConfig

    cfg = defaults or DetectorConfig()
    changes = {k: getattr(args, k) for k in ("detection_width", "scale_factor", "min_neighbors", "min_face",
                                                        "equalize")
               if getattr(args, k, None) is not None}
    return replace(cfg, **changes)


# ---------------------------------------------------------------- video


def cmd_video(args: argparse.Namespace) -> int:
    from fer_app.config import VIDEO_DETECTOR
    from fer_app.draw import DrawOptions
    from fer_app.live import LiveSettings
    from fer_app.model import load_model
    from fer_app.video import VideoReader, process_video, write_csv

    VideoReader(args.video).close()  # a bad file fails now, before a model is loaded
    if args.csv and not Path(args.csv).parent.is_dir():
        raise ValueError(f"{Path(args.csv).parent}: no such folder (for --csv)")
    model = load_model(args.model, clip_source=args.clip, runtime=args.runtime, threads=args.threads)
    settings = LiveSettings(detector=_detector_config(args, VIDEO_DETECTOR), smoothing=args.smoothing,
                            draw=DrawOptions(stats=False, track_ids=True))
    bar = _progress_bar(None, Path(args.video).name, unit="frame")
    progress = _reporter(bar)

    try:
        result = process_video(args.video, model, settings, out_path=args.out, every=args.every, progress=progress)
    finally:
        bar.close()
    if result.summary.warning:  # a cut file: processed to where it ends, and said so
        print(f"warning: {result.summary.warning}", file=sys.stderr)
    if args.csv:
        write_csv(result.rows, args.csv)
    report = dict(result.summary.to_dict(), csv=args.csv)
    if args.json:
        print(json.dumps(report, indent=2))
        return EXIT_OK
    s = result.summary
    print(f"{s.path}: {s.frames} frames ({s.width}x{s.height}, {s.fps:.1f} fps), faces in {s.frames_with_faces}, "
          f"{s.faces_found} faces found, {s.tracks} track(s)")
    print(f"model {s.model}: {s.processing_fps:.1f} frames/s; median detect {s.detect_ms:.1f} ms, "
          f"classify {s.classify_ms:.1f} ms per frame")
    for path, what in ((s.out_path, "annotated video"), (args.csv, "per-face rows")):
        if path:
            print(f"{what}: {path}")
    return EXIT_OK


# ---------------------------------------------------------------- evaluate


def _load_splits(args: argparse.Namespace):
    from fer_app.data import load_dataset

    return load_dataset(args.data, ferplus=getattr(args, "ferplus", None), on_error=args.on_error)


def _train_twins(splits: dict, split: str):
    """The faces of `split` with a pixel-identical twin in the train split (None without one)."""
    from fer_app.data import twins_in

    return twins_in(splits[split], splits["train"]) if split != "train" and "train" in splits else None


def _split_of(args: argparse.Namespace) -> tuple[dict, str]:
    """The splits of args.data and the name of args.split among them (a DataError naming the file if absent)."""
    from fer_app.data import DataError

    splits = _load_splits(args)
    split = _split_name(args.split)
    if split not in splits:
        raise DataError(f"{args.data}: no {args.split!r} split (has: {', '.join(splits)})")
    return splits, split


def cmd_evaluate(args: argparse.Namespace) -> int:
    from fer_app.evaluate import evaluate, save_val_report
    from fer_app.metrics import format_report
    from fer_app.model import load_model, model_dir

    splits, split = _split_of(args)
    if args.card and (split != "val" or args.runtime != "torch"):
        raise ValueError("--card writes a model card's val metrics: it needs --split val --runtime torch "
                         "(the card's figures are torch fp32's)")
    faces = splits[split]
    model = load_model(args.model, clip_source=args.clip, runtime=args.runtime, threads=args.threads)
    bar = _progress_bar(len(faces), f"evaluating {model.name}")
    report = evaluate(model, faces, report=lambda done, total: bar.update(done - bar.n),
                      twins=_train_twins(splits, split))
    bar.close()
    if args.card:
        save_val_report(model_dir(args.model), dict(report))
    report["model"], report["split"], report["skipped_rows"] = model.name, split, faces.skipped
    from fer_app.runtimes import runtime_choice

    report["runtime"] = runtime_choice(model.encoder).runtime
    elsewhere = {s: f.skipped for s, f in splits.items() if s != split and f.skipped}
    if elsewhere:  # --on-error skip: bad rows of the splits not evaluated are counted too, never silent
        report["skipped_rows_other_splits"] = elsewhere
        print(f"note: {args.data}: bad rows skipped in splits not evaluated: "
              + ", ".join(f"{s} {n}" for s, n in elsewhere.items()), file=sys.stderr)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(f"model {model.name} ({report['runtime']}) on {args.data} [{split}]"
              + (f" ({faces.skipped} bad rows skipped)" if faces.skipped else ""))
        print(format_report(report))
    return EXIT_OK


def _split_name(split: str) -> str:
    return {"training": "train", "publictest": "val", "privatetest": "test"}.get(split.lower(), split.lower())


# ---------------------------------------------------------------- train


def _train_config(args: argparse.Namespace):
    from fer_app.jobs import default_lr
    from fer_app.training import TrainConfig

    return TrainConfig(encoder=args.encoder, mode=args.mode, head=args.head, init_from=args.init_from,
                       widths=tuple(args.widths), convs_per_stage=tuple(args.convs), epochs=args.epochs,
                       batch_size=args.batch_size, optimizer=args.optimizer,
                       lr=args.lr if args.lr else default_lr(args.optimizer, args.encoder, args.mode),
                       weight_decay=args.weight_decay, schedule=args.schedule, label_smoothing=args.label_smoothing,
                       balance=args.balance, augment=not args.no_augment, tta_flip=not args.no_tta,
                       patience=args.patience, seed=args.seed, device=args.device, precision=args.precision,
                       threads=args.threads, clip_source=args.clip, soft_targets=args.soft_targets,
                       ferplus_weight=args.ferplus_weight,
                       teachers=tuple(args.teacher or ()), kd_weight=args.kd_weight,
                       kd_temperature=args.kd_temperature, kd_online=args.kd_online, mixup=args.mixup,
                       cutmix=args.cutmix, haar_views=args.haar_views, swa_epochs=args.swa_epochs)


def _load_streamed(args: argparse.Namespace, verbose: bool = True):
    """DATA indexed for streaming (--stream: a folder layout or a CSV of path,label[,split]); counts printed."""
    from fer_app.streaming import load_streaming

    if args.mix or args.ferplus:
        raise ValueError("--stream reads one folder or CSV of image paths; --mix and --ferplus need data in memory")
    splits = load_streaming(args.data, val_fraction=args.val_fraction, seed=args.seed, on_error=args.on_error)
    for split, faces in splits.items():
        note = f" ({faces.skipped} bad entries skipped)" if faces.skipped else ""
        counts = ", ".join(f"{c} {n}" for c, n in faces.class_counts().items())
        if verbose:  # not on the other ranks under torchrun
            print(f"{split}: {len(faces)} image files, streamed{note}: {counts}", file=sys.stderr)
    return splits


def _load_sources(args: argparse.Namespace, verbose: bool = True):
    """DATA (with --ferplus) and every --mix source, each given a val split, mixed by weight; counts printed."""
    from dataclasses import replace

    from fer_app.mixing import Source, load_sources, preview

    first = Source.parse(args.data)
    first = first if args.ferplus is None else replace(first, ferplus=Path(args.ferplus))
    splits = load_sources([first, *args.mix], val_fraction=args.val_fraction, seed=args.seed,
                          on_error=args.on_error)
    if not verbose:  # the other ranks under torchrun
        return splits
    info = preview(splits)
    for split, faces in splits.items():
        note = f" ({faces.skipped} bad rows skipped)" if faces.skipped else ""
        counts = ", ".join(f"{c} {n}" for c, n in info["counts"][split].items())
        print(f"{split}: {len(faces)} faces{note}: {counts}", file=sys.stderr)
    for warning in info["warnings"]:
        print(f"warning: {warning}", file=sys.stderr)
    return splits


def _training_bar():
    """A training callback: a tqdm bar on a terminal, a line now and then in a log file; epochs printed."""
    from tqdm import tqdm

    from fer_app.training import Callback

    class Bar(Callback):
        def __init__(self) -> None:
            self.bar, self.phase = None, ""

        def on_progress(self, p) -> None:
            total = p.steps * (p.epochs if p.phase == "train" else 1)
            if self.bar is None or self.phase != p.phase:
                if self.bar is not None:
                    self.bar.close()
                self.phase = p.phase
                self.bar = tqdm(total=total, desc=p.phase, unit="step", disable=not sys.stderr.isatty())
            self.bar.n = (p.epoch - 1) * p.steps + p.step if p.phase == "train" else p.step
            self.bar.set_postfix(epoch=p.epoch, loss=f"{p.loss:.3f}", lr=f"{p.lr:.4f}", refresh=False)
            self.bar.refresh()
            if self.bar.disable and p.phase == "train" and p.step % 50 == 0:  # a log file: a line now and then
                print(f"  epoch {p.epoch} step {p.step}/{p.steps} loss {p.loss:.3f} "
                      f"({p.elapsed / 60:.1f} min, ETA {p.eta / 60:.0f} min)", file=sys.stderr, flush=True)
            elif self.bar.disable and p.phase != "train" and (p.step % max(1, p.steps // 10) == 0
                                                               or p.step == p.steps):
                # a phase before the epochs (teachers, Haar views) can take many minutes: a line per tenth
                print(f"  {p.phase} {p.step}/{p.steps} ({p.elapsed / 60:.1f} min)", file=sys.stderr, flush=True)

        def on_epoch(self, s, p) -> None:
            msg = (f"epoch {s.epoch}/{s.epochs}: train loss {s.train_loss:.3f} acc {s.train_accuracy:.3f} | "
                   f"val loss {s.val_loss:.3f} acc {s.val_accuracy:.4f} macro-F1 {s.val_macro_f1:.3f} | "
                   f"lr {s.lr:.4f} | {s.seconds:.0f}s{' *best' if s.best else ''}")
            (self.bar.write if self.bar is not None else print)(msg, file=sys.stderr)

    return Bar()


#: Flags about this machine's state, not the recipe: a model's recorded command (its card's reproduce steps) drops them.
_STATE_FLAGS = ("--resume", "--overwrite")


def _command(args: argparse.Namespace) -> str:
    """The command line that made a model, as its card's reproduce step (a fresh start: no `_STATE_FLAGS`)."""
    argv = sys.argv[1:] if args.argv is None else args.argv
    return "python -m fer_app " + shlex.join(a for a in argv if a not in _STATE_FLAGS)


def cmd_train(args: argparse.Namespace) -> int:
    from fer_app import distributed
    from fer_app.modelcard import render_card
    from fer_app.training import device_name, pick_device, train

    cfg = _train_config(args)
    main_rank = distributed.env_rank() == 0  # under torchrun: rank 0 prints, every rank trains
    splits = _load_streamed(args, main_rank) if args.stream else _load_sources(args, main_rank)
    if main_rank:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        print(f"device: {device_name(pick_device(args.device))}" + (f"; {world} processes (torchrun)"
                                                                    if world > 1 else ""), file=sys.stderr)
    command = _command(args)
    callback = _training_bar()
    if args.progress_file or args.stop_file:  # a Training page job running this command under torchrun
        from fer_app.jobs import ProgressFile

        callback = ProgressFile(args.progress_file, args.stop_file, callback)
    result = train(cfg, splits, name=args.name, workdir=args.workdir, resume=args.resume, callback=callback,
                   overwrite=args.overwrite, card=lambda r: render_card(args.name, r.model.config(), command),
                   workers=args.workers, models_dir=args.models_dir, extra_meta={"command": command})
    if not main_rank:
        return EXIT_OK
    rep = result.report
    print(f"best val accuracy {rep['accuracy']:.4f}, macro-F1 {rep['macro_f1']:.4f} after {len(result.history)} "
          f"epochs ({result.seconds / 60:.1f} min on {result.device})" +
          (f"; saved to {result.saved_to}" if result.saved_to else "; not saved (no --name)"))
    return EXIT_OK


def train_command(cfg, sources: Sequence, *, name: str | None = None, workdir: Path | None = None,
                  val_fraction: float = 0.1, on_error: str = "stop") -> str:
    """The `python -m fer_app train` command that runs what `cfg` on `sources` (mixing.Source) says.

    For model cards and the Training page. Only the first source's FER+ votes can be expressed.
    """
    from dataclasses import fields

    from fer_app.training import TrainConfig

    first, *more = sources
    argv = ["train", str(first.path) + (f":{first.weight:g}" if first.weight != 1 else "")]
    argv += ["--ferplus", str(first.ferplus)] if first.ferplus else []
    for source in more:
        argv += ["--mix", f"{source.path}:{source.weight:g}"]
    argv += ["--name", name] if name else []
    argv += ["--workdir", str(workdir)] if workdir else []
    flags = {"widths": "--widths", "convs_per_stage": "--convs", "init_from": "--init-from", "clip_source": "--clip",
             "teachers": "--teacher"}
    switches = {"augment": "--no-augment", "tta_flip": "--no-tta"}
    default = TrainConfig()
    for f in fields(TrainConfig):
        value = getattr(cfg, f.name)
        if f.name in switches:
            argv += [switches[f.name]] if not value else []
        elif f.name == "lr" or value != getattr(default, f.name):
            flag = flags.get(f.name, "--" + f.name.replace("_", "-"))
            argv += [flag, *map(str, value)] if isinstance(value, tuple) else [flag, str(value)]
    argv += ["--val-fraction", f"{val_fraction:g}"] if val_fraction != 0.1 else []
    argv += ["--on-error", on_error] if on_error != "stop" else []
    return "python -m fer_app " + shlex.join(argv)


def cmd_targets(args: argparse.Namespace) -> int:
    from fer_app.targets import export_teacher_targets, targets_file_meta

    splits = _load_sources(args)
    bar = _progress_bar(None, "teachers", unit="face")
    progress = _reporter(bar)

    workdir = args.workdir or args.out.parent / (args.out.stem + "-cache")
    path = export_teacher_targets(args.teacher, splits["train"], args.out, workdir, report=progress)
    bar.close()
    count = len(json.loads(targets_file_meta(path)["teachers"]))  # a targets file among them counts its teachers
    print(f"{path}: {count} teachers' targets on {len(splits['train'])} train faces of "
          f"{splits['train'].source} ({path.stat().st_size / 1e6:.1f} MB); train with --teacher {path}")
    return EXIT_OK


def cmd_pack(args: argparse.Namespace) -> int:
    from fer_app.data import pack_npz

    bar = _progress_bar(None, "pack", unit="face")
    progress = _reporter(bar)

    report = pack_npz(args.data, args.out, progress)
    bar.close()
    print(f"{report.path}: {report.faces} faces as lossless WebP, {report.bytes_after / 2**20:.1f} MiB "
          f"({report.bytes_after / report.bytes_before:.0%} of {args.data}'s {report.bytes_before / 2**20:.1f} MiB); "
          "every command reads it as the original")
    return EXIT_OK


# ---------------------------------------------------------------- calibrate


def cmd_calibrate(args: argparse.Namespace) -> int:
    from fer_app.calibration import CalibrationSession, calibrate
    from fer_app.metrics import format_report
    from fer_app.mixing import load_sources

    folder = Path(args.session) if Path(args.session).is_dir() else CalibrationSession(args.session, args.root).folder
    fer = load_sources([args.fer], seed=args.seed, on_error=args.on_error) if args.fer else None
    name = args.name or f"{Path(args.model).name}-calibrated-{folder.name}"
    res = calibrate(args.model, folder, fer, holdout=args.holdout, gate=args.gate, name=name, threads=args.threads,
                    overwrite=args.overwrite, callback=_training_bar(), command=_command(args))
    print(f"held-out captures: {res.held_out} (the latest {args.holdout:.0%} of each emotion, by capture time); "
          f"learnt from: {res.trained_on}\nbefore ({args.model}):\n{format_report(res.before)}\n"
          f"after ({name}):\n{format_report(res.after)}")
    if res.fer_before is not None:
        print(f"FER-2013 val ({res.fer_before['n']} faces): {res.fer_before['accuracy']:.2%} before, "
              f"{res.fer_after['accuracy']:.2%} after")
    print(f"protection: {res.protection}\ntime: {res.seconds:.1f} s\nsaved to {res.saved_to}")
    return EXIT_OK


# ---------------------------------------------------------------- quantize


def _model_and_data(args: argparse.Namespace, split: str, missing: str) -> tuple[Path, dict]:
    """The model folder of args.model and the splits of args.data, which must have `split`."""
    from fer_app.model import model_dir

    splits = _load_splits(args)
    if split not in splits:
        raise ValueError(f"{args.data}: {missing}")
    return model_dir(args.model), splits


def cmd_quantize(args: argparse.Namespace) -> int:
    from fer_app.quantize import quantize_model

    folder, splits = _model_and_data(args, "train", "no training split to calibrate on")
    report = quantize_model(folder, splits["train"], splits.get("val"), count=args.calibration,
                            min_agreement=args.min_agreement, threads=args.threads)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
        return EXIT_OK
    print(f"{folder / report.file}: {report.method}; calibrated on {report.calibration['n']} faces")
    if report.val:
        v = report.val
        print(f"val ({v['n']} faces): accuracy fp32 {v['accuracy_fp32']:.2%}, int8 {v['accuracy_int8']:.2%}; "
              f"top-1 agreement {v['agreement']:.2%}")
    return EXIT_OK


# ---------------------------------------------------------------- tta


def cmd_tta(args: argparse.Namespace) -> int:
    from fer_app.tta import select_tta

    folder, splits = _model_and_data(args, "val", "no val split to choose on")
    candidates = [()] + [tuple(z) for z in args.zooms] if args.zooms else None
    kwargs = {"candidates": candidates} if candidates else {}
    bar = _progress_bar(None, "val views", unit="view")
    progress = _reporter(bar)

    report = select_tta(folder, splits["val"], max_views=args.max_views, write=not args.dry_run,
                        progress=progress, twins=_train_twins(splits, "val"), **kwargs)
    bar.close()
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
        return EXIT_OK
    print(f"val: {report.n} faces of {report.source}; mirror image {'on' if report.flip else 'off'}")
    print(f"{'zooms':<14}{'views':>6}{'accuracy':>10}{'macro-F1':>10}")
    for c in report.candidates:
        mark = "  <- chosen" if c.zooms == report.chosen else ""
        print(f"{list(c.zooms) or 'none'!s:<14}{c.views:>6}{c.accuracy:>10.2%}{c.macro_f1:>10.3f}{mark}")
    if report.changed:
        print(f"{folder}: tta_zooms set to {list(report.chosen)}; val metrics, confusion matrix and model card updated")
    elif report.recorded:
        print(f"{folder}: tta_zooms kept at {list(report.chosen)}; the choice, val metrics and model card recorded")
    else:
        print(f"{folder}: unchanged" + (" (--dry-run)" if args.dry_run and report.chosen != report.before else ""))
    return EXIT_OK


def cmd_runs(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from fer_app import runs
    from fer_app.model import model_dir, read_config

    folder = model_dir(args.model)
    rows = runs.runs_of(read_config(folder))
    for path in args.add:
        rows = runs.add_run(folder, runs.from_folder(path))
    if args.json:
        print(json.dumps([asdict(r) for r in rows], indent=2))
    else:
        print(runs.runs_section(rows))
    return EXIT_OK


def cmd_ensemble(args: argparse.Namespace) -> int:
    from fer_app.ensemble import save_ensemble

    folder = save_ensemble(args.members, args.name, mean=args.mean, models_dir=args.models_dir,
                           overwrite=args.overwrite, command=_command(args))
    print(f"saved {folder} ({len(args.members)} members, the mean of their {args.mean})")
    print(f"next: python -m fer_app tta {args.name} DATA (its TTA views, chosen on val); "
          f"python -m fer_app evaluate DATA --split val --runtime torch --model {args.name} --card")
    return EXIT_OK


def cmd_robustness(args: argparse.Namespace) -> int:
    from dataclasses import replace

    import numpy as np

    from fer_app.config import VIDEO_DETECTOR, DetectorConfig
    from fer_app.model import load_model
    from fer_app.robustness import MARGINS, format_recrop, recrop_report

    splits, split = _split_of(args)
    faces = splits[split]
    if args.count and args.count < len(faces):  # evenly spread over the split, every class kept in proportion
        picks = np.linspace(0, len(faces) - 1, args.count).astype(int)
        faces = replace(faces, images=faces.images[picks], labels=faces.labels[picks], soft_labels=None)
    model = load_model(args.model, clip_source=args.clip, runtime=args.runtime, threads=args.threads)
    bar = _progress_bar(len(faces), "pasting, detecting, cropping", unit="face")
    report = recrop_report(model, faces, margins=args.margins or MARGINS, seed=args.seed, roll=args.roll,
                           align=args.align,
                           detector=DetectorConfig() if args.detector == "photo" else VIDEO_DETECTOR,
                           progress=lambda done, total: bar.update(done - bar.n))
    bar.close()
    print(json.dumps(report.to_dict(), indent=2) if args.json else format_recrop(report))
    return EXIT_OK


# ---------------------------------------------------------------- models / fetch-clip


def cmd_models(args: argparse.Namespace) -> int:
    from fer_app.model import list_models

    for m in list_models():
        if m.problem:  # a damaged or malformed folder: listed, with why it cannot be used
            print(f"{m.name:<32} unusable: {m.problem}")
            continue
        acc = f"val acc {m.val_accuracy:.3f}" if m.val_accuracy is not None else ""
        print(f"{m.name:<32} {m.encoder:<14} {acc}")
        if m.path is not None and (m.encoder == "compact" or args.runtime):  # what `auto` runs it in here, and why
            from fer_app.model import load_model
            from fer_app.runtimes import runtime_choice

            print(f"{'':<32} runtime: {runtime_choice(load_model(m.path, threads=args.threads).encoder).summary()}")
    return EXIT_OK


def cmd_fetch_clip(args: argparse.Namespace) -> int:
    from fer_app.encoders.clip import fetch_clip

    print(f"saved CLIP ViT-B/32 to {fetch_clip(Path(args.dest)) if args.dest else fetch_clip()}")
    return EXIT_OK


# ---------------------------------------------------------------- bench / check-runtime


def cmd_bench(args: argparse.Namespace) -> int:
    from fer_app.bench import format_report, run_bench

    report = run_bench(clip=args.clip, runtime_names=args.runtimes, batches=args.batches, repeats=args.repeats,
                       quick=args.quick, threads=args.threads, compact=args.model, pipeline=args.pipeline,
                       footage=None if args.footage is None else args.footage or FOOTAGE_PARTS)
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return EXIT_OK


def cmd_check_runtime(args: argparse.Namespace) -> int:
    from fer_app.bench import clip_encoder
    from fer_app.model import load_model, model_dir, read_config, runtime_files
    from fer_app.runtimes import TORCH, candidates_for, check_crops, check_runtimes, runtime_choice

    head, shipped, reference, auto = None, {}, None, None
    if args.model:
        model = load_model(args.model, clip_source=args.clip, runtime=TORCH)
        encoder, head, weights = model.encoder, model.head, f"model {model.name}"
        folder = model_dir(args.model)
        if folder.is_dir():
            shipped, reference = runtime_files(folder, read_config(folder))
    else:
        encoder, weights = clip_encoder(args.clip, random_when_missing=False)
    crops = reference.crops if reference is not None else check_crops(fer_count=args.fer_count)
    names = args.runtimes or [r for r in candidates_for(encoder, shipped) if r != TORCH]
    results = check_runtimes(encoder, names, crops=crops, head=head, threads=args.threads, shipped=shipped)
    failed = any(not r.passed and r.error is None for r in results)
    if args.model:  # what `auto` runs this model in on this machine, and why
        auto = runtime_choice(load_model(args.model, clip_source=args.clip, threads=args.threads).encoder)
    if args.json:
        print(json.dumps({"weights": weights, "results": [r.to_dict() for r in results],
                          "auto": None if auto is None else {"runtime": auto.runtime, "reason": auto.reason}},
                         indent=2))
        return EXIT_ERROR if failed else EXIT_OK
    first = results[0] if results else None
    print(f"{weights}: each runtime against torch fp32 on {len(crops.crops)} face crops ({crops.source}); "
          f"top-1 of {first.head if first else 'the head'}")
    for result in results:
        print(f"  {result.summary()}")
    if auto is not None:
        print(f"auto on this machine: {auto.summary()}")
    return EXIT_ERROR if failed else EXIT_OK


# ---------------------------------------------------------------- parser


def _number(kind: type, low: float, *, above: bool = False, below: float | None = None):
    """An argparse type: a `kind` number >= low (> low with `above`; < below when given); else a usage error."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a{'n integer' if kind is int else ' number'}: {text!r}") from None
        if value != value or (value <= low if above else value < low) or (below is not None and value >= below):
            bound = f"> {low:g}" if above else f">= {low:g}"
            raise argparse.ArgumentTypeError(f"must be {bound}{f' and < {below:g}' if below is not None else ''}, "
                                             f"got {text}")
        return value
    return parse


def _source(spec: str):
    from fer_app.mixing import Source

    return Source.parse(spec)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m fer_app", description="Facial emotion recognition: "
                                     "face detection (Haar) + encoder (compact CNN or CLIP ViT-B/32) + head.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def model_args(p: argparse.ArgumentParser, *, stills: bool = False) -> None:
        default = f"{STILLS_MODEL}, the accurate model for photos, when it is in models/, else {DEFAULT_MODEL}" \
            if stills else DEFAULT_MODEL
        p.add_argument("--model", default=None if stills else DEFAULT_MODEL, help=f"model name in models/ or a "
                       f"folder (default {default}; 'clip-vit-b32-zero-shot' for CLIP from text prompts)")
        p.add_argument("--clip", default=None, metavar="PATH", help="folder (or HF hub id) of CLIP ViT-B/32 "
                       "weights (default models/clip-vit-base-patch32, then the HF cache)")
        runtime_args(p)

    def runtime_args(p: argparse.ArgumentParser, *, runtime: bool = True) -> None:
        if runtime:  # names are checked by fer_app.runtimes (not imported here: it imports torch)
            p.add_argument("--runtime", default="auto", metavar="RUNTIME",
                           help=f"where the CLIP encoder runs: auto (default: the fastest CPU runtime that passes "
                           f"the accuracy check here, or $FER_APP_RUNTIME when set), {RUNTIME_NAMES}; a compact model "
                           f"runs its shipped int8 encoder under auto when it has one (onnx-int8-static), "
                           f"else torch")
        p.add_argument("--threads", type=int, default=None, help="inference threads (default $FER_APP_THREADS, "
                       "else the physical cores, less one from 4 cores up)")

    def detector_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--detection-width", type=_number(int, 1), help="downscale frames to this width before "
                       "detection")
        p.add_argument("--scale-factor", type=_number(float, 1.0, above=True, below=10.0),
                       help="Haar cascade scale factor, > 1 (e.g. 1.1)")
        p.add_argument("--min-neighbors", type=_number(int, 0), help="Haar cascade min neighbours, >= 0 (higher: "
                       "fewer false faces)")
        p.add_argument("--min-face", type=_number(int, 1), help="smallest face side in pixels")
        p.add_argument("--equalize", choices=EQUALIZE_MODES,
                       help="contrast step before detection (default clahe: adaptive histogram equalisation)")

    p = sub.add_parser("predict", help="detect faces in images and classify their expressions",
                       description="Per face: box (x, y, w, h), label and the 7 probabilities.")
    p.add_argument("images", nargs="+", metavar="IMAGE")
    model_args(p, stills=True)
    p.add_argument("--json", action="store_true", help="print JSON")
    detector_args(p)
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("video", help="track faces through a video file and classify them frame by frame",
                       description="The live pipeline (detect, track, classify, smooth) over every frame of "
                       "a video (mp4, webm, avi, mov, ...). Prints a summary; --csv writes one row per face "
                       "and frame, --out the annotated video.")
    p.add_argument("video", metavar="IN")
    p.add_argument("--out", metavar="OUT.mp4", help="write the annotated video (H.264 .mp4, .mov or .mkv)")
    p.add_argument("--csv", metavar="OUT.csv", help="write per-face rows: frame, time, track, x, y, w, h, label, "
                   "the 7 probabilities")
    p.add_argument("--every", type=_number(int, 1), default=1, metavar="N", help="process every N-th frame "
                   "(default 1)")
    p.add_argument("--smoothing", type=_number(float, 0.0, below=1.0), default=0.6, help="weight of the past in "
                   "each face's running "
                   "average of probabilities, 0 to <1 (default 0.6; 0: off)")
    model_args(p)
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    detector_args(p)
    p.set_defaults(func=cmd_video)

    def data_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("data", help="fer2013.csv, a folder (train/<class>/*, test/<class>/*) or the dev .npz")
        p.add_argument("--ferplus", metavar="CSV", help="FER+ fer2013new.csv: use its majority labels "
                       "(DATA must then be the matching fer2013.csv)")
        p.add_argument("--on-error", choices=("stop", "skip"), default="stop",
                       help="bad rows/images: stop with the file and line (default) or skip and count them")

    p = sub.add_parser("evaluate", help="accuracy, macro-F1, per-class P/R/F1 and confusion on labelled faces")
    data_args(p)
    p.add_argument("--split", default="PrivateTest", help="Training/PublicTest/PrivateTest (or train/val/test)")
    model_args(p)
    p.add_argument("--json", action="store_true", help="print JSON (accuracy, macro_f1, per_class, confusion, n)")
    p.add_argument("--card", action="store_true", help="write these val metrics into the model's folder "
                   "(config.json, confusion.png, model card); needs --split val --runtime torch")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("train", help="train the compact model or fine-tune CLIP, or a head on frozen embeddings",
                       description="Checkpoints every epoch into --workdir; --resume continues an interrupted run. "
                       "The best epoch on val is saved atomically as models/NAME. Several processes (GPUs, or CPUs "
                       "over gloo): torchrun --nproc_per_node N -m fer_app train ... (--batch-size is the global "
                       "batch); data larger than memory: --stream.")
    data_args(p)
    p.add_argument("--mix", action="append", default=[], type=_source, metavar="SOURCE:WEIGHT",
                   help="another data set (any DATA format, a .zip of the folder layout, or calibration captures "
                   "~/.fer_app/calibration/NAME) mixed in: WEIGHT repeats (>1) or subsamples (<1) its train faces; "
                   "repeatable. DATA may take a :WEIGHT too")
    p.add_argument("--name", help="save the best model as models/NAME (omit for a dry run)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing models/NAME")
    p.add_argument("--encoder", choices=("compact", "clip-vit-b32"), default="compact")
    p.add_argument("--mode", choices=("full", "head"), default="full",
                   help="full: train encoder and head; head: head only, on cached frozen embeddings")
    p.add_argument("--head", choices=("linear", "mlp"), default="linear")
    p.add_argument("--init-from", metavar="MODEL", help="start from a saved model instead of from scratch")
    p.add_argument("--clip", default=None, metavar="PATH", help="CLIP weights folder or hub id")
    p.add_argument("--widths", type=int, nargs="+", default=[32, 64, 128, 256], help="compact: channels per stage")
    p.add_argument("--convs", type=int, nargs="+", default=[1, 2, 2, 2], help="compact: convs per stage")
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--optimizer", choices=("sgd", "adamw"), default="sgd")
    p.add_argument("--lr", type=float, default=None, help="peak learning rate (default 0.05 sgd, 1e-3 adamw; "
                   "1e-4 adamw for a full CLIP fine-tune). CLIP's encoder fine-tunes at a tenth of it")
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--schedule", choices=("onecycle", "cosine", "constant"), default="onecycle")
    p.add_argument("--label-smoothing", type=float, default=0.1)
    p.add_argument("--balance", choices=("none", "sqrt", "inverse"), default="sqrt",
                   help="class weights against imbalance (disgust is rare)")
    p.add_argument("--soft-targets", choices=("none", "ferplus"), default="none",
                   help="ferplus: train on the faces' FER+ vote shares (the dev npz has them, or --ferplus CSV)")
    p.add_argument("--ferplus-weight", type=float, default=1.0, metavar="W",
                   help="with --soft-targets ferplus: W x the vote shares + (1 - W) x the smoothed label "
                   "(1: the votes alone; on FER-2013 they agree with its labels on 67-68%% of faces)")
    p.add_argument("--teacher", nargs="+", metavar="MODEL", help="distil: the mean probabilities of these saved "
                   "models (e.g. trained with other seeds or shapes) are soft targets; computed once per run and "
                   "cached in --workdir. A teacher may also be a targets file (`targets --out FILE.safetensors`): "
                   "each of its teachers counts as one")
    p.add_argument("--kd-weight", type=float, default=0.5, help="share of the loss on the teachers' targets")
    p.add_argument("--kd-temperature", type=float, default=2.0, help="distillation temperature")
    p.add_argument("--kd-online", action="store_true",
                   help="consistent teaching: the teachers see every batch exactly as the student does (augmented, "
                   "mixed) instead of once on the plain faces; costs the teachers' forward pass every step. "
                   "Teachers must take the student's pixels (compact models)")
    p.add_argument("--mixup", type=float, default=0.0, metavar="ALPHA",
                   help="mixup: blend pairs of faces and their targets by Beta(ALPHA, ALPHA) (0: off; 0.2 typical)")
    p.add_argument("--cutmix", type=float, default=0.0, metavar="ALPHA",
                   help="CutMix: paste a box of another face, its target blended in by the box's area, Beta(ALPHA, "
                   "ALPHA) (0: off; 1.0 typical); with --mixup too, each batch takes one of the two")
    p.add_argument("--haar-views", type=float, default=0.0, metavar="SHARE",
                   help="show this share of the train faces as the app frames them: pasted into real scenes from "
                   "../shared/media, found by the Haar cascade, cut from its box (made once per run, cached in "
                   "--workdir; 0: off, 0.5 typical)")
    p.add_argument("--swa-epochs", type=int, default=0, metavar="N",
                   help="stochastic weight averaging: the mean of the weights at the end of each of the last N "
                   "epochs becomes one more candidate, kept when it beats the best epoch on val (0: off; with "
                   "--schedule constant, N about half the epochs)")
    p.add_argument("--no-augment", action="store_true", help="turn off flips/affine/jitter/erasing")
    p.add_argument("--no-tta", action="store_true", help="don't average with the mirror image at prediction")
    p.add_argument("--patience", type=int, default=0, help="early stopping after N epochs without val gain (0: off)")
    p.add_argument("--val-fraction", type=float, default=0.1, help="held out for val when the data has no val split")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto (CUDA, then MPS, then CPU), cpu, cuda, mps")
    p.add_argument("--precision", choices=("auto", "fp32", "bf16", "fp16"), default="auto",
                   help="auto: bf16 autocast where the CPU/GPU has native bf16 (about 2x faster), fp16 (with a "
                   "gradient scaler) on other CUDA GPUs, else fp32")
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch default)")
    p.add_argument("--workdir", type=Path, help="checkpoint folder (default ~/.fer_app/runs/NAME)")
    p.add_argument("--resume", action="store_true", help="continue from the checkpoint in --workdir")
    p.add_argument("--stream", action="store_true", help="data larger than memory: DATA (a folder layout or a "
                   "CSV with columns path,label[,split]) is read batch by batch by --workers processes")
    p.add_argument("--workers", type=int, default=2, help="DataLoader worker processes decoding streamed images "
                   "(0: in the training process)")
    p.add_argument("--models-dir", type=Path, help="save --name in this folder instead of models/")
    p.add_argument("--progress-file", type=Path,
                   help="append progress and epochs as JSON lines (for the Training page)")
    p.add_argument("--stop-file", type=Path,
                   help="stop at the next batch, keeping the best epoch, once this file exists")
    p.set_defaults(func=cmd_train, argv=None)

    p = sub.add_parser("targets", help="write teachers' probabilities on the train faces to one file, for "
                       "distilling where the teachers are not (train --teacher FILE)",
                       description="Runs each teacher (with its test-time views) on the train split of DATA, "
                       "loaded as `train` loads it (the same --mix, --val-fraction and --seed), and writes their "
                       "probabilities, the faces' fingerprint and the teachers' runs to one safetensors file (about "
                       "0.8 MB a teacher for FER-2013). `train --teacher FILE` then learns as from the teachers, "
                       "and refuses the file on other faces.")
    data_args(p)
    p.add_argument("--teacher", nargs="+", required=True, metavar="MODEL",
                   help="the teachers: saved models (names or folders) or targets files")
    p.add_argument("--out", type=Path, required=True, metavar="FILE.safetensors", help="the file to write")
    p.add_argument("--mix", action="append", default=[], type=_source, metavar="SOURCE:WEIGHT",
                   help="as in train: the train faces must be the run's")
    p.add_argument("--val-fraction", type=float, default=0.1, help="as in train")
    p.add_argument("--seed", type=int, default=0, help="as in train")
    p.add_argument("--workdir", type=Path, help="where each teacher's share is cached as it is computed "
                   "(default beside --out); run again, only the teachers it lacks are computed")
    p.set_defaults(func=cmd_targets)

    p = sub.add_parser("pack", help="write the dev npz with its faces as lossless WebP (about 70%% of the bytes)",
                       description="For a machine with a limit on what it is sent (a GPU machine that takes "
                       "64 MiB): every face array of DATA becomes one lossless WebP file a face, each checked as it "
                       "is written; every command reads the packed file as it reads DATA.")
    p.add_argument("data", type=Path, help="an .npz (e.g. ../shared/data/fer2013-trainval.npz)")
    p.add_argument("--out", type=Path, required=True, metavar="FILE.npz", help="the packed file to write")
    p.set_defaults(func=cmd_pack)

    p = sub.add_parser("calibrate", help="a personal copy of a model that knows your captured faces",
                       description="Captures come from the Live webcam page (calibration capture). The latest captures "
                       "of each emotion are held out to measure accuracy before and after; the earlier ones go into a "
                       "memory that decides only for faces very like them (the base head is kept); saved as a new "
                       "model, with the base's int8 encoder and test-time views.")
    p.add_argument("session", metavar="NAME", help="calibration session (captures in ~/.fer_app/calibration/NAME/"
                   "<class>/*.png) or a folder of class folders")
    p.add_argument("--model", default=DEFAULT_MODEL, help=f"the model to start from (default {DEFAULT_MODEL})")
    p.add_argument("--fer", type=_source, metavar="DATA", help="FER-2013 (any DATA format with a val split): the "
                   "gate is chosen on its val split, and FER-2013 val accuracy is reported before and after")
    p.add_argument("--on-error", choices=("stop", "skip"), default="stop", help="bad rows/images in --fer")
    p.add_argument("--holdout", type=float, default=0.3, help="share of each emotion's captures held out to "
                   "measure: its latest ones, by capture time (default 0.3)")
    p.add_argument("--gate", type=float, help="cosine similarity to a capture from which the captures decide "
                   "(default: chosen on --fer's val split, else 0.97)")
    p.add_argument("--name", help="save as models/NAME (default MODEL-calibrated-SESSION)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing models/NAME")
    p.add_argument("--root", type=Path, help="calibration folder (default ~/.fer_app/calibration)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch default)")
    p.set_defaults(func=cmd_calibrate, argv=None)

    p = sub.add_parser("quantize", help="ship a static-int8 copy of a compact model's encoder (ONNX Runtime)",
                       description="Calibrates on training faces of DATA (7-bit weights: exact on CPUs with and "
                       "without VNNI), checks the int8 model against fp32 on the reference batch and on DATA's val "
                       "split (kept only with enough top-1 agreement), and writes encoder.int8.onnx and "
                       "reference.safetensors into the model folder; `--runtime auto` then checks it on each machine "
                       "and uses it where it passes and is faster than torch.")
    p.add_argument("model", metavar="MODEL", help="model name under models/ or a model folder")
    data_args(p)
    p.add_argument("--calibration", type=int, default=512, help="calibration faces, equal per class (default 512)")
    p.add_argument("--min-agreement", type=float, default=0.99,
                   help="keep the int8 file only if its val top-1 agrees with fp32 on this share (default 0.99)")
    p.add_argument("--threads", type=int, default=None, help="ONNX Runtime threads for the check")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=cmd_quantize)

    p = sub.add_parser("robustness", help="the model on faces framed as the app frames them: pasted into real "
                       "photos, found by the Haar detector, cropped with each margin",
                       description="Pastes each face of DATA's split into a random part of a real photo or video "
                       "frame of ../shared/media (scaled to 100-220 px, feathered edge), detects it with the app's "
                       "detector and crops it with each --margins value; prints accuracy, macro-F1 and per-class "
                       "recall of those crops beside the faces as given, over the faces found.")
    data_args(p)
    p.add_argument("--split", default="val", help="the split to measure on (default val: choices are made on val)")
    model_args(p)
    p.add_argument("--count", type=int, default=0, help="faces, evenly spread over the split (default: all)")
    p.add_argument("--margins", type=float, nargs="+",
                   help="crop margins to try (default -0.1 -0.05 0 0.05 0.1 0.15 0.2; negative: inside the box)")
    p.add_argument("--detector", choices=("video", "photo"), default="video",
                   help="the live/video detector settings (default) or the photo page's")
    p.add_argument("--seed", type=int, default=0, help="seed of the scenes (backgrounds, places, sizes)")
    p.add_argument("--roll", type=float, default=0.0, metavar="DEGREES",
                   help="paste each face turned by a random angle up to this, either way (a tilted head; default 0)")
    p.add_argument("--align", action="store_true",
                   help="also score every margin on crops levelled on the eyes (OpenCV's eye cascade)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=cmd_robustness)

    p = sub.add_parser("tta", help="choose a model's test-time augmentation views (zoomed copies) on val",
                       description="Scores zoom sets (the face at 90-110%% of its size, each with its mirror image "
                       "when the model averages mirror images) on the val split of DATA, within --max-views views "
                       "per face, and saves the most accurate into the model folder (config, val metrics, model "
                       "card) when it beats the current setting by at least 0.2 points.")
    p.add_argument("model", metavar="MODEL", help="model name under models/ or a model folder")
    data_args(p)
    p.add_argument("--zooms", type=float, nargs="+", action="append", metavar="Z",
                   help="a zoom set to try (repeatable; default: 0.95, 1.05, 0.9, 0.95+1.05, 0.9+1.1)")
    p.add_argument("--max-views", type=int, default=4, help="most views per face (default 4: about 2 ms per face "
                   "for the bundled model)")
    p.add_argument("--dry-run", action="store_true", help="score only; leave the model folder as it is")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=cmd_tta)

    p = sub.add_parser("runs", help="a model's table of training runs (recipe, epochs, hours, val figures)",
                       description="Prints every run behind a model: those of the models it started from and "
                       "learned from, then its own. --add records a run that shipped nothing (a tried recipe) "
                       "into the model's config and card: from the model it saved elsewhere (--models-dir) or "
                       "from its work folder's checkpoint.")
    p.add_argument("model", metavar="MODEL", help="model name under models/ or a model folder")
    p.add_argument("--add", nargs="+", default=[], metavar="FOLDER",
                   help="runs to add: each the model folder it saved, or its training work folder")
    p.add_argument("--json", action="store_true", help="print the table as JSON")
    p.set_defaults(func=cmd_runs)

    p = sub.add_parser("ensemble", help="combine saved compact models into one: the mean of their logits (an "
                       "accurate model for photos) or of their weights (a soup)",
                       description="Saves models/NAME, with a card listing the members and their runs. --mean "
                       "logits: the members' networks side by side and one linear head that averages their logits; "
                       "costs the members' compute together per view. --mean weights: one network whose weights "
                       "and BatchNorm statistics are the members' mean (members of one shape and lineage, e.g. "
                       "fine-tuned from one another); the compute of one.")
    p.add_argument("name", metavar="NAME", help="the new model's name under models/")
    p.add_argument("members", nargs="+", metavar="MODEL", help="2 or more compact models (names or folders)")
    p.add_argument("--mean", choices=ENSEMBLE_MEANS, default=ENSEMBLE_MEANS[0],
                   help="average the members' logits (default) or their weights")
    p.add_argument("--models-dir", type=Path, default=None, help="where to save (default models/)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing models/NAME")
    p.set_defaults(func=cmd_ensemble, argv=None)

    p = sub.add_parser("models", help="list the models you can use, and the runtime each runs in here",
                       description="Each model, its encoder and val accuracy; for compact models (and all with "
                       "--runtime) the runtime `auto` runs it in on this machine and why (checked once per machine, "
                       "then cached).")
    p.add_argument("--runtime", action="store_true", help="also load CLIP models to say their runtime (slower)")
    p.add_argument("--threads", type=int, default=None, help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("fetch-clip", help="download CLIP ViT-B/32 to models/clip-vit-base-patch32 (needs internet)")
    p.add_argument("--dest", help="where to save (default models/clip-vit-base-patch32)")
    p.set_defaults(func=cmd_fetch_clip)

    p = sub.add_parser("bench", help="time the CLIP encoder in each CPU runtime, Haar detection and the compact model",
                       description="Per runtime and batch: median and p95 ms per face, faces/s, peak memory and the "
                       "ratio to torch fp32 in the same run, with each runtime's accuracy check. Without CLIP "
                       "weights, the full-size ViT-B/32 architecture with random weights is timed.")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 4, 8], metavar="N", help="batch sizes (default 1 4 8)")
    p.add_argument("--runtimes", nargs="+", metavar="RUNTIME",
                   help=f"runtimes to time (default all: {RUNTIME_NAMES}); torch is always the reference")
    p.add_argument("--repeats", type=int, default=20, help="timed calls per runtime and batch (default 20)")
    p.add_argument("--quick", action="store_true", help="3 timed calls and fewer check crops: a smoke test")
    p.add_argument("--clip", default=None, metavar="PATH", help="CLIP weights folder, or 'random' for the "
                   "full-size architecture with random weights (default: local weights, else random)")
    p.add_argument("--model", default=DEFAULT_MODEL, help=f"the compact model to time (default {DEFAULT_MODEL})")
    p.add_argument("--pipeline", action="store_true", help="also run the live pipeline on synthetic 640x480 clips "
                   "and every real-footage benchmark")
    p.add_argument("--footage", nargs="*", choices=FOOTAGE_PARTS, metavar="PART",
                   help="only the real-footage benchmarks of ../shared/media, with the fer package side by side: all, "
                   f"or the parts named ({', '.join(FOOTAGE_PARTS)}; photos: the Photo page's engine with the "
                   "bundled and the stills model)")
    runtime_args(p, runtime=False)
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("check-runtime", help="check each CPU runtime of a model's encoder against torch fp32",
                       description="Cosine similarity of the embeddings and agreement of the head's top-1 label on "
                       "real face crops: the model's shipped reference batch when it has one, else the bundled "
                       "astronaut picture and FER-2013 val faces when present. With --model, also says which "
                       "runtime `auto` runs the model in on this machine and why. Exits with 1 when a runtime "
                       "fails (mean cosine < 0.99 or top-1 agreement < 98%%).")
    p.add_argument("--clip", default=None, metavar="PATH", help="CLIP weights folder or hub id (default "
                   "models/clip-vit-base-patch32, then the HF cache), or 'random' for random weights")
    p.add_argument("--model", default=None, help="a model (name or folder, compact or CLIP): its encoder, its "
                   "shipped int8 file and its head are checked (default: CLIP alone, with a fixed random head)")
    p.add_argument("--runtimes", "--runtime", nargs="+", metavar="RUNTIME",
                   help="runtimes to check (default: the encoder's candidates for auto, but torch)")
    p.add_argument("--fer-count", type=int, default=240, help="FER-2013 val faces to add to the crops (default 240)")
    p.add_argument("--json", action="store_true", help="print JSON")
    runtime_args(p, runtime=False)
    p.set_defaults(func=cmd_check_runtime)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if argv is not None and getattr(args, "argv", 0) is None:
        args.argv = list(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (ValueError, OSError, RuntimeError) as exc:  # our errors subclass these; one line, no traceback
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"error: {msg}", file=sys.stderr)
        return EXIT_ERROR
