"""Loading still images safely: any common format and mode in, an upright BGR uint8 array out.

`load_image` accepts a path or the raw bytes of an upload and turns every problem into an
`ImageError` whose one-line message names the file. It never decodes more pixels than needed:
the size is read from the header first, JPEGs are decoded at a reduced scale (`draft`) when they
are larger than needed; other formats (PNG, WebP, ...), which cannot be decoded reduced, are decoded
whole up to `MAX_DECODE_PIXELS` (100 Mpx; a 50-megapixel phone photo passes) and reduced at once to
at most `config.MAX_IMAGE_PIXELS`, like a JPEG; larger ones are refused from the header. Pillow's
decompression-bomb guard stays on (its warning below the guard is ours to handle, not printed).
Truncated files are errors ("truncated"), never half images. `load_image_with_size` also gives the
file's own (upright) size, for mapping boxes found on a downscaled image back to the file's pixels.

Mode handling: 16-bit grey/RGB is scaled to 8 bit (not clipped); images with transparency
(RGBA, LA, PA, palette or grey with a transparent colour) are composited onto white, so that
transparent areas, which often hide black or garbage pixels, look like an ordinary light
background; palette, grey, 1-bit and CMYK images are converted to RGB. The EXIF orientation is
applied, so predictions are made on the image as a person sees it.
"""

from __future__ import annotations

import contextlib
import io
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, JpegImagePlugin, UnidentifiedImageError

from fer_app.config import MAX_IMAGE_PIXELS, MAX_IMAGE_SIDE

__all__ = ["MAX_DECODE_PIXELS", "ImageError", "encode_png", "load_image", "load_image_with_size"]

#: Formats that cannot be decoded at a reduced scale are decoded whole up to this many pixels (at most
#: 4 bytes each in Pillow: 400 MB), then reduced; larger ones are refused before decoding.
MAX_DECODE_PIXELS = 100_000_000

#: Errors Pillow raises for corrupt or truncated data while decoding.
_DECODE_ERRORS = (OSError, SyntaxError, EOFError, ValueError, struct.error, zlib.error)
#: Reduction factors libjpeg can decode at directly.
_JPEG_SCALES = (1, 2, 4, 8)
#: Background that transparent pixels are composited onto.
_BACKGROUND = (255, 255, 255, 255)
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
#: File signatures, to tell a damaged image from a file that is no image at all.
_MAGIC_NUMBERS = (
    (_PNG_SIGNATURE, "PNG"),
    (b"\xff\xd8\xff", "JPEG"),
    (b"GIF8", "GIF"),
    (b"BM", "BMP"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"RIFF", "RIFF/WebP"),
)
_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})
_SIXTEEN_BIT_MODES = frozenset({"I", "I;16", "I;16L", "I;16B", "I;16N"})
#: Modes `Image.reduce` averages correctly (not palette indices); others are converted first.
_REDUCIBLE_MODES = frozenset({"L", "LA", "RGB", "RGBA", "RGBX", "CMYK", "I", "F"})
#: EXIF orientations that swap width and height.
_TRANSPOSED_ORIENTATIONS = frozenset({5, 6, 7, 8})


class ImageError(ValueError):
    """An image that cannot be used: missing, unreadable, not an image, corrupt or too large."""


def load_image(source: str | Path | bytes, *, max_side: int = MAX_IMAGE_SIDE, name: str | None = None) -> np.ndarray:
    """Load an image file or encoded bytes as an upright BGR uint8 array of shape (H, W, 3).

    The longest side of the result is at most `max_side` (larger images are downscaled).
    Raises `ImageError` with a one-line message naming the source (or `name`, e.g. the name of
    an uploaded file given as bytes) for every unusable input.
    """
    return load_image_with_size(source, max_side=max_side, name=name)[0]


def load_image_with_size(source: str | Path | bytes, *, max_side: int = MAX_IMAGE_SIDE,
                         name: str | None = None) -> tuple[np.ndarray, tuple[int, int]]:
    """`load_image`, and the image's own upright size (width, height) in the file, before any downscaling.

    Boxes found on the returned array map to the file's pixels by the ratio of the two sizes.
    """
    if max_side < 1:
        raise ValueError(f"max_side must be positive, got {max_side}")
    name, stream = _open_source(source, name)
    try:
        with warnings.catch_warnings():
            # Pillow warns from 89 Mpx up (and refuses from 179 Mpx); the limits here are ours.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with _open_image(stream, name) as im:
                width, height = im.size
                if width < 1 or height < 1:
                    raise ImageError(f"{name}: empty image ({width}x{height} pixels)")
                own_size = (height, width) if _orientation(im) in _TRANSPOSED_ORIENTATIONS else (width, height)
                _limit_decoded_size(im, name, max_side)
                try:
                    im.load()
                except _DECODE_ERRORS as exc:
                    what = "truncated image file" if _truncated(stream, exc) else "corrupt image data"
                    raise ImageError(f"{name}: {what} ({_reason(exc)})") from exc
                rgb = _reduce(im)
                _make_upright(rgb)
                rgb = _to_rgb(rgb)
    finally:
        stream.close()
    if max(rgb.size) > max_side:
        scale = max_side / max(rgb.size)
        size = (max(1, round(rgb.width * scale)), max(1, round(rgb.height * scale)))
        rgb = rgb.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)
    # One copy: RGB -> BGR, C-contiguous and writable.
    return np.ascontiguousarray(np.asarray(rgb)[:, :, ::-1]), own_size


def encode_png(bgr: np.ndarray) -> bytes:
    """Encode a BGR (H, W, 3) or grey (H, W) uint8 array as PNG bytes."""
    if bgr.dtype != np.uint8 or not (bgr.ndim == 2 or (bgr.ndim == 3 and bgr.shape[2] == 3)):
        raise ValueError(f"expected a uint8 (H, W) or (H, W, 3) array, got {bgr.dtype} {bgr.shape}")
    pixels = bgr if bgr.ndim == 2 else np.ascontiguousarray(bgr[:, :, ::-1])
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def _open_source(source: str | Path | bytes, name: str | None) -> tuple[str, io.BufferedIOBase]:
    """Check the source and return its display name and a binary stream over it."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        name = name or f"image data ({len(data)} bytes)"
        if not data:
            raise ImageError(f"{name}: empty, no image")
        return name, io.BytesIO(data)
    path = Path(source)
    name = name or str(path)
    if not path.exists():
        raise ImageError(f"{name}: no such file")
    if path.is_dir():
        raise ImageError(f"{name}: is a directory, not an image file")
    try:
        if path.stat().st_size == 0:
            raise ImageError(f"{name}: empty file (0 bytes), no image")
        return name, path.open("rb")
    except OSError as exc:
        raise ImageError(f"{name}: cannot read file ({_reason(exc)})") from exc


def _open_image(stream: io.BufferedIOBase, name: str) -> Image.Image:
    """Read the header only (no pixels are decoded yet)."""
    try:
        return Image.open(stream)
    except UnidentifiedImageError as exc:
        raise ImageError(f"{name}: {_unidentified_reason(stream)}") from exc
    except Image.DecompressionBombError as exc:
        raise ImageError(f"{name}: image too large to load safely ({_reason(exc)})") from exc
    except _DECODE_ERRORS as exc:
        what = "truncated image file" if _truncated(stream, exc) else "corrupt image header"
        raise ImageError(f"{name}: {what} ({_reason(exc)})") from exc


def _unidentified_reason(stream: io.BufferedIOBase) -> str:
    """Why Pillow could not open a file: no pixels, a damaged header of a known format, or not an image."""
    stream.seek(0)
    head = stream.read(24)
    if head.startswith(_PNG_SIGNATURE) and head[12:16] == b"IHDR" and len(head) == 24:
        width, height = struct.unpack(">II", head[16:24])
        if width == 0 or height == 0:
            return f"empty image ({width}x{height} pixels)"
    for magic, kind in _MAGIC_NUMBERS:
        if head.startswith(magic):
            if _truncated(stream):
                return f"truncated {kind} file ({_size(stream):,} bytes), cannot be read"
            return f"damaged {kind} header, cannot be read"
    return "not a recognised image file"


def _size(stream: io.BufferedIOBase) -> int:
    stream.seek(0, io.SEEK_END)
    return stream.tell()


def _truncated(stream: io.BufferedIOBase, exc: BaseException | None = None) -> bool:
    """Whether the file ends before its format says it does (PNG without IEND, JPEG without its end
    marker, a RIFF/WebP or BMP shorter than its header's size, GIF without its trailer); for other
    formats, whether Pillow said so."""
    try:
        size = _size(stream)
        stream.seek(0)
        head = stream.read(16)
        stream.seek(max(0, size - 16))
        tail = stream.read(16)
    except (OSError, ValueError):
        return False
    if head.startswith(_PNG_SIGNATURE):
        return _png_cut_short(stream, size)
    if head.startswith(b"\xff\xd8\xff"):
        return _jpeg_cut_short(stream, size, tail)
    if head.startswith(b"RIFF") and len(head) >= 8:
        return struct.unpack("<I", head[4:8])[0] + 8 > size
    if head.startswith(b"BM") and len(head) >= 6:
        return struct.unpack("<I", head[2:6])[0] > size
    if head.startswith(b"GIF8"):
        return not tail.rstrip(b"\x00").endswith(b";")
    return exc is not None and "truncated" in str(exc).lower()


def _png_cut_short(stream: io.BufferedIOBase, size: int) -> bool:
    """Well-formed PNG chunks (4-letter types) that run past the end of the file, or no IEND: cut short."""
    offset = len(_PNG_SIGNATURE)
    while offset + 8 <= size:
        stream.seek(offset)
        length, kind = struct.unpack(">I4s", stream.read(8))
        if not kind.isalpha():
            return False  # damaged, not cut
        if kind == b"IEND":
            return False
        offset += 12 + length
    return True


def _jpeg_cut_short(stream: io.BufferedIOBase, size: int, tail: bytes) -> bool:
    """JPEG segments that run past the end of the file before the scan, or a scan without its end marker."""
    offset = 2
    while offset + 4 <= size:
        stream.seek(offset)
        marker, kind, length = struct.unpack(">BBH", stream.read(4))
        if marker != 0xFF:
            return False  # damaged, not cut
        if kind == 0xDA:  # start of scan: entropy-coded data up to the end marker
            return b"\xff\xd9" not in tail
        offset += 2 + length
    return True


def _orientation(im: Image.Image) -> int:
    with contextlib.suppress(*_DECODE_ERRORS, KeyError, TypeError):
        return int(im.getexif().get(0x0112, 1))
    return 1


def _limit_decoded_size(im: Image.Image, name: str, max_side: int) -> None:
    """Make sure decoding `im` is safe (memory), or refuse it.

    JPEGs are set to decode at the largest libjpeg reduction (1/2, 1/4, 1/8) that still keeps
    the longest side at least `max_side`, or more if needed to respect MAX_IMAGE_PIXELS. Other
    formats decode whole: up to MAX_DECODE_PIXELS (then `_reduce` brings them to MAX_IMAGE_PIXELS).
    """
    width, height = im.size
    # JpegImageFile covers MPO (multi-picture JPEG from phones) too.
    if not isinstance(im, JpegImagePlugin.JpegImageFile):
        if width * height > MAX_DECODE_PIXELS:
            raise ImageError(f"{name}: image too large ({width}x{height} pixels; {im.format or 'this format'} "
                             f"cannot be decoded reduced, limit {MAX_DECODE_PIXELS:,})")
        return
    target = max(width, height) / max_side
    quality_scale = max((s for s in _JPEG_SCALES if s <= target), default=1)
    memory_scale = next((s for s in _JPEG_SCALES if -(-width // s) * -(-height // s) <= MAX_IMAGE_PIXELS), None)
    if memory_scale is None:
        raise ImageError(f"{name}: image too large ({width}x{height} pixels)")
    scale = max(quality_scale, memory_scale)
    if scale > 1:
        # draft() picks the largest reduction whose result is at least the requested size.
        im.draft(im.mode, (max(1, width // scale), max(1, height // scale)))


def _reduce(im: Image.Image) -> Image.Image:
    """A decoded image above MAX_IMAGE_PIXELS reduced by the smallest whole factor that brings it within
    (as libjpeg's scaled decoding does for a JPEG), before any mode conversion copies it; else `im`."""
    width, height = im.size
    factor = 1
    while -(-width // factor) * -(-height // factor) > MAX_IMAGE_PIXELS:
        factor += 1
    if factor == 1:
        return im
    if im.mode not in _REDUCIBLE_MODES:  # palette indices, 1-bit and 16-bit can't be averaged as they are
        orientation = _orientation(im)
        im = _to_rgb(im) if im.mode not in _SIXTEEN_BIT_MODES else im.convert("I")
        if orientation != 1:  # conversions keep no EXIF: the orientation is all `_make_upright` needs
            exif = Image.Exif()
            exif[0x0112] = orientation
            im.info["exif"] = exif.tobytes()
    reduced = im.reduce(factor)
    reduced.info = dict(im.info)
    return reduced


def _make_upright(im: Image.Image) -> None:
    """Apply the EXIF orientation in place; a broken EXIF block leaves the image as stored."""
    with contextlib.suppress(*_DECODE_ERRORS):
        ImageOps.exif_transpose(im, in_place=True)


def _to_rgb(im: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB (see the module docstring for the rules)."""
    if im.mode in _SIXTEEN_BIT_MODES:
        # Pillow gives uint16 for I;16* and int32 for I (16-bit PNG/TIFF, range 0..65535).
        wide = np.clip(np.asarray(im), 0, 65535).astype(np.uint32)
        grey = ((wide + 128) // 257).astype(np.uint8)
        return Image.fromarray(grey).convert("RGB")
    if im.mode == "F":
        values = np.nan_to_num(np.asarray(im, dtype=np.float32))
        low, high = float(values.min()), float(values.max())
        span = high - low if high > low else 1.0
        return Image.fromarray(((values - low) * (255.0 / span) + 0.5).astype(np.uint8)).convert("RGB")
    if im.mode in _ALPHA_MODES or "transparency" in im.info:
        rgba = im.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, _BACKGROUND), rgba).convert("RGB")
    return im if im.mode == "RGB" else im.convert("RGB")


def _reason(exc: BaseException) -> str:
    """A short, single-line description of an exception."""
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


def to_grey(image: np.ndarray) -> np.ndarray:
    """The grey version of a grey (H, W), single-channel, BGR or BGRA uint8 image (a view when already grey):
    what the detector, the eye search and the encoders see of a frame or a crop."""
    import cv2

    if image.ndim == 2:
        return image
    channels = image.shape[2]
    if channels == 1:
        return image[:, :, 0]
    if channels in (3, 4):
        return cv2.cvtColor(image, cv2.COLOR_BGR2GRAY if channels == 3 else cv2.COLOR_BGRA2GRAY)
    raise ValueError(f"expected 1, 3 or 4 channels, got {channels}")
