"""A feature's prototypes (the training crops it fires on most, from `qsenn atlas`), carried in
the metadata as base64 JPEGs, decoded to H×W×3 uint8 arrays."""

from __future__ import annotations

import base64
import binascii
import io

import numpy as np
from PIL import Image, UnidentifiedImageError

from .metadata import Feature, MetadataError


def decode_prototypes(feature: Feature) -> list[np.ndarray]:
    """The prototypes of `feature`, strongest first ([] when the export carried none)."""
    images = []
    for n, text in enumerate(feature.prototypes):
        try:
            with Image.open(io.BytesIO(base64.b64decode(text, validate=True))) as image:
                images.append(np.asarray(image.convert("RGB")))
        except (binascii.Error, UnidentifiedImageError, OSError, ValueError) as exc:
            raise MetadataError(
                f"qsenn metadata: prototype {n} of feature {feature.index} is not a JPEG ({exc}); export the model again"
            ) from None
    return images
