"""Image decoding and the training test transform, with Pillow and numpy only.

The geometry reproduces torchvision's test transform on PIL images pixel for pixel:
`Resize` is PIL's bilinear (antialiased) resize with the long side `int(size·long/short)`,
`CenterCrop` takes offsets `round((H − size)/2)`, `ToTensor` divides by 255 in float32.
"""

from __future__ import annotations

import io
import math
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import InputError, path_problem
from .limits import MAX_IMAGE_BYTES, MAX_IMAGE_PIXELS
from .metadata import InputSpec

ImageSource = str | Path | bytes | bytearray | memoryview | Image.Image | np.ndarray

IMAGENET_RESIZE_RATIO = 256 / 224  # ImageNet test transform: shorter side 256 for a 224 crop
# The resized image before the centre crop is materialised up to this many times size² pixels.
# Beyond, a sliver (a 1×4000 PNG is a few hundred bytes) would become a 448×1.8 M px intermediate:
# 2.4 GB and half a minute for one request.
MAX_RESIZED_AREA = 16
EXIF_ORIENTATION = 0x0112
_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")
_ARRAY_CHANNELS = (1, 3, 4)  # grey, RGB, RGBA (an H×W array has one channel)


def describe(source: ImageSource, index: int) -> str:
    """How errors and results name an input: its path, else its kind and position in the batch."""
    if isinstance(source, (str, Path)):
        return str(source)
    kind = (
        "PIL image"
        if isinstance(source, Image.Image)
        else "array"
        if isinstance(source, np.ndarray)
        else type(source).__name__
    )
    return f"<{kind} #{index}>"


@dataclass(frozen=True)
class ImageBudget:
    """The most one encoded image may decode to: pixels, and bytes (in the mode Pillow decodes it
    to, with its row pointers). None: no limit. Images given as arrays or PIL images are already
    decoded: not limited."""

    max_pixels: int | None = MAX_IMAGE_PIXELS
    max_bytes: int | None = MAX_IMAGE_BYTES

    def __post_init__(self) -> None:
        for name, value in (("max_image_pixels", self.max_pixels), ("max_image_bytes", self.max_bytes)):
            if value is not None and value < 1:
                raise ValueError(f"{name} must be ≥ 1 or None, not {value}")

    def problem(self, width: int, height: int, mode: str) -> str | None:
        """Why a width×height image in `mode` is over budget, or None."""
        pixels = width * height
        if self.max_pixels is not None and pixels > self.max_pixels:
            return f"{width}×{height} = {pixels:,} pixels exceed the limit of {self.max_pixels:,} pixels"
        size = pixels * _bytes_per_pixel(mode) + height * _ROW_POINTER_BYTES
        if self.max_bytes is not None and size > self.max_bytes:
            return (
                f"{width}×{height} in mode {mode} decodes to {size:,} bytes, over the limit of {self.max_bytes:,} bytes"
            )
        return None


DEFAULT_BUDGET = ImageBudget()
_BYTES_PER_PIXEL = {"1": 1, "L": 1, "P": 1, "I;16": 2, "I;16L": 2, "I;16B": 2, "I;16N": 2, "BGR;24": 3}
# Pillow keeps a pointer per row beside the pixels: a 1×25 Mpx sliver costs 200 MB in pointers alone.
_ROW_POINTER_BYTES = 8
_JPEG_DRAFT_SCALES = (2, 4, 8)
_PILLOW_BOMB_SIZE = re.compile(r"Image size \((\d+) pixels\)")


def _bytes_per_pixel(mode: str) -> int:
    return _BYTES_PER_PIXEL.get(mode, 4)  # Pillow keeps every other mode in 4-byte pixels


def load_rgb(
    source: ImageSource, name: str, budget: ImageBudget = DEFAULT_BUDGET, spec: InputSpec | None = None
) -> Image.Image:
    """Any accepted source -> an upright 8-bit RGB PIL image; a bad input is an InputError.

    `spec`, the model's input: an encoded JPEG over `budget` is decoded at the smallest reduced
    scale that still covers what resize_and_crop needs (Pillow's draft mode); other formats over
    it are refused. Within the budget every image is decoded in full, as in training."""
    if isinstance(source, np.ndarray):
        return _array_to_rgb(source, name)
    if isinstance(source, Image.Image):
        with _pillow_errors(name):
            return _upright_rgb(source, name)
    if isinstance(source, (bytes, bytearray, memoryview)):
        if not len(source):
            raise InputError(f"{name}: empty bytes, not an image")
        return _decode(io.BytesIO(bytes(source)), name, budget, spec)
    if isinstance(source, (str, Path)):
        path = Path(source)
        problem = path_problem(path)
        if problem is not None:
            raise InputError(f"{name}: {problem}" if problem != "a directory, not a file" else f"{name}: not a file")
        if path.stat().st_size == 0:
            raise InputError(f"{name}: empty file, not an image")
        return _decode(path, name, budget, spec)
    raise InputError(
        f"{name}: cannot use a {type(source).__name__} as an image; pass a path, bytes, "
        f"a PIL image or an H×W×3 uint8 array"
    )


def _decode(file, name: str, budget: ImageBudget, spec: InputSpec | None) -> Image.Image:
    with _pillow_errors(name, budget), Image.open(file) as img:
        problem = budget.problem(img.width, img.height, img.mode)
        if problem is not None and img.format == "JPEG" and spec is not None:
            problem = _draft(img, budget, spec)
        if problem is not None:
            raise InputError(
                f"{name}: {problem} (decompression-bomb guard); downscale the image, or raise the limit "
                f"(load(..., max_image_pixels=, max_image_bytes=); --max-image-pixels, --max-image-bytes)"
            )
        img.load()
        return _upright_rgb(img, name)


def _draft(img: Image.Image, budget: ImageBudget, spec: InputSpec) -> str | None:
    """Set the JPEG decoder to the smallest DCT scale (1/2, 1/4, 1/8) that fits the budget and
    still leaves the resize at least its output size; None when one does, else why not."""
    need_w, need_h = resized_size(img.width, img.height, spec)
    for scale in _JPEG_DRAFT_SCALES:
        width, height = math.ceil(img.width / scale), math.ceil(img.height / scale)
        if width < need_w or height < need_h:
            break
        if budget.problem(width, height, img.mode) is None:
            img.draft(img.mode, (width, height))
            return None
    return f"{budget.problem(img.width, img.height, img.mode)} even at the largest reduced JPEG scale the model allows"


@contextmanager
def _pillow_errors(name: str, budget: ImageBudget = DEFAULT_BUDGET) -> Iterator[None]:
    """Pillow's many ways to say "bad file" -> one InputError line naming the input."""
    try:
        yield
    except InputError:
        raise
    except Image.DecompressionBombError as exc:  # over Pillow's own refusal (2 × Image.MAX_IMAGE_PIXELS)
        found = _PILLOW_BOMB_SIZE.search(str(exc))
        size = f"{int(found[1]):,} pixels" if found else "the image's size"
        # Quote one limit: ours when it is the lower one (the default), else Pillow's.
        limits = [n for n in (budget.max_pixels, 2 * (Image.MAX_IMAGE_PIXELS or 0) or None) if n is not None]
        limit = f"the limit of {min(limits):,} pixels" if limits else "Pillow's limit"
        raise InputError(f"{name}: {size} exceed {limit} (decompression-bomb guard); downscale the image") from None
    except UnidentifiedImageError:
        raise InputError(f"{name}: not an image, or a format Pillow cannot read") from None
    except MemoryError:
        raise
    except Exception as exc:  # plugins raise OSError, SyntaxError, struct.error… on corrupt data
        raise InputError(f"{name}: corrupt or truncated image ({type(exc).__name__}: {exc})") from None


def _upright_rgb(img: Image.Image, name: str) -> Image.Image:
    # The training loader (like torchvision's) ignores the EXIF orientation; the runtime applies
    # it, because a deployed app receives phone photos whose pixels are stored sideways.
    # Copies cost memory per pixel: exif_transpose copies even an upright image, convert() an RGB one.
    if img.getexif().get(EXIF_ORIENTATION, 1) != 1:
        img = ImageOps.exif_transpose(img)
    if img.mode in _SIXTEEN_BIT_MODES:
        # Pillow's convert() clips 16-bit values at 255; map the full range onto 0..255 instead
        # (in place, in 4-byte integers: "I" may hold values outside 0..65535).
        wide = np.clip(np.asarray(img), 0, 65535).astype(np.uint32, copy=False)
        wide += 128
        wide //= 257
        img = Image.fromarray(wide.astype(np.uint8))
        del wide
    elif img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")  # the direct P→RGB conversion warns; the colours are the same
    if img.mode == "RGB":
        return img
    # Alpha is dropped, not composited: the training loader's convert("RGB") does the same, so the
    # model sees what it was trained on (colours under transparent pixels included).
    try:
        return img.convert("RGB")
    except ValueError as exc:
        raise InputError(f"{name}: cannot convert image mode {img.mode} to RGB ({exc})") from None


def _array_to_rgb(array: np.ndarray, name: str) -> Image.Image:
    channels = 1 if array.ndim == 2 else array.shape[-1] if array.ndim == 3 else None
    if channels not in _ARRAY_CHANNELS or 0 in array.shape:
        raise InputError(f"{name}: array of shape {array.shape}; expected H×W×3 (RGB), H×W×4 (RGBA) or H×W (grey)")
    if np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all():
            raise InputError(f"{name}: array contains NaN or infinite values")
        low, high = float(array.min()), float(array.max())
        if low < 0 or high > 1:
            raise InputError(
                f"{name}: float array values lie in [{low:g}, {high:g}]; float images "
                f"must be in [0, 1] (or pass uint8 in [0, 255])"
            )
        array = np.rint(array * 255)
    elif array.dtype != np.uint8:
        raise InputError(f"{name}: array of dtype {array.dtype}; expected uint8 in [0, 255] or float in [0, 1]")
    pixels = np.ascontiguousarray(array, dtype=np.uint8)
    return Image.fromarray(pixels[:, :, 0] if channels == 1 and pixels.ndim == 3 else pixels).convert("RGB")


def resized_size(width: int, height: int, spec: InputSpec) -> tuple[int, int]:
    """The size resize_and_crop resizes a width×height image to, before the centre crop."""
    if spec.resize_mode == "square":
        return spec.size, spec.size
    shorter = round(spec.size * IMAGENET_RESIZE_RATIO) if spec.resize_mode == "imagenet" else spec.size
    return _shorter_side_to(width, height, shorter)


def resize_and_crop(img: Image.Image, spec: InputSpec) -> Image.Image:
    """The training test transform's geometry: RGB image -> size×size RGB image."""
    size = spec.size
    if spec.resize_mode == "square":
        return img.resize((size, size), Image.Resampling.BILINEAR)
    width, height = resized_size(img.width, img.height, spec)
    left = round((width - size) / 2.0)
    top = round((height - size) / 2.0)
    if width * height <= MAX_RESIZED_AREA * size * size:
        resized = img.resize((width, height), Image.Resampling.BILINEAR)
        return resized.crop((left, top, left + size, top + size))
    # Extreme aspect ratio: resample only the crop's box of the source (same pixels within 1/255).
    sx, sy = img.width / width, img.height / height
    box = (left * sx, top * sy, (left + size) * sx, (top + size) * sy)
    return img.resize((size, size), Image.Resampling.BILINEAR, box=box)


def _shorter_side_to(width: int, height: int, shorter: int) -> tuple[int, int]:
    """torchvision's output size for Resize(int): the same float expression, truncated."""
    short, long = (width, height) if width <= height else (height, width)
    new_long = int(shorter * long / short)
    return (shorter, new_long) if width <= height else (new_long, shorter)


def to_chw(img: Image.Image, out: np.ndarray | None = None) -> np.ndarray:
    """RGB image -> float32 3×H×W in [0, 1] (ToTensor: float32 division by 255), written into `out`."""
    pixels = np.asarray(img, dtype=np.float32).transpose(2, 0, 1)
    return np.divide(pixels, np.float32(255), out=out)
