"""qsenn_runtime.preprocess: parity with the training test transform, image modes, bad inputs."""

from __future__ import annotations

import io
import struct
import warnings
import zlib
from contextlib import contextmanager

import numpy as np
import pytest
from PIL import Image

from qsenn_runtime.errors import InputError
from qsenn_runtime.metadata import InputSpec
from qsenn_runtime.preprocess import MAX_IMAGE_PIXELS, ImageBudget, load_rgb, resize_and_crop, to_chw


def noise(width: int, height: int, seed: int = 0, channels: int = 3) -> np.ndarray:
    shape = (height, width, channels) if channels > 1 else (height, width)
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def encoded(img: Image.Image, fmt: str = "PNG", **params) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, fmt, **params)
    return buffer.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares width×height pixels but holds almost no data (a decompression bomb's header)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 10)) + chunk(b"IEND", b"")
    )


# ---- parity with torchvision ------------------------------------------------------------


@pytest.mark.parametrize("mode", ["shorter", "square", "imagenet"])
def test_matches_torchvision_test_transform(mode):
    from qsenn_train.data.base import DatasetInfo
    from qsenn_train.data.transforms import build_transform

    info = DatasetInfo(name="t", root="/nowhere", class_names=("a",), mean=None, std=None, resize_mode=mode)
    for size in (32, 224):
        reference = build_transform(info, size, train=False)
        for seed, (width, height) in enumerate(
            [(500, 375), (375, 500), (333, 333), (1000, 201), (201, 997), (449, 448), (50, 30), (225, 224)]
        ):
            img = Image.fromarray(noise(width, height, seed))
            expected = reference(img).numpy()
            ours = to_chw(resize_and_crop(img, InputSpec(size, mode, None, None)))
            assert ours.shape == expected.shape == (3, size, size) and ours.dtype == np.float32
            assert np.abs(ours - expected).max() <= 1 / 255, (mode, size, width, height)


def test_modes_decode_like_the_training_loader(tmp_path):
    """Grey, RGBA, palette (with and without transparency) and CMYK give open_rgb's pixels."""
    from qsenn_train.data.base import open_rgb

    rgba = Image.fromarray(noise(30, 20, 1, channels=4))
    palette = Image.fromarray(noise(30, 20, 2)).quantize(16)
    transparent = palette.copy()
    transparent.info["transparency"] = 3
    images = {
        "grey.png": Image.fromarray(noise(30, 20, 0, channels=1)),
        "rgba.png": rgba,
        "palette.png": palette,
        "palette_transparent.png": transparent,
        "cmyk.tif": Image.fromarray(noise(30, 20, 3, channels=4), mode="CMYK"),
    }
    for name, img in images.items():
        path = tmp_path / name
        img.save(path)
        with _no_warning():
            ours = load_rgb(path, name)
        assert ours.mode == "RGB"
        np.testing.assert_array_equal(np.asarray(ours), np.asarray(open_rgb(path)), err_msg=name)


@contextmanager
def _no_warning():
    """Fails if the block warns (the palette-with-transparency conversion must not)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    assert not caught, [str(w.message) for w in caught]


def test_sixteen_bit_is_scaled_not_clipped(tmp_path):
    values = np.array([[0, 257, 32896, 65535]], dtype=np.uint16)
    path = tmp_path / "deep.png"
    Image.fromarray(values).save(path)
    assert Image.open(path).mode.startswith("I")
    rgb = np.asarray(load_rgb(path, "deep.png"))
    np.testing.assert_array_equal(rgb[..., 0], [[0, 1, 128, 255]])
    assert (rgb[..., 0] == rgb[..., 2]).all()


def test_exif_orientation_is_applied():
    pixels = noise(40, 20, 4)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    data = encoded(Image.fromarray(pixels), "PNG", exif=exif)
    upright = load_rgb(data, "phone.png")
    assert upright.size == (20, 40)
    np.testing.assert_array_equal(np.asarray(upright), np.rot90(pixels, k=-1))
    # a PIL image with the tag is turned upright too
    assert load_rgb(Image.open(io.BytesIO(data)), "pil").size == (20, 40)


def test_sources_path_bytes_pil_and_arrays_agree(tmp_path):
    pixels = noise(31, 17, 5)
    path = tmp_path / "a.png"
    Image.fromarray(pixels).save(path)
    expected = np.asarray(Image.fromarray(pixels))
    for source in (
        str(path),
        path,
        path.read_bytes(),
        bytearray(path.read_bytes()),
        Image.fromarray(pixels),
        pixels,
        pixels.astype(np.float64) / 255,
    ):
        np.testing.assert_array_equal(np.asarray(load_rgb(source, "x")), expected)
    grey = noise(31, 17, 6, channels=1)
    np.testing.assert_array_equal(np.asarray(load_rgb(grey, "g")), np.stack([grey] * 3, axis=-1))
    rgba = noise(31, 17, 7, channels=4)
    np.testing.assert_array_equal(np.asarray(load_rgb(rgba, "rgba")), rgba[..., :3])


# ---- bad inputs: one clear line each ----------------------------------------------------


def _error(source, **kwargs) -> str:
    with pytest.raises(InputError) as info:
        load_rgb(source, "input", **kwargs)
    message = str(info.value)
    assert "\n" not in message and message.startswith("input: ")
    return message


def test_missing_empty_and_non_image_files(tmp_path):
    assert "no such file" in _error(tmp_path / "missing.jpg")
    assert "not a file" in _error(tmp_path)
    (tmp_path / "empty.jpg").write_bytes(b"")
    assert "empty file" in _error(tmp_path / "empty.jpg")
    (tmp_path / "notes.txt").write_text("not an image\n")
    assert "not an image" in _error(tmp_path / "notes.txt")
    assert "empty bytes" in _error(b"")
    assert "cannot use a int" in _error(42)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated_and_corrupt_files(fmt):
    data = encoded(Image.fromarray(noise(64, 64, 8)), fmt)
    assert "corrupt or truncated" in _error(data[: len(data) // 2])
    corrupt = data[:40] + bytes(range(256)) * 4 + data[40 + 1024 :]
    assert "corrupt or truncated" in _error(corrupt) or "not an image" in _error(corrupt)


def test_decompression_bombs(monkeypatch):
    over_ours = png_header_only(10_000, 10_000)  # 1e8 pixels: Pillow only warns
    with pytest.warns(Image.DecompressionBombWarning):
        assert "10000×10000 = 100,000,000 pixels exceed the limit of 25,000,000 pixels" in _error(over_ours)
    over_pillow = png_header_only(20_000, 20_000)  # 4e8 pixels: Pillow refuses by itself …
    # … and the line quotes the runtime's limit, the one that holds, not Pillow's 178,956,970
    assert "400,000,000 pixels exceed the limit of 25,000,000 pixels (decompression-bomb guard)" in _error(over_pillow)
    # the limit is the runtime's, not Pillow's global (an application may disable that one)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    assert "exceed the limit" in _error(over_ours)
    small = encoded(Image.fromarray(noise(20, 20, 9)))
    assert "20×20 = 400 pixels exceed the limit of 100 pixels" in _error(small, budget=ImageBudget(max_pixels=100))
    assert MAX_IMAGE_PIXELS == 25_000_000  # well below Pillow's default of 89,478,485


def test_the_decoded_bytes_are_budgeted_by_mode():
    grey, rgb = (encoded(Image.fromarray(noise(100, 100, 3, channels=c))) for c in (1, 3))
    budget = ImageBudget(max_pixels=None, max_bytes=20_000)  # 100×100 grey: 10.8 kB; RGB: 40.8 kB (4 B/px)
    assert load_rgb(grey, "g", budget).size == (100, 100)
    assert "100×100 in mode RGB decodes to 40,800 bytes, over the limit of 20,000 bytes" in _error(rgb, budget=budget)
    # a sliver pays 8 bytes of row pointer per pixel row: 1×2000 grey is 18 kB, not 2 kB
    sliver = encoded(Image.fromarray(noise(1, 2000, 5, channels=1)))
    assert "1×2000 in mode L decodes to 18,000 bytes" in _error(sliver, budget=ImageBudget(None, 10_000))
    assert load_rgb(rgb, "x", ImageBudget(max_pixels=None, max_bytes=None)).size == (100, 100)
    with pytest.raises(ValueError, match="max_image_pixels must be ≥ 1"):
        ImageBudget(max_pixels=0)


def test_an_oversized_jpeg_is_decoded_at_a_reduced_scale_the_model_allows():
    photo = Image.fromarray(np.kron(noise(40, 30, 4), np.ones((32, 32, 1), np.uint8)))  # 1280×960, smooth blocks
    data = encoded(photo, "JPEG", quality=95)
    spec = InputSpec(64, "shorter", None, None)
    budget = ImageBudget(max_pixels=100_000)  # the full 1.2 Mpx is over it; 1/4 (320×240) fits
    reduced = load_rgb(data, "big.jpg", budget, spec)
    assert reduced.size == (320, 240)
    full = resize_and_crop(load_rgb(data, "big.jpg", ImageBudget(None, None)), spec)
    difference = np.abs(np.asarray(resize_and_crop(reduced, spec), int) - np.asarray(full, int))
    assert difference.mean() < 3  # the same picture for the model (DCT scaling vs bilinear)
    # never below what the resize needs: a 448 px model keeps ≥ 448 px on the shorter side → refused
    message = _error(data, budget=budget, spec=InputSpec(448, "shorter", None, None))
    assert "exceed the limit of 100,000 pixels even at the largest reduced JPEG scale" in message
    # and no draft for a PNG over the budget: refused
    assert "exceed the limit of 100,000 pixels" in _error(encoded(photo), budget=budget, spec=spec)
    # within the budget nothing is reduced: the pixels are those of the full decode (as in training)
    assert load_rgb(data, "big.jpg", ImageBudget(), spec).size == (1280, 960)


def test_symbolic_link_loops_and_broken_links_are_named(tmp_path):
    (tmp_path / "loop.jpg").symlink_to(tmp_path / "loop.jpg")
    assert _error(tmp_path / "loop.jpg") == "input: a symbolic link loop"
    (tmp_path / "broken.jpg").symlink_to(tmp_path / "gone.jpg")
    assert _error(tmp_path / "broken.jpg") == f"input: a broken symbolic link (to {tmp_path / 'gone.jpg'})"


def test_bad_arrays():
    assert "shape (5, 5, 2)" in _error(np.zeros((5, 5, 2), np.uint8))
    assert "shape (1, 5, 5, 3)" in _error(np.zeros((1, 5, 5, 3), np.uint8))
    assert "shape (3, 32, 40)" in _error(np.zeros((3, 32, 40), np.uint8))  # CHW by mistake
    assert "shape (0, 5, 3)" in _error(np.zeros((0, 5, 3), np.uint8))
    assert "dtype int64" in _error(np.zeros((5, 5, 3), np.int64))
    nan = np.full((5, 5, 3), 0.5)
    nan[2, 2, 1] = np.nan
    assert "NaN" in _error(nan)
    assert "[0, 2]" in _error(np.linspace(0, 2, 75).reshape(5, 5, 3))
