"""fer-app: real-time facial emotion recognition (face detection -> encoder -> head)."""

from fer_app.config import CLASSES
from fer_app.types import Face, Prediction

__all__ = ["CLASSES", "Face", "Prediction"]
__version__ = "0.1.0"
