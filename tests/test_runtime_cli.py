"""`qsenn predict | explain | inspect`, the report formats, and the torch-free guarantee."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from cli_runner import run_cli
from PIL import Image

from qsenn_bench.testing.toy_onnx import save_toy_model, toy_metadata
from qsenn_runtime.metadata import Feature
from qsenn_runtime.report import FORMATS, render

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli")
    save_toy_model(folder / "toy.onnx")
    rng = np.random.default_rng(0)
    for name, (width, height) in {"a.png": (60, 40), "b.jpg": (40, 70)}.items():
        Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(folder / name)
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really")
    return folder


def test_predict_table_and_json(files, capsys):
    code, out, err = run_cli(
        capsys, "predict", files / "toy.onnx", files / "a.png", files / "b.jpg", "--top-k", "1", "--batch-size", "1"
    )
    assert code == 0 and err == ""
    header, rule, *rows = out.splitlines()
    assert header.split() == ["image", "class", "probability", "contributions"]
    assert len(rows) == 2 and rows[0].startswith(str(files / "a.png"))
    assert "logit" in rows[0] and "bias" in rows[0] and "… " in rows[0]
    code, out, _ = run_cli(capsys, "predict", files / "toy.onnx", files / "a.png", "--json", "--class", "0")
    (entry,) = json.loads(out)
    assert code == 0 and entry["source"] == str(files / "a.png")
    assert 0 in [e["class_index"] for e in entry["explanations"]]


def test_predict_exits_non_zero_when_an_image_fails(files, capsys):
    code, out, err = run_cli(
        capsys, "predict", files / "toy.onnx", files / "a.png", files / "broken.jpg", files / "missing.png", "--json"
    )
    entries = json.loads(out)
    assert code == 1 and "2 of 3 images could not be used" in err
    assert [("error" in e) for e in entries] == [False, True, True]
    code, out, _ = run_cli(capsys, "predict", files / "toy.onnx", files / "broken.jpg")
    assert code == 1 and "ERROR" in out and "corrupt or truncated" in out


def test_model_errors_are_one_line(files, capsys):
    code, _, err = run_cli(capsys, "predict", files / "a.png", files / "a.png")
    assert code == 2 and err.startswith("error: ") and "neither an ONNX model" in err
    assert err.count("\n") == 1
    code, _, err = run_cli(capsys, "predict", files / "toy.onnx", files / "a.png", "--provider", "nosuch")
    assert code == 2 and "'nosuch' is not available; available: " in err
    code, _, err = run_cli(
        capsys, "explain", files / "toy.onnx", files / "a.png", "--out", files / "x.png", "--class", "no such"
    )
    assert code == 2 and "unknown class 'no such'" in err


def test_explain_writes_a_png(files, capsys):
    out_png = files / "explained" / "a.png"
    code, out, _ = run_cli(
        capsys, "explain", files / "toy.onnx", files / "a.png", "--out", out_png, "--top-k", "2", "--class", "class 1"
    )
    assert code == 0 and "explained class class 1" in out
    with Image.open(out_png) as picture:
        assert picture.format == "PNG" and picture.width > 600 and picture.height > 300


def test_explain_without_matplotlib_names_the_extra(files):
    code = (
        "import sys; sys.modules['matplotlib'] = None; "
        f"sys.argv = ['qsenn', 'explain', {str(files / 'toy.onnx')!r}, {str(files / 'a.png')!r}, "
        f"'--out', {str(files / 'never.png')!r}]; import cli; cli.main()"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 2
    assert "needs matplotlib: pip install 'qsenn[plot]'" in result.stderr


@pytest.mark.parametrize("fmt", FORMATS)
def test_inspect_formats(files, capsys, fmt):
    code, out, _ = run_cli(capsys, "inspect", files / "toy.onnx", "--format", fmt)
    assert code == 0 and "class 3" in out
    if fmt == "json":
        data = json.loads(out)
        assert len(data["classes"]) == 4 and data["model"]["features"] == 6


def test_report_escapes_names():
    metadata = toy_metadata(num_classes=2, num_features=2)
    odd = type(metadata)(
        **{
            **metadata.__dict__,
            "class_names": ("a|b", "<script>"),
            "features": (Feature(0, 1, "x|y"), Feature(1, 4, "<b>")),
        }
    )
    assert "a\\|b" in render(odd, "markdown") and "x\\|y" in render(odd, "markdown")
    page = render(odd, "html")
    assert "&lt;script&gt;" in page and "<script>" not in page
    rules = json.loads(render(odd, "json"))["classes"]
    assert {f["name"] for r in rules for f in r["positive"] + r["negative"]} <= {"x|y", "<b>"}


def test_predict_never_imports_torch(files):
    """In a fresh process: the library path and the `qsenn predict` path leave torch unloaded."""
    code = f"""
import sys, time
start = time.perf_counter()
import qsenn_runtime
model = qsenn_runtime.load({str(files / "toy.onnx")!r})
ready = time.perf_counter() - start
model.predict({str(files / "a.png")!r})
assert 'torch' not in sys.modules, 'the runtime imported torch'
sys.argv = ['qsenn', 'predict', {str(files / "toy.onnx")!r}, {str(files / "b.jpg")!r}, '--json']
import cli
cli.main()
assert 'torch' not in sys.modules, 'qsenn predict imported torch'
print('import+load seconds', round(ready, 3), file=sys.stderr)
"""
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)[0]["source"].endswith("b.jpg")
    print(result.stderr.strip())  # the import time, shown with pytest -s
