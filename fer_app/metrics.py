"""Classification metrics (accuracy, macro-F1, per-class P/R/F1, confusion), two models compared face by face
(McNemar), and a confusion-matrix image."""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from fer_app.config import CLASSES


def classification_report(y_true: np.ndarray, y_pred: np.ndarray, classes: tuple[str, ...] = CLASSES,
                          twins: np.ndarray | None = None) -> dict:
    """Metrics as plain JSON-friendly types: accuracy, macro_f1, per_class, confusion (rows = true), n.

    twins: (N,) bool, the faces with a pixel-identical twin in the training data (`data.twins_in`); when
    any is set, `without_twins` holds n, accuracy, macro_f1 and per-class recall over the others too.
    """
    if twins is not None and np.asarray(twins, bool).any():
        keep = ~np.asarray(twins, bool)
        rest = classification_report(np.asarray(y_true)[keep], np.asarray(y_pred)[keep], classes)
        report = classification_report(y_true, y_pred, classes)
        report["without_twins"] = {"twins": int((~keep).sum()), "n": rest["n"], "accuracy": rest["accuracy"],
                                   "macro_f1": rest["macro_f1"],
                                   "recall": {c: m["recall"] for c, m in rest["per_class"].items()}}
        return report
    k = len(classes)
    y_true, y_pred = np.asarray(y_true, np.int64), np.asarray(y_pred, np.int64)
    confusion = np.bincount(y_true * k + y_pred, minlength=k * k).reshape(k, k)
    tp = np.diag(confusion).astype(float)
    support, predicted = confusion.sum(1), confusion.sum(0)
    precision = np.divide(tp, predicted, out=np.zeros(k), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros(k), where=support > 0)
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros(k), where=(precision + recall) > 0)
    present = support > 0
    n = int(len(y_true))
    return {
        "n": n,
        "accuracy": float(tp.sum() / n) if n else 0.0,
        "macro_f1": float(f1[present].mean()) if present.any() else 0.0,
        "per_class": {c: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]),
                          "support": int(support[i])} for i, c in enumerate(classes)},
        "confusion": confusion.tolist(),
    }


@dataclass(frozen=True)
class PairedComparison:
    """Two models on the same faces: `gains` faces only A gets right, `losses` only B does."""

    n: int
    gains: int
    losses: int

    @property
    def difference(self) -> float:
        """A's accuracy minus B's."""
        return (self.gains - self.losses) / self.n if self.n else 0.0

    @property
    def z(self) -> float:
        """McNemar's statistic, signed: (gains - losses) / sqrt(gains + losses); |z| > 2 is a lead beyond the
        noise of these faces (p < 0.05), about 1 is a tie."""
        changed = self.gains + self.losses
        return (self.gains - self.losses) / math.sqrt(changed) if changed else 0.0

    def __str__(self) -> str:
        return f"{100 * self.difference:+.2f} points ({self.gains} gained, {self.losses} lost, z {self.z:+.1f})"


def paired_comparison(y_true: np.ndarray, pred_a: np.ndarray, pred_b: np.ndarray) -> PairedComparison:
    """Compares A's and B's predictions on the same faces: how many faces each gets right that the other misses."""
    y_true, pred_a, pred_b = (np.asarray(a, np.int64) for a in (y_true, pred_a, pred_b))
    if not y_true.shape == pred_a.shape == pred_b.shape:
        raise ValueError(f"labels and predictions differ in shape: {y_true.shape}, {pred_a.shape}, {pred_b.shape}")
    right_a, right_b = pred_a == y_true, pred_b == y_true
    return PairedComparison(n=len(y_true), gains=int((right_a & ~right_b).sum()),
                            losses=int((~right_a & right_b).sum()))


def format_report(report: dict) -> str:
    """A human-readable table of a `classification_report`."""
    lines = [f"n = {report['n']}   accuracy = {report['accuracy']:.4f}   macro-F1 = {report['macro_f1']:.4f}"]
    rest = report.get("without_twins")
    if rest:
        lines.append(f"without the {rest['twins']} with a pixel-identical twin in train: n = {rest['n']}   "
                     f"accuracy = {rest['accuracy']:.4f}   macro-F1 = {rest['macro_f1']:.4f}")
    lines += ["",
              f"{'class':<10}{'precision':>10}{'recall':>10}{'f1':>10}{'support':>10}"]
    for c, m in report["per_class"].items():
        lines.append(f"{c:<10}{m['precision']:>10.3f}{m['recall']:>10.3f}{m['f1']:>10.3f}{m['support']:>10d}")
    classes = list(report["per_class"])
    lines += ["", "confusion (rows: true, columns: predicted)", " " * 10 + "".join(f"{c[:7]:>8}" for c in classes)]
    for c, row in zip(classes, report["confusion"]):
        lines.append(f"{c:<10}" + "".join(f"{v:>8d}" for v in row))
    return "\n".join(lines)


def confusion_image(confusion: list[list[int]] | np.ndarray, classes: tuple[str, ...] = CLASSES,
                    cell: int = 64) -> np.ndarray:
    """A BGR image of the row-normalised confusion matrix with counts and percentages."""
    cm = np.asarray(confusion, dtype=float)
    k = len(classes)
    rows = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    left, top = 100, 110
    img = np.full((top + k * cell + 40, left + k * cell + 20, 3), 255, np.uint8)
    font = cv2.FONT_HERSHEY_SIMPLEX
    for i in range(k):
        for j in range(k):
            shade = int(255 * (1 - rows[i, j]))
            x0, y0 = left + j * cell, top + i * cell
            cv2.rectangle(img, (x0, y0), (x0 + cell - 1, y0 + cell - 1), (255, shade, shade), -1)
            colour = (255, 255, 255) if rows[i, j] > 0.5 else (0, 0, 0)
            cv2.putText(img, f"{rows[i, j] * 100:.0f}%", (x0 + 8, y0 + 28), font, 0.5, colour, 1, cv2.LINE_AA)
            cv2.putText(img, f"{int(cm[i, j])}", (x0 + 8, y0 + 48), font, 0.4, colour, 1, cv2.LINE_AA)
        cv2.putText(img, classes[i], (5, top + i * cell + cell // 2 + 5), font, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
        org = (left + i * cell + cell // 2 - 5, top - 8)
        label = np.full((20, 90, 3), 255, np.uint8)
        cv2.putText(label, classes[i], (2, 15), font, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
        rotated = cv2.rotate(label, cv2.ROTATE_90_COUNTERCLOCKWISE)
        img[org[1] - 90:org[1], org[0] - 10:org[0] + 10] = rotated
    cv2.putText(img, "predicted", (left + k * cell // 2 - 35, 14), font, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.putText(img, "rows: true class", (left, top + k * cell + 28), font, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    return img


def confusion_png(confusion: list[list[int]] | np.ndarray, classes: tuple[str, ...] = CLASSES) -> bytes:
    """`confusion_image` encoded as PNG (a model folder's confusion.png)."""
    ok, png = cv2.imencode(".png", confusion_image(confusion, classes))
    if not ok:
        raise ValueError("could not encode the confusion matrix as PNG")
    return png.tobytes()
