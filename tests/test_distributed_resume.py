"""`qsenn train --nproc-per-node 2` (gloo, the tiny recipe) end to end: one rank SIGKILLed
mid-epoch, the job torn down with one line per rank, the same command with --resume finishing
with the model of an uninterrupted run; the metrics those of one process."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import qsenn_bench.testing.kill_chain as kc

pytestmark = pytest.mark.slow

STAGE = "iter3: fine-tuning"  # two epochs in the tiny recipe


def ddp_train(data_root: Path, out: Path, **env_extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", **env_extra}
    for name in ("QSENN_KILL_AT", "QSENN_KILL_RANK"):
        if name not in env_extra:
            env.pop(name, None)
    command = [*kc.train_command(data_root, out), "--nproc-per-node", "2"]
    return subprocess.run(command, cwd=kc.REPO, env=env, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return tmp_path_factory.mktemp("data")


@pytest.fixture(scope="module")
def reference(data_root, tmp_path_factory) -> Path:
    """The uninterrupted two-process run, in counting mode (nothing is killed)."""
    out = tmp_path_factory.mktemp("reference")
    result = ddp_train(data_root, out, QSENN_KILL_AT=":0")  # every stage counts its calls
    assert result.returncode == 0, result.stderr
    return out / kc.RUN_SUBDIR


def final_state(run_dir: Path) -> dict:
    return torch.load(run_dir / "final_qsenn.pt", weights_only=True)["state_dict"]


def test_a_rank_killed_mid_epoch_resumes_to_the_uninterrupted_model(reference, data_root, tmp_path):
    (label,) = [name for name in kc.stage_calls(reference) if STAGE in name]
    first, second = kc.stage_calls(reference)[label]["epochs"]
    kill_at = (first + second) // 2  # rank 1, inside the second epoch
    killed = ddp_train(data_root, tmp_path, QSENN_KILL_AT=f"{STAGE}:{kill_at}", QSENN_KILL_RANK="1")
    assert killed.returncode != 0
    assert f"QSENN_KILL_AT: SIGKILL in {label!r} at call {kill_at}" in killed.stderr
    last = killed.stderr.strip().splitlines()[-1]
    assert last == (
        "error: rank 1 was killed by SIGKILL (the launcher stopped the other ranks); "
        "rerun the same command with --resume to continue"
    )
    assert "Traceback" not in killed.stderr

    resumed = ddp_train(data_root, tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    run_dir = tmp_path / kc.RUN_SUBDIR
    resumes = [e for run in kc.read_events(run_dir) for e in run if e["event"] == "resume"]
    assert [(e["epoch"], e["world_size"]) for e in resumes] == [(1, 2)]  # after the first epoch
    assert f"{label.split(':')[0]} fine-tune: resuming after epoch 1 of 2" in resumed.stdout
    one, two = final_state(reference), final_state(run_dir)
    assert all(torch.equal(one[k], two[k]) for k in one)


def test_the_job_records_its_world_size(reference):
    assert json.loads((reference / "config.json").read_text())["world_size"] == 2
    assert json.loads((reference / "models.json").read_text())["qsenn"]["world_size"] == 2
    epochs = [e for run in kc.read_events(reference) for e in run if e["event"] == "epoch"]
    assert epochs and {e["world_size"] for e in epochs} == {2}


def test_metrics_are_those_one_process_computes(reference, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(reference, copy, symlinks=True)
    recorded = {name: json.loads((copy / name).read_text()) for name in ("metrics_dense.json", "metrics_qsenn.json")}
    result = subprocess.run(
        [sys.executable, "-m", "cli", "evaluate", str(copy), "--device", "cpu"],
        cwd=kc.REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    for name, metrics in recorded.items():
        again = json.loads((copy / name).read_text())
        assert again == metrics, name


def test_too_many_processes_for_the_batch_is_one_line_and_nothing_written(data_root, tmp_path):
    result = subprocess.run(
        [*kc.train_command(data_root, tmp_path), "--nproc-per-node", "5"],
        cwd=kc.REPO,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode != 0
    assert result.stderr.strip().splitlines()[-2:] == [
        "error: rank 0: the dense training batch of 8 images cannot give each of 5 processes 2; "
        "use at most 4 processes",
        "error: rank 0 exited with code 2 (the launcher stopped the other ranks); its error is above",
    ]
    assert not (tmp_path / kc.RUN_SUBDIR).exists()
