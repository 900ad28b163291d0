"""The command line: `python -m fer_app predict|evaluate|train|models|fetch-clip ...`.

A thin layer over the library (the same functions the Streamlit pages call). Errors end with
a one-line message on stderr and a non-zero exit code; never a traceback for bad input.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

from fer_app.config import DEFAULT_MODEL

EXIT_OK, EXIT_ERROR, EXIT_USAGE = 0, 1, 2


def _progress_bar(total: int, desc: str):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="img", leave=False, disable=not sys.stderr.isatty())


# ---------------------------------------------------------------- predict


def cmd_predict(args: argparse.Namespace) -> int:
    from fer_app.detection import FaceDetector
    from fer_app.imageio import load_image
    from fer_app.model import load_model
    from fer_app.pipeline import analyze_image

    model = load_model(args.model, clip_source=args.clip)
    detector = FaceDetector(_detector_config(args))
    results, status = [], EXIT_OK
    for path in args.images:
        try:
            image = load_image(path)
        except ValueError as exc:
            print(f"error: {exc}", file=sys.stderr)
            results.append({"image": path, "error": str(exc)})
            status = EXIT_ERROR
            continue
        preds = analyze_image(image, model, detector)
        results.append({"image": path, "width": image.shape[1], "height": image.shape[0],
                        "faces": [p.to_dict() for p in preds]})
    if args.json:
        print(json.dumps({"model": model.name, "results": results}, indent=2))
        return status
    for r in results:
        if "error" in r:
            continue
        print(f"{r['image']}: {len(r['faces'])} face(s)")
        for i, f in enumerate(r["faces"], 1):
            probs = "  ".join(f"{c} {p:.2f}" for c, p in sorted(f["probabilities"].items(), key=lambda kv: -kv[1]))
            print(f"  face {i} box={tuple(f['box'])}  {f['label']} ({f['confidence']:.0%})   {probs}")
    return status


def _detector_config(args: argparse.Namespace):
    from dataclasses import replace

    from fer_app.config import DetectorConfig

    cfg = DetectorConfig()
    changes = {k: getattr(args, k) for k in ("detection_width", "scale_factor", "min_neighbors", "min_face")
               if getattr(args, k, None) is not None}
    return replace(cfg, **changes)


# ---------------------------------------------------------------- evaluate


def _load_splits(args: argparse.Namespace):
    from fer_app.data import load_dataset

    return load_dataset(args.data, ferplus=getattr(args, "ferplus", None), on_error=args.on_error)


def cmd_evaluate(args: argparse.Namespace) -> int:
    from fer_app.data import DataError
    from fer_app.evaluate import evaluate
    from fer_app.metrics import format_report
    from fer_app.model import load_model

    splits = _load_splits(args)
    split = _split_name(args.split)
    if split not in splits:
        raise DataError(f"{args.data}: no {args.split!r} split (has: {', '.join(splits)})")
    faces = splits[split]
    model = load_model(args.model, clip_source=args.clip)
    bar = _progress_bar(len(faces), f"evaluating {model.name}")
    report = evaluate(model, faces, report=lambda done, total: bar.update(done - bar.n))
    bar.close()
    report["model"], report["split"], report["skipped_rows"] = model.name, split, faces.skipped
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(f"model {model.name} on {args.data} [{split}]" + (f" ({faces.skipped} bad rows skipped)"
                                                                 if faces.skipped else ""))
        print(format_report(report))
    return EXIT_OK


def _split_name(split: str) -> str:
    return {"training": "train", "publictest": "val", "privatetest": "test"}.get(split.lower(), split.lower())


# ---------------------------------------------------------------- train


def cmd_train(args: argparse.Namespace) -> int:
    from fer_app.modelcard import render_card
    from fer_app.training import Callback, TrainConfig, device_name, pick_device, train

    cfg = TrainConfig(encoder=args.encoder, mode=args.mode, head=args.head, init_from=args.init_from,
                      widths=tuple(args.widths), convs_per_stage=tuple(args.convs), epochs=args.epochs,
                      batch_size=args.batch_size, optimizer=args.optimizer,
                      lr=args.lr if args.lr else (0.05 if args.optimizer == "sgd" else 1e-3),
                      weight_decay=args.weight_decay, schedule=args.schedule, label_smoothing=args.label_smoothing,
                      balance=args.balance, augment=not args.no_augment, tta_flip=not args.no_tta,
                      patience=args.patience, seed=args.seed, device=args.device, threads=args.threads,
                      clip_source=args.clip)
    splits = _load_splits(args)
    if "val" not in splits:
        from fer_app.data import split_for_validation

        if "train" not in splits:
            splits = {"train": next(iter(splits.values()))}
        splits["train"], splits["val"] = split_for_validation(splits["train"], args.val_fraction, args.seed)
    for split, faces in splits.items():
        note = f" ({faces.skipped} bad rows skipped)" if faces.skipped else ""
        print(f"{split}: {len(faces)} faces{note}", file=sys.stderr)
    print(f"device: {device_name(pick_device(args.device))}", file=sys.stderr)
    command = "python -m fer_app " + shlex.join(sys.argv[1:] if args.argv is None else args.argv)

    class Bar(Callback):
        def __init__(self) -> None:
            self.bar, self.phase = None, ""

        def on_progress(self, p) -> None:
            from tqdm import tqdm

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

        def on_epoch(self, s, p) -> None:
            msg = (f"epoch {s.epoch}/{s.epochs}: train loss {s.train_loss:.3f} acc {s.train_accuracy:.3f} | "
                   f"val loss {s.val_loss:.3f} acc {s.val_accuracy:.4f} macro-F1 {s.val_macro_f1:.3f} | "
                   f"lr {s.lr:.4f} | {s.seconds:.0f}s{' *best' if s.best else ''}")
            (self.bar.write if self.bar is not None else print)(msg, file=sys.stderr)

    result = train(cfg, splits, name=args.name, workdir=args.workdir, resume=args.resume, callback=Bar(),
                   overwrite=args.overwrite, card=lambda r: render_card(args.name, r.model.config(), command))
    rep = result.report
    print(f"best val accuracy {rep['accuracy']:.4f}, macro-F1 {rep['macro_f1']:.4f} after {len(result.history)} "
          f"epochs ({result.seconds / 60:.1f} min on {result.device})" +
          (f"; saved to {result.saved_to}" if result.saved_to else "; not saved (no --name)"))
    return EXIT_OK


# ---------------------------------------------------------------- models / fetch-clip


def cmd_models(args: argparse.Namespace) -> int:
    from fer_app.model import list_models

    for m in list_models():
        acc = f"val acc {m.val_accuracy:.3f}" if m.val_accuracy is not None else ""
        print(f"{m.name:<32} {m.encoder:<14} {acc}")
    return EXIT_OK


def cmd_fetch_clip(args: argparse.Namespace) -> int:
    from fer_app.encoders.clip import fetch_clip

    print(f"saved CLIP ViT-B/32 to {fetch_clip(Path(args.dest)) if args.dest else fetch_clip()}")
    return EXIT_OK


# ---------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m fer_app", description="Facial emotion recognition: "
                                     "face detection (Haar) + encoder (compact CNN or CLIP ViT-B/32) + head.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def model_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--model", default=DEFAULT_MODEL, help=f"model name in models/ or a folder (default "
                       f"{DEFAULT_MODEL}; 'clip-vit-b32-zero-shot' for CLIP from text prompts)")
        p.add_argument("--clip", default=None, metavar="PATH", help="folder (or HF hub id) of CLIP ViT-B/32 "
                       "weights (default models/clip-vit-base-patch32, then the HF cache)")

    p = sub.add_parser("predict", help="detect faces in images and classify their expressions",
                       description="Per face: box (x, y, w, h), label and the 7 probabilities.")
    p.add_argument("images", nargs="+", metavar="IMAGE")
    model_args(p)
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--detection-width", type=int, help="downscale frames to this width before detection")
    p.add_argument("--scale-factor", type=float, help="Haar cascade scale factor (e.g. 1.1)")
    p.add_argument("--min-neighbors", type=int, help="Haar cascade min neighbours (higher: fewer false faces)")
    p.add_argument("--min-face", type=int, help="smallest face side in pixels")
    p.set_defaults(func=cmd_predict)

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
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("train", help="train the compact model, or a head on frozen encoder embeddings",
                       description="Checkpoints every epoch into --workdir; --resume continues an interrupted run. "
                       "The best epoch on val is saved atomically as models/NAME.")
    data_args(p)
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
    p.add_argument("--lr", type=float, default=None, help="peak learning rate (default 0.05 sgd, 1e-3 adamw)")
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--schedule", choices=("onecycle", "cosine", "constant"), default="onecycle")
    p.add_argument("--label-smoothing", type=float, default=0.1)
    p.add_argument("--balance", choices=("none", "sqrt", "inverse"), default="sqrt",
                   help="class weights against imbalance (disgust is rare)")
    p.add_argument("--no-augment", action="store_true", help="turn off flips/affine/jitter/erasing")
    p.add_argument("--no-tta", action="store_true", help="don't average with the mirror image at prediction")
    p.add_argument("--patience", type=int, default=0, help="early stopping after N epochs without val gain (0: off)")
    p.add_argument("--val-fraction", type=float, default=0.1, help="held out for val when the data has no val split")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto (CUDA, then MPS, then CPU), cpu, cuda, mps")
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch default)")
    p.add_argument("--workdir", type=Path, help="checkpoint folder (default ~/.fer_app/runs/NAME)")
    p.add_argument("--resume", action="store_true", help="continue from the checkpoint in --workdir")
    p.set_defaults(func=cmd_train, argv=None)

    p = sub.add_parser("models", help="list the models you can use")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("fetch-clip", help="download CLIP ViT-B/32 to models/clip-vit-base-patch32 (needs internet)")
    p.add_argument("--dest", help="where to save (default models/clip-vit-base-patch32)")
    p.set_defaults(func=cmd_fetch_clip)
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
