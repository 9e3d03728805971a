"""`qsenn export` and `qsenn import-reference` end to end through the command line."""

from __future__ import annotations

import sys

import onnx
import pytest
import torch
from cli_runner import run_cli
from click.testing import CliRunner

import cli
from qsenn_bench.testing.toy_models import save_checkpoint, ternary_model
from qsenn_export.errors import ExportError
from qsenn_train.data.layouts import load_synth_splits
from qsenn_train.data.synth import SynthSpec, generate

SYNTH = SynthSpec(n_classes=4, train_per_class=2, test_per_class=3, image_size=32, seed=0)


@pytest.fixture(scope="module")
def synth_checkpoint(tmp_path_factory):
    """A checkpoint whose dataset info points at a real (tiny) synthetic dataset."""
    folder = tmp_path_factory.mktemp("cli")
    info = load_synth_splits(generate(SYNTH, folder / "data"))[2]
    return save_checkpoint(ternary_model(num_classes=4), folder / "model.pt", info=info)


def test_export_a_checkpoint_file_verifies_on_its_test_images(synth_checkpoint):
    result = CliRunner().invoke(cli.qsenn, ["export", str(synth_checkpoint), "--verify-count", "5"])
    assert result.exit_code == 0, result.output
    verified = next(line for line in result.output.splitlines() if line.startswith("verified on"))
    assert verified.startswith("verified on 5 test images of synth:") and verified.endswith("— OK")
    model = onnx.load(str(synth_checkpoint.with_suffix(".onnx")))
    assert any(p.key == "qsenn" for p in model.metadata_props)


def test_refused_option_exits_2_with_one_line(synth_checkpoint, monkeypatch, capsys):
    code, out, err = run_cli(capsys, "export", str(synth_checkpoint), "--half")
    assert code == 2 and out == ""
    assert err == "error: --half is not available for ONNX export; formats that take it: trt, triton-trt\n"


def test_int8_without_calibration_images_is_refused(synth_checkpoint, monkeypatch, capsys):
    code, out, err = run_cli(capsys, "export", str(synth_checkpoint), "--int8")
    assert code == 2 and out == "" and err.startswith("error: --int8 needs --calib DIR") and err.count("\n") == 1
    assert not synth_checkpoint.with_suffix(".int8.onnx").exists()


def test_trt_without_tensorrt_exits_2_and_writes_nothing(synth_checkpoint, monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    out_file = tmp_path / "m.engine"
    code, _, err = run_cli(capsys, "export", str(synth_checkpoint), "--format", "trt", "--out", str(out_file))
    assert code == 2 and "pip install 'qsenn[trt]'" in err and err.count("\n") == 1
    assert not out_file.exists() and list(tmp_path.iterdir()) == []


def test_missing_source_is_a_user_error(tmp_path):
    result = CliRunner().invoke(cli.qsenn, ["export", str(tmp_path / "nothing")])
    assert result.exit_code != 0 and isinstance(result.exception, ExportError)
    assert "does not exist" in str(result.exception)


def test_import_reference_then_export(tmp_path):
    torch.save(ternary_model(num_classes=3, n_features=4).state_dict(), tmp_path / "ref.pth")
    (tmp_path / "names.txt").write_text("a\nb\nc\n")
    runner = CliRunner()
    result = runner.invoke(
        cli.qsenn,
        [
            "import-reference",
            str(tmp_path / "ref.pth"),
            "--dataset",
            "CUB2011",
            "--class-names",
            str(tmp_path / "names.txt"),
            "--img-size",
            "32",
            "--data-root",
            str(tmp_path),
            "--out",
            str(tmp_path / "imported.pt"),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "resnet10, 3 classes, 4 features" in result.output
    result = runner.invoke(cli.qsenn, ["export", str(tmp_path / "imported.pt"), "--verify-count", "3"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "imported.onnx").is_file()
