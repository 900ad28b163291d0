"""One place for the project's defaults: classes, paths, detector and runtime settings."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

#: FER-2013 label order; every probability array in the project uses it.
CLASSES: tuple[str, ...] = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
NUM_CLASSES = len(CLASSES)

PROJECT_ROOT = Path(__file__).resolve().parent.parent
#: Real photos and videos for benchmarks and measurements (beside the project, never in it).
MEDIA_DIR = PROJECT_ROOT.parent / "shared" / "media"
#: Where saved models live (one folder per model). Override with FER_APP_MODELS.
MODELS_DIR = Path(os.environ.get("FER_APP_MODELS", PROJECT_ROOT / "models"))
#: The bundled offline default model.
DEFAULT_MODEL = "compact-fer2013"
#: The accurate model for photos (`fer_app.ensemble`: several networks per view): the default of the Photo
#: page and of `python -m fer_app predict` when it is in models/; live video keeps DEFAULT_MODEL.
STILLS_MODEL = "compact-fer2013-ensemble"
#: What `python -m fer_app ensemble --mean` averages (`fer_app.ensemble`): the members' logits or weights.
ENSEMBLE_MEANS = ("logits", "weights")
#: Default local folder for the CLIP ViT-B/32 weights (transformers `save_pretrained` layout).
CLIP_HUB_ID = "openai/clip-vit-base-patch32"
CLIP_LOCAL_DIR = MODELS_DIR / "clip-vit-base-patch32"
#: Per-user state (embedding cache, calibration captures). Override with FER_APP_HOME.
APP_HOME = Path(os.environ.get("FER_APP_HOME", Path.home() / ".fer_app"))

#: The real-footage benchmarks (`fer_app.bench_footage`, `python -m fer_app bench --footage PART...`), in the
#: order they run and print.
FOOTAGE_PARTS = ("video", "live", "scan", "tta_spread", "photos")

#: Images larger than this many pixels are downscaled on load (before decoding when possible).
MAX_IMAGE_PIXELS = 40_000_000
#: Longest side an image is reduced to before face detection work starts.
MAX_IMAGE_SIDE = 4096


@dataclass(frozen=True)
class DetectorConfig:
    """Settings of the Haar-cascade face detector.

    detection_width: the frame is downscaled to this width (never upscaled) before detection;
    boxes are mapped back to full resolution. min_face: smallest face side in pixels of the
    *full-resolution* frame. margin: extra border around each face crop, as a fraction of the side.
    align: level the eyes of each crop (see the field).
    equalize: the contrast step before detection, one of `EQUALIZE_MODES`: "clahe" (adaptive
    histogram equalisation, see `fer_app.detection.equalize`), "global" (`cv2.equalizeHist`), "none".
    """

    detection_width: int = 640
    scale_factor: float = 1.15
    min_neighbors: int = 4
    min_face: int = 40
    #: 0: the Haar box itself. Chosen on val with `python -m fer_app robustness` (FER-2013 val faces pasted
    #: into real photos, found, cropped): the box is 0.95x a face's FER-2013 frame, and margin 0 scored
    #: 70.2% against 68.0% for 0.1 (seed 1: 70.5% vs 67.4%), disgust recall 0.48 vs 0.26, fear 0.51 vs 0.39.
    margin: float = 0.0
    equalize: str = "clahe"
    #: Rotate each crop so the eyes are level (`fer_app.alignment`: OpenCV's eye cascade in the face box).
    #: Off: measured with `python -m fer_app robustness --align` on all 3589 val faces, it changed nothing the
    #: scenes could tell apart (upright faces 70.19% -> 70.23%; faces turned up to 15 degrees 70.21% -> 70.26%):
    #: the model, trained with turned faces, copes with a tilted head, and the eye search costs time per face.
    align: bool = False


EQUALIZE_MODES = ("clahe", "global", "none")


#: Detector defaults for video (the webcam and video files): frames come 30 a second, so detection
#: runs on a 320 px wide copy (about 4-6 ms for a 640 px frame on 2 cores) with the finer 1.1 scale
#: step, which finds more faces than 1.15 (216 vs 194 of 300 FER-2013 val faces pasted into 640x360
#: frames), and 5 neighbours, which keeps out false faces in textured scenes. The smallest face is
#: 48 px (24 px, the cascade's window, at 320 px for a 640 px frame). Photos use the more thorough
#: `DetectorConfig()` defaults.
VIDEO_DETECTOR = DetectorConfig(detection_width=320, scale_factor=1.1, min_neighbors=5, min_face=48)


@dataclass(frozen=True)
class ScanConfig:
    """Detect-and-track on video (`fer_app.scan`): where the Haar cascade looks in each frame.

    full_every: a full-frame scan at least every this many frames (1: every frame, no tracking
    scans), and on the frame after a track is new or lost. In between only a window around each live
    track is scanned: the track's box grown by `window` of its side on every side, over face sizes
    within `scale_range` (x or /) of the track's.
    """

    full_every: int = 10
    window: float = 0.5
    scale_range: float = 1.3

    def __post_init__(self) -> None:
        if self.full_every < 1 or self.window < 0 or self.scale_range < 1.0:
            raise ValueError(f"invalid scan settings: {self}")


#: Scan defaults for video (the live page and `python -m fer_app video`); `ScanConfig(full_every=1)`
#: scans every frame whole, as photos always are.
VIDEO_SCAN = ScanConfig()

#: Label hysteresis of each tracked face (live and video, `fer_app.tracking`): the label shown changes
#: only when another class leads it by this much in the smoothed probabilities...
LABEL_MARGIN = 0.15
#: ...and the label shown has been held for at least this many seconds.
LABEL_DWELL_S = 1.5
