"""Annotating video frames: a box, label and top-3 bar chart per face, and a stats overlay.

Everything here runs on every frame of a live stream (640x480 at 30 FPS), so each face costs a
handful of OpenCV calls and a darkened panel is one vectorised shift of a small region; nothing
loops over pixels in Python. Drawing is in place on a BGR uint8 frame. Each class has its own
colour (`CLASS_COLOURS`).

Layout. Where each face's label and bar panel go is decided before anything is drawn, by two
small pure functions on rectangles (`layout_labels`, then `layout_panels`), so neighbouring faces
don't cover each other's annotations. Both are greedy over a few candidate positions per face, in
the order the faces are given, checking each candidate against what is already taken with
rectangle-intersection tests: about 0.05 ms for three faces, a few ms for a frame full of them.
Everything they return lies inside the frame, and the result depends only on their arguments
(deterministic, so nothing jumps about while the faces stand still).

- A label goes above its box, else inside the box's top edge, else below the box; left-aligned
  with the box, else right-aligned, slid sideways to stay inside the frame. It keeps off the other
  faces' boxes and labels and the `avoid` rectangles (the live pipeline passes the stats overlay's
  `stats_box`). Where the full text ("happy 70% #3") has no free place, a shorter one does
  ("happy 70%", then "happy"). Labels are never dropped: where even the shortest has no free
  place, it goes where it overlaps the least.
- A bar panel goes right of its box (and label), else left, else below, else above, each aligned
  with either end of the box's side and slid along it to stay inside the frame. It never touches
  another face's box, any label, another panel or an `avoid` rectangle. Where there's genuinely
  no room (many faces filling the frame) it degrades rather than overlaps, in this order: every
  face first gets a full panel (top-k bars) outside its box where one fits; then a one-bar panel
  outside the box; then a full, then a one-bar panel inside the face's own box (over its lower
  part); else no panel at all, the label still naming the top class and its confidence.

Faces awaiting their first classification (`pending`) get a thin box and are avoided like any other.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import cv2
import numpy as np

from fer_app.types import Face, Prediction

__all__ = ["CLASS_COLOURS", "DrawOptions", "Placement", "Rect", "bars_box", "class_colour", "draw_predictions",
           "draw_stats", "face_clearance", "layout_labels", "layout_panels", "stats_box", "text_scale"]

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
#: Pixels between a face's box and its bar panel.
_GAP = 4


class Rect(NamedTuple):
    """An axis-aligned rectangle in pixels: columns [x, x + w), rows [y, y + h)."""

    x: int
    y: int
    w: int
    h: int

    def intersects(self, other: tuple[int, int, int, int]) -> bool:
        ox, oy, ow, oh = other
        return self.x < ox + ow and ox < self.x + self.w and self.y < oy + oh and oy < self.y + self.h

    def inside(self, width: int, height: int) -> bool:
        return self.x >= 0 and self.y >= 0 and self.x + self.w <= width and self.y + self.h <= height


class Placement(NamedTuple):
    """Where one prediction's annotations went: label and panel rectangles (None: not drawn), the
    label's text (shortened where the full one had no room) and how many bars the panel shows."""

    label: Rect | None
    text: str
    panel: Rect | None
    bars: int
    tag: str = ""  # the badge at the label's start ("" for none): a face number or track id, never dropped


@dataclass(frozen=True)
class DrawOptions:
    """What to draw on each frame."""

    boxes: bool = True
    labels: bool = True
    bars: bool = True  # a small bar chart of the top probabilities per face
    stats: bool = True  # FPS / latency overlay
    track_ids: bool = False  # append "#id" to each label
    badges: bool = False  # the track id ("#3") as a white badge before each label, kept when labels shorten
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


# ---------------------------------------------------------------------------------------- layout


def _as_rect(box: Face | tuple[int, int, int, int]) -> Rect:
    return Rect(*box.box) if isinstance(box, Face) else Rect(*box)


def _clamp(v: int, low: int, high: int) -> int:
    """v within [low, high]; low where the range is empty."""
    return max(low, min(v, high))


class _Taken:
    """The rectangles placed so far: the faces' boxes, then `avoid`, then each placement.

    Kept as (x0, y0, x1, y1) corners. A face's candidates are checked only against what lies
    near that face (one pass over everything, then the few near ones per candidate), so a frame
    full of faces stays cheap too (a few ms for 30 faces; tens of microseconds for 3).
    """

    def __init__(self, boxes: Sequence[Rect], avoid: Sequence[Rect]) -> None:
        self._corners: list[tuple[int, int, int, int]] = []
        for rect in (*boxes, *avoid):
            self.add(rect)

    def add(self, rect: Rect) -> None:
        x, y, w, h = rect
        self._corners.append((x, y, x + w, y + h))

    def _near(self, candidates: Sequence[Rect], own: int) -> list[tuple[int, int, int, int]]:
        """What might meet any of the candidates (meets their bounding box), less the own-th box."""
        if len(self._corners) <= 16:  # a few faces: filtering would cost more than it saves
            return [o for j, o in enumerate(self._corners) if j != own]
        x0 = min(c.x for c in candidates)
        y0 = min(c.y for c in candidates)
        x1 = max(c.x + c.w for c in candidates)
        y1 = max(c.y + c.h for c in candidates)
        return [o for j, o in enumerate(self._corners)
                if j != own and o[0] < x1 and x0 < o[2] and o[1] < y1 and y0 < o[3]]

    def first_free(self, candidates: Sequence[Rect], own: int) -> Rect | None:
        """The first candidate that meets nothing taken but its own face's box; None if there's none."""
        if not candidates:
            return None
        near = self._near(candidates, own)
        for c in candidates:
            x0, y0, x1, y1 = c.x, c.y, c.x + c.w, c.y + c.h
            if not any(o[0] < x1 and x0 < o[2] and o[1] < y1 and y0 < o[3] for o in near):
                return c
        return None

    def least_covered(self, candidates: Sequence[Rect], own: int) -> Rect:
        """The candidate with the least area in common with what's taken (but its own face's box); the first on ties."""
        near = self._near(candidates, own)

        def covered(c: Rect) -> int:
            x0, y0, x1, y1 = c.x, c.y, c.x + c.w, c.y + c.h
            return sum(max(0, min(x1, o[2]) - max(x0, o[0])) * max(0, min(y1, o[3]) - max(y0, o[1])) for o in near)

        return min(candidates, key=covered)


def _label_candidates(box: Rect, size: tuple[int, int], width: int, height: int) -> list[Rect]:
    """Above the box, inside its top, below it; left- then right-aligned; only those inside the frame."""
    lw, lh = size
    xs = dict.fromkeys((_clamp(box.x, 0, width - lw), _clamp(box.x + box.w - lw, 0, width - lw)))
    out = []
    for y in (box.y - lh, max(box.y, 0), box.y + box.h):
        for x in xs:
            rect = Rect(x, y, lw, lh)
            if rect.inside(width, height):
                out.append(rect)
    return out


def layout_labels(boxes: Sequence[Face | tuple[int, int, int, int]], frame_size: tuple[int, int],
                  label_sizes: Sequence[tuple[int, int] | Sequence[tuple[int, int]]], *,
                  avoid: Sequence[tuple[int, int, int, int]] = ()) -> list[Rect]:
    """Where each box's label goes in a (width, height) frame; see the module docstring.

    label_sizes: per box, the label's (width, height), or several, preferred first (e.g. shorter
    texts); the returned rectangle's size says which one was used. Labels inside the frame that
    meet neither another box, another label nor `avoid` where such a place exists for any size;
    else the last size where it overlaps those the least (a label larger than the frame starts at
    its top-left corner).
    """
    width, height = frame_size
    rects = [_as_rect(b) for b in boxes]
    taken = _Taken(rects, [_as_rect(a) for a in avoid])
    out: list[Rect] = []
    for i, (box, sizes) in enumerate(zip(rects, label_sizes, strict=True)):
        alternatives = [sizes] if isinstance(sizes[0], (int, np.integer)) else list(sizes)
        chosen = None
        for size in alternatives:
            candidates = _label_candidates(box, size, width, height)
            chosen = taken.first_free(candidates, i)
            if chosen is not None:
                break
        if chosen is None and candidates:
            chosen = taken.least_covered(candidates, i)
        elif chosen is None:  # not even one candidate inside the frame: slide the first one in
            lw, lh = size
            chosen = Rect(_clamp(box.x, 0, width - lw), _clamp(box.y - lh, 0, height - lh), lw, lh)
        out.append(chosen)
        taken.add(chosen)
    return out


def _panel_candidates(box: Rect, label: Rect | None, size: tuple[int, int], width: int, height: int, gap: int,
                      inside: bool) -> list[Rect]:
    """Beside the box (right, left, below, above), or inside its lower part; only those inside the frame.

    Beside means beside the box and its own label together (so not on that label), aligned with the box.
    """
    pw, ph = size
    if inside:
        if pw > box.w or ph > box.h:
            return []
        rect = Rect(_clamp(box.x, 0, width - pw), _clamp(box.y + box.h - ph, 0, height - ph), pw, ph)
        return [rect] if rect.inside(width, height) and rect.x >= box.x and rect.y >= box.y else []
    x0, y0, x1, y1 = box.x, box.y, box.x + box.w, box.y + box.h
    if label is not None:
        x0, y0 = min(x0, label.x), min(y0, label.y)
        x1, y1 = max(x1, label.x + label.w), max(y1, label.y + label.h)
    ys = dict.fromkeys((_clamp(box.y, 0, height - ph), _clamp(box.y + box.h - ph, 0, height - ph)))
    xs = dict.fromkeys((_clamp(box.x, 0, width - pw), _clamp(box.x + box.w - pw, 0, width - pw)))
    out = []
    for x in (x1 + gap, x0 - gap - pw):
        out.extend(Rect(x, y, pw, ph) for y in ys)
    for y in (y1 + gap, y0 - gap - ph):
        out.extend(Rect(x, y, pw, ph) for x in xs)
    return [r for r in out if r.inside(width, height)]


def layout_panels(boxes: Sequence[Face | tuple[int, int, int, int]], frame_size: tuple[int, int],
                  panel_size: tuple[int, int], *, fallback_sizes: Sequence[tuple[int, int]] = (),
                  labels: Sequence[tuple[int, int, int, int] | None] = (),
                  avoid: Sequence[tuple[int, int, int, int]] = (), gap: int = _GAP) -> list[Rect | None]:
    """Where each box's bar panel goes in a (width, height) frame; see the module docstring.

    panel_size: the panel's (width, height); fallback_sizes: smaller ones, in order of preference,
    for faces that have no room for it (the returned rectangle's size says which one was used).
    labels: each box's label (None: none), e.g. from `layout_labels`; a panel goes beside a box and
    its label together. avoid: more rectangles no panel may touch (the stats overlay, faces
    without a panel). Each result lies inside the frame and meets no other face's box, no label,
    no other panel and nothing in `avoid`; None where no size fits anywhere.
    """
    width, height = frame_size
    rects = [_as_rect(b) for b in boxes]
    own_labels = [None if r is None else _as_rect(r) for r in labels] or [None] * len(rects)
    if len(own_labels) != len(rects):
        raise ValueError(f"{len(labels)} labels for {len(rects)} boxes")
    taken = _Taken(rects, [_as_rect(a) for a in avoid] + [r for r in own_labels if r is not None])
    out: list[Rect | None] = [None] * len(rects)
    sizes = [panel_size, *fallback_sizes]
    for inside in (False, True):
        for size in sizes:
            for i, box in enumerate(rects):
                if out[i] is None:
                    candidates = _panel_candidates(box, own_labels[i], size, width, height, gap, inside)
                    out[i] = taken.first_free(candidates, i)
                    if out[i] is not None:
                        taken.add(out[i])
    return out


def bars_box(face: Face, frame_shape: tuple[int, ...], size: tuple[int, int]) -> Face | None:
    """Where a (width, height) bar panel goes for a lone face in a frame of this (height, width, ...) shape.

    Right of the face, else left, below, above or inside it, always inside the frame (`layout_panels`
    for one face). None when no place fits the panel.
    """
    rect = layout_panels([face], (frame_shape[1], frame_shape[0]), size)[0]
    return None if rect is None else Face(*rect)


def stats_box(frame_width: int, lines: Sequence[str], *, frame_height: int | None = None,
              faces: Sequence[Face | tuple[int, int, int, int]] = (),
              prefer: tuple[int, int] | None = None) -> Rect | None:
    """The rectangle `draw_stats` darkens for these lines (None: no lines, or no place for it).

    Without `frame_height`: the top-left corner. With it, the first frame corner (top-left, top-right,
    bottom-left, bottom-right; `prefer`, a corner's (x, y), first) where the box meets no face of `faces`,
    each grown by `face_clearance` (room for its label above and its outline); None where every corner
    has a face: the overlay is then left out rather than drawn over a face.
    """
    if not lines:
        return None
    _, _, width, height, *_ = _stats_metrics(frame_width, lines)
    if frame_height is None:
        return Rect(0, 0, width, height)
    corners = [Rect(x, y, width, height) for y in (0, max(0, frame_height - height))
               for x in (0, max(0, frame_width - width))]
    if prefer is not None:
        corners.sort(key=lambda r: (r.x, r.y) != tuple(prefer))
    grown = [face_clearance(f, frame_width) for f in faces]
    return next((c for c in corners if not any(c.intersects(g) for g in grown)), None)


def face_clearance(face: Face | tuple[int, int, int, int], frame_width: int) -> Rect:
    """A face's box grown by what must stay visible with it: its outline and, above it, a label's height."""
    x, y, w, h = _as_rect(face)
    label = round(28 * text_scale(frame_width) / 0.5)
    return Rect(x - 4, y - label, w + 8, h + label + 4)


# --------------------------------------------------------------------------------------- drawing


def draw_predictions(frame: np.ndarray, predictions: Sequence[Prediction], *, pending: Sequence[Face] = (),
                     options: DrawOptions = DrawOptions(),
                     avoid: Sequence[tuple[int, int, int, int]] = (),
                     tags: Sequence[str] | None = None, scale: float | None = None) -> list[Placement]:
    """Draw, in place, each prediction's box, label and bar chart, and a plain box per pending face.

    avoid: (x, y, w, h) rectangles the labels and bar charts keep off (e.g. `stats_box` of the
    overlay drawn next). tags: per prediction, a short text ("1", "#3"; "" for none) drawn as a
    white badge at the start of its label, beside the box, and kept however much the label is
    shortened (with `options.badges`, the track ids by default). scale: the font scale (default
    `text_scale` of the frame's width, for frames shown at their own size; a photo shown smaller than
    it is wants more). Returns where each prediction's label and bars went.
    """
    height, width = frame.shape[:2]
    scale = text_scale(width) if scale is None else scale
    boxes = [p.face for p in predictions]
    fixed = [_as_rect(a) for a in avoid] + [_as_rect(f) for f in pending]

    texts: list[list[tuple[str, tuple[int, int]]]] = []  # per prediction: (label text, its size), longest first
    labels: list[Rect | None] = [None] * len(predictions)
    thickness = 1 if scale < 0.8 else 2 if scale < 1.6 else 3
    pad = 3
    if tags is None:
        tags = [f"#{p.track_id}" if options.badges and p.track_id is not None else "" for p in predictions]
    elif len(tags) != len(predictions):
        raise ValueError(f"{len(tags)} tags for {len(predictions)} predictions")
    if (options.labels or any(tags)) and predictions:
        for pred, tag in zip(predictions, tags):
            short = f"{pred.label} {pred.confidence:.0%}"
            full = (f"{short} #{pred.track_id}" if options.track_ids and not tag and pred.track_id is not None
                    else short)
            tag_w, tag_h = _tag_size(tag, scale, thickness, pad)
            alternatives = []
            for text in dict.fromkeys((full, short, pred.label) if options.labels else ()):
                (tw, th), base = cv2.getTextSize(text, _FONT, scale, thickness)
                alternatives.append((text, (tag_w + tw + 2 * pad, max(tag_h, th + base + 2 * pad))))
            if tag:  # the badge alone: the number stays beside its box however crowded the frame
                alternatives.append(("", (tag_w, tag_h)))
            texts.append(alternatives)
        shown = [i for i, alt in enumerate(texts) if alt]  # all, unless labels are off and only some have tags
        placed = layout_labels([boxes[i] for i in shown], (width, height),
                               [[size for _, size in texts[i]] for i in shown],
                               avoid=fixed + [_as_rect(boxes[j]) for j in range(len(boxes)) if not texts[j]])
        for i, rect in zip(shown, placed):
            labels[i] = rect

    panels: list[Rect | None] = [None] * len(predictions)
    rows_of: dict[int, int] = {}  # panel height -> bars shown
    metrics = _bar_metrics(scale)
    top_k = min(options.top_k, min((len(p.probabilities) for p in predictions), default=0))
    if options.bars and top_k > 0:
        rows_of = {_panel_height(metrics, k): k for k in dict.fromkeys((1, top_k))}
        largest, *smaller = [(_panel_width(metrics), h) for h in sorted(rows_of, reverse=True)]
        panels = layout_panels(boxes, (width, height), largest, fallback_sizes=smaller, labels=labels,
                               avoid=fixed)

    if options.boxes:
        for face in pending:
            _box(frame, face, PENDING_COLOUR, thickness=1)
        for pred in predictions:
            _box(frame, pred.face, class_colour(pred.label))
    placements = []
    for i, pred in enumerate(predictions):
        panel, bars = panels[i], 0
        if panel is not None:
            bars = rows_of[panel.h]
            _bars(frame, pred, panel, bars, metrics)
        text = ""
        if labels[i] is not None:
            text = next(t for t, size in texts[i] if size == (labels[i].w, labels[i].h))
            _label(frame, labels[i], text, class_colour(pred.label), scale, thickness, pad, tags[i])
        placements.append(Placement(labels[i], text, panel, bars, tags[i] if labels[i] is not None else ""))
    return placements


def draw_stats(frame: np.ndarray, lines: Sequence[str], *, at: tuple[int, int, int, int] | None = None) -> None:
    """Draw, in place, text lines on a darkened panel: at `at` (a `stats_box`), else the top-left corner."""
    if not lines:
        return
    scale, pad, width, height, row = _stats_metrics(frame.shape[1], lines)
    x0, y0 = (0, 0) if at is None else (at[0], at[1])
    _darken(frame, x0, y0, width, height)
    for i, line in enumerate(lines):
        cv2.putText(frame, line, (x0 + pad, y0 + (i + 1) * row), _FONT, scale, _WHITE, 1, cv2.LINE_AA)


def _stats_metrics(frame_width: int, lines: Sequence[str]) -> tuple[float, int, int, int, int]:
    """Font scale, padding, panel width and height, and row height of the stats overlay."""
    scale = 0.85 * text_scale(frame_width)
    sizes = [cv2.getTextSize(line, _FONT, scale, 1) for line in lines]
    pad, row = 4, max(h for (_, h), _ in sizes) + 6
    descent = max(base for _, base in sizes)  # below the last baseline
    return scale, pad, max(w for (w, _), _ in sizes) + 2 * pad, row * len(lines) + max(pad, descent + 1), row


def _box(frame: np.ndarray, face: Face, colour: BGR, thickness: int = 2) -> None:
    cv2.rectangle(frame, (face.x, face.y), (face.x + face.w - 1, face.y + face.h - 1), colour, thickness)


def _tag_size(tag: str, scale: float, thickness: int, pad: int) -> tuple[int, int]:
    """(width, height) of a label's badge; (0, 0) for no badge."""
    if not tag:
        return 0, 0
    (tw, th), base = cv2.getTextSize(tag, _FONT, scale, thickness)
    return tw + 2 * pad, th + base + 2 * pad


def _label(frame: np.ndarray, rect: Rect, text: str, colour: BGR, scale: float, thickness: int, pad: int,
           tag: str = "") -> None:
    """Text on a filled box of the class colour, after the tag (black on white) where there is one."""
    x, y, w, h = rect
    tag_w = _tag_size(tag, scale, thickness, pad)[0]
    if tag:
        cv2.rectangle(frame, (x, y), (x + tag_w - 1, y + h - 1), _WHITE, cv2.FILLED)
        th = cv2.getTextSize(tag, _FONT, scale, thickness)[0][1]
        cv2.putText(frame, tag, (x + pad, y + (h + th) // 2), _FONT, scale, _BLACK, thickness, cv2.LINE_AA)
    if not text:
        return
    cv2.rectangle(frame, (x + tag_w, y), (x + w - 1, y + h - 1), colour, cv2.FILLED)
    th = cv2.getTextSize(text, _FONT, scale, thickness)[0][1]
    ink = _BLACK if 0.114 * colour[0] + 0.587 * colour[1] + 0.299 * colour[2] > 140 else _WHITE
    cv2.putText(frame, text, (x + tag_w + pad, y + pad + th), _FONT, scale, ink, thickness, cv2.LINE_AA)


class _BarMetrics(NamedTuple):
    small: float  # font scale of the class names
    name_w: int
    text_h: int
    pad: int
    row: int
    bar_w: int


def _bar_metrics(scale: float) -> _BarMetrics:
    small = 0.8 * scale
    (name_w, th), _ = cv2.getTextSize("surprise", _FONT, small, 1)
    return _BarMetrics(small, name_w, th, 4, th + 8, round(120 * scale))


def _panel_width(m: _BarMetrics) -> int:
    return m.name_w + m.bar_w + 3 * m.pad


def _panel_height(m: _BarMetrics, rows: int) -> int:
    return m.row * rows + m.pad


def _bars(frame: np.ndarray, pred: Prediction, panel: Rect, rows: int, m: _BarMetrics) -> None:
    """The top classes as horizontal bars (name, bar of length ~ probability) on a darkened panel."""
    order = np.argsort(pred.probabilities)[::-1][:rows]
    _darken(frame, panel.x, panel.y, panel.w, panel.h)
    bar_x = panel.x + m.name_w + 2 * m.pad
    for i, k in enumerate(order):
        name, p = pred.classes[k], float(pred.probabilities[k])
        top = panel.y + m.pad + i * m.row
        cv2.putText(frame, name, (panel.x + m.pad, top + m.text_h + 1), _FONT, m.small, _WHITE, 1, cv2.LINE_AA)
        cv2.rectangle(frame, (bar_x, top), (bar_x + m.bar_w, top + m.row - 4), (90, 90, 90), 1)
        cv2.rectangle(frame, (bar_x, top), (bar_x + round(m.bar_w * p), top + m.row - 4), class_colour(name),
                      cv2.FILLED)


def _darken(frame: np.ndarray, x: int, y: int, w: int, h: int) -> None:
    """Quarter the brightness of a region (clipped to the frame): a legible panel for text."""
    region = frame[max(y, 0) : max(y + h, 0), max(x, 0) : max(x + w, 0)]
    np.right_shift(region, 2, out=region)
