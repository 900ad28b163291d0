"""Evaluate a classifier on labelled faces: the metrics of `fer_app.metrics` for a `FaceSet`."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from fer_app.data import FaceSet
from fer_app.metrics import classification_report
from fer_app.model import Classifier


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
             report: Callable[[int, int], None] | None = None) -> dict:
    """Accuracy, macro-F1, per-class precision/recall/F1 and confusion of `model` on `faces`."""
    probs = predict_faces(model, faces, batch_size, report)
    return classification_report(faces.labels, probs.argmax(1), tuple(model.classes))
