"""A runtime-only install (`pip install 'qsenn[cpu]'`: no torch, no onnx, no matplotlib):
`qsenn --help` marks the commands that need an extra, each of them says in one line which one to
install, and the runtime's commands work. The CLI runs in a subprocess whose imports of the
missing packages fail as they would on such an install."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from qsenn_bench.testing.toy_onnx import save_toy_model

REPO = Path(__file__).resolve().parents[1]
NOT_INSTALLED = ("torch", "torchvision", "onnx", "onnxscript", "glm_saga", "tqdm", "scipy", "matplotlib")
# `None` in sys.modules makes `import torch` (and `import torch.nn`) raise ModuleNotFoundError.
RUN_CLI = "import sys; sys.modules.update(dict.fromkeys({blocked!r})); sys.argv = ['qsenn', *sys.argv[1:]]; import cli; cli.main()"


def qsenn(*args) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", RUN_CLI.format(blocked=NOT_INSTALLED), *map(str, args)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"},
    )


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("runtime-only")
    save_toy_model(folder / "model.onnx")
    Image.new("RGB", (40, 30), "red").save(folder / "a.png")
    (folder / "model.pt").write_bytes(b"")
    (folder / "run").mkdir()
    return folder


def test_the_blocked_packages_are_really_missing_there():
    result = subprocess.run(
        [sys.executable, "-c", f"import sys; sys.modules.update(dict.fromkeys({NOT_INSTALLED!r})); import torch"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 1 and "ModuleNotFoundError" in result.stderr


def test_help_marks_the_commands_that_need_an_extra():
    result = qsenn("--help")
    assert result.returncode == 0, result.stderr
    rows = {line.split()[0]: line for line in result.stdout.splitlines() if line.startswith("  ") and line.split()}
    assert "[train]" in rows["train"] and "[train,export]" in rows["export"] and "[train,export]" in rows["bench"]
    assert "[cpu]" in rows["predict"] and "[cpu,plot]" in rows["explain"] and "[" not in rows["inspect"]
    assert "pip install 'qsenn[train,export]'" in " ".join(result.stdout.split())


@pytest.mark.parametrize(
    ("args", "extras"),
    [
        (["train", "--recipe", "tiny", "--seed", "0"], "train"),
        (["evaluate", "{run}"], "train"),
        (["data", "examples"], "train"),
        (["export", "{pt}"], "train,export"),
        (["import-reference", "{pt}", "--dataset", "CUB2011", "--out", "{out}"], "train"),
        (["validate-run", "{run}"], "train,export,plot"),
        (["bench", "{pt}"], "train,export"),
    ],
)
def test_a_command_without_its_extra_names_the_pip_install(files, args, extras):
    fill = {"run": files / "run", "pt": files / "model.pt", "out": files / "out.pt"}
    result = qsenn(*(arg.format(**fill) for arg in args))
    command = " ".join(args[:2]) if args[0] == "data" else args[0]
    assert result.returncode == 2, result.stderr
    # the first missing package it imports (onnx for export: it is imported before torch)
    assert result.stderr in {
        f"error: `qsenn {command}` needs {module}, which is not installed: pip install 'qsenn[{extras}]'\n"
        for module in ("torch", "onnx")
    }, result.stderr
    assert not (files / "out.pt").exists()


def test_the_runtime_commands_work(files):
    assert qsenn("inspect", files / "model.onnx").returncode == 0
    result = qsenn("predict", files / "model.onnx", files / "a.png")
    assert result.returncode == 0, result.stderr
    assert "a.png" in result.stdout
    result = qsenn("explain", files / "model.onnx", files / "a.png", "--out", files / "x.png")
    assert result.returncode == 2
    assert result.stderr == "error: drawing explanations needs matplotlib: pip install 'qsenn[plot]'\n"
