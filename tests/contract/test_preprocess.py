"""train.data.preprocess: decoding, mode conversion, resize + centre crop, error reporting."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from contract.preprocess import (
    ImageError,
    open_image,
    prepare,
    prepare_source,
    resize_center_crop,
    to_mode,
)
from tests.support.images import encode, png_header_only

REPO = Path(__file__).resolve().parents[2]
RED, BLUE, WHITE = (255, 0, 0), (0, 0, 255), (255, 255, 255)




def test_imports_without_torch() -> None:
    code = "import sys; sys.modules['torch'] = None; import contract.preprocess"
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_exif_orientation_is_applied() -> None:
    img = Image.new("RGB", (40, 20), BLUE)
    img.paste(RED, (0, 0, 20, 20))  # left half red
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display
    opened = open_image(encode(img, "JPEG", exif=exif.tobytes(), quality=95))
    assert opened.size == (20, 40)
    top, bottom = opened.getpixel((10, 5)), opened.getpixel((10, 35))
    assert top[0] > 200 and top[2] < 60  # the left half is on top after a clockwise turn
    assert bottom[2] > 200 and bottom[0] < 60


def test_palette_transparency_composited_on_white() -> None:
    img = Image.new("P", (4, 4), 0)
    img.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)  # index 0 black, index 1 red
    img.putpixel((1, 1), 1)
    img.info["transparency"] = 0
    opened = open_image(encode(img, "PNG"))
    assert opened.mode == "P" and "transparency" in opened.info
    rgb = to_mode(opened, 3)
    assert rgb.mode == "RGB"
    assert rgb.getpixel((0, 0)) == WHITE  # transparent black -> white, not black
    assert rgb.getpixel((1, 1)) == RED
    assert to_mode(opened, 1).getpixel((0, 0)) == 255


@pytest.mark.parametrize("mode", ["RGBA", "LA"])
def test_alpha_composited_on_white(mode: str) -> None:
    pixels = np.zeros((1, 3, 4), np.uint8)
    pixels[0, 0] = (0, 0, 0, 0)  # fully transparent black
    pixels[0, 1] = (0, 0, 0, 255)  # opaque black
    pixels[0, 2] = (0, 0, 0, 128)  # half transparent black
    img = Image.fromarray(pixels, "RGBA").convert(mode)
    grey = np.asarray(to_mode(img, 1), np.int32)[0]
    rgb = np.asarray(to_mode(img, 3), np.int32)[0]
    assert grey[0] == 255 and grey[1] == 0
    assert abs(grey[2] - 255 * (1 - 128 / 255)) <= 1
    np.testing.assert_array_equal(rgb[:, 0], grey)
    np.testing.assert_array_equal(rgb[:, 1], grey)


def test_grey_to_rgb_and_rgb_to_grey() -> None:
    grey = Image.fromarray(np.array([[0, 77, 255]], np.uint8), "L")
    rgb = np.asarray(to_mode(grey, 3))
    assert rgb.shape == (1, 3, 3)
    np.testing.assert_array_equal(rgb[0], [[0, 0, 0], [77, 77, 77], [255, 255, 255]])

    colours = np.array([[[255, 0, 0], [0, 255, 0], [0, 0, 255], [10, 200, 90]]], np.uint8)
    luma = np.asarray(to_mode(Image.fromarray(colours, "RGB"), 1), np.float64)
    expected = colours.astype(np.float64) @ np.array([0.299, 0.587, 0.114])  # ITU-R 601-2
    assert np.abs(luma - expected).max() <= 1


def test_sixteen_bit_grey_is_scaled_not_clipped() -> None:
    img = Image.fromarray(np.array([[0, 257 * 100, 65535]], np.uint16))
    assert img.mode.startswith("I;16")
    np.testing.assert_array_equal(np.asarray(to_mode(img, 1))[0], [0, 100, 255])


@pytest.mark.parametrize("mode", ["CMYK", "1", "P"])
def test_other_modes_convert(mode: str) -> None:
    img = Image.new("RGB", (5, 3), WHITE).convert(mode)
    assert to_mode(img, 3).getpixel((2, 1)) == WHITE
    assert to_mode(img, 1).getpixel((2, 1)) == 255


def test_to_mode_rejects_bad_channels() -> None:
    with pytest.raises(ValueError, match="channels"):
        to_mode(Image.new("RGB", (2, 2)), 2)


@pytest.mark.parametrize("wide", [True, False])
def test_center_crop_keeps_the_centre(wide: bool) -> None:
    long, short = 60, 20
    img = Image.new("RGB", (long, short) if wide else (short, long), BLUE)
    box = (20, 0, 40, 20) if wide else (0, 20, 20, 40)
    img.paste(RED, box)  # the middle third is red, both ends blue
    out = resize_center_crop(img, 10)
    assert out.size == (10, 10)
    inner = np.asarray(out)[1:-1, 1:-1]  # the outermost pixels may blend in some blue
    assert (inner[..., 0] > 200).all() and (inner[..., 2] < 60).all()


def test_resize_shorter_side_and_noop() -> None:
    img = Image.new("RGB", (20, 20), RED)
    assert resize_center_crop(img, 20) is img
    assert resize_center_crop(img, 7).size == (7, 7)
    assert resize_center_crop(Image.new("L", (9, 31)), 4).size == (4, 4)
    with pytest.raises(ValueError):
        resize_center_crop(img, 0)


def test_prepare_shape_dtype_and_layout() -> None:
    rng = np.random.default_rng(0)
    hwc = rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)
    out = prepare(Image.fromarray(hwc), 6, 3)
    assert out.shape == (3, 6, 6) and out.dtype == np.uint8 and out.flags.c_contiguous
    np.testing.assert_array_equal(out, hwc.transpose(2, 0, 1))  # native size: pixels unchanged
    grey = prepare(Image.fromarray(hwc), 4, 1)
    assert grey.shape == (1, 4, 4) and grey.dtype == np.uint8


def test_prepare_source_same_from_path_and_bytes(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    data = encode(Image.fromarray(rng.integers(0, 256, (30, 50, 3), dtype=np.uint8)), "PNG")
    path = tmp_path / "x.png"
    path.write_bytes(data)
    from_path = prepare_source(path, 16, 3)
    np.testing.assert_array_equal(from_path, prepare_source(data, 16, 3))
    np.testing.assert_array_equal(from_path, prepare_source(str(path), 16, 3))
    assert from_path.shape == (3, 16, 16)


def test_corrupt_bytes_raise_image_error_naming_source(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="image bytes"):
        open_image(b"this is not an image")
    path = tmp_path / "broken.jpg"
    path.write_bytes(b"\xff\xd8\xff garbage")
    with pytest.raises(ImageError, match="broken.jpg"):
        open_image(path)
    with pytest.raises(ImageError, match="no such file"):
        open_image(tmp_path / "missing.png")


def test_too_many_pixels_refused_before_decoding(tmp_path: Path) -> None:
    # 8000 x 8000 = 64M pixels: above the default limit, below PIL's bomb check; there is no pixel
    # data, so only a check on the header can give this message.
    with pytest.raises(ImageError, match="8000x8000 = 64000000 pixels, more than the limit"):
        open_image(png_header_only(8000, 8000))
    path = tmp_path / "bomb.png"
    path.write_bytes(png_header_only(100_000, 100_000))
    with pytest.raises(ImageError, match="bomb.png"):
        open_image(path)
    small = encode(Image.new("RGB", (100, 100)), "PNG")
    with pytest.raises(ImageError, match="limit of 5000"):
        open_image(small, max_pixels=5000)
    assert open_image(small, max_pixels=10_000).size == (100, 100)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_truncated_file_raises_image_error(tmp_path: Path, fmt: str) -> None:
    rng = np.random.default_rng(2)
    data = encode(Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)), fmt)
    path = tmp_path / f"cut.{fmt.lower()}"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError, match=f"cut.{fmt.lower()}"):
        open_image(path)
    with pytest.raises(ImageError, match="image bytes"):
        prepare_source(data[: len(data) // 2], 8, 3)
