"""The export-format table: option validation, precisions and tolerances, help text."""
from __future__ import annotations

from pathlib import Path

import pytest

from qsenn_export.formats import FORMATS, OPTION_FLAGS, formats_taking, help_table, make_options, validate
from qsenn_train.errors import QsennError


@pytest.mark.parametrize("fmt, values, message", [
    ("onnx", {"int8": True, "calib": Path("c")}, "--int8 is not available for ONNX export; formats that take it: trt"),
    ("onnx", {"int8": True}, "--int8 is not available for ONNX export; formats that take it: trt"),
    ("onnx", {"half": True}, "--half is not available for ONNX export; formats that take it: trt"),
    ("onnx", {"workspace": 2.0}, "--workspace is not available for ONNX"),
    ("trt", {"int8": True}, "--int8 needs --calib DIR"),
    ("trt", {"calib": Path("c")}, "--calib is only used with --int8"),
    ("onnx", {"batch": 0}, "--batch must be at least 1"),
    ("trt", {"workspace": -1.0}, "--workspace must be a positive"),
    ("onnx", {"verify_count": 0}, "--verify-count must be at least 1"),
    ("onnx", {"verify": False, "verify_images": Path("d")}, "no effect with --no-verify"),
    ("tflite", {}, "unknown export format 'tflite'; choose one of onnx, trt"),
])
def test_refused_options_say_why(fmt, values, message):
    with pytest.raises(QsennError) as exc:
        validate(make_options(fmt, **values))
    assert message in str(exc.value) and "\n" not in str(exc.value)


@pytest.mark.parametrize("fmt, values", [
    ("onnx", {}), ("onnx", {"batch": 4}), ("trt", {}), ("trt", {"half": True, "batch": 8, "workspace": 2.0}),
    ("trt", {"int8": True, "calib": Path("c")}),
])
def test_accepted_options(fmt, values):
    validate(make_options(fmt, **values))


def test_precision_selects_the_tolerance():
    assert make_options("onnx").precision == "fp32"
    assert make_options("onnx").tolerance.rel == 1e-4
    assert make_options("trt").precision == "fp32"
    assert make_options("trt", half=True).tolerance.rel == 2e-2
    int8 = make_options("trt", int8=True, calib=Path("c"))
    assert int8.precision == "int8" and int8.tolerance.argmax == 0.99


def test_table_drives_the_help_text():
    table = help_table()
    for f in FORMATS.values():
        assert f.suffix in table and f"qsenn[{f.extra}]" in table
    assert formats_taking("half") == ["trt"] and formats_taking("batch") == ["onnx", "trt"]
    assert all(option in OPTION_FLAGS for f in FORMATS.values() for option in f.options)
