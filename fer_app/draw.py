"""Annotating video frames: a box, label and top-3 bar chart per face, and a stats overlay.

Everything here runs on every frame of a live stream (640x480 at 30 FPS), so each face costs a
handful of OpenCV calls and a darkened panel is one vectorised shift of a small region; nothing
loops over pixels in Python. Drawing is in place on a BGR uint8 frame. Each class has its own
colour (`CLASS_COLOURS`), and the bar chart sits beside the box, moved to stay inside the frame.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from fer_app.types import Face, Prediction

__all__ = ["CLASS_COLOURS", "DrawOptions", "bars_box", "class_colour", "draw_predictions", "draw_stats",
           "text_scale"]

BGR = tuple[int, int, int]

#: One colour (BGR) per class: warm for angry/surprise, cool for sad, grey for neutral.
CLASS_COLOURS: dict[str, BGR] = {
    "angry": (40, 40, 230),
    "disgust": (40, 150, 60),
    "fear": (170, 60, 170),
    "happy": (0, 215, 255),
    "sad": (200, 110, 30),
    "surprise": (0, 140, 255),
    "neutral": (190, 190, 190),
}
#: Thin box of a face that has no classification yet (unlike any class colour).
PENDING_COLOUR: BGR = (255, 255, 255)
_FONT = cv2.FONT_HERSHEY_SIMPLEX
_WHITE: BGR = (255, 255, 255)
_BLACK: BGR = (0, 0, 0)


@dataclass(frozen=True)
class DrawOptions:
    """What to draw on each frame."""

    boxes: bool = True
    labels: bool = True
    bars: bool = True  # a small bar chart of the top probabilities per face
    stats: bool = True  # FPS / latency overlay
    track_ids: bool = False  # append "#id" to each label
    top_k: int = 3  # bars per face


def class_colour(name: str) -> BGR:
    """The colour of a class; classes outside `CLASS_COLOURS` get a stable colour of their own."""
    if name in CLASS_COLOURS:
        return CLASS_COLOURS[name]
    seed = sum(name.encode()) * 2654435761
    return (seed % 200 + 40, (seed >> 8) % 200 + 40, (seed >> 16) % 200 + 40)


def text_scale(frame_width: int) -> float:
    """Font scale for a frame: 0.5 at 640 px wide, within [0.4, 1.0]."""
    return min(1.0, max(0.4, frame_width / 1280))


def draw_predictions(frame: np.ndarray, predictions: Sequence[Prediction], *, pending: Sequence[Face] = (),
                     options: DrawOptions = DrawOptions()) -> None:
    """Draw, in place, each prediction's box, label and bar chart, and a plain box per pending face."""
    scale = text_scale(frame.shape[1])
    if options.boxes:
        for face in pending:
            _box(frame, face, PENDING_COLOUR, thickness=1)
    for pred in predictions:
        colour = class_colour(pred.label)
        if options.boxes:
            _box(frame, pred.face, colour)
        if options.bars and options.top_k > 0:
            _bars(frame, pred, options.top_k, scale)
        if options.labels:
            text = f"{pred.label} {pred.confidence:.0%}"
            if options.track_ids and pred.track_id is not None:
                text += f" #{pred.track_id}"
            _label(frame, pred.face, text, colour, scale)


def draw_stats(frame: np.ndarray, lines: Sequence[str]) -> None:
    """Draw, in place, text lines on a darkened panel in the frame's top-left corner."""
    if not lines:
        return
    scale = 0.85 * text_scale(frame.shape[1])
    sizes = [cv2.getTextSize(line, _FONT, scale, 1)[0] for line in lines]
    pad, row = 4, max(h for _, h in sizes) + 6
    width, height = max(w for w, _ in sizes) + 2 * pad, row * len(lines) + pad
    _darken(frame, 0, 0, width, height)
    for i, line in enumerate(lines):
        cv2.putText(frame, line, (pad, (i + 1) * row), _FONT, scale, _WHITE, 1, cv2.LINE_AA)


def bars_box(face: Face, frame_shape: tuple[int, ...], size: tuple[int, int]) -> Face | None:
    """Where a (width, height) bar panel goes: right of the face, else left of it, kept inside the frame.

    None when the frame is smaller than the panel.
    """
    height, width = frame_shape[:2]
    pw, ph = size
    if pw > width or ph > height:
        return None
    gap = 4
    x = face.x + face.w + gap
    if x + pw > width:
        x = face.x - gap - pw if face.x - gap - pw >= 0 else width - pw
    y = min(max(face.y, 0), height - ph)
    return Face(x, y, pw, ph)


def _box(frame: np.ndarray, face: Face, colour: BGR, thickness: int = 2) -> None:
    cv2.rectangle(frame, (face.x, face.y), (face.x + face.w - 1, face.y + face.h - 1), colour, thickness)


def _label(frame: np.ndarray, face: Face, text: str, colour: BGR, scale: float) -> None:
    """Text on a filled box of the class colour, above the face (inside its top when there's no room)."""
    thickness = 1 if scale < 0.8 else 2
    (tw, th), base = cv2.getTextSize(text, _FONT, scale, thickness)
    pad = 3
    bw, bh = tw + 2 * pad, th + base + 2 * pad
    x = min(max(face.x, 0), max(frame.shape[1] - bw, 0))
    y = face.y - bh if face.y - bh >= 0 else face.y
    cv2.rectangle(frame, (x, y), (x + bw, y + bh), colour, cv2.FILLED)
    ink = _BLACK if 0.114 * colour[0] + 0.587 * colour[1] + 0.299 * colour[2] > 140 else _WHITE
    cv2.putText(frame, text, (x + pad, y + pad + th), _FONT, scale, ink, thickness, cv2.LINE_AA)


def _bars(frame: np.ndarray, pred: Prediction, top_k: int, scale: float) -> None:
    """The top-k classes as horizontal bars (name, bar of length ~ probability) beside the face."""
    small = 0.8 * scale
    (name_w, th), _ = cv2.getTextSize("surprise", _FONT, small, 1)
    pad, row, bar_w = 4, th + 8, round(120 * scale)
    order = np.argsort(pred.probabilities)[::-1][:top_k]
    panel = bars_box(pred.face, frame.shape, (name_w + bar_w + 3 * pad, row * len(order) + pad))
    if panel is None:
        return
    _darken(frame, panel.x, panel.y, panel.w, panel.h)
    bar_x = panel.x + name_w + 2 * pad
    for i, k in enumerate(order):
        name, p = pred.classes[k], float(pred.probabilities[k])
        top = panel.y + pad + i * row
        cv2.putText(frame, name, (panel.x + pad, top + th + 1), _FONT, small, _WHITE, 1, cv2.LINE_AA)
        cv2.rectangle(frame, (bar_x, top), (bar_x + bar_w, top + row - 4), (90, 90, 90), 1)
        cv2.rectangle(frame, (bar_x, top), (bar_x + round(bar_w * p), top + row - 4), class_colour(name), cv2.FILLED)


def _darken(frame: np.ndarray, x: int, y: int, w: int, h: int) -> None:
    """Quarter the brightness of a region (clipped to the frame): a legible panel for text."""
    region = frame[max(y, 0) : max(y + h, 0), max(x, 0) : max(x + w, 0)]
    np.right_shift(region, 2, out=region)
