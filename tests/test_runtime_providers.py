"""onnxruntime execution providers as the runtime picks them: CUDA then the CPU by default, the
TensorRT provider only on request (profile shapes from the model's metadata, engine cache), INT8
QOperator models on the CPU only, and nothing onnxruntime prints reaching standard output."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnxruntime
import pytest
from PIL import Image

import qsenn_runtime
from qsenn_bench.testing.toy_onnx import save_toy_model, toy_metadata, toy_model
from qsenn_runtime import BackendError
from qsenn_runtime.backends import (
    QOPERATOR_CPU_ONLY,
    SESSION_LOG_ERRORS_ONLY,
    InputProfile,
    cache_dir,
    choose_providers,
    provider_options,
)

REPO = Path(__file__).resolve().parents[1]
TRT, CUDA, CPU = "TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"
GPU_MACHINE = [TRT, CUDA, CPU]


def test_default_order_on_a_gpu_machine_is_cuda_then_cpu():
    assert choose_providers(None, GPU_MACHINE) == [CUDA, CPU]
    assert choose_providers(None, [CUDA, CPU]) == [CUDA, CPU]
    assert choose_providers(None, ["AzureExecutionProvider", CPU]) == [CPU]


def test_tensorrt_only_on_request_with_cuda_and_cpu_below_it():
    assert choose_providers("tensorrt", GPU_MACHINE) == [TRT, CUDA, CPU]
    assert choose_providers("trt", [TRT, CPU]) == [TRT, CPU]
    assert choose_providers("cuda", GPU_MACHINE) == [CUDA, CPU]
    assert choose_providers("CPUExecutionProvider", GPU_MACHINE) == [CPU]
    assert choose_providers("OpenVINOExecutionProvider", ["OpenVINOExecutionProvider", CPU]) == [
        "OpenVINOExecutionProvider",
        CPU,
    ]
    with pytest.raises(
        BackendError, match="'tensorrt' is not available; available: CPUExecutionProvider .*onnxruntime-gpu"
    ):
        choose_providers("tensorrt", [CPU])
    with pytest.raises(BackendError, match="'warp' is not available; available: A, CPUExecutionProvider"):
        choose_providers("warp", ["A", CPU])


def test_qoperator_models_run_on_the_cpu_provider_only():
    assert choose_providers(None, GPU_MACHINE, QOPERATOR_CPU_ONLY) == [CPU]
    assert choose_providers("cpu", GPU_MACHINE, QOPERATOR_CPU_ONLY) == [CPU]
    for gpu in ("cuda", "tensorrt"):
        with pytest.raises(BackendError, match=f"'{gpu}' cannot run this model: it is an INT8 QOperator model"):
            choose_providers(gpu, GPU_MACHINE, QOPERATOR_CPU_ONLY)


def test_provider_options_profile_shapes_and_caches(tmp_path):
    options = provider_options([TRT, CUDA, CPU], InputProfile(448, 16), tmp_path)
    assert options[0] == {
        "trt_engine_cache_enable": "True",
        "trt_engine_cache_path": str(tmp_path),
        "trt_timing_cache_enable": "True",
        "trt_timing_cache_path": str(tmp_path),
        "trt_profile_min_shapes": "images:1x3x448x448",
        "trt_profile_opt_shapes": "images:8x3x448x448",
        "trt_profile_max_shapes": "images:16x3x448x448",
    }
    assert options[1] == {"use_tf32": "0"} and options[2] == {}
    static = provider_options([TRT], InputProfile(64, 16, static_batch=4), tmp_path)[0]
    assert {static[f"trt_profile_{k}_shapes"] for k in ("min", "opt", "max")} == {"images:4x3x64x64"}


@pytest.fixture
def gpu_providers_offered(monkeypatch):
    """onnxruntime claims CUDA and TensorRT; the sessions it builds record their providers and run on
    the CPU (the only provider this machine has)."""
    real_session = onnxruntime.InferenceSession
    sessions = []

    def session(path, options=None, providers=None, provider_options=None):
        sessions.append({"providers": providers, "provider_options": provider_options, "options": options})
        return real_session(path, options, providers=[CPU])

    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: GPU_MACHINE)
    monkeypatch.setattr(onnxruntime, "InferenceSession", session)
    return sessions


def test_load_passes_the_metadata_profile_to_the_tensorrt_provider(gpu_providers_offered, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    save_toy_model(tmp_path / "m.onnx")  # 32 px, dynamic batch
    qsenn_runtime.load(tmp_path / "m.onnx", "tensorrt", batch_size=6)
    (session,) = gpu_providers_offered
    assert session["providers"] == GPU_MACHINE
    trt_options = session["provider_options"][0]
    assert trt_options["trt_profile_max_shapes"] == "images:6x3x32x32"
    assert trt_options["trt_profile_opt_shapes"] == "images:3x3x32x32"
    assert trt_options["trt_engine_cache_path"] == str(cache_dir() / "onnxruntime-tensorrt")
    assert str(tmp_path / "cache") in trt_options["trt_engine_cache_path"]
    qsenn_runtime.load(tmp_path / "m.onnx")
    assert gpu_providers_offered[1]["providers"] == [CUDA, CPU]


def test_static_batch_is_read_from_the_graph(gpu_providers_offered, tmp_path):
    metadata = toy_metadata()
    path = tmp_path / "static.onnx"
    path.write_bytes(toy_model(metadata, batch=3).SerializeToString())
    model = qsenn_runtime.load(path, "tensorrt", batch_size=16)
    assert gpu_providers_offered[0]["provider_options"][0]["trt_profile_max_shapes"] == "images:3x3x32x32"
    assert model.backend.batch_range == (3, 3)


def test_qoperator_model_is_loaded_on_the_cpu_and_the_loader_says_why(gpu_providers_offered, tmp_path):
    metadata = toy_metadata().with_quantization({"precision": "int8", "format": "QOperator"})
    path = tmp_path / "m.int8.onnx"
    path.write_bytes(toy_model(metadata).SerializeToString())
    with pytest.warns(UserWarning, match="runs on the CPU although a GPU provider is available: it is an INT8"):
        qsenn_runtime.load(path)
    assert gpu_providers_offered[0]["providers"] == [CPU]
    with pytest.raises(BackendError, match="'cuda' cannot run this model: it is an INT8 QOperator model"):
        qsenn_runtime.load(path, "cuda")
    qdq = tmp_path / "qdq.onnx"
    qdq.write_bytes(toy_model(toy_metadata().with_quantization({"format": "QDQ"})).SerializeToString())
    qsenn_runtime.load(qdq)
    assert gpu_providers_offered[-1]["providers"] == [CUDA, CPU]  # QDQ graphs run on the GPU


def test_sessions_log_errors_only(tmp_path):
    save_toy_model(tmp_path / "m.onnx")
    model = qsenn_runtime.load(tmp_path / "m.onnx")
    assert model.backend.session.get_session_options().log_severity_level == SESSION_LOG_ERRORS_ONLY


# A stand-in for provider libraries that talk: every new session writes to file descriptor 1 from
# "native" code (an unbuffered write, and C stdio's buffered printf) and from Python.
NOISY_SESSIONS = textwrap.dedent(
    """
    import ctypes, os
    import onnxruntime

    _real = onnxruntime.InferenceSession

    class NoisySession(_real):
        def __init__(self, *args, **kwargs):
            os.write(1, b"[W] fd1: falling back to CPUExecutionProvider\\n")
            ctypes.CDLL(None).printf(b"[W] printf: provider bridge not found\\n")
            print("[W] python: provider options ignored")
            super().__init__(*args, **kwargs)

    onnxruntime.InferenceSession = NoisySession
    """
)


def test_predict_json_stays_valid_json_when_providers_print(tmp_path):
    save_toy_model(tmp_path / "m.onnx")
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 50, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    shim = tmp_path / "shim"
    shim.mkdir()
    (shim / "sitecustomize.py").write_text(NOISY_SESSIONS)
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": f"{shim}:{REPO}", "HOME": str(tmp_path)}

    # The shim does write to standard output when nothing redirects it ...
    bare = subprocess.run(
        [sys.executable, "-c", f"import onnxruntime; onnxruntime.InferenceSession({str(tmp_path / 'm.onnx')!r})"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert bare.returncode == 0, bare.stderr
    assert all(tag in bare.stdout for tag in ("fd1:", "printf:", "python:"))

    # ... and `qsenn predict --json` keeps all of it off standard output.
    result = subprocess.run(
        [sys.executable, "-m", "cli", "predict", str(tmp_path / "m.onnx"), str(tmp_path / "a.png"), "--json"],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
    )
    assert result.returncode == 0, result.stderr
    (entry,) = json.loads(result.stdout)
    assert entry["source"].endswith("a.png")
    assert all(tag in result.stderr for tag in ("fd1:", "printf:", "python:"))
