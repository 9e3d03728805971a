"""Hostile inputs: each case of the committed corpus (tests/hostile/cases) gives its expected
one-line error, or works, through the runtime library, `qsenn predict` and `qsenn train`, and
never a traceback. Property-based tests extend the corpus to arbitrary metadata and images."""

from __future__ import annotations

import filecmp
import io
import json
import os
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

import qsenn_bench.testing.hostile_inputs as hi
import qsenn_runtime
from qsenn_bench.testing.toy_onnx import toy_metadata
from qsenn_runtime.errors import InputError
from qsenn_runtime.metadata import InputSpec, MetadataError, ModelMetadata
from qsenn_runtime.preprocess import load_rgb, resize_and_crop, to_chw


def ids(cases):
    return [case["file"] for case in cases]


INPUT_CASES = [c for c in hi.load_cases() if c["kind"] in ("image", "array", "tensor", "model")]
MODEL_CASES = hi.load_cases(kind="model")
DATASET_CASES = hi.load_cases(kind="dataset")
CHECKPOINT_RUNS = [(c, command) for c in hi.load_cases(kind="checkpoint") for command in hi.CHECKPOINT_ARGS] + [
    (c, command) for c in hi.load_cases(kind="run") for command in hi.RUN_ARGS
]


def test_the_committed_corpus_is_what_the_generator_writes(tmp_path):
    make_cases = hi.generator()
    recorded = json.loads((hi.CASES / "cases.json").read_text(encoding="utf-8"))["versions"]
    if recorded != make_cases.versions():
        pytest.skip(
            f"the corpus was written with {recorded}, this is {make_cases.versions()}; "
            f"rerun tests/hostile/make_cases.py and commit the result"
        )
    make_cases.generate(tmp_path / "cases")
    mismatch = filecmp.dircmp(hi.CASES, tmp_path / "cases")
    differing = []

    def same_link(left: Path, right: Path) -> bool:  # a symbolic link loop cannot be stat()ed
        return left.is_symlink() and right.is_symlink() and os.readlink(left) == os.readlink(right)

    def walk(cmp, prefix=""):
        differing.extend(prefix + name for name in cmp.left_only + cmp.right_only + cmp.diff_files)
        differing.extend(
            prefix + name for name in cmp.funny_files if not same_link(Path(cmp.left, name), Path(cmp.right, name))
        )
        for name, sub in cmp.subdirs.items():
            walk(sub, f"{prefix}{name}/")

    walk(mismatch)
    # dircmp compares by stat signature first: confirm byte for byte
    for case in hi.load_cases():
        committed, fresh = hi.CASES / case["file"], tmp_path / "cases" / case["file"]
        if committed.is_symlink() or fresh.is_symlink():
            if not same_link(committed, fresh):
                differing.append(case["file"])
        elif committed.is_file() and committed.read_bytes() != fresh.read_bytes():
            differing.append(case["file"])
    assert differing == [], "rerun tests/hostile/make_cases.py and commit tests/hostile/cases"


def test_the_corpus_is_commit_sized():
    sizes = {p.relative_to(hi.CASES): p.lstat().st_size for p in hi.CASES.rglob("*") if p.is_file() or p.is_symlink()}
    assert max(sizes.values()) < 100_000 and sum(sizes.values()) < 1_000_000


@pytest.fixture(scope="module")
def model():
    with warnings.catch_warnings():  # the 90-megapixel case makes Pillow warn before we refuse
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        yield qsenn_runtime.load(hi.CASES / hi.GOOD_MODEL)


@pytest.mark.parametrize("case", INPUT_CASES, ids=ids(INPUT_CASES))
def test_library(case, model):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        outcome = hi.library_outcome(case, model)
    assert outcome.as_expected, (outcome.error, outcome.output)


def test_exif_orientation_is_applied():
    (case,) = [c for c in hi.load_cases(kind="image") if "upright_size" in c]
    assert list(load_rgb(hi.CASES / case["file"], "x").size) == case["upright_size"]


def test_qsenn_predict_on_every_image_case():
    cases = hi.load_cases(kind="image")
    outcomes = hi.cli_predict_images(cases)
    assert outcomes[0].exit_code == 1  # some images could not be used: exit 1, the rest predicted
    assert [o.case["file"] for o in outcomes if not o.as_expected] == [], outcomes[0].output
    failed = sum(c["expect"] is not None for c in cases)
    assert outcomes[0].output.strip() == f"error: {failed} of {len(cases)} images could not be used (see above)"


@pytest.mark.parametrize("command", ["predict", "inspect"])
@pytest.mark.parametrize("case", MODEL_CASES, ids=ids(MODEL_CASES))
def test_qsenn_predict_and_inspect_on_every_model_case(case, command):
    """inspect refuses what predict refuses (but for what only a backend can find)."""
    outcome = hi.cli_model(case, command)
    assert not outcome.wrong_exit_code, outcome.output
    assert outcome.as_expected, outcome.output


@pytest.mark.parametrize(
    ("case", "command"), CHECKPOINT_RUNS, ids=[f"{c['file']}-{command}" for c, command in CHECKPOINT_RUNS]
)
def test_every_command_reading_checkpoints_on_every_damaged_checkpoint(case, command, tmp_path):
    outcome = hi.cli_checkpoint(case, command, tmp_path)
    assert not outcome.wrong_exit_code and outcome.as_expected, (outcome.error, outcome.output)
    assert outcome.left_behind == []


@pytest.mark.slow
@pytest.mark.parametrize("case", DATASET_CASES, ids=ids(DATASET_CASES))
def test_qsenn_train_on_every_dataset_case(case, tmp_path):
    outcome = hi.cli_train_dataset(case, tmp_path / "runs")
    assert outcome.exit_code == 2, outcome.output
    assert outcome.as_expected, outcome.output
    assert outcome.left_behind == []


def test_an_extreme_aspect_ratio_costs_no_more_than_a_normal_image():
    """A 1×4000 sliver for a 448 px model: the resized image is never materialised (it would be
    448×1.8 M px, 2.4 GB), and the crop matches the full resize to within 1/255."""
    spec = InputSpec(448, "shorter", None, None)
    sliver = Image.fromarray(np.random.default_rng(0).integers(0, 256, (4000, 1, 3), dtype=np.uint8))
    start = time.perf_counter()
    assert resize_and_crop(sliver, spec).size == (448, 448)
    assert time.perf_counter() - start < 2  # 26 s when the intermediate was materialised
    thin = Image.fromarray(np.random.default_rng(1).integers(0, 256, (900, 9, 3), dtype=np.uint8))
    small = InputSpec(32, "shorter", None, None)
    full = thin.resize((32, 3200), Image.Resampling.BILINEAR).crop((0, 1584, 32, 1616))
    diff = np.abs(np.asarray(resize_and_crop(thin, small), int) - np.asarray(full, int))
    assert diff.max() <= 1


# ---- property-based ------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)
VALID = json.loads(toy_metadata().to_json())


def _mutations():
    """Valid metadata with fields replaced, removed or nested values swapped for arbitrary JSON."""
    keys = st.sampled_from(sorted(VALID))
    replace = st.tuples(st.just("replace"), keys, json_values)
    drop = st.tuples(st.just("drop"), keys, st.none())
    nested = st.tuples(st.just("input"), st.sampled_from(sorted(VALID["input"])), json_values)
    return st.lists(replace | drop | nested, min_size=1, max_size=3)


def _parse(text) -> None:
    try:
        metadata = ModelMetadata.from_json(text)
    except MetadataError as exc:
        assert "\n" not in str(exc)
        return
    assert isinstance(metadata, ModelMetadata)
    metadata.validate()


@settings(max_examples=300, deadline=None)
@given(json_values)
def test_arbitrary_json_is_metadata_or_a_metadata_error(value):
    _parse(json.dumps(value))
    _parse(json.dumps({"format": "qsenn", "format_version": 1, "x": value}))


@settings(max_examples=300, deadline=None)
@given(_mutations())
def test_mutated_metadata_is_metadata_or_a_metadata_error(changes):
    d = json.loads(json.dumps(VALID))
    for how, key, value in changes:
        if how == "replace":
            d[key] = value
        elif how == "drop":
            d.pop(key, None)
        elif isinstance(d.get("input"), dict):
            d["input"][key] = value
    _parse(json.dumps(d))


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_are_metadata_or_a_metadata_error(blob):
    _parse(blob)


PIL_MODES = (
    "1",
    "L",
    "P",
    "RGB",
    "RGBA",
    "RGBX",
    "CMYK",
    "YCbCr",
    "LAB",
    "HSV",
    "I",
    "F",
    "I;16",
    "LA",
    "PA",
    "La",
    "RGBa",
)
FORMATS = ("PNG", "JPEG", "BMP", "TIFF", "GIF", "WEBP", None)  # None: pass the PIL image itself
SIZE = 32


def _preprocess(source) -> np.ndarray:
    return to_chw(resize_and_crop(load_rgb(source, "input"), InputSpec(SIZE, "shorter", None, None)))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    mode=st.sampled_from(PIL_MODES),
    width=st.integers(1, 300),
    height=st.integers(1, 300),
    fmt=st.sampled_from(FORMATS),
    seed=st.integers(0, 2**16),
    cut=st.integers(0, 100),
)
def test_any_image_is_a_float_crop_or_an_input_error(mode, width, height, fmt, seed, cut):
    """Any mode and size, encoded in any format (or cut short): a 3×S×S float32 in [0, 1] or an
    InputError, never another exception."""
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 4), dtype=np.uint8)
    img = Image.frombytes("RGBA", (width, height), pixels.tobytes()).convert(mode)
    source = img
    if fmt is not None:
        buffer = io.BytesIO()
        try:
            img.save(buffer, fmt)
        except (OSError, ValueError, KeyError):
            return  # Pillow cannot write this mode in this format
        data = buffer.getvalue()
        source = data[: max(1, len(data) * cut // 100)] if cut < 100 else data
    try:
        out = _preprocess(source)
    except InputError as exc:
        assert "\n" not in str(exc)
        return
    assert out.shape == (3, SIZE, SIZE) and out.dtype == np.float32
    assert np.isfinite(out).all() and out.min() >= 0 and out.max() <= 1


@settings(max_examples=150, deadline=None)
@given(
    shape=st.lists(st.integers(0, 40), min_size=0, max_size=4),
    dtype=st.sampled_from(
        ["uint8", "int8", "uint16", "int32", "int64", "float16", "float32", "float64", "bool", "complex64"]
    ),
    fill=st.sampled_from(["random", "nan", "inf", "big", "negative"]),
    seed=st.integers(0, 2**16),
)
def test_any_array_is_a_float_crop_or_an_input_error(shape, dtype, fill, seed):
    rng = np.random.default_rng(seed)
    values = {
        "random": rng.random(shape),
        "nan": np.full(shape, np.nan),
        "inf": np.full(shape, np.inf),
        "big": np.full(shape, 1e6),
        "negative": -rng.random(shape),
    }[fill]
    with np.errstate(invalid="ignore", over="ignore"):
        array = values.astype(dtype) if dtype != "uint8" else (values * 255).astype(dtype)
    try:
        out = _preprocess(array)
    except InputError as exc:
        assert "\n" not in str(exc)
        return
    assert out.shape == (3, SIZE, SIZE) and out.dtype == np.float32
    assert out.min() >= 0 and out.max() <= 1
