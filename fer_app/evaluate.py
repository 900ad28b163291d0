"""Evaluate a classifier on labelled faces: the metrics of `fer_app.metrics` for a `FaceSet`, and
writing a model's val metrics into its folder (config.json, confusion.png, the model card)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from fer_app.data import FaceSet
from fer_app.metrics import classification_report, confusion_png
from fer_app.model import CARD_FILE, Classifier, read_config, write_config
from fer_app.modelcard import validation_section, with_section


def predict_faces(model: Classifier, faces: FaceSet, batch_size: int = 256,
                  report: Callable[[int, int], None] | None = None) -> np.ndarray:
    """(N, C) probabilities for every face of the set, in batches."""
    out = []
    n = len(faces)
    for i in range(0, n, batch_size):
        out.append(model.predict_proba(list(faces.images[i:i + batch_size])))
        if report:
            report(min(i + batch_size, n), n)
    return np.concatenate(out) if out else np.zeros((0, len(model.classes)), np.float32)


def evaluate(model: Classifier, faces: FaceSet, batch_size: int = 256,
             report: Callable[[int, int], None] | None = None, twins: np.ndarray | None = None) -> dict:
    """Accuracy, macro-F1, per-class precision/recall/F1 and confusion of `model` on `faces`; `twins`
    (faces with a pixel-identical twin in train, `data.twins_in`) adds the figures without them."""
    probs = predict_faces(model, faces, batch_size, report)
    return classification_report(faces.labels, probs.argmax(1), tuple(model.classes), twins)


def save_val_report(folder: Path, val_report: dict, cfg: dict | None = None,
                    edit_card: Callable[[str], str] | None = None) -> None:
    """Make `val_report` the val metrics of the model in `folder`: config.json's `metrics.val` (in `cfg`,
    the folder's config with the caller's changes, when given), confusion.png and the card's validation
    section (`edit_card` changes the card further). config.json is written last, atomically."""
    folder = Path(folder)
    cfg = read_config(folder) if cfg is None else cfg
    cfg.setdefault("metrics", {})["val"] = val_report
    card_path = folder / CARD_FILE
    card = card_path.read_text() if card_path.is_file() else None
    if card is not None:
        card = with_section(card, validation_section(val_report))
        card = edit_card(card) if edit_card else card
    (folder / "confusion.png").write_bytes(confusion_png(val_report["confusion"]))
    if card is not None:
        card_path.write_text(card)
    write_config(folder, cfg)
