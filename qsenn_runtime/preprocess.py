"""Image decoding and the training test transform, with Pillow and numpy only.

The geometry reproduces torchvision's test transform on PIL images pixel for pixel:
`Resize` is PIL's bilinear (antialiased) resize with the long side `int(size·long/short)`,
`CenterCrop` takes offsets `round((H − size)/2)`, `ToTensor` divides by 255 in float32.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import InputError
from .metadata import InputSpec

ImageSource = str | Path | bytes | bytearray | memoryview | Image.Image | np.ndarray

# Pillow's default decompression-bomb limit, pinned here: an application that raises, lowers
# or disables Pillow's global `Image.MAX_IMAGE_PIXELS` does not change what the runtime accepts
# (a lower global still refuses earlier, also as an InputError).
MAX_IMAGE_PIXELS = 89_478_485
IMAGENET_RESIZE_RATIO = 256 / 224  # ImageNet test transform: shorter side 256 for a 224 crop
# The resized image before the centre crop is materialised up to this many times size² pixels.
# Beyond, a sliver (a 1×4000 PNG is a few hundred bytes) would become a 448×1.8 M px intermediate:
# 2.4 GB and half a minute for one request.
MAX_RESIZED_AREA = 16
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


def load_rgb(source: ImageSource, name: str, max_pixels: int | None = MAX_IMAGE_PIXELS) -> Image.Image:
    """Any accepted source -> an upright 8-bit RGB PIL image; a bad input is an InputError."""
    if isinstance(source, np.ndarray):
        return _array_to_rgb(source, name)
    if isinstance(source, Image.Image):
        with _pillow_errors(name):
            return _upright_rgb(source, name)
    if isinstance(source, (bytes, bytearray, memoryview)):
        if not len(source):
            raise InputError(f"{name}: empty bytes, not an image")
        return _decode(io.BytesIO(bytes(source)), name, max_pixels)
    if isinstance(source, (str, Path)):
        path = Path(source)
        if not path.is_file():
            raise InputError(f"{name}: no such file" if not path.exists() else f"{name}: not a file")
        if path.stat().st_size == 0:
            raise InputError(f"{name}: empty file, not an image")
        return _decode(path, name, max_pixels)
    raise InputError(
        f"{name}: cannot use a {type(source).__name__} as an image; pass a path, bytes, "
        f"a PIL image or an H×W×3 uint8 array"
    )


def _decode(file, name: str, max_pixels: int | None) -> Image.Image:
    with _pillow_errors(name), Image.open(file) as img:
        if max_pixels is not None and img.width * img.height > max_pixels:
            raise InputError(
                f"{name}: {img.width * img.height:,} pixels exceed the limit of "
                f"{max_pixels:,} (decompression-bomb guard); downscale the image or "
                f"load the model with a larger max_image_pixels"
            )
        img.load()
        return _upright_rgb(img, name)


@contextmanager
def _pillow_errors(name: str) -> Iterator[None]:
    """Pillow's many ways to say "bad file" -> one InputError line naming the input."""
    try:
        yield
    except InputError:
        raise
    except Image.DecompressionBombError as exc:  # Pillow's global limit is lower than ours
        raise InputError(f"{name}: refused as a possible decompression bomb ({exc})") from None
    except UnidentifiedImageError:
        raise InputError(f"{name}: not an image, or a format Pillow cannot read") from None
    except MemoryError:
        raise
    except Exception as exc:  # plugins raise OSError, SyntaxError, struct.error… on corrupt data
        raise InputError(f"{name}: corrupt or truncated image ({type(exc).__name__}: {exc})") from None


def _upright_rgb(img: Image.Image, name: str) -> Image.Image:
    # The training loader (like torchvision's) ignores the EXIF orientation; the runtime applies
    # it, because a deployed app receives phone photos whose pixels are stored sideways.
    img = ImageOps.exif_transpose(img)
    if img.mode in _SIXTEEN_BIT_MODES:
        # Pillow's convert() clips 16-bit values at 255; map the full range onto 0..255 instead.
        wide = np.clip(np.asarray(img, dtype=np.int64), 0, 65535)
        img = Image.fromarray(((wide + 128) // 257).astype(np.uint8))
    elif img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")  # the direct P→RGB conversion warns; the colours are the same
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


def resize_and_crop(img: Image.Image, spec: InputSpec) -> Image.Image:
    """The training test transform's geometry: RGB image -> size×size RGB image."""
    size = spec.size
    if spec.resize_mode == "square":
        return img.resize((size, size), Image.Resampling.BILINEAR)
    shorter = round(size * IMAGENET_RESIZE_RATIO) if spec.resize_mode == "imagenet" else size
    width, height = _shorter_side_to(img.width, img.height, shorter)
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
