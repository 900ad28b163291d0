"""Image encoders behind one interface: face crops in, one embedding per crop out.

- `compact`: the project's own CNN trained on FER-2013 (48x48 grey); the offline default.
- `clip-vit-b32`: the image tower of CLIP ViT-B/32 through transformers.
"""

from fer_app.encoders.base import Encoder
from fer_app.encoders.compact import CompactEncoder

__all__ = ["Encoder", "CompactEncoder"]
