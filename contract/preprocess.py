"""Image decoding and conversion shared by the training loaders and the serving gateway.

numpy + PIL only (the gateway imports this module without torch). Training and serving must turn a
file into the same uint8 array, so both call `prepare` / `prepare_source`:

    open_image -> to_mode -> resize_center_crop -> (C, size, size) uint8 array
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

DEFAULT_MAX_PIXELS = 50_000_000
"""Largest width * height `open_image` accepts by default."""

_MODES = {1: "L", 3: "RGB"}
_ALPHA_MODES = {"RGBA", "LA", "PA", "RGBa"}
_SIXTEEN_BIT_MODES = {"I", "I;16", "I;16B", "I;16L", "I;16N"}


class ImageError(ValueError):
    """An image that cannot be decoded, is too large, or cannot be converted."""


def _describe(source: str | Path | bytes | bytearray) -> str:
    return "image bytes" if isinstance(source, (bytes, bytearray)) else str(source)


def open_image(
    source: str | Path | bytes | bytearray, max_pixels: int = DEFAULT_MAX_PIXELS
) -> Image.Image:
    """Open and fully decode an image from a path or raw bytes, upright per its EXIF orientation.

    The pixel count is checked from the header before decoding; images larger than `max_pixels`, or
    than PIL's own `Image.MAX_IMAGE_PIXELS` decompression-bomb limit, are refused. Multi-frame files
    give their first frame. Raises ImageError naming the source and the reason for any failure.
    """
    name = _describe(source)
    limit = max_pixels if Image.MAX_IMAGE_PIXELS is None else min(max_pixels, Image.MAX_IMAGE_PIXELS)
    fp = io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else source
    try:
        with Image.open(fp) as img:
            width, height = img.size
            if width * height > limit:
                raise ImageError(
                    f"{name}: image is {width}x{height} = {width * height} pixels, "
                    f"more than the limit of {limit}"
                )
            img.load()  # decode now so corrupt or truncated data fails here, not later
            return ImageOps.exif_transpose(img)  # always a new image, independent of the file
    except ImageError:
        raise
    except Image.DecompressionBombError as err:
        raise ImageError(f"{name}: refused as a decompression bomb: {err}") from err
    except FileNotFoundError as err:
        raise ImageError(f"{name}: no such file") from err
    except Exception as err:  # PIL plugins raise OSError, SyntaxError, EOFError, struct.error, ...
        raise ImageError(f"{name}: cannot decode image: {type(err).__name__}: {err}") from err


def to_mode(img: Image.Image, channels: int) -> Image.Image:
    """Convert any PIL mode to "L" (channels=1) or "RGB" (channels=3).

    Transparency (alpha channel, or a palette/tRNS transparent colour) is composited on white first.
    16-bit grey ("I;16*", "I") is scaled 0..65535 -> 0..255 instead of PIL's clipping at 255.
    """
    if channels not in _MODES:
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    target, mode = _MODES[channels], img.mode
    if img.mode == target and "transparency" not in img.info:
        return img
    try:
        if img.mode in _ALPHA_MODES or "transparency" in img.info:
            rgba = img.convert("RGBA")
            white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            img = Image.alpha_composite(white, rgba).convert("RGB")
        elif img.mode in _SIXTEEN_BIT_MODES:
            grey = np.clip(np.asarray(img, dtype=np.float64), 0, 65535) / 257.0
            img = Image.fromarray(np.rint(grey).astype(np.uint8), mode="L")
        elif img.mode == "F":
            img = img.convert("L")  # PIL clips floats to 0..255
        elif img.mode != "L":  # P, CMYK, YCbCr, 1, ...: via RGB so every path agrees
            img = img.convert("RGB")
        return img.convert(target) if img.mode != target else img
    except ValueError as err:
        raise ImageError(f"cannot convert image mode {mode!r} to {target!r}: {err}") from err


def resize_center_crop(img: Image.Image, size: int) -> Image.Image:
    """Resize (bilinear, PIL's antialiasing) so the shorter side is `size`, then crop the centre square.

    Same geometry as torchvision's Resize(size) + CenterCrop(size). No-op at size x size.
    """
    if size < 1:
        raise ValueError(f"size must be >= 1, got {size}")
    width, height = img.size
    if (width, height) == (size, size):
        return img
    if width <= height:
        new_size = (size, int(size * height / width))
    else:
        new_size = (int(size * width / height), size)
    if new_size != (width, height):
        img = img.resize(new_size, Image.Resampling.BILINEAR)
    if new_size == (size, size):
        return img
    left = int(round((new_size[0] - size) / 2.0))
    top = int(round((new_size[1] - size) / 2.0))
    return img.crop((left, top, left + size, top + size))


def prepare(img: Image.Image, size: int, channels: int) -> np.ndarray:
    """PIL image -> uint8 array (channels, size, size): to_mode, resize_center_crop, HWC -> CHW."""
    img = resize_center_crop(to_mode(img, channels), size)
    array = np.asarray(img, dtype=np.uint8)
    array = array[None] if channels == 1 else array.transpose(2, 0, 1)
    return np.ascontiguousarray(array)


def prepare_source(
    source: str | Path | bytes | bytearray,
    size: int,
    channels: int,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> np.ndarray:
    """Path or raw bytes -> uint8 array (channels, size, size); raises ImageError if unreadable."""
    return prepare(open_image(source, max_pixels), size, channels)
