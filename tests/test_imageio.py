"""Tests of fer_app.imageio: every kind of bad input, every pixel mode, orientation and size limits."""

from __future__ import annotations

import io
import json
import struct
import subprocess
import sys
import textwrap
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fer_app.config import MAX_IMAGE_PIXELS
from fer_app.imageio import MAX_DECODE_PIXELS, ImageError, encode_png, load_image, load_image_with_size

PROJECT_ROOT = Path(__file__).resolve().parent.parent


# --- helpers ---------------------------------------------------------------------------------


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png(width: int, height: int, *, bit_depth: int = 8, colour_type: int = 0, rows: bytes = b"") -> bytes:
    """A PNG file written by hand: any declared size, any raw (filtered) row data."""
    header = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", zlib.compress(rows))
        + _png_chunk(b"IEND", b"")
    )


def _png16(pixels: np.ndarray) -> bytes:
    """A real 16-bit grey (H, W) or RGB (H, W, 3) PNG; Pillow cannot write 16-bit RGB itself."""
    colour_type = 0 if pixels.ndim == 2 else 2
    big_endian = pixels.astype(">u2").reshape(pixels.shape[0], -1).tobytes()
    row_bytes = len(big_endian) // pixels.shape[0]
    rows = b"".join(b"\x00" + big_endian[i : i + row_bytes] for i in range(0, len(big_endian), row_bytes))
    return _png(pixels.shape[1], pixels.shape[0], bit_depth=16, colour_type=colour_type, rows=rows)


def _encode(image: Image.Image, fmt: str, **params) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **params)
    return buffer.getvalue()


def _jpeg_claiming(width: int, height: int) -> bytes:
    """A small JPEG whose frame header (SOF0) is patched to declare another size."""
    data = bytearray(_encode(Image.new("L", (16, 16), 128), "JPEG"))
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def _asymmetric_rgb() -> Image.Image:
    """A 40x20 RGB image: red left half, blue right half, a green top-left corner."""
    pixels = np.zeros((20, 40, 3), np.uint8)
    pixels[:, :20] = (255, 0, 0)
    pixels[:, 20:] = (0, 0, 255)
    pixels[:5, :5] = (0, 255, 0)
    return Image.fromarray(pixels)


def _assert_bgr(array: np.ndarray, shape: tuple[int, int]) -> None:
    assert array.dtype == np.uint8
    assert array.shape == (*shape, 3)
    assert array.flags.c_contiguous and array.flags.writeable


# --- bad inputs --------------------------------------------------------------------------------


def test_missing_path(tmp_path: Path) -> None:
    path = tmp_path / "nope.jpg"
    with pytest.raises(ImageError, match=r"nope\.jpg: no such file"):
        load_image(path)


def test_directory(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="is a directory"):
        load_image(tmp_path)


def test_text_file_named_jpg(tmp_path: Path) -> None:
    path = tmp_path / "notes.jpg"
    path.write_text("this is not a picture\n")
    with pytest.raises(ImageError, match=r"notes\.jpg: not a recognised image file"):
        load_image(str(path))


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_truncated_file(tmp_path: Path, fmt: str) -> None:
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    data = _encode(Image.fromarray(noise), fmt)
    path = tmp_path / f"cut.{fmt.lower()}"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError, match=r"cut\.\w+: truncated image file"):
        load_image(path)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "GIF", "BMP"])
@pytest.mark.parametrize("keep", [0.02, 0.5, 0.95])
def test_truncated_file_is_called_truncated_never_corrupt_header(fmt: str, keep: float) -> None:
    """Issue 13, point 10: a file cut short, even inside its header, says "truncated"."""
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    data = _encode(Image.fromarray(noise), fmt)
    with pytest.raises(ImageError, match=r"cut\.img: truncated") as info:
        load_image(data[: max(12, int(len(data) * keep))], name="cut.img")
    assert "header" not in str(info.value) or "truncated" in str(info.value)


def test_damaged_header_is_not_called_a_non_image(tmp_path: Path) -> None:
    path = tmp_path / "bad.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    with pytest.raises(ImageError, match="damaged PNG header"):
        load_image(path)


def test_zero_by_zero_image(tmp_path: Path) -> None:
    path = tmp_path / "empty.png"
    path.write_bytes(_png(0, 0))
    with pytest.raises(ImageError, match=r"empty\.png: empty image \(0x0 pixels\)"):
        load_image(path)


def test_empty_file_and_empty_bytes(tmp_path: Path) -> None:
    path = tmp_path / "zero.jpg"
    path.touch()
    with pytest.raises(ImageError, match=r"zero\.jpg: empty file"):
        load_image(path)
    with pytest.raises(ImageError, match="empty"):
        load_image(b"")


def test_errors_are_one_line_and_value_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError) as info:
        load_image(b"garbage\nwith newline", name="upload.png")
    assert str(info.value) == "upload.png: not a recognised image file"


# --- huge images: refused or decoded reduced, memory bounded ----------------------------------


@pytest.mark.parametrize("data", [_png(20000, 20000), _jpeg_claiming(20000, 20000)], ids=["png", "jpeg"])
def test_20000x20000_is_refused_from_the_header(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "huge.img"
    path.write_bytes(data)
    with pytest.raises(ImageError, match=r"huge\.img: image too large"):
        load_image(path)


def test_non_jpeg_above_decode_limit_is_refused_before_decoding() -> None:
    side = int(MAX_DECODE_PIXELS**0.5) + 100  # above what may be decoded whole, below Pillow's bomb guard
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(ImageError, match="image too large"):
            load_image(_png(side, side))
    # Issue 14, point 8: Pillow's DecompressionBombWarning (from 89 Mpx) is not printed.
    assert not [w for w in caught if issubclass(w.category, Image.DecompressionBombWarning)]


_MEASURE = textwrap.dedent(
    """
    import json, resource, sys
    from fer_app.imageio import load_image
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    image = load_image(sys.argv[1])
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"shape": image.shape, "peak_mib": (after - before) / 1024}))
    """
)


def test_large_jpeg_is_decoded_reduced_with_bounded_memory(tmp_path: Path) -> None:
    """8000x6000 (48 Mpx, above MAX_IMAGE_PIXELS): a full decode would peak near 400 MiB."""
    path = tmp_path / "large.jpg"
    Image.new("L", (8000, 6000), 90).save(path, quality=50)
    result = subprocess.run(
        [sys.executable, "-c", _MEASURE, str(path)],
        capture_output=True,
        text=True,
        check=True,
        cwd=PROJECT_ROOT,
    )
    report = json.loads(result.stdout)
    assert report["shape"] == [3000, 4000, 3]  # libjpeg 1/2 scale, long side <= MAX_IMAGE_SIDE
    assert report["peak_mib"] < 150


def test_50_megapixel_png_is_decoded_and_reduced_like_a_jpeg(tmp_path: Path) -> None:
    """Issue 13, point 10: an 8160x6120 PNG (a phone photo; above MAX_IMAGE_PIXELS, which a PNG cannot be
    decoded below) is decoded and halved, as the JPEG of the same size is by libjpeg."""
    png = tmp_path / "phone.png"
    Image.new("L", (8160, 6120), 90).save(png, compress_level=1)
    jpeg = tmp_path / "phone.jpg"
    Image.new("L", (8160, 6120), 90).save(jpeg, quality=50)
    assert 8160 * 6120 > MAX_IMAGE_PIXELS
    for path in (png, jpeg):
        image, size = load_image_with_size(path)
        _assert_bgr(image, (3060, 4080))
        assert size == (8160, 6120)
        assert abs(int(image[100, 100, 0]) - 90) <= 2


def test_reduced_palette_png_keeps_colours_and_orientation() -> None:
    """Palette indices are never averaged: a big palette image is converted, then reduced; EXIF rotation kept."""
    side = int(MAX_IMAGE_PIXELS**0.5) + 200
    im = Image.new("P", (side, side // 2), 1)
    im.putpalette([0, 0, 0, 200, 10, 10] + [0, 0, 0] * 254)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees: the upright image is portrait
    image, size = load_image_with_size(_encode(im, "PNG", exif=exif, compress_level=1))
    assert size == (side // 2, side)
    assert image.shape[0] > image.shape[1]
    assert tuple(image[10, 10]) == (10, 10, 200)  # BGR of (200, 10, 10)


def test_downscaled_to_max_side() -> None:
    data = _encode(_asymmetric_rgb().resize((400, 200)), "PNG")
    image = load_image(data, max_side=100)
    _assert_bgr(image, (50, 100))


# --- pixel modes ----------------------------------------------------------------------------


def test_rgb_becomes_bgr() -> None:
    image = load_image(_encode(_asymmetric_rgb(), "PNG"))
    _assert_bgr(image, (20, 40))
    assert tuple(image[10, 10]) == (0, 0, 255)  # red, in BGR order
    assert tuple(image[10, 30]) == (255, 0, 0)  # blue


def test_16_bit_grey_is_scaled_not_clipped() -> None:
    ramp = np.array([[0, 257, 32896, 65535]], dtype=np.uint16)
    image = load_image(_png16(ramp))
    _assert_bgr(image, (1, 4))
    assert image[0, :, 0].tolist() == [0, 1, 128, 255]
    assert (image == image[:, :, :1]).all()


def test_16_bit_rgb_is_scaled_not_clipped() -> None:
    pixels = np.array([[[65535, 32896, 0], [1000, 20000, 50000]]], dtype=np.uint16)
    image = load_image(_png16(pixels))
    _assert_bgr(image, (1, 2))
    np.testing.assert_allclose(image[0, :, ::-1], np.round(pixels[0] / 257.0), atol=1)


def test_rgba_is_composited_onto_white() -> None:
    pixels = np.zeros((2, 2, 4), np.uint8)
    pixels[0, 0] = (255, 0, 0, 255)  # opaque red
    pixels[0, 1] = (0, 0, 0, 0)  # transparent black -> white
    pixels[1, 0] = (0, 0, 255, 128)  # half-transparent blue
    image = load_image(_encode(Image.fromarray(pixels, "RGBA"), "PNG"))
    _assert_bgr(image, (2, 2))
    assert tuple(image[0, 0]) == (0, 0, 255)
    assert tuple(image[0, 1]) == (255, 255, 255)
    b, g, r = image[1, 0]
    assert b == 255 and 120 <= g <= 135 and 120 <= r <= 135


def test_grey_with_alpha() -> None:
    la = Image.fromarray(np.array([[[0, 0], [0, 255]]], dtype=np.uint8), "LA")
    image = load_image(_encode(la, "PNG"))
    assert image[0].tolist() == [[255, 255, 255], [0, 0, 0]]


def test_palette_with_transparency() -> None:
    palette_image = Image.new("P", (2, 1))
    palette_image.putpalette([0, 0, 0, 0, 200, 0] + [0] * 762)
    palette_image.putpixel((0, 0), 0)
    palette_image.putpixel((1, 0), 1)
    for fmt in ("PNG", "GIF"):
        image = load_image(_encode(palette_image, fmt, transparency=0))
        assert image[0].tolist() == [[255, 255, 255], [0, 200, 0]], fmt


def test_palette_without_transparency() -> None:
    image = load_image(_encode(_asymmetric_rgb().convert("P", palette=Image.Palette.ADAPTIVE), "PNG"))
    assert tuple(image[10, 10]) == (0, 0, 255)


@pytest.mark.parametrize("mode", ["L", "1"])
def test_grey_and_1_bit(mode: str) -> None:
    grey = Image.fromarray(np.array([[0, 255, 0]], dtype=np.uint8)).convert(mode)
    image = load_image(_encode(grey, "PNG"))
    _assert_bgr(image, (1, 3))
    assert image[0].tolist() == [[0, 0, 0], [255, 255, 255], [0, 0, 0]]


def test_cmyk_jpeg() -> None:
    cmyk = Image.new("CMYK", (16, 16), (0, 255, 255, 0))  # pure red ink-wise
    image = load_image(_encode(cmyk, "JPEG", quality=95))
    b, g, r = image[8, 8].tolist()
    assert r > 200 and g < 60 and b < 60


# --- orientation, bytes, PNG encoding -----------------------------------------------------------


def test_exif_orientation_is_applied() -> None:
    """Orientation 6: the stored image must be rotated 90 degrees clockwise to be upright."""
    stored = _asymmetric_rgb()
    exif = Image.Exif()
    exif[0x0112] = 6
    image = load_image(_encode(stored, "JPEG", quality=95, subsampling=0, exif=exif))
    expected = np.asarray(stored.transpose(Image.Transpose.ROTATE_270))[:, :, ::-1]
    assert image.shape == (40, 20, 3)
    assert np.abs(image.astype(int) - expected).mean() < 8
    # Red left half is now the top half, the green top-left corner is now top-right.
    assert image[5, 10].tolist() == pytest.approx([0, 0, 255], abs=30)
    assert image[30, 10].tolist() == pytest.approx([255, 0, 0], abs=30)
    assert image[1, 18].tolist() == pytest.approx([0, 255, 0], abs=30)


def test_bytes_and_path_give_the_same_pixels(tmp_path: Path) -> None:
    data = _encode(_asymmetric_rgb(), "PNG")
    path = tmp_path / "same.png"
    path.write_bytes(data)
    np.testing.assert_array_equal(load_image(data), load_image(path))
    np.testing.assert_array_equal(load_image(bytearray(data)), load_image(str(path)))


def test_encode_png_round_trip() -> None:
    bgr = np.random.default_rng(1).integers(0, 256, (7, 5, 3), dtype=np.uint8)
    np.testing.assert_array_equal(load_image(encode_png(bgr)), bgr)
    grey = bgr[:, :, 0]
    np.testing.assert_array_equal(load_image(encode_png(grey))[:, :, 1], grey)
    with pytest.raises(ValueError):
        encode_png(bgr.astype(np.float32))
