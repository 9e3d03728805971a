"""Write the hostile-input corpus: files a deployed model or `qsenn train` may be handed, each
with the one-line error it must produce (or null: it must work).

    python tests/hostile/make_cases.py [OUT]      (default: tests/hostile/cases, the committed copy)

OUT/cases.json lists every case: file (relative to OUT), kind, expect (a substring of the error,
or null), about. Kinds and what runs them (tests/test_hostile_inputs.py):
  image    a file for `Model.predict` and `qsenn predict` (with models/good.onnx)
  array    an .npy array (no pickle) for `Model.predict`
  tensor   an .npy N×3×S×S batch for `Model.predict_tensor`
  model       a file for `qsenn_runtime.load`, `qsenn predict` and `qsenn inspect` (which refuses
              the same, but for `inspect_expect`: what only a backend can find)
  dataset     a --data-root folder for `qsenn train --recipe tiny --dataset <dataset>`
  checkpoint  a file for `qsenn export FILE`, `qsenn import-reference FILE`, `qsenn bench FILE`
  run         a run directory for `qsenn export RUN`, `export RUN/final.pt`, `evaluate`,
              `validate-run` and `bench RUN` (its registered checkpoint is damaged)
A case's `expect_by_command` overrides `expect` for the commands it names.
Everything is generated from fixed seeds, so the output is the same on every run with the same
Pillow, numpy, onnx, torch and zlib (cases.json records their versions); the committed corpus is
what this script writes, which a test checks.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import struct
import sys
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import PIL
import torch
from PIL import Image

from qsenn_bench.testing.fake_datasets import make_class_folders, make_cub, make_fashion_mnist, write_lines
from qsenn_bench.testing.toy_onnx import toy_metadata, toy_model
from qsenn_runtime.engine_file import MAGIC, pack_engine
from qsenn_runtime.limits import MAX_IMAGE_BYTES, MAX_IMAGE_PIXELS
from qsenn_train.data.base import RESIZE_SHORTER, DatasetInfo
from qsenn_train.recipes import resolve_recipe
from qsenn_train.run import ModelEntry
from qsenn_train.rundir import CONFIG, RunDir

DEFAULT_OUT = Path(__file__).resolve().parent / "cases"
MANIFEST = "cases.json"
ENGINE = {"tensorrt": "10.3.0", "gpu": "NVIDIA H100 80GB HBM3", "precision": "fp16"}
CASES: list[dict] = []


def case(file: str, kind: str, expect: str | None, about: str, **extra) -> Callable:
    """Register a builder `build(path)` of one case file (or folder)."""

    def register(build: Callable[[Path], None]) -> Callable:
        CASES.append({"file": file, "kind": kind, "expect": expect, "about": about, **extra, "build": build})
        return build

    return register


def rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def noise(width: int, height: int, seed: int, channels: int = 3) -> np.ndarray:
    shape = (height, width, channels) if channels > 1 else (height, width)
    return rng(seed).integers(0, 256, shape, dtype=np.uint8)


def save(img: Image.Image, path: Path, fmt: str, **params) -> None:
    img.save(path, fmt, **params)


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png(width: int, height: int, bit_depth: int, colour_type: int, rows: Callable[[], bytes], count: int) -> bytes:
    """A PNG written by hand: `count` scanlines of rows() streamed through zlib (no big buffer)."""
    packer = zlib.compressobj(9)
    idat = b"".join(packer.compress(rows()) for _ in range(count)) + packer.flush()
    header = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")


def constant_bilevel_png(side: int) -> bytes:
    """side×side pixels of one colour at 1 bit per pixel: deflate shrinks it ~1000×."""
    row = b"\0" + bytes((side + 7) // 8)
    return png(side, side, 1, 0, lambda: row, side)


# ---- images ------------------------------------------------------------------------------


@case("images/empty.jpg", "image", "empty file, not an image", "zero bytes")
def _(path):
    path.write_bytes(b"")


@case("images/truncated.jpg", "image", "corrupt or truncated image", "the first half of a JPEG")
def _(path):
    save(Image.fromarray(noise(64, 48, 1)), path, "JPEG", quality=90)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@case("images/truncated.png", "image", "corrupt or truncated image", "the first half of a PNG")
def _(path):
    save(Image.fromarray(noise(64, 48, 2)), path, "PNG")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@case("images/text.png", "image", "not an image, or a format Pillow cannot read", "text named .png")
def _(path):
    path.write_text("this is not an image\n" * 20)


@case("images/pdf.jpg", "image", "not an image, or a format Pillow cannot read", "a PDF named .jpg")
def _(path):
    path.write_bytes(b"%PDF-1.4\n1 0 obj\n<< /Type /Catalog >>\nendobj\ntrailer\n<< /Root 1 0 R >>\n%%EOF\n")


@case("images/random_bytes.png", "image", "not an image, or a format Pillow cannot read", "4 KiB of noise")
def _(path):
    path.write_bytes(rng(3).bytes(4096))


@case(
    "images/zero_width.png",
    "image",
    "not an image, or a format Pillow cannot read",
    "a PNG header declaring 0×16 pixels",
)
def _(path):
    path.write_bytes(png(0, 16, 8, 0, lambda: b"\0", 16))


LIMIT = f"exceed the limit of {MAX_IMAGE_PIXELS:,} pixels"  # the one limit every refusal quotes


@case(
    "images/bomb_400mp.png",
    "image",
    LIMIT,
    "48 KB that decompress to 20000×20000 pixels (1.2 GB as RGB)",
)
def _(path):
    path.write_bytes(constant_bilevel_png(20_000))


@case(
    "images/bomb_90mp.png",
    "image",
    LIMIT,
    "11 KB that decompress to 9500×9500 pixels: over the runtime's limit, under Pillow's error",
)
def _(path):
    path.write_bytes(constant_bilevel_png(9_500))


@case(
    "images/bomb_header_10gp.png",
    "image",
    LIMIT,
    "a PNG header declaring 100000×100000 pixels with almost no data",
)
def _(path):
    path.write_bytes(png(100_000, 100_000, 8, 0, lambda: b"\0" * 10, 1))


@case(
    "images/sliver_over_budget.png",
    "image",
    LIMIT,
    f"a PNG header declaring 1×{MAX_IMAGE_PIXELS + 1:,} pixels (a 1×80 Mpx PNG of 311 KB cost 6.8 s and 2.9 GB)",
)
def _(path):
    path.write_bytes(png(1, MAX_IMAGE_PIXELS + 1, 8, 0, lambda: b"\0\0", 1))


@case(
    "images/sliver_over_bytes.png",
    "image",
    f"over the limit of {MAX_IMAGE_BYTES:,} bytes",
    f"a PNG header declaring 1×{MAX_IMAGE_PIXELS - 1:,} RGB pixels: under the pixel limit, over the byte "
    f"limit with Pillow's 8-byte row pointers",
)
def _(path):
    path.write_bytes(png(1, MAX_IMAGE_PIXELS - 1, 8, 2, lambda: b"\0" * 4, 1))


@case("images/symlink_loop.png", "image", "a symbolic link loop", "a symbolic link to itself")
def _(path):
    path.symlink_to(path.name)


@case("images/grey16.png", "image", None, "16-bit grey")
def _(path):
    save(Image.fromarray(noise(40, 30, 4, channels=1).astype(np.uint16) * 257), path, "PNG")


@case("images/rgb48.png", "image", None, "16 bits per channel RGB (written by hand)")
def _(path):
    pixels = noise(40 * 2, 30, 5).reshape(30, 240)  # 40 px × 3 channels × 2 bytes per row
    lines = iter(pixels)
    path.write_bytes(png(40, 30, 16, 2, lambda: b"\0" + next(lines).tobytes(), 30))


@case("images/cmyk.jpg", "image", None, "CMYK JPEG")
def _(path):
    save(Image.fromarray(noise(40, 30, 6, channels=4), mode="CMYK"), path, "JPEG", quality=90)


@case("images/palette.png", "image", None, "palette (P mode)")
def _(path):
    save(Image.fromarray(noise(40, 30, 7)).quantize(16), path, "PNG")


@case("images/palette_transparent.png", "image", None, "palette with a transparent index")
def _(path):
    img = Image.fromarray(noise(40, 30, 8)).quantize(16)
    save(img, path, "PNG", transparency=3)


@case("images/rgba.png", "image", None, "RGBA")
def _(path):
    save(Image.fromarray(noise(40, 30, 9, channels=4)), path, "PNG")


@case("images/grey_alpha.png", "image", None, "grey + alpha (LA)")
def _(path):
    save(Image.fromarray(noise(40, 30, 10, channels=2), mode="LA"), path, "PNG")


@case("images/bilevel.png", "image", None, "1 bit per pixel")
def _(path):
    save(Image.fromarray(noise(40, 30, 11, channels=1) > 127), path, "PNG")


@case("images/float.tif", "image", None, "32-bit float TIFF (mode F, values beyond 0..255)")
def _(path):
    values = rng(12).uniform(-50, 300, (30, 40)).astype(np.float32)
    save(Image.fromarray(values), path, "TIFF")


@case(
    "images/exif_rotated.jpg", "image", None, "40×20 stored, EXIF orientation 6: upright 20×40", upright_size=[20, 40]
)
def _(path):
    exif = Image.Exif()
    exif[0x0112] = 6
    save(Image.fromarray(noise(40, 20, 13)), path, "JPEG", quality=90, exif=exif)


@case("images/sliver_1x4000.png", "image", None, "1 pixel wide, 4000 high")
def _(path):
    save(Image.fromarray(noise(1, 4000, 14)), path, "PNG")


@case("images/sliver_4000x1.png", "image", None, "4000 pixels wide, 1 high")
def _(path):
    save(Image.fromarray(noise(4000, 1, 15)), path, "PNG")


@case("images/one_pixel.png", "image", None, "1×1")
def _(path):
    save(Image.fromarray(noise(1, 1, 16)), path, "PNG")


@case("images/animated.gif", "image", None, "two-frame GIF (the first frame is used)")
def _(path):
    frames = [Image.fromarray(noise(40, 30, seed)).quantize(32) for seed in (17, 18)]
    frames[0].save(path, "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)


# ---- arrays and tensors (.npy, no pickle) -----------------------------------------------------


def array_case(name: str, expect: str | None, about: str, make: Callable[[], np.ndarray]) -> None:
    case(f"arrays/{name}.npy", "array", expect, about)(lambda path: np.save(path, make(), allow_pickle=False))


def _with_nan() -> np.ndarray:
    a = rng(20).random((16, 16, 3)).astype(np.float32)
    a[3, 4, 1] = np.nan
    return a


array_case("nan", "array contains NaN or infinite values", "float32 H×W×3 with one NaN", _with_nan)
array_case(
    "inf",
    "array contains NaN or infinite values",
    "float64 with +inf",
    lambda: np.where(np.eye(16)[..., None] > 0, np.inf, 0.5) * np.ones((16, 16, 3)),
)
array_case(
    "float_0_to_2",
    "float images must be in [0, 1]",
    "floats in [0, 2]",
    lambda: np.linspace(0, 2, 16 * 16 * 3).reshape(16, 16, 3),
)
array_case("five_channels", "expected H×W×3 (RGB)", "H×W×5 uint8", lambda: noise(16, 16, 21, channels=5))
array_case("batch_of_one", "array of shape (1, 16, 16, 3)", "N×H×W×3", lambda: noise(16, 16, 22)[None])
array_case(
    "chw",
    "array of shape (3, 16, 16)",
    "C×H×W by mistake (3 is read as H)",
    lambda: noise(16, 16, 23).transpose(2, 0, 1).copy(),
)
array_case("empty", "array of shape (0, 16, 3)", "no rows", lambda: np.zeros((0, 16, 3), np.uint8))
array_case("flat", "array of shape (768,)", "1-D", lambda: noise(16, 16, 24).ravel())
array_case("int16", "array of dtype int16", "int16 pixels", lambda: noise(16, 16, 25).astype(np.int16))
array_case("bool", "array of dtype bool", "a boolean mask", lambda: noise(16, 16, 26) > 127)
array_case("complex", "array of dtype complex64", "complex numbers", lambda: noise(16, 16, 27).astype(np.complex64))
array_case("grey", None, "H×W uint8", lambda: noise(16, 16, 28, channels=1))
array_case("rgba", None, "H×W×4 uint8", lambda: noise(16, 16, 29, channels=4))
array_case("unit_float", None, "float64 in [0, 1]", lambda: rng(30).random((16, 24, 3)))


def _tensor_with_nan_row() -> np.ndarray:
    t = rng(31).random((3, 3, 32, 32)).astype(np.float32)
    t[1, 2, 5, 5] = np.nan
    return t


case(
    "tensors/nan_row.npy",
    "tensor",
    "tensor row contains NaN or infinity",
    "3×3×32×32, row 1 holds a NaN (rows 0 and 2 are fine)",
    bad_rows=[1],
)(lambda path: np.save(path, _tensor_with_nan_row(), allow_pickle=False))
case("tensors/wrong_size.npy", "tensor", "expected N×3×32×32", "2×3×16×16 for a 32 px model")(
    lambda path: np.save(path, rng(32).random((2, 3, 16, 16)).astype(np.float32), allow_pickle=False)
)
case("tensors/channels_last.npy", "tensor", "expected N×3×32×32", "N×H×W×3 instead of N×3×H×W")(
    lambda path: np.save(path, rng(33).random((2, 32, 32, 3)).astype(np.float32), allow_pickle=False)
)


# ---- model files ---------------------------------------------------------------------------


def write_model(path: Path, metadata=None, **kwargs) -> None:
    path.write_bytes(toy_model(metadata or toy_metadata(), **kwargs).SerializeToString())


def metadata_json(**changes) -> str:
    d = json.loads(toy_metadata().to_json())
    d.update(changes)
    return json.dumps(d)


case("models/good.onnx", "model", None, "the toy model every image case runs on")(write_model)


@case("models/text.onnx", "model", "neither an ONNX model nor a qsenn engine", "a text file")
def _(path):
    path.write_text("not a model\n" * 10)


@case("models/empty.onnx", "model", "the file is empty", "zero bytes")
def _(path):
    path.write_bytes(b"")


@case(
    "models/pickle.onnx",
    "model",
    "neither an ONNX model nor a qsenn engine",
    "a pickle whose loading would call print (a harmless stand-in for os.system)",
)
def _(path):
    # pickle protocol 2 of: print("qsenn unpickled a model file")
    path.write_bytes(
        b"\x80\x02cbuiltins\nprint\nq\x00X\x1c\x00\x00\x00qsenn unpickled a model fileq\x01\x85q\x02Rq\x03."
    )


@case("models/truncated.onnx", "model", "truncated file", "the first half of the good model")
def _(path):
    data = toy_model(toy_metadata()).SerializeToString()
    path.write_bytes(data[: len(data) // 2])


@case("models/no_metadata.onnx", "model", "an ONNX model without qsenn metadata", "ONNX, no qsenn key")
def _(path):
    write_model(path, with_metadata=False)


@case("models/metadata_not_json.onnx", "model", "qsenn metadata is not valid JSON", "metadata '{not json'")
def _(path):
    write_model(path, metadata_json="{not json")


@case("models/metadata_deep.onnx", "model", "nested too deeply", "metadata nested 5000 lists deep")
def _(path):
    write_model(path, metadata_json="[" * 5_000)


@case("models/ternary_has_2.onnx", "model", "T must hold only -1, 0 and +1", "a 2 in the metadata's T")
def _(path):
    ternary = toy_metadata().weights.astype(int).tolist()
    ternary[0][0] = 2
    write_model(path, metadata_json=metadata_json(head={"kind": "ternary", "T": ternary}))


@case("models/ternary_half.onnx", "model", "T must hold only -1, 0 and +1", "0.5 in the metadata's T")
def _(path):
    ternary = toy_metadata().weights.astype(float).tolist()
    ternary[1][1] = 0.5
    write_model(path, metadata_json=metadata_json(head={"kind": "ternary", "T": ternary}))


@case(
    "models/classes_disagree.onnx",
    "model",
    "holds no int8 initializer of that shape",
    "metadata for 5 classes on a 4-class graph",
)
def _(path):
    write_model(path, metadata_json=toy_metadata(num_classes=5).to_json())


@case(
    "models/graph_head_has_2.onnx",
    "model",
    "holds 2, outside {-1, 0, +1}",
    "the graph's int8 T holds a 2 where the metadata's T has a 1",
)
def _(path):
    metadata = toy_metadata()
    broken = metadata.weights.copy()
    broken[0, np.flatnonzero(broken[0] == 1)[0]] = 2
    write_model(path, metadata, graph_weights=broken)


@case(
    "models/ternary_disagrees.onnx",
    "model",
    "initializer 'T' differs from the metadata's T",
    "the graph's T has one sign flipped",
)
def _(path):
    metadata = toy_metadata()
    flipped = metadata.weights.copy()
    flipped[0, np.flatnonzero(flipped[0])[0]] *= -1
    write_model(path, metadata, graph_weights=flipped)


@case(
    "models/size_disagrees.onnx",
    "model",
    "the metadata does not belong to this graph",
    "metadata says 64 px, the graph takes 32 px",
)
def _(path):
    write_model(path, metadata_json=metadata_json(input={**json.loads(toy_metadata().to_json())["input"], "size": 64}))


@case("models/future_version.onnx", "model", "format version 99 is not supported", "format_version 99")
def _(path):
    write_model(path, metadata_json=metadata_json(format_version=99))


@case("models/infinite_scale.onnx", "model", "must be a positive number", "scale: Infinity")
def _(path):
    write_model(path, metadata_json=metadata_json(scale=float("inf")))


@case("models/huge_size.onnx", "model", "qsenn metadata is malformed", "input size 1e400")
def _(path):
    text = metadata_json().replace('"size": 32', '"size": 1e400')
    write_model(path, metadata_json=text)


@case(
    "models/missing_output.onnx",
    "model",
    "the graph lacks feature_maps",
    "a qsenn graph whose feature_maps output was removed",
)
def _(path):
    model = toy_model(toy_metadata())
    (maps,) = [o for o in model.graph.output if o.name == "feature_maps"]
    model.graph.output.remove(maps)
    path.write_bytes(model.SerializeToString())


@case("models/checkpoint.pt", "model", "it is a torch.save file (a training checkpoint)", "a checkpoint, not an export")
def _(path):
    path.write_bytes(torch_save_bytes())


@case("models/symlink_loop.onnx", "model", "is a symbolic link loop", "a symbolic link to itself")
def _(path):
    path.symlink_to(path.name)


@case(
    "models/unknown_op.onnx",
    "model",
    "onnxruntime cannot load",
    "valid metadata, a graph node 'NoSuchOp'",
    inspect_expect=None,  # only onnxruntime knows its operators: inspect reads the file
)
def _(path):
    model = toy_model(toy_metadata())
    next(node for node in model.graph.node if node.op_type == "Relu").op_type = "NoSuchOp"
    path.write_bytes(model.SerializeToString())


@case("models/engine_truncated.engine", "model", "is truncated", "the qsenn engine header only")
def _(path):
    path.write_bytes(MAGIC + b"\x10")


@case(
    "models/engine_huge_length.engine",
    "model",
    "truncated or damaged (metadata length",
    "an engine header declaring 2^64-1 bytes of metadata",
)
def _(path):
    path.write_bytes(MAGIC + b"\xff" * 8 + b"{}")


@case("models/engine_no_plan.engine", "model", "holds metadata but no TensorRT plan", "metadata, no plan")
def _(path):
    path.write_bytes(pack_engine(toy_metadata().with_engine(ENGINE), b""))


@case(
    "models/engine_garbage_plan.engine",
    "model",
    "its TensorRT plan is not the one packed (sha256 mismatch",
    "an engine whose plan bytes were overwritten after packing",
)
def _(path):
    packed = pack_engine(toy_metadata().with_engine(ENGINE), b"\x00" * 256)
    path.write_bytes(packed[:-256] + rng(40).bytes(256))


@case(
    "models/engine_short_plan.engine",
    "model",
    "its TensorRT plan has 128 bytes but 256 were packed",
    "an engine cut inside its plan",
)
def _(path):
    path.write_bytes(pack_engine(toy_metadata().with_engine(ENGINE), rng(41).bytes(256))[:-128])


@case(
    "models/engine_metadata_not_json.engine",
    "model",
    "engine_metadata_not_json.engine: qsenn metadata is not valid JSON",
    "an engine header whose metadata is '{not json'",
)
def _(path):
    text = b"{not json"
    path.write_bytes(MAGIC + struct.pack("<Q", len(text)) + text + b"plan")


# ---- dataset folders (qsenn train) -----------------------------------------------------------


def cub(path: Path, change: Callable[[Path, object], None]) -> None:
    fake = make_cub(path)
    change(fake.cub_dir, fake)


def dataset_case(name: str, dataset: str, expect: str, about: str, **extra):
    return case(f"datasets/{name}", "dataset", expect, about, dataset=dataset, **extra)


@dataset_case(
    "cub_missing_image",
    "CUB2011",
    "not found; the dataset folder is incomplete",
    "images.txt lists a file that is not there (the first training image)",
)
def _(path):
    cub(path, lambda root, fake: (root / "images" / fake.split(True)[0].rel_path).unlink())


@dataset_case(
    "cub_missing_late_image",
    "CUB2011",
    "image file missing",
    "the 6th training image is absent: found only when training reads it",
)
def _(path):
    cub(path, lambda root, fake: (root / "images" / fake.split(True)[5].rel_path).unlink())


@dataset_case(
    "cub_unreadable_image", "CUB2011", "cannot read image", "the 6th training image is text", args=["--workers", "1"]
)
def _(path):
    cub(path, lambda root, fake: (root / "images" / fake.split(True)[5].rel_path).write_text("no image"))


@dataset_case("cub_bomb_image", "CUB2011", "decompression bomb", "the 6th training image is the 400-megapixel PNG")
def _(path):
    cub(
        path,
        lambda root, fake: (root / "images" / fake.split(True)[5].rel_path).write_bytes(constant_bilevel_png(20_000)),
    )


@dataset_case(
    "cub_label_out_of_range", "CUB2011", "class id 7 outside 1..3", "image_class_labels.txt names class 7 of 3"
)
def _(path):
    def change(root, fake):
        labels = root / "image_class_labels.txt"
        lines = labels.read_text().splitlines()
        lines[2] = lines[2].split()[0] + " 7"
        write_lines(labels, lines)

    cub(path, change)


@dataset_case(
    "cub_label_not_a_number", "CUB2011", "is malformed: expected '<image_id> <class_id>'", "a label line reads '5 two'"
)
def _(path):
    def change(root, fake):
        labels = root / "image_class_labels.txt"
        lines = labels.read_text().splitlines()
        lines[0] = lines[0].split()[0] + " two"
        write_lines(labels, lines)

    cub(path, change)


@dataset_case("cub_missing_split_file", "CUB2011", "train_test_split.txt not found", "train_test_split.txt deleted")
def _(path):
    cub(path, lambda root, fake: (root / "train_test_split.txt").unlink())


@dataset_case("cub_no_test_images", "CUB2011", "the test split is empty", "every image marked 1 (train)")
def _(path):
    def change(root, fake):
        split = root / "train_test_split.txt"
        write_lines(split, (f"{line.split()[0]} 1" for line in split.read_text().splitlines()))

    cub(path, change)


@dataset_case("folder_class_only_in_test", "folder", "has no counterpart", "test/<class> that train/ lacks")
def _(path):
    make_class_folders(path / "train", {"cat": 3, "dog": 3})
    make_class_folders(path / "test", {"cat": 1, "dog": 1, "emu": 1})


@dataset_case("folder_no_images", "folder", "the train split is empty", "class folders holding only .txt files")
def _(path):
    for split in ("train", "test"):
        for name in ("cat", "dog"):
            write_lines(path / split / name / "notes.txt", ["no images here"])


@dataset_case("fashion_label_out_of_range", "fashion-mnist", "has label 12 outside 0..9", "a training label of 12")
def _(path):
    folder = make_fashion_mnist(path / "fashion-mnist", gz=False)
    labels = bytearray((folder / "train-labels-idx1-ubyte").read_bytes())
    labels[-1] = 12
    (folder / "train-labels-idx1-ubyte").write_bytes(bytes(labels))


@dataset_case(
    "fashion_truncated_images",
    "fashion-mnist",
    "is malformed (header declares shape (6, 28, 28)",
    "the training image file cut in half",
)
def _(path):
    folder = make_fashion_mnist(path / "fashion-mnist", gz=False)
    images = folder / "train-images-idx3-ubyte"
    data = images.read_bytes()
    images.write_bytes(data[: len(data) // 2])


# ---- checkpoints and run directories (qsenn export, import-reference, evaluate, validate-run, bench)


def torch_save_bytes() -> bytes:
    """A small torch.save archive (the same bytes on every run with the same torch)."""
    buffer = io.BytesIO()
    torch.save({"format": "qsenn.model", "state_dict": {"w": torch.arange(64.0)}}, buffer)
    return buffer.getvalue()


DAMAGES: dict[str, tuple[Callable[[], bytes], str, str]] = {
    "empty": (lambda: b"", "is empty (0 bytes", "zero bytes (a failed download, a full disk)"),
    "truncated": (lambda: torch_save_bytes()[:900], "is truncated or corrupt", "the first 900 bytes of a torch.save"),
    "random": (lambda: hashlib.sha256(b"qsenn").digest() * 64, "is not a torch.save file", "2 KiB of noise"),
}
CHECKPOINT_COMMANDS = ("export", "import-reference", "bench")
RUN_COMMANDS = ("export RUN", "export RUN/final.pt", "evaluate", "validate-run", "bench RUN")

for _how, (_bytes, _said, _about) in DAMAGES.items():
    case(f"checkpoints/{_how}.pt", "checkpoint", _said, _about)(lambda path, make=_bytes: path.write_bytes(make()))


@case(
    "checkpoints/model.onnx",
    "checkpoint",
    "is an ONNX model, already exported, not a training checkpoint",
    "an exported model given where a checkpoint belongs",
)
def _(path):
    write_model(path)


@case(
    "checkpoints/folder",
    "checkpoint",
    "is a directory; pass the checkpoint file the original code saved (it holds weights.pth)",
    "a folder holding the checkpoint, not the checkpoint",
    expect_by_command={"export": "is neither a run directory", "bench": "is neither a run directory"},
)
def _(path):
    path.mkdir()
    (path / "weights.pth").write_bytes(b"")


def writer(data: bytes) -> Callable[[Path], None]:
    def write(tmp: Path) -> None:
        tmp.write_bytes(data)

    return write


def damaged_run(path: Path, damage: bytes, manifest_matches: bool) -> None:
    """A finished run as `qsenn train` registers it (config, registry, metrics, the dense model,
    final.pt) whose Q-SENN checkpoint is `damage`; with `manifest_matches` the manifest records
    those bytes (saved so on a full disk), else the intact file's."""
    run = RunDir(path)
    recipe = resolve_recipe("tiny").replace(model_type="qsenn")
    info = DatasetInfo("synth", "absent", ("a", "b"), None, None, RESIZE_SHORTER).to_json()
    config = {
        "seed": 7,
        "dataset": info,
        "data_root": "absent",
        "device": "cpu",
        "recipes": {"qsenn": recipe.to_json()},
    }
    run.save_json(CONFIG, config)
    run.save_with("dense-0000000000.pt", writer(torch_save_bytes()))  # intact
    checkpoint = "qsenn_6_2-0000000000/model.pt"
    run.save_with(checkpoint, writer(damage if manifest_matches else torch_save_bytes()))
    if not manifest_matches:
        run.file(checkpoint).write_bytes(damage)
    run.save_json("metrics_dense.json", {"Accuracy": 0.4, "model": "dense-0000000000"})
    run.save_json("metrics_qsenn.json", {"Accuracy": 0.5, "model": "qsenn_6_2-0000000000"})
    entry = ModelEntry(
        model_type="qsenn",
        checkpoint=checkpoint,
        folder="qsenn_6_2-0000000000",
        metrics="metrics_qsenn.json",
        dense_checkpoint="dense-0000000000.pt",
        dense_key="0000000000",
        dense_metrics="metrics_dense.json",
        recipe=recipe.to_json(),
        seed=7,
        finished=1e9,
    )
    run.register("qsenn", entry.to_json())


for _how, (_bytes, _said, _about) in DAMAGES.items():
    case(
        f"rundirs/{_how}_checkpoint",
        "run",
        "qsenn_6_2-0000000000/model.pt is missing or damaged (its sha256 does not match the manifest)",
        f"a finished run whose Q-SENN checkpoint was replaced by {_about}",
    )(lambda path, make=_bytes: damaged_run(path, make(), manifest_matches=False))
    case(
        f"rundirs/{_how}_checkpoint_recorded",
        "run",
        f"qsenn_6_2-0000000000/model.pt {_said}",
        f"a finished run whose Q-SENN checkpoint was saved as {_about} (the manifest matches it)",
    )(lambda path, make=_bytes: damaged_run(path, make(), manifest_matches=True))


# ---- writing -------------------------------------------------------------------------------


def versions() -> dict:
    return {
        "pillow": PIL.__version__,
        "numpy": np.__version__,
        "onnx": onnx.__version__,
        "torch": torch.__version__,
        "zlib": zlib.ZLIB_RUNTIME_VERSION,
    }


def generate(out: Path) -> list[dict]:
    """Write every case under `out` (emptied first) and cases.json; returns the manifest entries."""
    if out.exists():
        shutil.rmtree(out)
    entries = []
    for spec in CASES:
        path = out / spec["file"]
        path.parent.mkdir(parents=True, exist_ok=True)
        spec["build"](path)
        entries.append({k: v for k, v in spec.items() if k != "build"})
    manifest = {"generator": "tests/hostile/make_cases.py", "versions": versions(), "cases": entries}
    (out / MANIFEST).write_text(json.dumps(manifest, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return entries


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_OUT
    written = generate(target)
    size = sum(p.lstat().st_size for p in target.rglob("*") if p.is_file() or p.is_symlink())
    print(f"wrote {len(written)} cases ({size / 1024:.0f} KiB) to {target}")
