"""Choosing a saved model's test-time augmentation (TTA) views on val.

With TTA a model averages its probabilities over views of each face: the face, zoomed copies
(`Classifier.tta_zooms`) and, with `tta_flip`, the mirror image of each. More views cost more
time per face, so `select_tta` scores candidate zoom sets on val faces (each distinct view is
computed once), keeps only those within `max_views`, and picks the most accurate; a candidate must
beat the model's current views by at least `min_gain` to be taken (ties go to fewer views). The
choice goes into config.json (`tta_zooms`, and `tta_selection` with every candidate's score), the
val metrics, the confusion matrix image and the model card are rewritten for it. Selecting on val is
model selection: the test split stays unseen.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from fer_app.data import FaceSet
from fer_app.evaluate import save_val_report
from fer_app.metrics import classification_report
from fer_app.modelcard import tta_line, tta_section, with_section

#: Zoom sets tried by default: the face at 90-110% of its size.
CANDIDATES: tuple[tuple[float, ...], ...] = ((), (0.95,), (1.05,), (0.9,), (0.95, 1.05), (0.9, 1.1))
#: Views per face allowed by default: 4 keeps the bundled model within 2 ms per face on 2 cores.
MAX_VIEWS = 4
MIN_GAIN = 0.002
CONFIG_KEY = "tta_selection"


class TtaError(ValueError):
    """TTA selection could not be done; the model folder is unchanged."""


@dataclass(frozen=True)
class Candidate:
    zooms: tuple[float, ...]
    views: int
    accuracy: float
    macro_f1: float


@dataclass(frozen=True)
class TtaReport:
    """What `select_tta` scored and chose. `changed`: the views changed; `recorded`: the model folder was
    rewritten (the views changed, or they had never been chosen on this model's val: a model's first
    selection is always recorded, with its scores, in config.json and the card)."""

    source: str
    n: int
    flip: bool
    max_views: int
    before: tuple[float, ...]
    chosen: tuple[float, ...]
    candidates: list[Candidate]
    changed: bool
    recorded: bool = False

    def to_dict(self) -> dict:
        return asdict(self)


@torch.inference_mode()
def view_logits(model, pixels: torch.Tensor, zoom_factor: float | None, flip: bool, batch: int = 256) -> np.ndarray:
    """(N, classes) logits of one view of every preprocessed face (no TTA inside): the face, zoomed by
    `zoom_factor` when given, mirrored when `flip`. The view's probabilities are their softmax."""
    from fer_app.model import zoom

    out = []
    for i in range(0, len(pixels), batch):
        x = pixels[i:i + batch]
        if zoom_factor is not None:
            x = zoom(x, zoom_factor)
        if flip:
            x = x.flip(-1)
        out.append(model(x).float().numpy())
    return np.concatenate(out)


def score_candidates(model, val: FaceSet, candidates: Sequence[Sequence[float]], *, batch: int = 256,
                     progress: Callable[[int, int], None] | None = None) -> dict[tuple[float, ...], np.ndarray]:
    """Averaged val probabilities of each candidate zoom set, with the model's flip setting."""
    pixels = model.encoder.preprocess(list(val.images))
    flips = (False, True) if model.tta_flip else (False,)
    needed = sorted({None, *(float(z) for c in candidates for z in c)}, key=lambda z: -1.0 if z is None else z)
    views: dict[tuple[float | None, bool], np.ndarray] = {}
    total, done = len(needed) * len(flips), 0
    for z in needed:
        for flip in flips:
            views[(z, flip)] = torch.softmax(torch.from_numpy(view_logits(model, pixels, z, flip, batch)), 1).numpy()
            done += 1
            if progress:
                progress(done, total)
    return {tuple(float(z) for z in c): np.mean([views[(z, f)] for z in (None, *c) for f in flips], axis=0)
            for c in candidates}


def select_tta(folder: Path, val: FaceSet, *, candidates: Sequence[Sequence[float]] = CANDIDATES,
               max_views: int = MAX_VIEWS, min_gain: float = MIN_GAIN, write: bool = True,
               progress: Callable[[int, int], None] | None = None, twins: np.ndarray | None = None) -> TtaReport:
    """Score `candidates` on `val`, choose one (see the module docstring) and, if `write`, save it.
    `twins`: val faces with a pixel-identical twin in train (`data.twins_in`), reported apart in the card."""
    from fer_app.model import load_model, read_config

    folder = Path(folder)
    if len(val) == 0:
        raise TtaError("no val faces to choose on")
    model = load_model(folder, runtime="torch").eval()
    flip_factor = 2 if model.tta_flip else 1
    before = model.tta_zooms
    allowed = [tuple(float(z) for z in c) for c in candidates if (1 + len(c)) * flip_factor <= max_views]
    allowed = list(dict.fromkeys([before, *allowed]))  # the current setting is always a candidate
    if any(not 0.5 <= z <= 2.0 for c in allowed for z in c):
        raise TtaError("zoom factors must be in [0.5, 2]")
    probs = score_candidates(model, val, allowed, progress=progress)
    reports = {c: classification_report(val.labels, p.argmax(1), tuple(model.classes), twins) for c, p in probs.items()}
    scored = [Candidate(c, (1 + len(c)) * flip_factor, round(r["accuracy"], 4), round(r["macro_f1"], 4))
              for c, r in reports.items()]
    best = max(scored, key=lambda s: (s.accuracy, -s.views))
    current = next(s for s in scored if s.zooms == before)
    chosen = best.zooms if best.accuracy >= current.accuracy + min_gain else before
    cfg = read_config(folder)
    report = TtaReport(val.source, len(val), model.tta_flip, max_views, before, chosen, scored,
                       changed=write and chosen != before,
                       recorded=write and (chosen != before or CONFIG_KEY not in cfg))
    if report.recorded:
        _write(folder, report, reports[chosen], cfg)
    return report


def _write(folder: Path, report: TtaReport, val_report: dict, cfg: dict) -> None:
    """Rewrite config.json, confusion.png and the model card for the chosen views (config last)."""
    cfg["tta_zooms"] = list(report.chosen)
    cfg[CONFIG_KEY] = report.to_dict()

    def edit(card: str) -> str:
        card = with_section(card, tta_section(cfg[CONFIG_KEY]))
        return re.sub(r"^- test-time augmentation.*$", lambda _: tta_line(cfg), card, count=1, flags=re.MULTILINE)

    save_val_report(folder, val_report, cfg, edit)
