"""Image decoding and conversion shared by the training loaders and the serving gateway.

numpy + PIL only (the gateway imports this module without torch). Training, export parity (the run's
parity sample is made by training) and serving turn a file into the same uint8 array because all of
them call `prepare_source` (files and bytes) or `prepare` (images already in memory):

    header (pixel limit) -> draft (JPEG: decode at 1/2..1/8 scale) -> decode -> EXIF orientation
      -> crop to the region the output needs -> to_mode -> resize (reduce + bilinear) -> (C, S, S) uint8

The work per image is bounded by the model's input size, not by the shape of the input: the centre
crop of Resize(S) + CenterCrop(S) is computed on the header's size first, only that region (plus the
filter's margin) is converted and resampled, and the resampling target is S x S whatever the aspect
ratio (a 4,000,000 x 1 image costs its decode, a 4 MB buffer, and an S x S resize). A large JPEG is
decoded by libjpeg at the smallest 1/2^k scale that keeps at least REDUCING_GAP x S pixels on the
shorter side, and any image more than REDUCING_GAP times larger than needed is first reduced by an
integer factor (PIL's `reduce`), then resampled: both are PIL's documented shortcuts and keep the
result within a level or two of a full-resolution resize. The decoded image itself (at most
`max_pixels`, checked from the header before decoding) is the one buffer whose size follows the input.
"""

from __future__ import annotations

import io
import math
import re
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

DEFAULT_MAX_PIXELS = 50_000_000
"""Largest width * height `prepare_source` accepts by default."""

REDUCING_GAP = 3.0
"""Decode (JPEG draft) and reduce (integer box filter) no further than this factor above the output size.

PIL's `resize(reducing_gap=...)`: with 3.0 the result is "indistinguishable from fair resampling in most
cases"; smaller is faster. Changing it changes what training and serving compute (the same way)."""

DECODE_BLOCK = 16 * 1024
"""Bytes the decoder reads per step: the granularity at which a decode time budget is enforced."""

_MODES = {1: "L", 3: "RGB"}
_ALPHA_MODES = {"RGBA", "LA", "PA", "RGBa"}
_SIXTEEN_BIT_MODES = {"I", "I;16", "I;16B", "I;16L", "I;16N"}
_OBJECT_REPR = re.compile(r"<[^<>]*? at 0x[0-9a-fA-F]+>")
_ADDRESS = re.compile(r"\b0x[0-9a-fA-F]{8,}\b")


class ImageError(ValueError):
    """An image that cannot be decoded, is too large, or cannot be converted; the message names it."""


class ImageTooLarge(ImageError):
    """The header claims more pixels than the limit (nothing was decoded)."""


class _TimeUp(Exception):
    """Raised from inside the decoder's read loop when the decode budget is spent."""


class _TimedReader(io.BytesIO):
    """Encoded bytes whose `read` fails once `deadline` (time.monotonic) has passed.

    PIL decoders pull their input through `read` in DECODE_BLOCK steps, so a decode that runs past
    its budget stops within one block instead of running to the end."""

    def __init__(self, data: bytes, deadline: float | None) -> None:
        super().__init__(data)
        self.deadline = deadline

    def read(self, size: int | None = -1) -> bytes:
        if self.deadline is not None and time.monotonic() > self.deadline:
            raise _TimeUp
        return super().read(size)


Source = str | Path | bytes | bytearray | memoryview
"""A file path, or the encoded image itself."""


def _describe(source: Source) -> str:
    return "image bytes" if isinstance(source, (bytes, bytearray, memoryview)) else str(source)


def describe_error(err: BaseException) -> str:
    """What went wrong, for people: no Python object reprs or heap addresses (they say nothing to a client)."""
    if isinstance(err, UnidentifiedImageError):
        return "not an image file, or in a format PIL cannot read"
    if isinstance(err, MemoryError):
        return "out of memory while decoding"
    text = _ADDRESS.sub("...", _OBJECT_REPR.sub("the data", str(err))).strip()
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def _read(source: Source) -> bytes:
    """The encoded bytes; files are read whole (decoding from memory is one path for both callers)."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        return bytes(source)
    try:
        return Path(source).read_bytes()
    except FileNotFoundError as err:
        raise ImageError(f"{source}: no such file") from err
    except OSError as err:
        raise ImageError(f"{source}: cannot read: {err.strerror or describe_error(err)}") from err


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


def center_start(length: int, size: int) -> int:
    """Where a centre crop of `size` starts along a side of `length`, as torchvision's CenterCrop places it (the
    trainer's evaluation crop and the gateway's decode share it)."""
    return int(round((length - size) / 2.0))


def center_crop_box(width: int, height: int, size: int) -> tuple[float, float, float, float]:
    """The region (left, top, right, bottom), in source pixels, that Resize(size) + CenterCrop(size) keeps.

    torchvision's geometry: the shorter side is scaled to `size`, the longer to int(size * long / short),
    and the crop starts at round((scaled - size) / 2). Computed from the size alone, so it can be
    applied before anything is allocated."""
    if size < 1:
        raise ValueError(f"size must be >= 1, got {size}")
    if width <= height:
        scaled = (size, int(size * height / width))
    else:
        scaled = (int(size * width / height), size)
    left, top = center_start(scaled[0], size), center_start(scaled[1], size)
    sx, sy = width / scaled[0], height / scaled[1]
    return left * sx, top * sy, (left + size) * sx, (top + size) * sy


def _needed_region(img: Image.Image, size: int) -> tuple[Image.Image, tuple[float, float, float, float]]:
    """(the integer crop of `img` holding the centre-crop box plus the filter's reach, the box within it).

    Pixels outside it have zero weight in the resize, so cropping first changes nothing but the size of
    every later buffer (mode conversion, reduce, resample), which then follows the output, not the input."""
    width, height = img.size
    left, top, right, bottom = center_crop_box(width, height, size)
    reach_x = math.ceil((right - left) / size) + 1  # bilinear support is one output pixel each side
    reach_y = math.ceil((bottom - top) / size) + 1
    x0, y0 = max(0, math.floor(left) - reach_x), max(0, math.floor(top) - reach_y)
    x1, y1 = min(width, math.ceil(right) + reach_x), min(height, math.ceil(bottom) + reach_y)
    if (x0, y0, x1, y1) != (0, 0, width, height):
        img = img.crop((x0, y0, x1, y1))
    return img, (left - x0, top - y0, right - x0, bottom - y0)


def _resample(img: Image.Image, size: int, box: tuple[float, float, float, float]) -> Image.Image:
    """`box` of `img` -> size x size: bilinear with PIL's antialiasing, integer-reduced first when far larger."""
    if img.size == (size, size) and box == (0, 0, size, size):
        return img
    return img.resize((size, size), Image.Resampling.BILINEAR, box=box, reducing_gap=REDUCING_GAP)


def resize_center_crop(img: Image.Image, size: int) -> Image.Image:
    """Resize so the shorter side is `size`, then crop the centre square: (W, H) -> (size, size).

    Same geometry as torchvision's Resize(size) + CenterCrop(size), computed as one resample of the
    centre region (`center_crop_box`), so the work never follows an extreme aspect ratio. No-op at
    size x size."""
    if img.size == (size, size):
        return img
    region, box = _needed_region(img, size)
    return _resample(region, size, box)


def _to_array(img: Image.Image, channels: int) -> np.ndarray:
    array = np.asarray(img, dtype=np.uint8)
    array = array[None] if channels == 1 else array.transpose(2, 0, 1)
    return np.ascontiguousarray(array)


def prepare(img: Image.Image, size: int, channels: int) -> np.ndarray:
    """PIL image in memory -> uint8 array (channels, size, size): centre region, to_mode, resample, HWC -> CHW.

    For images already decoded (binary data sets); files and bytes go through `prepare_source`."""
    if img.size == (size, size):
        return _to_array(to_mode(img, channels), channels)
    region, box = _needed_region(img, size)
    return _to_array(_resample(to_mode(region, channels), size, box), channels)


def _check_pixels(name: str, img: Image.Image, max_pixels: int) -> None:
    limit = max_pixels if Image.MAX_IMAGE_PIXELS is None else min(max_pixels, Image.MAX_IMAGE_PIXELS)
    width, height = img.size
    if width * height > limit:
        raise ImageTooLarge(f"{name}: image is {width}x{height} = {width * height} pixels, "
                            f"more than the limit of {limit}")


def decode_for_size(img: Image.Image, size: int) -> Image.Image:
    """Decode the open file, at reduced scale where the format allows (JPEG), upright per its EXIF tag."""
    needed = math.ceil(REDUCING_GAP * size)
    img.draft(img.mode, (needed, needed))  # JPEG: libjpeg decodes at 1/2..1/8 scale when that is enough; others: no-op
    img.decodermaxblock = DECODE_BLOCK
    img.load()  # decode now so corrupt or truncated data fails here, not later
    ImageOps.exif_transpose(img, in_place=True)
    return img


def decoded_side(size: int, crop: float) -> int:
    """The side an image is prepared at for a model of input `size` that sees the central `crop` of it."""
    if not 0 < crop <= 1:
        raise ValueError(f"crop must be in (0, 1], got {crop}")
    return round(size / crop)


def center_crop_array(array: np.ndarray, size: int) -> np.ndarray:
    """(C, H, W) -> (C, size, size) around the centre, where torchvision's CenterCrop places it."""
    height, width = array.shape[-2:]
    top, left = center_start(height, size), center_start(width, size)
    return np.ascontiguousarray(array[..., top:top + size, left:left + size])


def prepare_source(
    source: Source,
    size: int,
    channels: int,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    time_budget_s: float | None = None,
    crop: float = 1.0,
) -> np.ndarray:
    """Path or raw bytes -> uint8 array (channels, size, size): the one decode path of training and serving.

    Refuses images whose header claims more than `max_pixels` (ImageTooLarge, before decoding) and,
    with `time_budget_s`, stops a decode that runs longer. Multi-frame files give their first frame.
    Any failure (corrupt data, unknown format, MemoryError, ...) raises ImageError naming the source
    and the reason. crop < 1: the model sees that fraction of the centre square (ProPos's
    test_resized_crop, 224/256): prepared at round(size / crop), then its centre size x size, which is
    what training evaluates on images stored at that side (train/data/augment.py resize_images).
    """
    side = decoded_side(size, crop)
    if side != size:
        return center_crop_array(prepare_source(source, side, channels, max_pixels, time_budget_s), size)
    name = _describe(source)
    deadline = None if time_budget_s is None else time.monotonic() + time_budget_s
    shape = "n image"
    try:
        with Image.open(_TimedReader(_read(source), deadline)) as img:
            _check_pixels(name, img, max_pixels)
            shape = " {}x{} image".format(*img.size)
            return prepare(decode_for_size(img, size), size, channels)
    except ImageError as err:
        if str(err).startswith(name):
            raise
        raise type(err)(f"{name}: {err}") from err  # to_mode's errors do not know the source
    except _TimeUp as err:
        raise ImageError(f"{name}: decoding took longer than the budget of {time_budget_s * 1000:.0f} ms") from err
    except Image.DecompressionBombError as err:
        raise ImageTooLarge(f"{name}: refused as a decompression bomb: {err}") from err
    except MemoryError as err:
        raise ImageError(f"{name}: out of memory while decoding a{shape}") from err
    except Exception as err:  # PIL plugins raise OSError, SyntaxError, EOFError, struct.error, ...
        raise ImageError(f"{name}: cannot decode image: {describe_error(err)}") from err
