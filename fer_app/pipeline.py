"""The per-image pipeline: detect faces -> classify all crops in one batch -> `Prediction`s."""

from __future__ import annotations

import numpy as np

from fer_app.detection import FaceDetector
from fer_app.model import Classifier
from fer_app.types import Prediction


def analyze_image(image: np.ndarray, model: Classifier, detector: FaceDetector) -> list[Prediction]:
    """Every face of a BGR (or grey) image with its class probabilities; [] when there is no face."""
    faces = detector.detect(image)
    if not faces:
        return []
    probs = model.predict_proba(detector.crop(image, faces))
    return [Prediction(face, p, tuple(model.classes)) for face, p in zip(faces, probs)]
