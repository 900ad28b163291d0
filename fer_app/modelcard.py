"""The model card written next to each trained model (models/<name>/README.md)."""

from __future__ import annotations

from fer_app.metrics import format_report
from fer_app.runs import runs_of, runs_section
from fer_app.runtimes import cpu_text


#: Training settings that a run started from a saved model (`init_from`) does not use: the saved model fixes its
#: encoder and shape (`training.build_model`), so the card leaves the command-line defaults for them out.
_SHAPE_SETTINGS = ("encoder", "widths", "convs_per_stage")


def settings_line(config: dict | None) -> str:
    """The card's line on a run's training settings; for a fine-tune (`init_from`), without the shape settings
    the saved model fixes (the encoder line above gives the real shape)."""
    if config and config.get("init_from"):
        kept = {k: v for k, v in config.items() if k not in _SHAPE_SETTINGS}
        return f"- settings: `{kept}` (encoder and shape: `init_from`'s, see Model)"
    return f"- settings: `{config}`"


def host_text(host: dict | None) -> str:
    """The machine a run trained on, as its training record kept it (CPU model, the ISA flags that set its speed,
    torch); runs saved before records kept it say so rather than show the machine that renders the card."""
    if not host:
        return "CPU and torch version not recorded"
    return f"{cpu_text(host.get('cpu', {}))}, torch {host.get('torch', '?')}"


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
        encoder_line(enc),
        f"- head: `{cfg.get('head', {}).get('type')}`; classes (FER-2013 order): {', '.join(cfg.get('classes', []))}",
        tta_line(cfg),
        "- files: `model.safetensors` (weights), `config.json` (this information, machine-readable), "
        "`confusion.png` (val confusion matrix)",
        "",
        "## Reproduce",
        "```",
        *reproduce_commands(cfg, command),
        "```",
        "",
    ]
    if data:
        lines.append("## Data")
        lines += [f"- {split}: {d.get('n')} faces from `{d.get('source')}`; per class {d.get('counts')}"
                  for split, d in data.items()]
        lines.append("")
    if training:
        lines += [
            "## Training",
            f"- epochs run: {training.get('epochs_run')} (best val epoch {training.get('best_epoch')}); "
            f"time {hours:.2f} h on {training.get('device')}; {host_text(training.get('host'))}",
            *([resumes_line(training)] if training.get("resumed_after_epochs") else []),
            *([swa_line(training["swa"])] if training.get("swa") else []),
            settings_line(training.get("config")),
            "",
        ]
    if cfg.get("ensemble"):
        lines.append(members_section(cfg["ensemble"]))
    lines += [
        *([runs_section(runs_of(cfg))] if cfg.get("runs") else []),
        validation_section(report),
        "## Limitations",
        "FER-2013 is 48x48 grey internet faces with noisy labels (human accuracy about 65%); "
        "expect lower accuracy on webcam faces that differ in lighting, pose and age. "
        "`disgust` has few training images. Expressions are not emotions: use the output as a "
        "signal of the visible expression, not of how a person feels.",
        "",
    ]
    return "\n".join(lines)


def encoder_line(enc: dict) -> str:
    """The model card's line on the encoder: its type and settings (an ensemble: its members' shapes)."""
    if enc.get("type") == "ensemble":
        shapes = "; ".join(f"widths={m.get('widths')}, convs={m.get('convs_per_stage')}"
                           for m in enc.get("members", []))
        return f"- encoder: `ensemble` of {len(enc.get('members', []))} compact nets ({shapes})"
    settings = ", ".join(f"{k}={v}" for k, v in enc.items() if k != "type")
    return f"- encoder: `{enc.get('type')}` ({settings})" if enc else "- encoder: ?"


def resumes_line(training: dict) -> str:
    """The card's line on a run's resumes, and the settings given new values on one (`--swa-epochs` only)."""
    after = ", ".join(str(e) for e in training.get("resumed_after_epochs", []))
    changes = "".join(f"; `{c['setting']}` {c['was']} -> {c['now']} on the resume after epoch {c['after_epoch']} "
                      f"(before its window began, so the recipe below reproduces the run)"
                      for c in training.get("changed_on_resume", []))
    return f"- resumed from its checkpoint after epochs {after}{changes}"


def swa_line(swa: dict) -> str:
    """The card's line on a run's weight mean (`--swa-epochs`): its val figures and whether it was kept."""
    kept = "kept: it beat every epoch" if swa.get("chosen") else "not kept: an epoch scored higher"
    n = swa.get("epochs_averaged", 0)
    return (f"- weight mean of the last {n} epoch{'' if n == 1 else 's'} (SWA): val accuracy "
            f"{swa.get('val_accuracy', 0):.2%}, macro-F1 {swa.get('val_macro_f1', 0):.3f}; {kept}")


def members_section(entry: dict) -> str:
    """The model card's section on an ensemble's members (`fer_app.ensemble`)."""
    lines = ["## Members", f"Combined as the {entry.get('combine', 'mean of the members logits')}; each member's "
             "own val figure as in its card (torch fp32, its TTA views).", "",
             "| member | val accuracy | weights sha256 |", "|---|---|---|"]
    for m in entry.get("members", []):
        acc = "–" if m.get("val_accuracy") is None else f"{m['val_accuracy']:.2%}"
        lines.append(f"| {m.get('name')} | {acc} | `{str(m.get('weights_sha256'))[:16]}…` |")
    return "\n".join(lines) + "\n"


def reproduce_commands(cfg: dict, command: str) -> list[str]:
    """The commands that make a model: those of the shipped runs it was built from (its table of runs), the
    ensemble steps of its members (a soup inside an ensemble), then its own `command`. A trained model's last
    run is its own; an ensemble's runs are all its members'."""
    runs = runs_of(cfg)
    if runs and runs[-1].model == cfg.get("name"):
        runs = runs[:-1]
    earlier = [r.command for r in runs if r.command and r.model] + cfg.get("ensemble", {}).get("steps", [])
    return [c for c in dict.fromkeys(earlier) if c != command] + [command]  # each once, in order


VALIDATION_TITLE = "## Validation metrics (model selection split; the test split was never used)"
TTA_TITLE = "## Test-time augmentation (chosen on val)"


def tta_line(cfg: dict) -> str:
    """The model card's line on test-time augmentation (in its Model section)."""
    return (f"- test-time augmentation: mirror image {'averaged' if cfg.get('tta_flip') else 'off'}; zoomed views "
            f"{cfg.get('tta_zooms') or 'none'}")


def validation_section(report: dict) -> str:
    """The model card's val metrics, with the confusion matrix image."""
    return "\n".join([VALIDATION_TITLE, "```", format_report(report) if report else "(none)", "```", "",
                      "![confusion matrix](confusion.png)", ""])


def tta_section(entry: dict) -> str:
    """The model card's section on the TTA views chosen by `fer_app.tta.select_tta`."""
    flip = "each with its mirror image" if entry.get("flip") else "no mirror image"
    lines = [TTA_TITLE,
             f"- chosen zooms: {list(entry.get('chosen', [])) or 'none'} ({flip}); before: "
             f"{list(entry.get('before', [])) or 'none'}; at most {entry.get('max_views')} views per face",
             f"- scored on {entry.get('n')} faces of `{entry.get('source')}`:", "",
             "| zooms | views | val accuracy | val macro-F1 |", "|---|---|---|---|"]
    for c in entry.get("candidates", []):
        lines.append(f"| {list(c['zooms']) or 'none'} | {c['views']} | {c['accuracy']:.2%} | {c['macro_f1']:.3f} |")
    return "\n".join(lines) + "\n"


QUANTIZED_TITLE = "## Int8 encoder (ONNX Runtime)"


def quantized_section(entry: dict) -> str:
    """The model card's section on the shipped static-int8 encoder (`fer_app.quantize`)."""
    lines = [QUANTIZED_TITLE,
             f"- `{entry.get('file')}`: {entry.get('method')}; calibrated on {entry.get('calibration', {}).get('n')} "
             f"faces of `{entry.get('calibration', {}).get('source')}` (the same number per class)",
             f"- made from the weights with sha256 `{entry.get('weights_sha256', '')[:16]}…`; used under "
             "`--runtime auto` while they match (`--runtime torch` runs the fp32 network)"]
    if entry.get("weight_range"):
        low, high = entry["weight_range"]
        lines.append(f"- int8 weights within [{low}, {high}] (7-bit): no int16 saturation on CPUs without VNNI")
    check = entry.get("reference_check")
    if check:
        lines.append(f"- reference batch (`reference.safetensors`, {check.get('n')} crops): mean cosine "
                     f"{check.get('cosine_mean'):.4f}, top-1 agreement {check.get('top1_agreement'):.1%} with fp32; "
                     "every machine repeats this check on first load before `auto` uses the file")
    val = entry.get("val")
    if val:
        lines.append(f"- val ({val['n']} faces): accuracy fp32 {val['accuracy_fp32']:.2%}, int8 "
                     f"{val['accuracy_int8']:.2%}; top-1 agreement {val['agreement']:.2%}")
    return "\n".join(lines) + "\n"


def with_section(card: str, section: str) -> str:
    """`card` with `section` (starting with its `## ` heading) replacing the section of that heading,
    or inserted before "## Limitations" (appended when there is none)."""
    heading = section.splitlines()[0]
    lines = card.splitlines(keepends=True)
    starts = [i for i, line in enumerate(lines) if line.rstrip("\n") == heading]
    if starts:
        end = next((j for j in range(starts[0] + 1, len(lines)) if lines[j].startswith("## ")), len(lines))
        return "".join(lines[:starts[0]]) + section + "\n" + "".join(lines[end:])
    limits = next((i for i, line in enumerate(lines) if line.startswith("## Limitations")), None)
    if limits is None:
        return card.rstrip("\n") + "\n\n" + section
    return "".join(lines[:limits]) + section + "\n" + "".join(lines[limits:])
