"""Image pipelines of spec §3.2/§3.3."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from qsenn_train.data.base import RESIZE_IMAGENET, RESIZE_SHORTER, RESIZE_SQUARE, DatasetInfo
from qsenn_train.data.transforms import IMAGENET_PCA_EIGENVALUES, IMAGENET_PCA_EIGENVECTORS, Lighting, build_transform
from qsenn_train.errors import QsennError

MODES = (RESIZE_SHORTER, RESIZE_SQUARE, RESIZE_IMAGENET)
MEAN, STD = (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)
RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)


def info_for(mode: str, mean=MEAN, std=STD) -> DatasetInfo:
    return DatasetInfo(name="t", root="/nowhere", class_names=("a", "b"), mean=mean, std=std, resize_mode=mode)


def noise_image(width: int, height: int, seed: int = 0) -> Image.Image:
    generator = torch.Generator().manual_seed(seed)
    pixels = torch.randint(0, 256, (height, width, 3), generator=generator, dtype=torch.uint8)
    return Image.fromarray(pixels.numpy())


def stripes(width: int, height: int) -> Image.Image:
    """Red left eighth, blue right eighth, green between."""
    img = Image.new("RGB", (width, height), GREEN)
    img.paste(RED, (0, 0, width // 8, height))
    img.paste(BLUE, (width - width // 8, 0, width, height))
    return img


def step_names(transform) -> list[str]:
    return [type(step).__name__ for step in transform.transforms]


def test_pipelines_in_spec_order():
    expected = {
        (RESIZE_SHORTER, True): [
            "Resize",
            "RandomCrop",
            "RandomHorizontalFlip",
            "ColorJitter",
            "TrivialAugmentWide",
            "ToTensor",
            "Normalize",
        ],
        (RESIZE_SHORTER, False): ["Resize", "CenterCrop", "ToTensor", "Normalize"],
        (RESIZE_SQUARE, True): [
            "Resize",
            "RandomHorizontalFlip",
            "ColorJitter",
            "TrivialAugmentWide",
            "ToTensor",
            "Normalize",
        ],
        (RESIZE_SQUARE, False): ["Resize", "ToTensor", "Normalize"],
        (RESIZE_IMAGENET, True): [
            "RandomResizedCrop",
            "RandomHorizontalFlip",
            "ColorJitter",
            "ToTensor",
            "Lighting",
            "Normalize",
        ],
        (RESIZE_IMAGENET, False): ["Resize", "CenterCrop", "ToTensor", "Normalize"],
    }
    for (mode, train), names in expected.items():
        assert step_names(build_transform(info_for(mode), 32, train)) == names, (mode, train)


def test_flip_augmentation_drops_jitter_and_trivial_augment():
    for mode, names in (
        (RESIZE_SHORTER, ["Resize", "RandomCrop", "RandomHorizontalFlip", "ToTensor", "Normalize"]),
        (RESIZE_SQUARE, ["Resize", "RandomHorizontalFlip", "ToTensor", "Normalize"]),
    ):
        assert step_names(build_transform(info_for(mode), 28, train=True, augment="flip")) == names, mode
        assert step_names(build_transform(info_for(mode), 28, train=False, augment="flip")) == step_names(
            build_transform(info_for(mode), 28, train=False)
        )
    with pytest.raises(QsennError, match="unknown augmentation"):
        build_transform(info_for(RESIZE_SQUARE), 28, train=True, augment="strong")


def test_train_step_parameters():
    shorter = build_transform(info_for(RESIZE_SHORTER), 448, train=True).transforms
    assert shorter[0].size == 448 and shorter[1].size == (448, 448) and shorter[1].padding == 4
    jitter = shorter[3]
    assert jitter.brightness == jitter.contrast == jitter.saturation == (0.9, 1.1)
    assert jitter.hue is None
    square = build_transform(info_for(RESIZE_SQUARE), 448, train=True).transforms
    assert square[0].size == (448, 448)
    imagenet_test = build_transform(info_for(RESIZE_IMAGENET), 224, train=False).transforms
    assert imagenet_test[0].size == 256 and imagenet_test[1].size == (224, 224)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("width, height", [(40, 20), (20, 40), (33, 33), (9, 70)])
def test_output_shape_and_dtype(mode, train, width, height):
    out = build_transform(info_for(mode), 24, train)(noise_image(width, height))
    assert out.shape == (3, 24, 24) and out.dtype == torch.float32


@pytest.mark.parametrize("mode", MODES)
def test_test_transform_is_deterministic(mode):
    transform, img = build_transform(info_for(mode), 24, train=False), noise_image(50, 30)
    torch.manual_seed(1)
    first = transform(img)
    torch.manual_seed(2)
    assert torch.equal(first, transform(img))


@pytest.mark.parametrize("mode", MODES)
def test_train_transform_repeats_under_the_same_seed(mode):
    transform, img = build_transform(info_for(mode), 24, train=True), noise_image(50, 30)
    outputs = []
    for _ in range(2):
        torch.manual_seed(3)
        outputs.append(transform(img))
    assert torch.equal(*outputs)


def test_shorter_keeps_aspect_square_squeezes():
    unnormalised = dict(mean=None, std=None)
    img = stripes(64, 32)  # 2:1
    shorter = build_transform(info_for(RESIZE_SHORTER, **unnormalised), 16, train=False)(img)
    square = build_transform(info_for(RESIZE_SQUARE, **unnormalised), 16, train=False)(img)
    # Center crop of the 32×16 resize keeps only the green middle half.
    assert torch.allclose(shorter[:, 8, :], torch.tensor([0.0, 1.0, 0.0]).view(3, 1), atol=1e-3)
    # The square resize keeps all three stripes, each squeezed horizontally.
    assert square[:, 8, 0].tolist() == pytest.approx([1.0, 0.0, 0.0], abs=1e-3)
    assert square[:, 8, 8].tolist() == pytest.approx([0.0, 1.0, 0.0], abs=1e-3)
    assert square[:, 8, 15].tolist() == pytest.approx([0.0, 0.0, 1.0], abs=1e-3)


@pytest.mark.parametrize("mode", MODES)
def test_normalisation_applied_or_skipped(mode):
    grey = Image.new("RGB", (30, 20), (51, 102, 153))
    raw = torch.tensor([51, 102, 153]) / 255.0
    normalised = build_transform(info_for(mode), 16, train=False)(grey)
    expected = (raw - torch.tensor(MEAN)) / torch.tensor(STD)
    assert torch.allclose(normalised, expected.view(3, 1, 1).expand(3, 16, 16), atol=1e-5)
    plain = build_transform(info_for(mode, mean=None, std=None), 16, train=False)(grey)
    assert torch.allclose(plain, raw.view(3, 1, 1).expand(3, 16, 16), atol=1e-5)


def test_unknown_resize_mode():
    with pytest.raises(QsennError, match="unknown resize mode 'stretch'"):
        build_transform(info_for("stretch"), 16, train=False)


def test_lighting_offset_formula():
    alpha = torch.tensor([0.1, -0.2, 0.3])
    eigvec, eigval = IMAGENET_PCA_EIGENVECTORS, IMAGENET_PCA_EIGENVALUES
    expected = [sum(eigvec[i][j] * alpha[j].item() * eigval[j] for j in range(3)) for i in range(3)]
    assert Lighting().offset(alpha).tolist() == pytest.approx(expected, rel=1e-5)


def test_lighting_adds_one_offset_per_image():
    torch.manual_seed(0)
    img = torch.rand(3, 5, 7)
    shifted = Lighting()(img)
    delta = shifted - img
    assert torch.allclose(delta, delta[:, :1, :1].expand_as(delta), atol=1e-6)
    assert delta.abs().max() > 0


def test_lighting_noise_statistics():
    torch.manual_seed(0)
    lighting, zeros, n = Lighting(), torch.zeros(3, 1, 1), 4000
    offsets = torch.stack([lighting(zeros).flatten() for _ in range(n)])
    eigvec, eigval = torch.tensor(IMAGENET_PCA_EIGENVECTORS), torch.tensor(IMAGENET_PCA_EIGENVALUES)
    # δ = E·(α∘λ) with α ~ N(0, 0.05²): per channel std = 0.05·sqrt(Σ_j E_ij² λ_j²).
    expected_std = 0.05 * torch.sqrt((eigvec**2 * eigval**2).sum(dim=1))
    assert torch.all(offsets.mean(dim=0).abs() < 4 * expected_std / n**0.5)
    assert torch.allclose(offsets.std(dim=0), expected_std, rtol=0.1)


def test_flip_gray_shows_a_share_of_the_images_without_colour():
    transform = build_transform(info_for(RESIZE_SQUARE, mean=None), 16, train=True, augment="flip-gray")
    assert step_names(transform) == ["Resize", "RandomHorizontalFlip", "RandomGrayscale", "ToTensor"]
    torch.manual_seed(0)
    grey = [
        bool(torch.allclose(x[0], x[1]) and torch.allclose(x[1], x[2])) for x in map(transform, [stripes(16, 16)] * 200)
    ]
    assert 70 < sum(grey) < 130  # p = 0.5
