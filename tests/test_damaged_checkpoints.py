"""A damaged checkpoint — empty (a failed download, a full disk), truncated, or random bytes —
given to any command that reads checkpoints: one `error:` line, exit 2, no traceback, and nothing
written, whether the file is given bare or is the registered model of a run (where the manifest's
sha256 refuses it; or, when it was saved damaged and the manifest matches it, the load does)."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest
from cli_runner import run_cli

from qsenn_bench.testing.toy_models import fake_run, save_checkpoint, ternary_model
from qsenn_runtime.errors import first_line as runtime_first_line
from qsenn_runtime.errors import path_problem as runtime_path_problem
from qsenn_train.errors import first_line, path_problem
from qsenn_train.rundir import MANIFEST, sha256_file

CHECKPOINT = "qsenn_6_2-0000000000/model.pt"  # the registered checkpoint of fake_run's qsenn model


def empty(good: bytes) -> bytes:
    return b""


def truncated(good: bytes) -> bytes:
    return good[: len(good) // 2]


def random_bytes(good: bytes) -> bytes:
    return hashlib.sha256(b"seed").digest() * 64  # 2 KiB, the same on every run


DAMAGE: dict[str, Callable[[bytes], bytes]] = {"empty": empty, "truncated": truncated, "random": random_bytes}
# What each damage is called in the one line (bare files and runs whose manifest matches).
SAID = {"empty": "is empty (0 bytes", "truncated": "is truncated or corrupt", "random": "is not a torch.save file"}


def snapshot(root: Path) -> dict[str, str]:
    """Every file below root (links as their target's name) and its content hash."""
    files = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        if path.is_symlink():
            files[rel] = "-> " + os.readlink(path)
        elif path.is_file():
            files[rel] = sha256_file(path)
    return files


def damage_file(path: Path, how: str) -> None:
    path.write_bytes(DAMAGE[how](path.read_bytes()))


def record_in_manifest(run_dir: Path, name: str) -> None:
    """As if the damaged file had been saved so: its manifest entry matches it."""
    manifest = json.loads((run_dir / MANIFEST).read_text())
    path = run_dir / name
    manifest[name] = {"sha256": sha256_file(path), "bytes": path.stat().st_size}
    (run_dir / MANIFEST).write_text(json.dumps(manifest))


def bare_checkpoint(tmp_path: Path, how: str) -> Path:
    path = save_checkpoint(ternary_model(), tmp_path / "model.pt")
    damage_file(path, how)
    return path


def damaged_run(tmp_path: Path, how: str, manifest_matches: bool) -> Path:
    run_dir = fake_run(tmp_path / "run", {"qsenn": ternary_model()})
    damage_file(run_dir / CHECKPOINT, how)
    if manifest_matches:
        record_in_manifest(run_dir, CHECKPOINT)
    return run_dir


def assert_one_line_refusal(capsys, tmp_path: Path, args: list, expected: str) -> None:
    before = snapshot(tmp_path)
    code, out, err = run_cli(capsys, *args)
    assert code == 2, (out, err)
    assert "Traceback" not in out + err and "Warning" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert expected in lines[0], lines[0]
    assert snapshot(tmp_path) == before, "the command wrote or changed files"


BARE_COMMANDS = {
    "import-reference": lambda path, out: [
        "import-reference",
        path,
        "--dataset",
        "CUB2011",
        "--data-root",
        out / "nowhere",
        "--out",
        out / "imported.pt",
    ],
    "export FILE": lambda path, out: ["export", path, "--out", out / "model.onnx"],
    "bench FILE": lambda path, out: ["bench", path, "--backends", "torch", "--no-memory", "--iters", "1"],
}
RUN_COMMANDS = {
    "export RUN": lambda run: ["export", run],
    "export RUN/final.pt": lambda run: ["export", run / "final.pt"],
    "evaluate": lambda run: ["evaluate", run, "--device", "cpu"],
    "validate-run": lambda run: ["validate-run", run],
    "bench RUN": lambda run: ["bench", run, "--backends", "torch", "--no-memory", "--iters", "1"],
}


@pytest.mark.parametrize("how", DAMAGE)
@pytest.mark.parametrize("command", BARE_COMMANDS)
def test_a_damaged_checkpoint_file(capsys, tmp_path, command, how):
    path = bare_checkpoint(tmp_path, how)
    (tmp_path / "out").mkdir()
    assert_one_line_refusal(capsys, tmp_path, BARE_COMMANDS[command](path, tmp_path / "out"), f"{path} {SAID[how]}")


@pytest.mark.parametrize("how", DAMAGE)
@pytest.mark.parametrize("command", RUN_COMMANDS)
def test_a_damaged_checkpoint_in_a_run(capsys, tmp_path, command, how):
    run_dir = damaged_run(tmp_path, how, manifest_matches=False)
    expected = f"{run_dir / CHECKPOINT} is missing or damaged (its sha256 does not match the manifest)"
    assert_one_line_refusal(capsys, tmp_path, RUN_COMMANDS[command](run_dir), expected)


@pytest.mark.parametrize("how", DAMAGE)
@pytest.mark.parametrize("command", RUN_COMMANDS)
def test_a_checkpoint_saved_damaged_in_a_run(capsys, tmp_path, command, how):
    """The manifest matches the damaged bytes (written so on a full disk): the load names it."""
    run_dir = damaged_run(tmp_path, how, manifest_matches=True)
    expected = f"{run_dir / CHECKPOINT} {SAID[how]}"
    assert_one_line_refusal(capsys, tmp_path, RUN_COMMANDS[command](run_dir), expected)


def test_an_exported_model_given_to_export_is_named_so(capsys, tmp_path):
    from qsenn_bench.testing.toy_onnx import save_toy_model

    onnx_file = tmp_path / "model.onnx"
    save_toy_model(onnx_file)
    code, _, err = run_cli(capsys, "export", onnx_file, "--out", tmp_path / "again.onnx")
    assert code == 2
    assert f"{onnx_file} is an ONNX model, already exported, not a training checkpoint" in err
    assert f"qsenn predict {onnx_file} IMAGE" in err and not (tmp_path / "again.onnx").exists()


def test_a_directory_given_to_import_reference_is_named_so(capsys, tmp_path):
    (tmp_path / "original").mkdir()
    (tmp_path / "original" / "weights.pth").write_bytes(b"")
    code, _, err = run_cli(
        capsys, "import-reference", tmp_path / "original", "--dataset", "CUB2011", "--out", tmp_path / "x.pt"
    )
    assert code == 2
    assert err.strip() == (
        f"error: {tmp_path / 'original'} is a directory; pass the checkpoint file the original code saved "
        f"(it holds weights.pth)"
    )


# ---- the helpers behind the one line ----------------------------------------------------------


class Silent(Exception):
    def __str__(self) -> str:
        return ""


@pytest.mark.parametrize(
    ("exc", "line"),
    [
        (EOFError(), "EOFError"),  # torch.load of a zero-byte file
        (Silent(), "Silent"),
        (RuntimeError("\n\n  first\nsecond"), "first"),
        (ValueError("x" * 400), "x" * 299 + "…"),
    ],
)
def test_first_line_never_fails_and_is_the_same_in_train_and_runtime(exc, line):
    assert first_line(exc) == runtime_first_line(exc) == line


def test_path_problem_names_loops_broken_links_and_folders_in_train_and_runtime(tmp_path):
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    (tmp_path / "broken").symlink_to(tmp_path / "gone")
    (tmp_path / "file").write_text("x")
    expected = {
        "loop": "a symbolic link loop",
        "broken": f"a broken symbolic link (to {tmp_path / 'gone'})",
        "gone": "no such file",
        ".": "a directory, not a file",
        "file": None,
    }
    for name, problem in expected.items():
        assert path_problem(tmp_path / name) == runtime_path_problem(tmp_path / name) == problem, name
