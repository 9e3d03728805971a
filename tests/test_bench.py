"""`qsenn bench` on a tiny model: statistics, agreement, result files, skipped GPU backends,
the GPU script's dry run."""

from __future__ import annotations

import csv
import importlib.util
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import cli
from qsenn_bench.backend_table import BENCH_BACKENDS
from qsenn_bench.backends import ReducedPrecisionQSENN
from qsenn_bench.bench import BenchConfig, run_bench
from qsenn_bench.errors import BenchError
from qsenn_bench.reporting import table, write_csv, write_json
from qsenn_bench.sources import bench_source, random_source
from qsenn_bench.testing.toy_models import fake_run, save_checkpoint, sldd_model, ternary_model
from qsenn_export._common import fold_source
from qsenn_export.source import load_source
from qsenn_export.verify import top_feature_agreement

REPO = Path(__file__).resolve().parents[1]
LATENCY_FIELDS = ("min_ms", "mean_ms", "median_ms", "p90_ms", "p95_ms", "p99_ms")
GPU_ONLY = [b.name for b in BENCH_BACKENDS.values() if b.devices == ("GPU",)]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return save_checkpoint(ternary_model(), tmp_path_factory.mktemp("bench") / "model.pt")


@pytest.fixture(scope="module")
def result(checkpoint):
    lines = []
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(torch.cuda, "is_available", lambda: False)  # the same answer on a GPU machine
        config = BenchConfig(
            backends=tuple(BENCH_BACKENDS), batches=(2,), warmup=1, iters=3, threads=1, images=8, calib_count=8
        )
        data = run_bench(bench_source(checkpoint, None, None, False), config, echo=lines.append)
    return data, lines


def test_every_backend_and_batch_has_all_statistics(result):
    data, _ = result
    assert [(r["backend"], r["batch"]) for r in data["results"]] == [("torch", 2), ("onnx", 2), ("onnx-int8", 2)]
    for row in data["results"]:
        assert all(row[f] > 0 for f in (*LATENCY_FIELDS, "images_per_s", "speedup", "paired_speedup"))
        assert row["min_ms"] <= row["median_ms"] <= row["p90_ms"] <= row["p99_ms"]
        assert row["images_per_s"] == pytest.approx(2e3 / row["median_ms"])
        assert row["peak_memory_mib"] > 10 and row["memory_kind"] == "process-rss"
    assert next(r for r in data["results"] if r["backend"] == "torch")["speedup"] == 1.0


def test_onnx_agrees_fully_with_torch_and_int8_within_its_tolerance(result):
    agreement = result[0]["agreement"]
    assert agreement["onnx"]["top1"] == 1.0 and agreement["onnx"]["top5_features"] == 1.0
    assert agreement["onnx"]["logit_rel_err"] < 1e-4 and agreement["onnx"]["verdict"] == "OK"
    assert agreement["onnx-int8"]["identity_rel_err"] < 1e-4 and agreement["onnx-int8"]["images"] == 8


def test_onnx_profiles_show_the_integer_kernels(result):
    profiles = result[0]["onnx_profiles"]
    assert "QLinearConv" in profiles["onnx-int8"] and "Conv" not in profiles["onnx-int8"]
    assert "Conv" in profiles["onnx"] and sum(p["share"] for p in profiles["onnx"].values()) == pytest.approx(1, 1e-2)


def test_gpu_backends_are_skipped_on_a_cpu_with_a_clear_line(result):
    data, lines = result
    assert set(data["skipped"]) == set(GPU_ONLY)
    for name in GPU_ONLY:
        assert f"{name}: skipped, needs an NVIDIA GPU (CUDA is not available)" in lines
    assert "torch-fp16: skipped, needs an NVIDIA GPU" in table(data)


def test_results_carry_device_and_versions(result, tmp_path):
    data, _ = result
    json_path, csv_path = write_json(data, tmp_path), write_csv(data, tmp_path)
    assert json_path.name.startswith("bench_resnet10-32-cub2011_") and "_torch" in json_path.name
    assert "_onnxruntime" in json_path.name and csv_path.suffix == ".csv"
    env = json.loads(json_path.read_text())["environment"]
    for key in ("device", "cpu", "python", "torch", "onnxruntime", "numpy", "threads", "load_average"):
        assert env[key] not in (None, "")
    rows = list(csv.DictReader(csv_path.open()))
    assert len(rows) == 3 and {"device", "cpu", "torch", "onnxruntime", "top1", "top5_features"} <= set(rows[0])
    assert rows[1]["backend"] == "onnx" and float(rows[1]["top1"]) == 1.0
    assert write_json(data, tmp_path / "named.json") == tmp_path / "named.json"


def test_cli_bench_prints_the_table_and_writes_files(checkpoint, tmp_path):
    result = CliRunner().invoke(
        cli.qsenn,
        [
            "bench",
            str(checkpoint),
            "--backends",
            "torch,onnx",
            "--batch",
            "1",
            "--warmup",
            "1",
            "--iters",
            "2",
            "--images",
            "4",
            "--threads",
            "1",
            "--no-memory",
            "--json",
            str(tmp_path),
            "--csv",
            str(tmp_path / "r.csv"),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "backend" in result.output and "100.0%" in result.output
    assert len(list(tmp_path.glob("bench_*.json"))) == 1 and (tmp_path / "r.csv").is_file()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--backends", "tflite"], "unknown backend 'tflite'; choose from torch, "),
        (["--batch", "0"], "--batch needs positive batch sizes"),
    ],
)
def test_cli_refuses_bad_options(checkpoint, args, message):
    result = CliRunner().invoke(cli.qsenn, ["bench", str(checkpoint), *args])
    assert result.exit_code != 0 and message in str(result.exception)


@pytest.mark.parametrize(
    "path, arch, size, random_weights, message",
    [
        (Path("x"), "resnet50", 448, True, "either MODEL_OR_RUN or --random"),
        (None, None, None, True, "--random needs --arch and --img-size"),
        (None, None, None, False, "pass a run directory or checkpoint"),
        (Path("x"), "resnet50", None, False, "--arch and --img-size go with --random"),
    ],
)
def test_source_arguments(path, arch, size, random_weights, message):
    with pytest.raises(BenchError, match=message):
        bench_source(path, arch, size, random_weights)


def test_random_source_has_the_papers_head():
    source = random_source("resnet10", 32)
    ternary = source.head.weights
    assert source.head.kind == "ternary" and ternary.shape == (200, 50) and (ternary != 0).sum(dim=1).eq(5).all()
    assert source.info.name == "random" and source.img_size == 32


def test_reduced_precision_module_is_the_folded_graph_with_fused_batch_norms(checkpoint):
    """In fp32 on the CPU the torch-fp16 backend's module must equal the folded graph (BN fused)."""
    folded = fold_source(load_source(checkpoint))
    fused = ReducedPrecisionQSENN(folded, torch.float32)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fused.modules())
    images = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        for a, b in zip(folded(images), fused(images)):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_top_feature_agreement_compares_sets_of_the_reference_class():
    ternary = np.array([[1, 1, 1, 1, 1, 1, 0], [0, 0, 0, 0, 0, 0, 1]], dtype=np.int8)
    reference = {"logits": np.array([[1.0, 0.0]]), "features": np.array([[6.0, 5, 4, 3, 2, 1, 9]])}
    reordered = {"logits": np.array([[0.0, 1.0]]), "features": np.array([[2.0, 3, 4, 5, 6, 1, 9]])}
    swapped = {"logits": np.array([[1.0, 0.0]]), "features": np.array([[6.0, 5, 4, 3, 0.5, 1, 9]])}
    assert top_feature_agreement(reference, reordered, ternary) == 1.0  # same set, other order and class
    assert top_feature_agreement(reference, swapped, ternary) == 0.0  # feature 5 replaces feature 4


def test_bench_backends_start_with_the_torch_baseline_and_name_formats_of_the_export_table():
    from qsenn_export.formats import FORMATS

    names = list(BENCH_BACKENDS)
    assert names[:4] == ["torch", "torch-fp16", "torch-compile", "torch-cudagraphs"]
    for backend in BENCH_BACKENDS.values():
        assert backend.format is None or backend.precision in FORMATS[backend.format].tolerances


def test_bench_of_a_run_with_both_types_measures_the_one_asked_for(tmp_path):
    run = fake_run(tmp_path / "run", {"qsenn": ternary_model(), "sldd": sldd_model()})
    with pytest.raises(Exception, match="pick one with --model-type"):
        bench_source(run, None, None, False)
    config = BenchConfig(backends=("torch", "onnx"), batches=(1,), warmup=1, iters=2, threads=1, images=4, memory=False)
    data = run_bench(bench_source(run, None, None, False, "sldd"), config, echo=lambda line: None)
    assert data["agreement"]["onnx"]["top1"] == 1.0 and data["agreement"]["onnx"]["verdict"] == "OK"


@pytest.mark.slow
def test_gpu_script_dry_run_on_the_cpu(tmp_path):
    """benchmarks/gpu_bench.py end to end with the GPU machine's setup: no install (PYTHONPATH=.),
    tiny sizes on the CPU: the inference section (the eager fp16 backend on the CPU, its outputs and
    contributions checked against fp32) and the training section (the tiny recipe's dense training,
    selection, glm-saga path and fine-tuning), each in its child process under its budget."""
    completed = subprocess.run(
        [
            sys.executable,
            "benchmarks/gpu_bench.py",
            "--dry-run",
            "--iters",
            "1",
            "--threads",
            "1",
            "--out",
            str(tmp_path),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": ".", "HOME": str(tmp_path)},
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    (path,) = tmp_path.glob("gpu_bench-dry-run_resnet10-64-random_*_torch*.json")
    data = json.loads(path.read_text())
    inference, training = data["sections"]["inference"], data["sections"]["training"]
    assert data["dry_run"] and inference["status"] == "ok" and inference["goals"]["outputs_ok"]
    assert {r["backend"] for r in data["results"]} == {"torch", "torch-fp16"} and {
        r["batch"] for r in data["results"]
    } == {1, 2}
    agreed = data["agreement"]["torch-fp16"]
    assert agreed["verdict"] == "OK" and 0 <= agreed["contribution_rel_err"] < 2e-2
    assert training["status"] == "ok" and training["dense_epochs_done"] == 2
    steps = {t["step"] for t in training["timings"]}
    assert {"dense training", "regularisation path", "fine-tuning"} <= steps
    assert set(data["budgets_s"]) == {"inference", "training"}


def test_a_failing_backend_is_skipped_with_its_error_and_the_rest_is_measured(checkpoint, monkeypatch):
    """A backend that breaks at its first call (a compiler or driver error on a GPU) costs only itself."""
    import qsenn_bench.bench as bench

    def broken_int8(backend, artifacts, device, config, chunk):
        runner = build_runner(backend, artifacts, device, config, chunk)
        if backend.name == "onnx-int8":
            runner.outputs = lambda images: (_ for _ in ()).throw(RuntimeError("kernel not found\nsecond line"))
        return runner

    build_runner = bench.build_runner
    monkeypatch.setattr(bench, "build_runner", broken_int8)
    lines = []
    data = run_bench(
        bench_source(checkpoint, None, None, False),
        BenchConfig(
            backends=("torch", "onnx", "onnx-int8"),
            batches=(1,),
            warmup=1,
            iters=2,
            threads=1,
            images=4,
            calib_count=4,
            memory=False,
        ),
        echo=lines.append,
    )
    assert data["skipped"]["onnx-int8"] == "failed: RuntimeError: kernel not found"
    assert "onnx-int8: failed: RuntimeError: kernel not found" in lines
    assert [r["backend"] for r in data["results"]] == ["torch", "onnx"] and "onnx-int8" not in data["agreement"]


def test_gpu_script_stops_a_section_at_its_budget(monkeypatch):
    """A section that runs over its budget is stopped and recorded as timed out (the others go on)."""
    spec = importlib.util.spec_from_file_location("gpu_bench", REPO / "benchmarks" / "gpu_bench.py")
    assert spec is not None and spec.loader is not None
    gpu_bench = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "gpu_bench", gpu_bench)  # its dataclasses look themselves up there
    spec.loader.exec_module(gpu_bench)
    started = time.perf_counter()
    assert gpu_bench._run([sys.executable, "-c", "import time; time.sleep(30)"], 1) == "timed out after 1 s"
    assert time.perf_counter() - started < 10
    failed = gpu_bench._run([sys.executable, "-c", "import sys; sys.exit('no GPU here')"], 10)
    assert failed == "failed (exit 1): no GPU here"
