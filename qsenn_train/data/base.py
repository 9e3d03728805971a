"""Dataset containers shared by every layout, and the description that travels with a run."""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from ..errors import QsennError, first_line

# Resize modes of spec §3.2/§3.3; the runtime reproduces the test transform from this name.
RESIZE_SHORTER = "shorter"  # shorter side to img_size, then (random|center) crop
RESIZE_SQUARE = "square"  # straight to img_size × img_size, aspect not kept
RESIZE_IMAGENET = "imagenet"  # train RandomResizedCrop; test shorter side 256/224·size, center crop


@dataclass(frozen=True)
class DatasetInfo:
    """What a run needs to know about its data, saved with every checkpoint."""

    name: str
    root: str
    class_names: tuple[str, ...]
    mean: tuple[float, float, float] | None  # None: no Normalize step
    std: tuple[float, float, float] | None
    resize_mode: str
    crop_gt: bool = False
    # CUB-style attribute annotations (alignment metric); None where the dataset has none.
    attributes_file: str | None = None
    attribute_names: tuple[str, ...] = field(default=())

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def to_json(self) -> dict:
        return {
            "name": self.name,
            "root": self.root,
            "class_names": list(self.class_names),
            "mean": None if self.mean is None else list(self.mean),
            "std": None if self.std is None else list(self.std),
            "resize_mode": self.resize_mode,
            "crop_gt": self.crop_gt,
            "attributes_file": self.attributes_file,
            "attribute_names": list(self.attribute_names),
        }

    @classmethod
    def from_json(cls, d: dict) -> DatasetInfo:
        return cls(
            name=d["name"],
            root=d["root"],
            class_names=tuple(d["class_names"]),
            mean=None if d["mean"] is None else tuple(d["mean"]),
            std=None if d["std"] is None else tuple(d["std"]),
            resize_mode=d["resize_mode"],
            crop_gt=d.get("crop_gt", False),
            attributes_file=d.get("attributes_file"),
            attribute_names=tuple(d.get("attribute_names", ())),
        )


def open_rgb(path: str | Path) -> Image.Image:
    """Decode an image file to RGB; a broken file is a one-line error naming it."""
    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except FileNotFoundError:
        raise QsennError(
            f"image file missing: {path}; the dataset folder is incomplete, "
            f"re-extract it or point --data-root at a complete copy"
        ) from None
    except MemoryError:
        raise
    except Exception as exc:  # Pillow's plugins raise OSError, SyntaxError, struct.error, DecompressionBombError…
        raise QsennError(f"cannot read image {path} ({first_line(exc)}); replace or remove that file") from None


class ImageListDataset(Dataset):
    """Images listed as (path, label) pairs; `image_ids` keeps the source ids (CUB order)."""

    def __init__(
        self,
        samples: Sequence[tuple[str, int]],
        transform: Callable | None = None,
        image_ids: Sequence[int] | None = None,
    ):
        self.samples = list(samples)
        self.transform = transform
        self.image_ids = None if image_ids is None else list(image_ids)

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def targets(self) -> list[int]:
        return [label for _, label in self.samples]

    def load_image(self, index: int) -> Image.Image:
        return open_rgb(self.samples[index][0])

    def __getitem__(self, index: int):
        img = self.load_image(index)
        label = self.samples[index][1]
        return (self.transform(img) if self.transform else img), label

    def with_transform(self, transform: Callable | None) -> ImageListDataset:
        """A view of the same samples with another transform (e.g. train images, test transform)."""
        view = copy.copy(self)
        view.transform = transform
        return view

    def subset(self, indices: Sequence[int]) -> ImageListDataset:
        """A view of the samples at `indices`, in that order (same transform)."""
        view = copy.copy(self)
        view.samples = [self.samples[i] for i in indices]
        if self.image_ids is not None:
            view.image_ids = [self.image_ids[i] for i in indices]
        return view


class ArrayImageDataset(ImageListDataset):
    """Images held in memory as uint8 arrays (N×H×W grey or N×H×W×3), e.g. Fashion-MNIST."""

    def __init__(self, images: np.ndarray, labels: Sequence[int], transform: Callable | None = None):
        super().__init__([("", int(y)) for y in labels], transform)
        self.images = images

    def load_image(self, index: int) -> Image.Image:
        return Image.fromarray(self.images[index]).convert("RGB")

    def subset(self, indices: Sequence[int]) -> ArrayImageDataset:
        view = copy.copy(self)
        view.samples = [self.samples[i] for i in indices]
        view.images = self.images[np.asarray(indices, dtype=np.int64)]
        return view
