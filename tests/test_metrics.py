"""Tests of fer_app.metrics on hand-made cases: the confusion matrix's orientation and per-class figures."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from fer_app.config import CLASSES
from fer_app.metrics import classification_report, confusion_image, confusion_png, format_report, paired_comparison

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


def test_classes_never_predicted_or_never_true_score_zero_not_nan() -> None:
    """A class absent from both (e) and one never predicted (b): every figure 0.0, computed afresh each time
    (the divisions' masked entries come from a zeroed array, never from leftover memory)."""
    for _ in range(20):
        np.divide(np.ones(5), np.full(5, 3.0))  # leave non-zero floats in recently freed memory
        report = classification_report(np.array([0, 0, 1, 2]), np.array([0, 0, 0, 2]), ("a", "b", "c", "d", "e"))
        for name in ("b", "d", "e"):
            assert report["per_class"][name] == {"precision": 0.0, "recall": 0.0, "f1": 0.0,
                                                 "support": report["per_class"][name]["support"]}, name
        assert report["per_class"]["b"]["support"] == 1 and report["per_class"]["e"]["support"] == 0
        assert report["per_class"]["a"]["precision"] == pytest.approx(2 / 3)
        assert report["macro_f1"] == pytest.approx((0.8 + 0.0 + 1.0) / 3)


def test_labels_of_any_numeric_dtype() -> None:
    """Labels read from files or tensors (uint8, float) give the same report as int64 ones."""
    expected = classification_report(np.array(Y_TRUE), np.array(Y_PRED), ABC)
    for dtype in (np.uint8, np.int32, np.float32, np.float64):
        assert classification_report(np.array(Y_TRUE, dtype), np.array(Y_PRED, dtype), ABC) == expected, dtype
    assert classification_report(Y_TRUE, Y_PRED, ABC) == expected  # plain lists


def test_perfect_and_empty_reports() -> None:
    perfect = classification_report(np.arange(7), np.arange(7))
    assert perfect["accuracy"] == 1.0 and perfect["macro_f1"] == 1.0
    assert list(perfect["per_class"]) == list(CLASSES)
    assert np.array_equal(perfect["confusion"], np.eye(7, dtype=int))
    empty = classification_report(np.array([], int), np.array([], int), ABC)
    assert empty["n"] == 0 and empty["accuracy"] == 0.0 and empty["macro_f1"] == 0.0
    assert empty["confusion"] == [[0] * 4 for _ in range(4)]


def test_format_report_layout() -> None:
    report = classification_report(np.array([0, 0, 1, 2]), np.array([0, 1, 1, 2]), ("a", "surprise", "e"))
    assert format_report(report) == "\n".join([
        "n = 4   accuracy = 0.7500   macro-F1 = 0.7778",
        "",
        "class      precision    recall        f1   support",
        "a              1.000     0.500     0.667         2",
        "surprise       0.500     1.000     0.667         1",
        "e              1.000     1.000     1.000         1",
        "",
        "confusion (rows: true, columns: predicted)",
        "                 a surpris       e",  # column names cut to 7 characters
        "a                1       1       0",
        "surprise         0       1       0",
        "e                0       0       1",
    ])


def test_twins_are_scored_apart_and_the_whole_set_stays_whole() -> None:
    twins = np.array([False, True, True, False, False, False, True])  # faces 1, 2 (a taken for b) and 6 (c for d)
    report = classification_report(np.array(Y_TRUE), np.array(Y_PRED), ABC, twins)
    assert report["n"] == 7 and report["accuracy"] == pytest.approx(3 / 7)  # all faces, as without twins
    rest = report["without_twins"]  # faces 0, 3, 4, 5: a->a, b->b, b->c, c->c
    assert rest["twins"] == 3 and rest["n"] == 4 and rest["accuracy"] == pytest.approx(3 / 4)
    assert rest["recall"] == pytest.approx({"a": 1.0, "b": 0.5, "c": 1.0, "d": 0.0})
    # F1: a 1, b 2/3 (precision 1, recall 1/2), c 2/3 (precision 1/2, recall 1); d never true: left out
    assert rest["macro_f1"] == pytest.approx((1 + 2 / 3 + 2 / 3) / 3)
    assert format_report(report).splitlines()[1] == (
        "without the 3 with a pixel-identical twin in train: n = 4   accuracy = 0.7500   macro-F1 = 0.7778")
    for none in (None, np.zeros(7, bool)):
        plain = classification_report(np.array(Y_TRUE), np.array(Y_PRED), ABC, none)
        assert "without_twins" not in plain and "twin" not in format_report(plain)


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


def _shade(fraction: float) -> tuple[int, int, int]:
    return (255, int(255 * (1 - fraction)), int(255 * (1 - fraction)))


def test_confusion_image_shades_each_row_normalised() -> None:
    confusion = [[3, 1, 0], [0, 0, 1], [0, 0, 0]]  # row sums 4, 1 and 0
    image = confusion_image(confusion, ("a", "b", "c"))
    assert image.shape == (110 + 3 * 64 + 40, 100 + 3 * 64 + 20, 3) and image.dtype == np.uint8
    assert _cell_colour(image, 0, 0) == _shade(0.75)  # 3 of the 4 true a's
    assert _cell_colour(image, 0, 1) == _shade(0.25)
    assert _cell_colour(image, 1, 2) == _shade(1.0)  # row b: its one face predicted c (not column-normalised)
    assert _cell_colour(image, 1, 1) == _shade(0.0)
    assert _cell_colour(image, 2, 2) == _shade(0.0)  # an empty row stays white, no division by zero
    assert image[0, 0].tolist() == [255, 255, 255]


def _cell(image: np.ndarray, row: int, col: int, cell: int = 64) -> np.ndarray:
    y, x = 110 + row * cell, 100 + col * cell
    return image[y:y + cell, x:x + cell]


def _percent_text(image: np.ndarray, row: int, col: int) -> np.ndarray:
    """Where the cell's first line of text (the percentage) differs from its fill."""
    cell = _cell(image, row, col)
    return (cell[:34] != cell[2, 2]).any(axis=2)


def test_confusion_image_writes_readable_numbers_in_every_cell() -> None:
    confusion = [[9, 1], [2, 2]]
    image = confusion_image(confusion, ("a", "b"))
    dark, light = _cell(image, 0, 0), _cell(image, 0, 1)  # 90% and 10%
    # white text on the dark cell (fill green 25), black text on the light one (fill green 229)
    assert (dark[..., 1] > 200).sum() > 20 and (light[..., 1] < 60).sum() > 20
    assert (dark[..., 0] < 100).sum() == 0 and (light[..., 1] > 240).sum() == 0  # and not the other way round
    # each cell's text is its own: the same numbers draw the same pixels, other numbers other pixels
    same = confusion_image([[9, 1], [9, 1]], ("a", "b"))
    assert np.array_equal(_cell(same, 1, 0), dark) and np.array_equal(_cell(same, 1, 1), light)
    half = _cell(image, 1, 0)  # 50%, 2: fill of a 0.5 cell, black text
    assert _cell_colour(image, 1, 0) == _shade(0.5) and (half[..., 1] < 60).sum() > 20
    assert np.array_equal(half, _cell(image, 1, 1))  # 2 and 2: the same
    other = confusion_image([[9, 1], [3, 3]], ("a", "b"))
    assert not np.array_equal(_cell(other, 1, 0), half)  # same 50% fill, another count
    # the percentage's line (above the count's) shows the row fraction, rounded
    quarter = confusion_image([[1, 1], [1, 3]], ("a", "b"))
    assert not np.array_equal(_percent_text(quarter, 0, 0), _percent_text(quarter, 1, 0))  # 50% and 25%
    thirds = confusion_image([[1, 2], [33, 67]], ("a", "b"))
    assert np.array_equal(_percent_text(thirds, 0, 0), _percent_text(thirds, 1, 0))  # 1/3 and 33/100: both 33%
    # the captions: "predicted" above the grid, "rows: true class" below it
    assert (quarter[:20, 100:] < 100).all(axis=2).sum() > 20
    assert (quarter[110 + 2 * 64:, 100:] < 100).all(axis=2).sum() > 20
    # the class names are written beside the rows and above the columns
    blank = confusion_image([[0, 0], [0, 0]], ("", ""))
    named = confusion_image([[0, 0], [0, 0]], ("a", "b"))
    assert not np.array_equal(named[110:, :100], blank[110:, :100])  # row names, left of the grid
    assert not np.array_equal(named[:110, 100:], blank[:110, 100:])  # column names, above it


def test_confusion_png_reports_an_encoding_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    from fer_app import metrics

    monkeypatch.setattr(metrics.cv2, "imencode", lambda ext, image: (False, None))
    with pytest.raises(ValueError, match="^could not encode the confusion matrix as PNG$"):
        confusion_png([[1]], ("a",))


def test_confusion_png_decodes_to_the_image() -> None:
    confusion = [[2, 1], [0, 5]]
    decoded = cv2.imdecode(np.frombuffer(confusion_png(confusion, ("a", "b")), np.uint8), cv2.IMREAD_COLOR)
    assert np.array_equal(decoded, confusion_image(confusion, ("a", "b")))


def test_paired_comparison_counts_the_faces_each_model_alone_gets_right() -> None:
    y = np.array([0, 1, 2, 3, 0, 1, 2, 3])
    a = np.array([0, 1, 2, 0, 0, 1, 0, 0])  # right on faces 0, 1, 2, 4, 5
    b = np.array([0, 0, 2, 3, 1, 1, 2, 0])  # right on faces 0, 2, 3, 5, 6
    comparison = paired_comparison(y, a, b)
    assert (comparison.n, comparison.gains, comparison.losses) == (8, 2, 2)  # A alone: 1, 4; B alone: 3, 6
    assert comparison.difference == 0.0 and comparison.z == 0.0
    reverse = paired_comparison(y, a, y)  # B right everywhere: A only loses
    assert (reverse.gains, reverse.losses) == (0, 3)
    assert reverse.difference == pytest.approx(-3 / 8) and reverse.z == pytest.approx(-3 / np.sqrt(3))
    assert str(reverse) == "-37.50 points (0 gained, 3 lost, z -1.7)"


def test_paired_comparison_of_identical_predictions_is_a_tie_and_shapes_must_match() -> None:
    y = np.array([0, 1, 2])
    same = paired_comparison(y, np.array([0, 2, 2]), np.array([0, 2, 2]))
    assert (same.gains, same.losses, same.z, same.difference) == (0, 0, 0.0, 0.0)
    with pytest.raises(ValueError, match="shape"):
        paired_comparison(y, np.array([0, 1]), np.array([0, 1, 2]))
