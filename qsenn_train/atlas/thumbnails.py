"""Prototype thumbnails: a crop of a training image around the peak of one feature's map, with
the heat map over it, as a small JPEG (Pillow and numpy only).

The colour scale and the blend are the runtime's (qsenn_runtime.heatmap), which training may
not import; tests/test_atlas_build.py keeps the two equal.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

THUMBNAIL_PIXELS = 96  # side of a saved thumbnail
CROP_FRACTION = 0.5  # the crop's side, as a fraction of the image's longer side
JPEG_QUALITY = 85
HEAT_ALPHA = 0.45
# A dark-to-bright scale (black, purple, red, orange, pale yellow), after matplotlib's inferno.
HEAT_STOPS = np.array(
    [[0, 0, 4], [87, 16, 110], [188, 55, 84], [249, 142, 9], [252, 255, 164]],
    dtype=np.float64,
)


def heat_colours(heat: np.ndarray) -> np.ndarray:
    """Values in [0, 1] → RGB float colours on HEAT_STOPS."""
    position = np.clip(heat, 0, 1) * (len(HEAT_STOPS) - 1)
    low = np.minimum(position.astype(int), len(HEAT_STOPS) - 2)
    t = (position - low)[..., None]
    return HEAT_STOPS[low] * (1 - t) + HEAT_STOPS[low + 1] * t


def overlay(image: np.ndarray, feature_map: np.ndarray) -> np.ndarray:
    """The H×W×3 uint8 image with the map (upsampled bilinearly, scaled to [0, 1]) blended over it."""
    height, width = image.shape[:2]
    upsampled = np.asarray(
        Image.fromarray(feature_map.astype(np.float32)).resize((width, height), Image.Resampling.BILINEAR)
    )
    low, high = float(upsampled.min()), float(upsampled.max())
    heat = (upsampled - low) / (high - low) if high > low else np.zeros_like(upsampled)
    blended = (1 - HEAT_ALPHA) * image.astype(np.float64) + HEAT_ALPHA * heat_colours(heat)
    return np.clip(np.rint(blended), 0, 255).astype(np.uint8)


def peak_box(feature_map: np.ndarray, height: int, width: int) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of the square crop centred on the map's peak, inside the image."""
    rows, cols = feature_map.shape
    peak_row, peak_col = np.unravel_index(int(np.argmax(feature_map)), feature_map.shape)
    side = max(1, round(CROP_FRACTION * max(height, width)))
    side_x, side_y = min(side, width), min(side, height)
    centre_x, centre_y = (peak_col + 0.5) / cols * width, (peak_row + 0.5) / rows * height
    left = int(np.clip(round(centre_x - side_x / 2), 0, width - side_x))
    top = int(np.clip(round(centre_y - side_y / 2), 0, height - side_y))
    return left, top, left + side_x, top + side_y


def prototype_thumbnail(image: np.ndarray, feature_map: np.ndarray) -> bytes:
    """JPEG bytes of the heat-mapped crop around the peak of `feature_map` over `image`."""
    left, top, right, bottom = peak_box(feature_map, *image.shape[:2])
    crop = Image.fromarray(overlay(image, feature_map)[top:bottom, left:right])
    crop = crop.resize((THUMBNAIL_PIXELS, THUMBNAIL_PIXELS), Image.Resampling.BICUBIC)
    buffer = io.BytesIO()
    crop.save(buffer, format="JPEG", quality=JPEG_QUALITY)
    return buffer.getvalue()
