"""Image pipelines of spec §3.2 (fine-grained datasets) and §3.3 (ImageNet)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch
from PIL import Image
from torchvision import transforms as T
from torchvision.transforms import InterpolationMode

from ..errors import QsennError
from ..names import AUGMENTATIONS
from .base import RESIZE_IMAGENET, RESIZE_SHORTER, RESIZE_SQUARE, DatasetInfo

# PCA of ImageNet's RGB pixels (AlexNet lighting noise), spec §3.3.
IMAGENET_PCA_EIGENVALUES = (0.2175, 0.0188, 0.0045)
IMAGENET_PCA_EIGENVECTORS = (
    (-0.5675, 0.7192, 0.4009),  # rows: R, G, B; columns: components
    (-0.5808, -0.0045, -0.8140),
    (-0.5836, -0.6948, 0.4203),
)
LIGHTING_ALPHA_STD = 0.05
JITTER = 0.1  # brightness, contrast and saturation; hue stays 0
CROP_PADDING = 4
GRAYSCALE_P = 0.5  # "flip-gray": share of training images shown without their colour
IMAGENET_RESIZE_RATIO = 256 / 224  # test: shorter side 256 for a 224 crop


class Lighting:
    """Adds one random RGB offset E·(α∘λ), α ~ N(0, σ²), to every pixel of a CHW tensor.

    Draws α from the global torch RNG so that seeding torch makes the pipeline repeatable.
    """

    def __init__(
        self,
        alpha_std: float = LIGHTING_ALPHA_STD,
        eigenvalues=IMAGENET_PCA_EIGENVALUES,
        eigenvectors=IMAGENET_PCA_EIGENVECTORS,
    ):
        self.alpha_std = alpha_std
        self.eigenvalues = torch.tensor(eigenvalues, dtype=torch.float32)
        self.eigenvectors = torch.tensor(eigenvectors, dtype=torch.float32)

    def offset(self, alpha: torch.Tensor) -> torch.Tensor:
        """δ_i = Σ_j E_ij α_j λ_j."""
        return self.eigenvectors @ (alpha * self.eigenvalues)

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        alpha = torch.randn(3) * self.alpha_std
        return img + self.offset(alpha).to(img.dtype).view(3, 1, 1)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(alpha_std={self.alpha_std})"


def _resize(size) -> T.Resize:
    return T.Resize(size, interpolation=InterpolationMode.BILINEAR, antialias=True)


def _fine_grained_steps(mode: str, img_size: int, train: bool, augment: str) -> list[Callable]:
    if mode == RESIZE_SHORTER:
        steps = [_resize(img_size), T.RandomCrop(img_size, padding=CROP_PADDING) if train else T.CenterCrop(img_size)]
    else:  # square: aspect not kept, nothing cropped
        steps = [_resize((img_size, img_size))]
    if train:
        steps.append(T.RandomHorizontalFlip())
        if augment == "paper":
            steps += [T.ColorJitter(JITTER, JITTER, JITTER, 0), T.TrivialAugmentWide()]
        elif augment == "flip-gray":
            steps.append(T.RandomGrayscale(GRAYSCALE_P))
    return steps + [T.ToTensor()]


def _imagenet_steps(img_size: int, train: bool) -> list[Callable]:
    if train:
        return [
            T.RandomResizedCrop(img_size, antialias=True),
            T.RandomHorizontalFlip(),
            T.ColorJitter(JITTER, JITTER, JITTER),
            T.ToTensor(),
            Lighting(),
        ]
    return [_resize(round(img_size * IMAGENET_RESIZE_RATIO)), T.CenterCrop(img_size), T.ToTensor()]


def build_transform(
    info: DatasetInfo, img_size: int, train: bool, augment: str = "paper"
) -> Callable[[Image.Image], torch.Tensor]:
    """PIL RGB image -> normalised float CHW tensor of img_size × img_size.

    `augment` (names.AUGMENTATIONS) picks the training augmentation of the non-ImageNet modes.
    """
    if augment not in AUGMENTATIONS:
        raise QsennError(f"unknown augmentation {augment!r}; choose one of {', '.join(AUGMENTATIONS)}")
    if info.resize_mode == RESIZE_IMAGENET:
        steps = _imagenet_steps(img_size, train)
    elif info.resize_mode in (RESIZE_SHORTER, RESIZE_SQUARE):
        steps = _fine_grained_steps(info.resize_mode, img_size, train, augment)
    else:
        raise QsennError(
            f"unknown resize mode {info.resize_mode!r} in the dataset description; "
            f"expected {RESIZE_SHORTER}, {RESIZE_SQUARE} or {RESIZE_IMAGENET}"
        )
    if info.mean is not None:
        steps.append(T.Normalize(info.mean, info.std))
    return T.Compose(steps)


def unnormalised_test_transform(info: DatasetInfo, img_size: int) -> Callable[[Image.Image], torch.Tensor]:
    """The test transform without Normalize: pixels in [0, 1], as an exported graph takes them
    (it normalises itself) and as pictures show them."""
    return build_transform(dataclasses.replace(info, mean=None, std=None), img_size, train=False)
