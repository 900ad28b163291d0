"""The model card written next to each trained model (models/<name>/README.md)."""

from __future__ import annotations

import platform

import torch

from fer_app.metrics import format_report


def render_card(name: str, cfg: dict, command: str) -> str:
    """Markdown model card from a saved model's config (training data, settings, metrics)."""
    training = cfg.get("training", {})
    report = cfg.get("metrics", {}).get("val", {})
    data = training.get("data", {})
    enc = cfg.get("encoder", {})
    hours = training.get("seconds", 0) / 3600
    lines = [
        f"# {name}",
        "",
        cfg.get("description", "A facial-expression classifier trained with fer-app."),
        "",
        "## Model",
        f"- encoder: `{enc.get('type')}` {'(' + ', '.join(f'{k}={v}' for k, v in enc.items() if k != 'type') + ')' if enc else ''}",
        f"- head: `{cfg.get('head', {}).get('type')}`; classes (FER-2013 order): {', '.join(cfg.get('classes', []))}",
        f"- test-time augmentation (mirror image averaged): {cfg.get('tta_flip', False)}",
        "- files: `model.safetensors` (weights), `config.json` (this information, machine-readable), "
        "`confusion.png` (val confusion matrix)",
        "",
        "## Reproduce",
        "```",
        command,
        "```",
        "",
        "## Data",
    ]
    for split, d in data.items():
        lines.append(f"- {split}: {d.get('n')} faces from `{d.get('source')}`; per class {d.get('counts')}")
    lines += [
        "",
        "## Training",
        f"- epochs run: {training.get('epochs_run')} (best val epoch {training.get('best_epoch')}); "
        f"time {hours:.2f} h on {training.get('device')}; {platform.processor() or platform.machine()}, "
        f"torch {torch.__version__}",
        f"- settings: `{training.get('config')}`",
        "",
        "## Validation metrics (model selection split; the test split was never used)",
        "```",
        format_report(report) if report else "(none)",
        "```",
        "",
        "![confusion matrix](confusion.png)",
        "",
        "## Limitations",
        "FER-2013 is 48x48 grey internet faces with noisy labels (human accuracy about 65%); "
        "expect lower accuracy on webcam faces that differ in lighting, pose and age. "
        "`disgust` has few training images. Expressions are not emotions: use the output as a "
        "signal of the visible expression, not of how a person feels.",
        "",
    ]
    return "\n".join(lines)
