"""No file that qsenn reads can run code: every checkpoint load is `weights_only=True`, a
checkpoint carrying a code-running pickle is refused by every command that reads checkpoints,
and the runtime never unpickles anything."""

from __future__ import annotations

import ast
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_runner import run_cli

from qsenn_train.errors import QsennError

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("qsenn_train", "qsenn_export", "qsenn_runtime")
UNPICKLING_MODULES = {"pickle", "_pickle", "cPickle", "dill", "cloudpickle", "joblib", "shelve", "marshal", "torch"}


def sources(*packages: str) -> list[Path]:
    return [path for package in packages for path in sorted((REPO / package).rglob("*.py"))]


def dotted(node: ast.AST) -> str:
    """`torch.load` for the expression torch.load (attribute chains of names), else ''."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    return ".".join([node.id, *reversed(parts)]) if isinstance(node, ast.Name) else ""


def calls(path: Path):
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Call):
            yield node, dotted(node.func), {k.arg: k.value for k in node.keywords}


def is_true(node: ast.AST | None) -> bool:
    return isinstance(node, ast.Constant) and node.value is True


def test_every_torch_load_is_weights_only():
    found, unsafe = [], []
    for path in sources(*PACKAGES) + [REPO / "cli.py"]:
        text = path.read_text(encoding="utf-8")
        assert "from torch import load" not in text, path
        for node, name, keywords in calls(path):
            if name == "torch.load":
                found.append(f"{path.name}:{node.lineno}")
                if not is_true(keywords.get("weights_only")):
                    unsafe.append(f"{path.relative_to(REPO)}:{node.lineno}")
            if name in ("pickle.load", "pickle.loads", "pickle.Unpickler"):
                unsafe.append(f"{path.relative_to(REPO)}:{node.lineno} ({name})")
            if name.endswith("np.load") and is_true(keywords.get("allow_pickle")):
                unsafe.append(f"{path.relative_to(REPO)}:{node.lineno} (allow_pickle)")
    # One reader (qsenn_train/torchfile.py) serves run directories, checkpoints, pretrained
    # weights and reference imports, so its checks and its one-line errors hold for all of them.
    assert [f.split(":")[0] for f in found] == ["torchfile.py"], found
    assert unsafe == []


def test_the_runtime_has_no_way_to_unpickle():
    """No import of a module that unpickles (or of torch) and no np.load at all in qsenn_runtime."""
    offenders = []
    for path in sources("qsenn_runtime"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name.split(".")[0] for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [(node.module or "").split(".")[0]]
            else:
                names = []
            offenders += [f"{path.name}:{node.lineno} imports {n}" for n in names if n in UNPICKLING_MODULES]
        offenders += [
            f"{path.name}:{node.lineno} calls {name}"
            for node, name, _ in calls(path)
            if name.split(".")[-1] == "load" and name.split(".")[0] in ("np", "numpy")
        ]
    assert offenders == []


# ---- code-carrying checkpoints are refused ------------------------------------------------


class Payload:
    """Unpickled by a full unpickler, this creates the file `marker`."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').close()",)


@pytest.fixture
def evil(tmp_path):
    """(a torch.save file whose state dict carries the payload, the marker it would create)."""
    marker = tmp_path / "code-ran"
    path = tmp_path / "evil.pt"
    torch.save({"format": "qsenn.model", "state_dict": {"w": torch.ones(2)}, "x": Payload(marker)}, path)
    torch.load(path, weights_only=False)  # the payload is live: a full unpickler runs it
    assert marker.exists()
    marker.unlink()
    return path, marker


def assert_refused(code: int, err: str, marker: Path, match: str) -> None:
    assert code == 2 and err.startswith("error: ") and match in err, err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not marker.exists()


def test_export_refuses_a_code_carrying_checkpoint(evil, capsys, tmp_path):
    path, marker = evil
    code, _, err = run_cli(capsys, "export", path, "--out", tmp_path / "m.onnx")
    assert_refused(code, err, marker, "refusing to load")
    run = _run_whose_model_is(path, tmp_path / "run")  # the same through a run directory
    code, _, err = run_cli(capsys, "export", run, "--out", tmp_path / "m.onnx")
    assert_refused(code, err, marker, "refusing to load")
    assert not (tmp_path / "m.onnx").exists()


def _run_whose_model_is(payload: Path, run_dir: Path) -> Path:
    """A finished run whose registered Q-SENN checkpoint is `payload`, recorded in the manifest
    (so only the safe loader stands between the file and the unpickler)."""
    from qsenn_bench.testing.toy_models import fake_run, ternary_model
    from qsenn_train.run import Run

    fake_run(run_dir, {"qsenn": ternary_model()})
    run = Run(run_dir)
    run.files.save_with(run.entry("qsenn").checkpoint, lambda tmp: tmp.write_bytes(payload.read_bytes()))
    return run_dir


def test_import_reference_refuses_a_code_carrying_checkpoint(evil, capsys, tmp_path):
    path, marker = evil
    code, _, err = run_cli(
        capsys,
        "import-reference",
        path,
        "--dataset",
        "CUB2011",
        "--data-root",
        tmp_path / "nowhere",
        "--out",
        tmp_path / "x.pt",
    )
    assert_refused(code, err, marker, "holds a pickled model object")


def test_evaluate_refuses_a_code_carrying_final_model(evil, tmp_path):
    from qsenn_train.pipeline import evaluate_run

    path, marker = evil
    run = _run_whose_model_is(path, tmp_path / "runs" / "resnet10" / "synth" / "5")
    with pytest.raises(QsennError, match="refusing to load .*/model.pt") as info:
        evaluate_run(run, tmp_path / "data", device="cpu", echo=lambda line: None)
    assert "\n" not in str(info.value) and not marker.exists()


def test_run_directory_refuses_a_code_carrying_result(tmp_path):
    from qsenn_train.rundir import RunDir

    marker = tmp_path / "code-ran"
    run = RunDir(tmp_path / "run", echo=lambda line: None)
    run.save_torch("iter0/head.pt", {"ternary": torch.zeros(2, 2), "x": Payload(marker)})
    with pytest.raises(QsennError, match="refusing to load .*head.pt"):
        run.load_torch("iter0/head.pt")
    assert not marker.exists()


def test_garbage_is_not_called_code(tmp_path, capsys):
    (tmp_path / "noise.pt").write_bytes(b"garbage, not a checkpoint")
    code, _, err = run_cli(capsys, "export", tmp_path / "noise.pt")
    assert code == 2 and "is not a torch.save file, or a corrupt one" in err


# ---- the runtime ---------------------------------------------------------------------------


@pytest.mark.parametrize("content", ["pickle", "torch.save"])
def test_a_model_file_holding_a_pickle_is_refused(tmp_path, capsys, content):
    from PIL import Image

    import qsenn_runtime

    marker = tmp_path / "code-ran"
    model = tmp_path / "model.onnx"
    if content == "pickle":
        model.write_bytes(pickle.dumps(Payload(marker)))
    else:
        torch.save({"x": Payload(marker)}, model)
    with pytest.raises(qsenn_runtime.MetadataError, match="neither an ONNX model nor a qsenn engine"):
        qsenn_runtime.load(model)
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    for command in (["predict", model, tmp_path / "a.png"], ["inspect", model]):
        code, _, err = run_cli(capsys, *command)
        assert_refused(code, err, marker, "neither an ONNX model nor a qsenn engine")


def test_prediction_never_calls_the_unpickler(tmp_path, monkeypatch):
    """Loading a model and predicting (path, bytes, array) with every unpickling entry point
    booby-trapped."""
    from PIL import Image

    import qsenn_runtime
    from qsenn_bench.testing.toy_onnx import save_toy_model

    def trap(*args, **kwargs):
        raise AssertionError("the runtime unpickled something")

    for name in ("load", "loads", "Unpickler"):
        monkeypatch.setattr(pickle, name, trap)
    monkeypatch.setattr(np, "load", trap)
    save_toy_model(tmp_path / "toy.onnx")
    image = Image.new("RGB", (40, 30), (10, 200, 30))
    image.save(tmp_path / "a.png")
    model = qsenn_runtime.load(tmp_path / "toy.onnx")
    results = model.predict([str(tmp_path / "a.png"), (tmp_path / "a.png").read_bytes(), np.asarray(image)])
    assert all(result.ok for result in results)
