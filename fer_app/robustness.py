"""The model on faces framed the way the app frames them, not the way FER-2013 did.

FER-2013's faces come cropped and centred by its makers. In the app a face is a Haar box, cut out
with a margin (`crop_faces`) from a photo or a webcam frame. `recrop_report` measures the gap:
each labelled face is scaled up and pasted, with a feathered edge, at a random place and size into
a random part of a real photo or video frame (`../shared/media`), found there by the app's
detector, and cropped with each of several margins. The report gives accuracy, macro-F1 and
per-class recall on those crops, next to the same faces as given, over the faces the detector found
(IoU >= 0.3 with the pasted square). The crop margin is chosen on val with it.

Webcam users tilt their heads; FER-2013's faces mostly are upright. With `roll` each face is pasted
turned by a random angle (up to `roll` degrees either way), and with `align` every margin is scored a
second time on crops levelled on the eyes (`fer_app.alignment`), so the two can be compared on the same
found faces.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import numpy as np

from fer_app.alignment import EyeAligner
from fer_app.config import MEDIA_DIR, VIDEO_DETECTOR, DetectorConfig
from fer_app.data import FaceSet
from fer_app.detection import FaceDetector, crop_faces
from fer_app.evaluate import predict_faces
from fer_app.imageio import to_grey
from fer_app.metrics import classification_report
from fer_app.model import Classifier
from fer_app.tracking import iou
from fer_app.types import Face

#: Crop margins tried by default (a fraction of the box side on each side; the app's is `DetectorConfig.margin`).
MARGINS: tuple[float, ...] = (-0.1, -0.05, 0.0, 0.05, 0.1, 0.15, 0.2)
SCENE_SIZE = (640, 360)
#: Side of a pasted face in scene pixels (a webcam face at 640 px is about 100-250 px).
SIDES = (100, 220)
#: The pasted face fades into the scene over this fraction of its side on each edge (a narrow seam: a
#: wider fade would blank the outer part of the face, which crops with a margin reach).
FEATHER = 0.04
#: A detection is the pasted face when its IoU with the pasted square is at least this.
MIN_IOU = 0.3


class RobustnessError(ValueError):
    """The measurement cannot be made (no backgrounds, no faces)."""


@dataclass
class CropRow:
    """Scores of one way of framing the found faces."""

    framing: str
    margin: float | None
    accuracy: float
    macro_f1: float
    recall: dict[str, float]
    #: The crops were levelled on the eyes (`fer_app.alignment`).
    aligned: bool = False


@dataclass
class RecropReport:
    """`recrop_report`'s result: how many faces were pasted and found, and a row per framing."""

    source: str
    faces: int
    found: int
    backgrounds: int
    detector: str
    #: Median side of the found Haar box over the pasted face's (FER-2013's frame): below 1, the box is inside.
    box_ratio: float | None = None
    #: The faces were pasted turned by up to this many degrees either way.
    roll: float = 0.0
    #: With `align`: the share of found faces whose eyes were found (their crops were levelled).
    eyes_found: float | None = None
    rows: list[CropRow] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)

    def best_margin(self) -> float:
        """The margin whose plain crops score highest (accuracy, then macro-F1; ties: the smaller margin)."""
        cropped = [r for r in self.rows if r.margin is not None and not r.aligned]
        return max(cropped, key=lambda r: (r.accuracy, r.macro_f1, -r.margin)).margin


def real_backgrounds(media_dir: Path | None = None, frames_per_video: int = 4) -> list[np.ndarray]:
    """BGR photos of `media_dir/photos` and a few frames of each video in `media_dir/videos` (default
    `config.MEDIA_DIR`)."""
    media_dir = MEDIA_DIR if media_dir is None else Path(media_dir)
    out = [image for path in sorted(media_dir.glob("photos/**/*.jpg"))
           if (image := cv2.imread(str(path))) is not None]
    for path in sorted(media_dir.glob("videos/*.mp4")):
        capture = cv2.VideoCapture(str(path))
        total = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
        for index in np.linspace(0, max(total - 1, 0), frames_per_video).astype(int):
            capture.set(cv2.CAP_PROP_POS_FRAMES, int(index))
            ok, frame = capture.read()
            if ok:
                out.append(frame)
        capture.release()
    return out


def _feather(side: int) -> np.ndarray:
    """(side, side, 1) float32 weights: 1 inside, falling to 0 over `FEATHER` of the side at each edge."""
    ramp = np.clip((np.minimum(np.arange(side), side - 1 - np.arange(side)) + 0.5) / max(1.0, FEATHER * side), 0, 1)
    return np.outer(ramp, ramp).astype(np.float32)[..., None]


def paste_scene(face: np.ndarray, background: np.ndarray, rng: np.random.Generator,
                size: tuple[int, int] = SCENE_SIZE, roll: float = 0.0) -> tuple[np.ndarray, Face]:
    """A `size` BGR scene: a random part of `background` with the grey `face` pasted into it at a
    random place and size (`SIDES`), turned by `roll` degrees (positive: counter-clockwise on screen, the
    right-hand eye going up); returns the scene and the pasted square."""
    width, height = size
    bh, bw = background.shape[:2]
    scale = rng.uniform(0.6, 1.0) * min(bw / width, bh / height)
    cw, ch = max(1, int(width * scale)), max(1, int(height * scale))
    x0, y0 = int(rng.integers(0, bw - cw + 1)), int(rng.integers(0, bh - ch + 1))
    scene = cv2.resize(background[y0:y0 + ch, x0:x0 + cw], (width, height), interpolation=cv2.INTER_AREA)
    side = int(rng.integers(SIDES[0], min(SIDES[1], height) + 1))
    x, y = int(rng.integers(0, width - side + 1)), int(rng.integers(0, height - side + 1))
    big = cv2.resize(face, (side, side), interpolation=cv2.INTER_CUBIC).astype(np.float32)[..., None]
    alpha = _feather(side)
    if roll:
        turn = cv2.getRotationMatrix2D(((side - 1) / 2, (side - 1) / 2), roll, 1.0)
        big = cv2.warpAffine(big, turn, (side, side), flags=cv2.INTER_LINEAR,
                             borderMode=cv2.BORDER_REPLICATE)[..., None]
        alpha = cv2.warpAffine(alpha, turn, (side, side), flags=cv2.INTER_LINEAR)[..., None]
    region = scene[y:y + side, x:x + side].astype(np.float32)
    scene[y:y + side, x:x + side] = np.clip(alpha * big + (1 - alpha) * region + 0.5, 0, 255).astype(np.uint8)
    return scene, Face(x, y, side, side)


def _found(detector: FaceDetector, scene: np.ndarray, pasted: Face) -> Face | None:
    """The detection that is the pasted face (highest IoU, at least `MIN_IOU`), or None."""
    best = max(detector.detect(scene), key=lambda d: iou(d, pasted), default=None)
    return best if best is not None and iou(best, pasted) >= MIN_IOU else None


def found_in_scenes(images: Sequence[np.ndarray], backgrounds: Sequence[np.ndarray], finder: FaceDetector,
                    rng: np.random.Generator,
                    roll: float = 0.0) -> Iterator[tuple[int, np.ndarray, Face, Face | None]]:
    """Each face pasted into a scene (`paste_scene`: a random background, turned by up to `roll` degrees) and
    looked for there: (index, scene, pasted square, the detection that is the face or None), in order."""
    for i, image in enumerate(images):
        background = backgrounds[int(rng.integers(len(backgrounds)))]
        turn = float(rng.uniform(-roll, roll)) if roll else 0.0  # no draw at 0: the scenes of earlier reports
        scene, pasted = paste_scene(image, background, rng, roll=turn)
        yield i, scene, pasted, _found(finder, scene, pasted)


def haar_views(faces: FaceSet, *, backgrounds: Sequence[np.ndarray] | None = None,
               detector: DetectorConfig = VIDEO_DETECTOR, margin: float = DetectorConfig.margin, seed: int = 0,
               progress: Callable[[int, int], None] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Every face as the app would hand it to the model: pasted into a real scene, found by `detector`,
    cut from its Haar box with `margin` and made a grey face of the same size as the given one. Returns
    the views (N, H, W) uint8 and which faces were found (N,) bool; a face not found keeps its own image.
    Deterministic for a seed; the training engine's `haar_views` option trains on them."""
    backgrounds = real_backgrounds() if backgrounds is None else list(backgrounds)
    if not backgrounds:
        raise RobustnessError(f"no background photos or videos (looked in {MEDIA_DIR})")
    views = np.array(faces.images, dtype=np.uint8, copy=True)
    found = np.zeros(len(faces), dtype=bool)
    height, width = views.shape[1:3]
    for i, scene, _, box in found_in_scenes(faces.images, backgrounds, FaceDetector(detector),
                                            np.random.default_rng(seed)):
        if box is not None:
            crop = to_grey(crop_faces(scene, [box], margin)[0])
            views[i] = cv2.resize(crop, (width, height), interpolation=cv2.INTER_AREA)
            found[i] = True
        if progress:
            progress(i + 1, len(faces))
    return views, found


def _row(framing: str, margin: float | None, labels: np.ndarray, probs: np.ndarray,
         classes: tuple[str, ...], aligned: bool = False) -> CropRow:
    report = classification_report(labels, probs.argmax(1), classes)
    return CropRow(framing, margin, round(report["accuracy"], 4), round(report["macro_f1"], 4),
                   {c: round(m["recall"], 4) for c, m in report["per_class"].items()}, aligned)


def recrop_report(model: Classifier, faces: FaceSet, *, backgrounds: Sequence[np.ndarray] | None = None,
                  margins: Sequence[float] = MARGINS, detector: DetectorConfig = VIDEO_DETECTOR, seed: int = 0,
                  roll: float = 0.0, align: bool = False, batch_size: int = 256,
                  progress: Callable[[int, int], None] | None = None) -> RecropReport:
    """Paste each face of `faces` into a real scene (turned by up to `roll` degrees), detect it with
    `detector`, crop it with each margin (and, with `align`, each margin levelled on the eyes) and score
    the crops (see the module docstring). Deterministic for a seed."""
    backgrounds = real_backgrounds() if backgrounds is None else list(backgrounds)
    if not backgrounds:
        raise RobustnessError(f"no background photos or videos (looked in {MEDIA_DIR})")
    if len(faces) == 0:
        raise RobustnessError("no faces to paste")
    if any(m <= -0.5 for m in margins):
        raise RobustnessError("crop margins must be above -0.5 (a negative margin crops inside the Haar box)")
    if roll < 0 or roll > 90:
        raise RobustnessError("the roll must be between 0 and 90 degrees")
    finder = FaceDetector(detector)
    aligner = EyeAligner() if align else None
    rng = np.random.default_rng(seed)
    classes = tuple(model.classes)
    kept: list[int] = []
    ratios: list[float] = []
    levelled = 0
    # one list of crops per framing: (margin, aligned on the eyes)
    crops: dict[tuple[float, bool], list[np.ndarray]] = {(float(m), a): [] for a in (False, *([True] if align else []))
                                                         for m in margins}
    probs: dict[tuple[float, bool], list[np.ndarray]] = {k: [] for k in crops}

    def classify_pending() -> None:
        for m, pending in crops.items():
            if pending:
                probs[m].append(model.predict_proba(pending))
                pending.clear()

    for i, scene, pasted, box in found_in_scenes(faces.images, backgrounds, finder, rng, roll):
        if box is not None:
            kept.append(i)
            ratios.append(max(box.w, box.h) / pasted.w)
            rolls = [aligner.roll(scene, box)] if aligner else None
            levelled += bool(rolls and rolls[0])
            for m, aligned in crops:
                crop = crop_faces(scene, [box], m, rolls if aligned else None)[0]
                crops[m, aligned].append(np.ascontiguousarray(crop))
        if len(crops[next(iter(crops))]) >= batch_size:
            classify_pending()
        if progress:
            progress(i + 1, len(faces))
    classify_pending()
    report = RecropReport(faces.source, len(faces), len(kept), len(backgrounds),
                          f"{'photo' if detector == DetectorConfig() else 'video'} detector {detector}", roll=roll)
    if not kept:
        return report
    report.box_ratio = round(float(np.median(ratios)), 3)
    report.eyes_found = round(levelled / len(kept), 4) if align else None
    labels = faces.labels[kept]
    given = predict_faces(model, FaceSet(images=faces.images[kept], labels=labels), batch_size)
    report.rows.append(_row("as given (FER-2013's framing)", None, labels, given, classes))
    for m, aligned in crops:
        report.rows.append(_row(f"Haar box + margin {m:g}" + (", eyes level" if aligned else ""), m, labels,
                                np.concatenate(probs[m, aligned]), classes, aligned))
    return report


def format_recrop(report: RecropReport) -> str:
    """The report as a table: a row per framing, accuracy, macro-F1 and recall of each class."""
    rows = report.rows
    classes = list(rows[0].recall) if rows else []
    lines = [f"{report.faces} faces of {report.source or 'the data'} pasted into {report.backgrounds} real "
             f"photos/frames; found by the {report.detector}: {report.found} "
             f"({report.found / max(1, report.faces):.1%})"
             + (f"; Haar box side {report.box_ratio:.2f}x the face's FER-2013 frame (median)"
                if report.box_ratio else ""),
             *([f"faces turned by up to {report.roll:g} degrees either way"] if report.roll else []),
             *([f"eyes found and levelled on {report.eyes_found:.1%} of the found faces"]
               if report.eyes_found is not None else []),
             ""]
    if not rows:
        return "\n".join(lines + ["no face was found: nothing to score"])
    lines.append(f"{'framing':<44}{'accuracy':>9}{'macro-F1':>9}" + "".join(f"{c[:7]:>9}" for c in classes))
    for r in rows:
        lines.append(f"{r.framing:<44}{r.accuracy:>9.2%}{r.macro_f1:>9.3f}"
                     + "".join(f"{r.recall[c]:>9.3f}" for c in classes))
    lines += ["", f"(recall per class; best margin: {report.best_margin():g})"]
    return "\n".join(lines)
