"""Error lines that name the real problem: a symbolic link loop is no missing file, a pixel limit
is one number, an engine's bad metadata names the engine, a checkpoint given to `predict` and an
export given to `export` are called what they are, and torch's warnings stay out of the line."""

from __future__ import annotations

import json
import pickle
import warnings

import pytest
from cli_runner import run_cli
from PIL import Image

from qsenn_bench.testing.toy_models import save_checkpoint, ternary_model
from qsenn_bench.testing.toy_onnx import save_toy_model, toy_metadata
from qsenn_runtime.engine_file import MAGIC, pack_engine
from qsenn_runtime.limits import MAX_IMAGE_PIXELS


@pytest.fixture
def model(tmp_path):
    path = tmp_path / "model.onnx"
    save_toy_model(path)
    return path


@pytest.fixture
def image(tmp_path):
    path = tmp_path / "a.png"
    Image.new("RGB", (40, 30), "red").save(path)
    return path


def one_error_line(capsys, *args) -> str:
    code, _, err = run_cli(capsys, *args)
    assert code == 2 and err.count("\n") == 1 and err.startswith("error: "), err
    assert "Traceback" not in err and "Warning" not in err
    return err.strip().removeprefix("error: ")


def test_a_symbolic_link_loop_is_called_one(capsys, tmp_path, model, image):
    loop = tmp_path / "loop.onnx"
    loop.symlink_to(loop)
    assert one_error_line(capsys, "predict", loop, image) == f"model file {loop} is a symbolic link loop"
    assert one_error_line(capsys, "inspect", loop) == f"model file {loop} is a symbolic link loop"
    looped_image = tmp_path / "loop.png"
    looped_image.symlink_to(looped_image)
    code, out, err = run_cli(capsys, "predict", model, looped_image, "--json")
    assert code == 1 and f'"error": "{looped_image}: a symbolic link loop"' in out
    checkpoint = tmp_path / "loop.pt"
    checkpoint.symlink_to(checkpoint)
    assert one_error_line(capsys, "export", checkpoint).startswith(f"{checkpoint} is a symbolic link loop")


def test_the_pixel_limit_is_quoted_as_one_number(capsys, model, tmp_path):
    """Over the runtime's limit and over Pillow's own refusal alike: the runtime's limit."""
    from qsenn_bench.testing.hostile_inputs import generator

    make_cases = generator()
    huge, bigger = tmp_path / "huge.png", tmp_path / "bigger.png"
    huge.write_bytes(make_cases.constant_bilevel_png(9_500))  # 90 Mpx: over ours, under Pillow's refusal
    bigger.write_bytes(make_cases.constant_bilevel_png(20_000))  # 400 Mpx: Pillow refuses by itself
    code, out, _ = run_cli(capsys, "predict", model, huge, bigger, "--json")
    assert code == 1
    assert out.count(f"exceed the limit of {MAX_IMAGE_PIXELS:,} pixels") == 2, out
    assert "178956970" not in out and "178,956,970" not in out and "89,478,485" not in out


def test_the_limit_is_an_option(capsys, model, image):
    code, out, _ = run_cli(capsys, "predict", model, image, "--max-image-pixels", "100", "--json")
    assert code == 1 and "40×30 = 1,200 pixels exceed the limit of 100 pixels" in json.loads(out)[0]["error"]
    code, _, _ = run_cli(capsys, "predict", model, image, "--max-image-pixels", "0", "--max-image-bytes", "0")
    assert code == 0


def test_an_engine_whose_metadata_is_not_json_is_named(capsys, tmp_path, image):
    engine = tmp_path / "m.engine"
    text = b"{not json"
    engine.write_bytes(MAGIC + len(text).to_bytes(8, "little") + text + b"plan")
    for command in (["predict", engine, image], ["inspect", engine]):
        assert one_error_line(capsys, *command).startswith(f"{engine}: qsenn metadata is not valid JSON")


def test_a_garbage_plan_is_refused_by_inspect_as_by_predict(capsys, tmp_path, image):
    packed = pack_engine(toy_metadata().with_engine({"tensorrt": "10.3.0", "gpu": "x", "precision": "fp16"}), b"p" * 64)
    engine = tmp_path / "m.engine"
    engine.write_bytes(packed[:-64] + bytes(range(64)))
    for command in (["predict", engine, image], ["inspect", engine]):
        assert "its TensorRT plan is not the one packed (sha256 mismatch" in one_error_line(capsys, *command)


def test_a_training_checkpoint_given_to_predict_says_export_it(capsys, tmp_path, image):
    checkpoint = save_checkpoint(ternary_model(), tmp_path / "model.pt")
    for command in (["predict", checkpoint, image], ["inspect", checkpoint]):
        line = one_error_line(capsys, *command)
        assert f"it is a torch.save file (a training checkpoint); export it with `qsenn export {checkpoint}`" in line
        assert "protobuf" not in line


def test_torch_warnings_stay_out_of_the_error_line(capsys, tmp_path):
    """A protocol-4 pickle makes torch's weights-only loader warn before it fails; the warning
    must not be shown (pytest would capture it from stderr, so it is recorded here instead)."""
    path = tmp_path / "model.pt"
    path.write_bytes(pickle.dumps({"a": 1}, protocol=4)[:-3])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        line = one_error_line(capsys, "export", path)
    assert line.startswith(f"{path} is ")
    assert [str(w.message) for w in caught if "torch" in (w.filename or "")] == []
