"""The export-format table: option validation, precisions and tolerances, help text."""

from __future__ import annotations

from pathlib import Path

import pytest

from qsenn_bench.backend_table import BASELINE_BACKEND, BENCH_BACKENDS
from qsenn_export.errors import ExportError
from qsenn_export.formats import (
    FORMATS,
    OPTION_FLAGS,
    TRITON_MODEL_FORMATS,
    formats_taking,
    help_table,
    make_options,
    validate,
)


@pytest.mark.parametrize(
    "fmt, values, message",
    [
        ("onnx", {"int8": True}, "--int8 needs --calib DIR"),
        ("onnx", {"calib": Path("c")}, "--calib is only used with --int8"),
        ("onnx", {"half": True}, "--half is not available for ONNX export; formats that take it: trt, triton-trt"),
        ("triton", {"half": True}, "--half is not available for Triton repo (ONNX) export"),
        ("onnx", {"name": "x"}, "--name is not available for ONNX export; formats that take it: triton, triton-trt"),
        ("onnx", {"workspace": 2.0}, "--workspace is not available for ONNX"),
        ("trt", {"int8": True}, "--int8 needs --calib DIR"),
        ("trt", {"calib": Path("c")}, "--calib is only used with --int8"),
        ("onnx", {"batch": 0}, "--batch must be at least 1"),
        ("trt", {"workspace": -1.0}, "--workspace must be a positive"),
        ("onnx", {"verify_count": 0}, "--verify-count must be at least 1"),
        ("onnx", {"verify": False, "verify_images": Path("d")}, "no effect with --no-verify"),
        ("tflite", {}, "unknown export format 'tflite'; choose one of onnx, trt"),
    ],
)
def test_refused_options_say_why(fmt, values, message):
    with pytest.raises(ExportError) as exc:
        validate(make_options(fmt, **values))
    assert message in str(exc.value) and "\n" not in str(exc.value)


@pytest.mark.parametrize(
    "fmt, values",
    [
        ("onnx", {}),
        ("onnx", {"batch": 4}),
        ("trt", {}),
        ("trt", {"half": True, "batch": 8, "workspace": 2.0}),
        ("trt", {"int8": True, "calib": Path("c")}),
        ("onnx", {"int8": True, "calib": Path("c"), "batch": 1}),
        ("triton", {"batch": 8, "name": "birds"}),
        ("triton-trt", {"half": True, "name": "birds"}),
    ],
)
def test_accepted_options(fmt, values):
    validate(make_options(fmt, **values))


def test_precision_selects_the_tolerance():
    assert make_options("onnx").precision == "fp32"
    assert make_options("onnx").tolerance.rel == 1e-4
    assert make_options("trt").precision == "fp32"
    assert make_options("trt", half=True).tolerance.rel == 2e-2
    int8 = make_options("trt", int8=True, calib=Path("c"))
    assert int8.precision == "int8" and int8.tolerance.argmax == 0.99
    # ONNX INT8: loose logits, but the float head keeps the identity and argmax ties at fp32 bounds.
    onnx_int8 = make_options("onnx", int8=True, calib=Path("c")).tolerance
    assert onnx_int8.argmax == 0.99 and onnx_int8.top_features == 0.95
    assert onnx_int8.rel > 1e-2 and onnx_int8.identity_rel == onnx_int8.tie_rel == 1e-4
    assert make_options("onnx").tolerance.identity_rel == make_options("onnx").tolerance.tie_rel == 1e-4


def test_table_drives_the_help_text():
    table = help_table()
    for f in FORMATS.values():
        assert f.suffix in table and f"qsenn[{f.extra}]" in table
    assert "int8 0.25 argmax≥99% top-5 features≥95%" in table
    assert formats_taking("half") == ["trt", "triton-trt"]
    assert (
        formats_taking("batch")
        == formats_taking("int8")
        == formats_taking("calib")
        == [
            "onnx",
            "trt",
            "triton",
            "triton-trt",
        ]
    )
    assert formats_taking("name") == ["triton", "triton-trt"]
    assert all(option in OPTION_FLAGS for f in FORMATS.values() for option in f.options)


def test_bench_backends_come_from_the_table():
    """Every artifact backend of `qsenn bench` names a format and precision of the table, every
    format is benchmarked, and the PyTorch baseline comes first."""
    assert next(iter(BENCH_BACKENDS)) == BASELINE_BACKEND == "torch"
    for backend in BENCH_BACKENDS.values():
        assert backend.devices and set(backend.devices) <= {"CPU", "GPU"}
        if backend.format is not None:
            fmt = FORMATS[backend.format]
            assert backend.precision in fmt.tolerances
            assert set(backend.devices) <= set(fmt.devices)
    # A Triton repository holds an onnx or trt artifact: those are benchmarked as such.
    benchmarked = {b.format for b in BENCH_BACKENDS.values() if b.format}
    assert benchmarked == set(FORMATS) - set(TRITON_MODEL_FORMATS)
    assert set(TRITON_MODEL_FORMATS.values()) <= benchmarked
    assert {b.name for b in BENCH_BACKENDS.values() if b.format == "onnx"} == {"onnx", "onnx-int8"}
    assert BENCH_BACKENDS["onnx-int8"].devices == ("CPU",)
