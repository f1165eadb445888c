"""Turn whatever a user gives into an RGB uint8 image (and a label mask) the models can take.

Handles EXIF orientation, 16-bit, grayscale, RGBA, palette and CMYK images; caps the
working size; rejects corrupt, tiny and decompression-bomb images with one-line errors.
"""
from __future__ import annotations

import io
import math
import os
import re
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

MIN_SIDE = 16
MAX_SIDE = 1024  # longer side of the working image; larger uploads are downscaled
MAX_PIXELS = 50_000_000  # refuse to even decode more than this (decompression bombs)


class InputError(ValueError):
    """Bad user input; the message is one line meant for the user."""


class LabelsNotInSet(InputError):
    """A label map holding ids that the chosen label set does not have (often another dataset's map)."""


@dataclass
class Prepared:
    image: np.ndarray  # (H, W, 3) uint8 RGB, the working size
    original_size: tuple[int, int]  # (H, W) as uploaded, after EXIF rotation
    notes: list[str] = field(default_factory=list)  # what was done to it, for the UI


def _open(source) -> Image.Image:
    if isinstance(source, Image.Image):
        return source
    if isinstance(source, np.ndarray):
        return Image.fromarray(_to_uint8(source))
    if isinstance(source, (bytes, bytearray)):
        source = io.BytesIO(source)
    elif isinstance(source, (str, os.PathLike)) and not os.path.exists(source):
        raise InputError(f"{os.path.basename(source)} does not exist")  # never show a server path
    if isinstance(source, io.BytesIO) and not source.getbuffer().nbytes or (
            isinstance(source, (str, os.PathLike)) and os.path.getsize(source) == 0):
        raise InputError("the file is empty; upload a PNG, JPEG, BMP, TIFF or WebP image")
    try:
        im = Image.open(source)  # reads the header only
        if im.size[0] * im.size[1] > MAX_PIXELS:
            raise Image.DecompressionBombError
        im.load()
    except Image.DecompressionBombError:
        raise InputError(f"the image has more than {MAX_PIXELS:,} pixels; refusing to decode it") from None
    except UnidentifiedImageError:
        raise InputError("not a readable image (the format is not recognised; "
                         "upload a PNG, JPEG, BMP, TIFF or WebP image)") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise InputError(f"not a readable image ({type(e).__name__}: {_scrub(str(e), source)})") from None
    return im


def _scrub(message: str, source) -> str:
    """The first line of a decoder's message, without any file path in it."""
    line = message.splitlines()[0] if message else "corrupt"
    if isinstance(source, (str, os.PathLike)):
        line = line.replace(str(source), os.path.basename(source))
    return re.sub(r"(?:[A-Za-z]:)?[/\\][^\s'\"]*[/\\]", "", line) or "corrupt"


def _to_uint8(a: np.ndarray) -> np.ndarray:
    if a.dtype == np.uint8:
        return a
    if a.dtype == bool:
        return a.astype(np.uint8) * 255
    if np.issubdtype(a.dtype, np.floating):
        a = np.nan_to_num(a)
        return (np.clip(a, 0, 1) * 255).round().astype(np.uint8) if a.max() <= 1.0 else np.clip(a, 0, 255).astype(np.uint8)
    if a.max() > 255:  # 16-bit data
        return (a.astype(np.float64) / 257).round().clip(0, 255).astype(np.uint8)
    return a.clip(0, 255).astype(np.uint8)


def to_rgb(im: Image.Image, notes: list[str]) -> np.ndarray:
    mode = im.mode
    if mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        a = np.asarray(im)
        if mode == "F":
            a = a.astype(np.float64)
            a = (a - a.min()) / max(float(a.max() - a.min()), 1e-12)
        notes.append(f"{mode} image scaled to 8 bits")
        a = _to_uint8(a if mode == "F" else a.astype(np.int64))
        return np.stack([a] * 3, -1) if a.ndim == 2 else a[..., :3]
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in im.info):
        notes.append("transparency flattened onto white")
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return np.asarray(Image.alpha_composite(white, rgba).convert("RGB"))
    if mode != "RGB":
        notes.append(f"{mode} image converted to RGB")
    return np.asarray(im.convert("RGB"))


def prepare_image(source, max_side: int = MAX_SIDE) -> Prepared:
    """Any image (path, bytes, PIL, numpy) -> a :class:`Prepared` RGB uint8 working image."""
    if source is None:
        raise InputError("no image given")
    im = _open(source)
    notes: list[str] = []
    try:
        orientation = im.getexif().get(0x0112, 1)
    except Exception:
        orientation = 1
    if orientation not in (1, None):
        im = ImageOps.exif_transpose(im)
        notes.append("rotated upright from its EXIF orientation")
    rgb = to_rgb(im, notes)
    h, w = rgb.shape[:2]
    if min(h, w) < MIN_SIDE:
        raise InputError(f"the image is {w}x{h}; it needs at least {MIN_SIDE} pixels on each side")
    scale = max_side / max(h, w)
    if scale < 1:
        nh, nw = max(MIN_SIDE, round(h * scale)), max(MIN_SIDE, round(w * scale))
        rgb = np.asarray(Image.fromarray(rgb).resize((nw, nh), Image.BILINEAR, reducing_gap=2.0))
        notes.append(f"downscaled from {w}x{h} to {nw}x{nh} (working size is capped at {max_side} px)")
    return Prepared(np.ascontiguousarray(rgb), (h, w), notes)


def prepare_mask(source, size: tuple[int, int], num_classes: int, ignore_index: int,
                 original_size: tuple[int, int] | None = None) -> np.ndarray:
    """A ground-truth label PNG (one id per pixel) -> (H, W) uint8 at the working ``size``.

    It must have the uploaded image's size (``original_size``) or the working size, and hold
    only class ids and the ignore id."""
    if source is None:
        raise InputError("no mask given")
    im = _open(source)
    if im.mode in ("RGB", "RGBA"):
        a = np.asarray(im)
        if not (np.array_equal(a[..., 0], a[..., 1]) and np.array_equal(a[..., 1], a[..., 2])):
            raise InputError("the mask is a colour image; give a label PNG with one class id per pixel")
        a = a[..., 0]
    elif im.mode in ("L", "P", "I", "I;16", "I;16L", "I;16B"):
        a = np.asarray(im).astype(np.int64)
    else:
        raise InputError(f"the mask has mode {im.mode}; give a label PNG with one class id per pixel")
    h, w = a.shape[:2]
    if (h, w) not in {tuple(size), tuple(original_size or size)}:
        raise InputError(f"the mask is {w}x{h} but the image is {(original_size or size)[1]}x{(original_size or size)[0]}")
    bad = np.setdiff1d(np.unique(a), list(range(num_classes)) + [ignore_index])
    if bad.size:
        shown = ", ".join(str(v) for v in bad[:5]) + (" ..." if bad.size > 5 else "")
        raise LabelsNotInSet(f"the mask holds label values {shown} outside 0-{num_classes - 1} and the ignore id "
                             f"{ignore_index}")
    a = a.astype(np.uint8)
    if (h, w) != tuple(size):
        a = np.asarray(Image.fromarray(a).resize((size[1], size[0]), Image.NEAREST))
    return a


# --------------------------------------------------------------------------- clicked pixels
def whole_number(value, what: str) -> int:
    """An integer given as int or integral float (sliders send floats); anything else is refused."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) or \
            not math.isfinite(float(value)) or float(value) != int(value):
        raise ValueError(f"{what} must be a whole number, got {value!r}")
    return int(value)


INPUT_SCALE_RANGE = (0.25, 4.0)  # the factors a user may run a network at (the image enlarged or shrunk before it)


def check_input_scale(value) -> float:
    """A factor within :data:`INPUT_SCALE_RANGE`, as a float, or a one-line ValueError."""
    low, high = INPUT_SCALE_RANGE
    try:
        scale = float(value)
    except (TypeError, ValueError):
        scale = math.nan
    if isinstance(value, bool) or not low <= scale <= high:
        raise ValueError(f"the input scale must be a number from {low:g} to {high:g}, got {value!r}")
    return scale


def check_pixel(pixel) -> tuple[int, int]:
    """A (y, x) pair of whole numbers, or a one-line ValueError."""
    what = f"the pixel must be a (y, x) pair of whole numbers, got {pixel!r}; each coordinate"
    try:
        y, x = pixel
    except (TypeError, ValueError):
        raise ValueError(f"the pixel must be a (y, x) pair of whole numbers, got {pixel!r}") from None
    return whole_number(y, what), whole_number(x, what)


def scale_pixel(pixel, original_size, working_size) -> tuple[int, int]:
    """A click on the uploaded image -> the same point on the (possibly downscaled) working image.

    A pixel outside the uploaded image is refused, not moved to the nearest edge."""
    y, x = check_pixel(pixel)
    if not (0 <= y < original_size[0] and 0 <= x < original_size[1]):
        raise ValueError(f"pixel (y={y}, x={x}) is outside the {original_size[1]}x{original_size[0]} image; "
                         f"click inside it")
    sy, sx = working_size[0] / original_size[0], working_size[1] / original_size[1]
    return min(int(y * sy), working_size[0] - 1), min(int(x * sx), working_size[1] - 1)
