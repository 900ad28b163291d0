"""Tests of fer_app.metrics on hand-made cases: the confusion matrix's orientation and per-class figures."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from fer_app.config import CLASSES
from fer_app.metrics import classification_report, confusion_image, confusion_png, format_report

ABC = ("a", "b", "c", "d")
#: 7 faces: 3 true a (1 right, 2 taken for b), 2 true b (1 right, 1 taken for c), 2 true c (1 right, 1 taken for d);
#: d is never the true class, once predicted.
Y_TRUE = [0, 0, 0, 1, 1, 2, 2]
Y_PRED = [0, 1, 1, 1, 2, 2, 3]


@pytest.fixture()
def report() -> dict:
    return classification_report(np.array(Y_TRUE), np.array(Y_PRED), ABC)


def test_confusion_rows_are_the_true_class(report: dict) -> None:
    assert report["confusion"] == [[1, 2, 0, 0],
                                   [0, 1, 1, 0],
                                   [0, 0, 1, 1],
                                   [0, 0, 0, 0]]
    assert report["n"] == 7 and report["accuracy"] == pytest.approx(3 / 7)


def test_per_class_precision_recall_f1_support(report: dict) -> None:
    expected = {  # precision = right / predicted as the class; recall = right / truly the class
        "a": (1 / 1, 1 / 3, 0.5, 3),
        "b": (1 / 3, 1 / 2, 0.4, 2),
        "c": (1 / 2, 1 / 2, 0.5, 2),
        "d": (0.0, 0.0, 0.0, 0),  # predicted once, never right, never the truth: 0, not a division by zero
    }
    for name, (precision, recall, f1, support) in expected.items():
        got = report["per_class"][name]
        assert got["precision"] == pytest.approx(precision), name
        assert got["recall"] == pytest.approx(recall), name
        assert got["f1"] == pytest.approx(f1), name
        assert got["support"] == support, name
    assert report["macro_f1"] == pytest.approx((0.5 + 0.4 + 0.5) / 3)  # over the classes present in y_true only


def test_report_is_plain_json_types(report: dict) -> None:
    import json

    assert json.loads(json.dumps(report)) == report
    assert type(report["accuracy"]) is float and type(report["per_class"]["a"]["support"]) is int


def test_perfect_and_empty_reports() -> None:
    perfect = classification_report(np.arange(7), np.arange(7))
    assert perfect["accuracy"] == 1.0 and perfect["macro_f1"] == 1.0
    assert list(perfect["per_class"]) == list(CLASSES)
    assert np.array_equal(perfect["confusion"], np.eye(7, dtype=int))
    empty = classification_report(np.array([], int), np.array([], int), ABC)
    assert empty["n"] == 0 and empty["accuracy"] == 0.0 and empty["macro_f1"] == 0.0
    assert empty["confusion"] == [[0] * 4 for _ in range(4)]


def test_format_report_prints_rows_as_true_classes(report: dict) -> None:
    text = format_report(report)
    lines = text.splitlines()
    assert lines[0] == "n = 7   accuracy = 0.4286   macro-F1 = 0.4667"
    assert lines[2].split() == ["class", "precision", "recall", "f1", "support"]
    assert lines[3].split() == ["a", "1.000", "0.333", "0.500", "3"]
    assert lines[6].split() == ["d", "0.000", "0.000", "0.000", "0"]
    assert "confusion (rows: true, columns: predicted)" in lines
    header = lines.index("confusion (rows: true, columns: predicted)")
    assert lines[header + 1].split() == ["a", "b", "c", "d"]
    assert [line.split() for line in lines[header + 2:]] == [["a", "1", "2", "0", "0"], ["b", "0", "1", "1", "0"],
                                                              ["c", "0", "0", "1", "1"], ["d", "0", "0", "0", "0"]]


def _cell_colour(image: np.ndarray, row: int, col: int, cell: int = 64) -> tuple[int, int, int]:
    """The BGR colour of a cell's corner (clear of its text); the grid starts at (left 100, top 110)."""
    y, x = 110 + row * cell + 2, 100 + col * cell + 2
    return tuple(int(v) for v in image[y, x])


def test_confusion_image_shades_each_row_normalised() -> None:
    confusion = [[3, 1, 0], [0, 0, 4], [0, 0, 0]]
    image = confusion_image(confusion, ("a", "b", "c"))
    assert image.shape == (110 + 3 * 64 + 40, 100 + 3 * 64 + 20, 3) and image.dtype == np.uint8
    shade = lambda fraction: (255, int(255 * (1 - fraction)), int(255 * (1 - fraction)))  # noqa: E731
    assert _cell_colour(image, 0, 0) == shade(0.75)  # 3 of the 4 true a's
    assert _cell_colour(image, 0, 1) == shade(0.25)
    assert _cell_colour(image, 1, 2) == shade(1.0)  # row b: all 4 predicted c (not column-normalised)
    assert _cell_colour(image, 1, 1) == shade(0.0)
    assert _cell_colour(image, 2, 2) == shade(0.0)  # an empty row stays white, no division by zero
    assert image[0, 0].tolist() == [255, 255, 255]


def test_confusion_png_decodes_to_the_image() -> None:
    confusion = [[2, 1], [0, 5]]
    decoded = cv2.imdecode(np.frombuffer(confusion_png(confusion, ("a", "b")), np.uint8), cv2.IMREAD_COLOR)
    assert np.array_equal(decoded, confusion_image(confusion, ("a", "b")))
