"""Heat maps without matplotlib (Pillow and numpy): a feature map upsampled to its image and
blended over it in a dark-to-bright colour scale, for the model card and apps that draw their
own UI.

The colour scale and blend are those of the atlas's prototype thumbnails
(qsenn_train.atlas.thumbnails), which the runtime may not import; a test keeps them equal.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

HEAT_ALPHA = 0.45
# A dark-to-bright scale (black, purple, red, orange, pale yellow), after matplotlib's inferno.
HEAT_STOPS = np.array(
    [[0, 0, 4], [87, 16, 110], [188, 55, 84], [249, 142, 9], [252, 255, 164]],
    dtype=np.float64,
)


def heat_map(feature_map: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Bilinear upsampling to the image, scaled to [0, 1] per map (where the feature fires most)."""
    upsampled = np.asarray(
        Image.fromarray(feature_map.astype(np.float32)).resize((shape[1], shape[0]), Image.Resampling.BILINEAR)
    )
    low, high = float(upsampled.min()), float(upsampled.max())
    return (upsampled - low) / (high - low) if high > low else np.zeros_like(upsampled)


def heat_colours(heat: np.ndarray) -> np.ndarray:
    """Values in [0, 1] → RGB float colours on HEAT_STOPS."""
    position = np.clip(heat, 0, 1) * (len(HEAT_STOPS) - 1)
    low = np.minimum(position.astype(int), len(HEAT_STOPS) - 2)
    t = (position - low)[..., None]
    return HEAT_STOPS[low] * (1 - t) + HEAT_STOPS[low + 1] * t


def overlay(image: np.ndarray, feature_map: np.ndarray) -> np.ndarray:
    """The H×W×3 uint8 image with the feature map's heat blended over it."""
    heat = heat_map(feature_map, image.shape[:2])
    blended = (1 - HEAT_ALPHA) * image.astype(np.float64) + HEAT_ALPHA * heat_colours(heat)
    return np.clip(np.rint(blended), 0, 255).astype(np.uint8)
