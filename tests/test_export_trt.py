"""TensorRT export against the strict TensorRT/cuda-python stand-ins (qsenn_bench.testing.fake_tensorrt):
the graph each precision is built from (float32 head, reduced-precision backbone), the builder
configuration (strongly typed, TF32 off, profile, workspace), the timing cache, the engine metadata,
and verification through qsenn_runtime's TensorRT backend. A real build runs only with TensorRT and
an NVIDIA GPU (marked trt)."""

from __future__ import annotations

import ast
import dataclasses
import hashlib
import importlib.util
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from PIL import Image

import qsenn_runtime
from qsenn_bench.testing import fake_tensorrt
from qsenn_bench.testing.fake_tensorrt import REMOVED_IN_11, fake_modules, installed
from qsenn_bench.testing.toy_models import save_checkpoint, ternary_model, toy_model
from qsenn_export import trt_build
from qsenn_export._common import OPSET, fold_source, to_onnx
from qsenn_export.errors import ExportError
from qsenn_export.formats import make_options
from qsenn_export.graph import TERNARY_INITIALIZER, head_nodes, tensor_types, ternary_as_float
from qsenn_export.metadata import build_metadata
from qsenn_export.source import load_source
from qsenn_export.trt_build import BuildTarget, engine_info, export_trt, network_graph, profile_shapes, require_tensorrt
from qsenn_runtime.backends import TensorRTBackend
from qsenn_runtime.engine_file import pack_engine, unpack_engine
from qsenn_runtime.metadata import OUTPUT_NAMES, MetadataError
from qsenn_runtime.model import FP32_RTOL

REPO = Path(__file__).resolve().parents[1]
HAVE_TRT = importlib.util.find_spec("tensorrt") is not None and importlib.util.find_spec("cuda") is not None
FLOAT, FLOAT16 = onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16


@pytest.fixture(scope="module", params=["ternary", "sparse"])
def source(request, tmp_path_factory):
    model = ternary_model() if request.param == "ternary" else toy_model("sparse")
    return load_source(save_checkpoint(model, tmp_path_factory.mktemp("trt") / f"{request.param}.pt"))


@pytest.fixture(scope="module")
def graph(source):
    return to_onnx(fold_source(source), build_metadata(source, OPSET), None)


@pytest.fixture(scope="module")
def calibration(tmp_path_factory):
    folder = tmp_path_factory.mktemp("calib")
    rng = np.random.default_rng(0)
    for i in range(8):
        Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return folder


def use_fake_tensorrt(monkeypatch, tmp_path, major: int = 10, **kwargs):
    """The strict stand-ins as `tensorrt` and `cuda.bindings.runtime`, caches under tmp_path."""
    modules = fake_modules(major, **kwargs)
    for name, module in modules.items():
        monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return installed(modules)


# ---- what is refused before anything is built -------------------------------------------------


def test_missing_tensorrt_is_one_line_with_the_install_command(monkeypatch, tmp_path):
    use_fake_tensorrt(monkeypatch, tmp_path)
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # makes `import tensorrt` fail
    with pytest.raises(ExportError) as exc:
        require_tensorrt()
    message = str(exc.value)
    assert "TensorRT is not installed (pip install 'qsenn[trt]'" in message and "\n" not in message
    assert "no NVIDIA GPU" not in message


def test_missing_gpu_and_cuda_python_are_reported(monkeypatch, tmp_path):
    use_fake_tensorrt(monkeypatch, tmp_path, devices=0)
    with pytest.raises(ExportError, match=r"no NVIDIA GPU is visible to CUDA \(cudaErrorNoDevice") as exc:
        require_tensorrt()
    assert "TensorRT is not installed" not in str(exc.value)
    monkeypatch.setitem(sys.modules, "cuda.bindings", None)
    with pytest.raises(ExportError, match=r"cuda-python is not installed \(pip install 'qsenn\[trt\]'\)"):
        require_tensorrt()


@pytest.mark.parametrize("version", ["8.6.1", "12.0.0"])
def test_unsupported_tensorrt_majors_are_refused(monkeypatch, tmp_path, version):
    use_fake_tensorrt(monkeypatch, tmp_path, version=version)
    with pytest.raises(ExportError, match=f"TensorRT {version} is installed but qsenn supports TensorRT 10 and 11"):
        require_tensorrt()


def test_export_without_tensorrt_writes_nothing(source, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    out = tmp_path / "out" / "model.engine"
    with pytest.raises(ExportError, match="cannot build a TensorRT engine"):
        export_trt(source.checkpoint, make_options("trt", out=out, half=True), echo=lambda line: None)
    assert not out.parent.exists()


def test_options_are_checked_before_tensorrt(source, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    with pytest.raises(ExportError, match="--int8 needs --calib"):
        export_trt(source.checkpoint, make_options("trt", int8=True), echo=lambda line: None)
    with pytest.raises(ExportError, match="--half and --int8 do not combine for a TensorRT engine"):
        export_trt(source.checkpoint, make_options("trt", int8=True, half=True, calib=Path(".")), echo=print)


@pytest.mark.parametrize("batch, opt", [(1, 1), (2, 1), (16, 8), (9, 4)])
def test_profile_shapes(batch, opt):
    shapes = profile_shapes(batch, 448)
    assert shapes.min == (1, 3, 448, 448) and shapes.opt == (opt, 3, 448, 448)
    assert shapes.max == (batch, 3, 448, 448)
    assert shapes.to_json()["max"] == [batch, 3, 448, 448]


def test_engine_metadata_round_trips_through_the_container(source):
    metadata = build_metadata(source, OPSET)
    target = BuildTarget(trt=type(sys)("tensorrt"), gpu="NVIDIA H100", capability=(9, 0))
    target.trt.__version__ = "10.9.0"
    info = engine_info(target, "fp16", profile_shapes(16, 32))
    packed = pack_engine(metadata.with_engine(info), b"plan-bytes")
    read, plan = unpack_engine(packed)
    assert plan == b"plan-bytes"
    assert read.engine == {
        "tensorrt": "10.9.0",
        "tensorrt_major": 10,
        "gpu": "NVIDIA H100",
        "compute_capability": "9.0",
        "precision": "fp16",
        "head_precision": "fp32",
        "network": "strongly typed",
        "profile": {"min": [1, 3, 32, 32], "opt": [8, 3, 32, 32], "max": [16, 3, 32, 32]},
        "plan_bytes": 10,
        "plan_sha256": hashlib.sha256(b"plan-bytes").hexdigest(),
    }
    np.testing.assert_array_equal(read.weights, metadata.weights)
    with pytest.raises(MetadataError, match="truncated"):
        unpack_engine(packed[:40])
    with pytest.raises(MetadataError, match="plan has 9 bytes but 10 were packed"):
        unpack_engine(packed[:-1])
    with pytest.raises(MetadataError, match="plan is not the one packed"):
        unpack_engine(packed[:-10] + b"garbage!!!")


# ---- the graph each precision is built from --------------------------------------------------


def test_parser_graph_has_float_T_and_the_same_outputs(graph):
    if not any(i.name == TERNARY_INITIALIZER for i in graph.graph.initializer):
        pytest.skip("a sparse head holds float weights already")
    float_model = ternary_as_float(graph)
    assert not any(n.op_type == "Cast" for n in float_model.graph.node)
    assert all(i.data_type != onnx.TensorProto.INT8 for i in float_model.graph.initializer)
    onnx.checker.check_model(float_model, full_check=True)
    images = np.random.default_rng(0).random((2, 3, 32, 32), dtype=np.float32)
    a, b = (
        ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(
            list(OUTPUT_NAMES), {"images": images}
        )
        for m in (graph, float_model)
    )
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    # The int8 original is untouched.
    assert any(i.name == TERNARY_INITIALIZER and i.data_type == onnx.TensorProto.INT8 for i in graph.graph.initializer)


def _head_and_backbone(model: onnx.ModelProto) -> tuple[list[onnx.NodeProto], list[onnx.NodeProto]]:
    head = set(head_nodes(model.graph))
    return [n for n in model.graph.node if n.name in head], [n for n in model.graph.node if n.name not in head]


@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_every_engine_graph_keeps_a_float32_head(graph, source, precision):
    """Both head kinds, every precision: the feature affine, `features` and the head compute in float32
    (a strongly typed network runs each layer in its tensors' type); only the backbone is reduced."""
    images = np.random.default_rng(1).random((4, 3, 32, 32), dtype=np.float32)
    built = network_graph(graph, precision, images if precision == "int8" else None)
    onnx.checker.check_model(built, full_check=True)
    types = tensor_types(built)
    head, backbone = _head_and_backbone(built)
    assert {n.op_type for n in head} >= {"ReduceMean", "Gemm"}
    for node in head:
        tensors = [t for t in (*node.input, *node.output) if t and types.get(t) in (FLOAT, FLOAT16)]
        assert {types[t] for t in tensors} == {FLOAT}, f"{node.op_type} of the head is not float32"
        assert not node.op_type.startswith(("QuantizeLinear", "DequantizeLinear", "QLinear"))
    assert all(i.data_type != onnx.TensorProto.INT8 for i in built.graph.initializer if i.dims and len(i.dims) == 2)
    convs = [n for n in backbone if n.op_type == "Conv"]
    if precision == "fp16":
        assert {types[n.output[0]] for n in convs} == {FLOAT16}
    elif precision == "int8":
        producers = {out: n.op_type for n in built.graph.node for out in n.output}
        assert all(producers.get(n.input[0]) == "DequantizeLinear" for n in convs)
        zero_points = [i for i in built.graph.initializer if i.name.endswith("_zero_point")]
        assert zero_points and all(
            i.data_type == onnx.TensorProto.INT8 and not onnx.numpy_helper.to_array(i).any() for i in zero_points
        ), "TensorRT's Q/DQ take symmetric int8 (zero point 0) only"
    else:
        assert {types[n.output[0]] for n in convs} == {FLOAT}


# ---- builds against the strict stand-ins -----------------------------------------------------


# The two majors' stand-ins offer the same names (qsenn calls nothing 11 removed): each precision once,
# INT8 under both.
@pytest.mark.parametrize("major, precision", [(10, "fp32"), (11, "fp16"), (10, "int8"), (11, "int8")])
def test_export_builds_a_strongly_typed_engine_and_verifies_it_through_the_runtime(
    source, calibration, tmp_path, monkeypatch, major, precision
):
    trt, cudart = use_fake_tensorrt(monkeypatch, tmp_path, major)
    out = tmp_path / f"{precision}.engine"
    lines: list[str] = []
    options = make_options(
        "trt",
        out=out,
        batch=4,
        workspace=0.5,
        half=precision == "fp16",
        int8=precision == "int8",
        calib=calibration if precision == "int8" else None,
        verify_count=8,
    )
    export_trt(source.checkpoint, options, echo=lines.append)
    assert any(line.startswith("verified on 8 random images") and line.endswith("— OK") for line in lines), lines
    (build,) = fake_tensorrt.BUILDS
    assert build.strongly_typed and trt.BuilderFlag.TF32 not in build.flags
    assert build.pools == {trt.MemoryPoolType.WORKSPACE: 1 << 29}
    assert build.profiles == {"images": ((1, 3, 32, 32), (2, 3, 32, 32), (4, 3, 32, 32))}

    metadata, _ = unpack_engine(out.read_bytes())
    engine = metadata.engine
    assert engine["precision"] == precision and engine["head_precision"] == "fp32"
    assert engine["tensorrt_major"] == major and engine["gpu"] == cudart.gpu
    assert (metadata.quantization or {}).get("format") == ("QDQ" if precision == "int8" else None)
    # The engine loads as a deployment loads it, with the float32 identity bound.
    model = qsenn_runtime.load(out)
    assert isinstance(model.backend, TensorRTBackend) and model._rtol == FP32_RTOL
    assert model.backend.batch_range == (1, 4)
    rng = np.random.default_rng(3)
    images = [rng.integers(0, 256, (36, 44, 3), dtype=np.uint8) for _ in range(5)]
    assert all(p.ok for p in model.predict(images))


def test_verification_runs_the_engine_through_qsenn_runtime(source, tmp_path, monkeypatch):
    """An engine whose served outputs are wrong fails verification: the check runs the code that serves it."""
    use_fake_tensorrt(monkeypatch, tmp_path)
    served = TensorRTBackend.run

    def off_by_one(self, batch, output_names):
        return [
            out + 1.0 if name == "logits" else out for name, out in zip(output_names, served(self, batch, output_names))
        ]

    monkeypatch.setattr(TensorRTBackend, "run", off_by_one)
    out = tmp_path / "m.engine"
    with pytest.raises(ExportError, match="verification failed .*rel identity residual"):
        export_trt(source.checkpoint, make_options("trt", out=out, verify_count=4), echo=lambda line: None)
    assert not out.exists() and out.with_name("m.failed.engine").exists()


def test_timing_cache_is_reused_and_a_foreign_one_rebuilt(graph, tmp_path, monkeypatch):
    trt, cudart = use_fake_tensorrt(monkeypatch, tmp_path)
    target = require_tensorrt()
    path = trt_build.timing_cache_path(target)
    assert path.parent == tmp_path / "cache" / "qsenn" and "10.13.3.9" in path.name and "sm90" in path.name
    shapes = profile_shapes(4, 32)
    lines: list[str] = []

    def build() -> dict:
        trt_build.build_engine(target, network_graph(graph, "fp32"), shapes, 1.0, lines.append)
        return fake_tensorrt.json.loads(path.read_bytes())

    first = build()
    assert first["timing_cache"] == {"tensorrt": "10.13.3.9", "gpu": cudart.gpu} and first["entries"] > 0
    assert build()["entries"] == 2 * first["entries"]  # the second build started from the first's timings
    assert not any("rebuilding" in line for line in lines)

    # A cache made on another GPU (or by another TensorRT), or a damaged file, is replaced.
    for foreign in (
        fake_tensorrt.json.dumps({"timing_cache": {"tensorrt": "10.13.3.9", "gpu": "Tesla T4"}, "entries": 99}),
        "not a timing cache",
    ):
        path.write_text(foreign)
        lines.clear()
        rebuilt = build()
        assert rebuilt == {"timing_cache": first["timing_cache"], "entries": first["entries"]}
        assert any("belongs to another TensorRT version or GPU; rebuilding it" in line for line in lines)


def test_parser_errors_are_one_line(graph, tmp_path, monkeypatch):
    use_fake_tensorrt(monkeypatch, tmp_path)
    broken = onnx.ModelProto()
    broken.CopyFrom(graph)
    broken.graph.node[0].op_type = "NoSuchOp"
    with pytest.raises(
        ExportError, match=r"^TensorRT cannot parse the exported ONNX model: In node .*cannot read the model"
    ):
        trt_build.build_engine(require_tensorrt(), broken, profile_shapes(4, 32), 1.0, lambda line: None)


# ---- the stand-ins are strict ----------------------------------------------------------------


@pytest.mark.parametrize("major", [10, 11])
def test_the_stand_in_refuses_unknown_and_removed_names_and_wrong_arguments(tmp_path, monkeypatch, major):
    trt, _ = use_fake_tensorrt(monkeypatch, tmp_path, major)
    logger = trt.Logger(trt.Logger.WARNING)
    config = trt.Builder(logger).create_builder_config()
    with pytest.raises(AttributeError):
        config.set_timing_cach  # noqa: B018  (a misspelling)
    with pytest.raises(AttributeError):
        config.int8_calibrator = object()  # removed in 11, never used: cannot even be set
    for dotted in REMOVED_IN_11:
        owner, _, name = dotted.rpartition(".")
        holder = getattr(trt, owner) if owner else trt
        assert not hasattr(holder, name) and not hasattr(config, name), dotted
    with pytest.raises(TypeError):
        config.set_timing_cache(config.create_timing_cache(b""))  # ignore_mismatch is required
    with pytest.raises(TypeError):
        config.set_memory_pool_limit(pool=trt.MemoryPoolType.WORKSPACE, size=1)  # the parameter is pool_size


def _attribute_chains(tree: ast.AST) -> set[str]:
    """Every dotted attribute access (trt.BuilderFlag.FP16 → "trt.BuilderFlag.FP16") and bare name."""
    chains = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            parts, inner = [node.attr], node.value
            while isinstance(inner, ast.Attribute):
                parts.append(inner.attr)
                inner = inner.value
            if isinstance(inner, ast.Name):
                parts.append(inner.id)
            chains.add(".".join(reversed(parts)))
        elif isinstance(node, ast.Name):
            chains.add(node.id)
    return chains


def test_no_tensorrt_api_removed_in_11_is_used():
    """The code itself (not its prose) touches none of what TensorRT 11 removed."""
    sources = [*REPO.glob("qsenn_*/**/*.py"), *REPO.glob("benchmarks/*.py"), REPO / "cli.py"]
    used = {
        f"{path.relative_to(REPO)}: {chain}"
        for path in sources
        if path.name != "fake_tensorrt.py"
        for chain in _attribute_chains(ast.parse(path.read_text(encoding="utf-8")))
        for dotted in REMOVED_IN_11
        if chain == dotted or chain.endswith(f".{dotted}")
    }
    assert not used


# ---- a real engine (NVIDIA GPU with TensorRT) ----------------------------------------------------


@pytest.mark.trt
@pytest.mark.gpu
@pytest.mark.skipif(not HAVE_TRT, reason="needs TensorRT, cuda-python and an NVIDIA GPU")
@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_real_engine_builds_loads_and_agrees_with_the_onnx_model(source, calibration, tmp_path, precision):
    out = tmp_path / f"{precision}.engine"
    lines: list[str] = []
    export_trt(
        source.checkpoint,
        make_options(
            "trt",
            out=out,
            batch=4,
            half=precision == "fp16",
            int8=precision == "int8",
            calib=calibration if precision == "int8" else None,
            verify_count=8,
        ),
        echo=lines.append,
    )
    assert any(line.startswith("verified on 8 ") and line.endswith("— OK") for line in lines)
    engine = qsenn_runtime.load(out)
    onnx_path = tmp_path / "reference.onnx"
    onnx.save(to_onnx(fold_source(source), build_metadata(source, OPSET), None), str(onnx_path))
    reference = qsenn_runtime.load(onnx_path, "cpu")
    rng = np.random.default_rng(4)
    images = [rng.integers(0, 256, (36, 44, 3), dtype=np.uint8) for _ in range(6)]
    for ours, theirs in zip(engine.predict(images), reference.predict(images)):
        assert ours.ok and theirs.ok
        scale = max(1.0, float(np.abs(theirs.logits).max()))
        tolerance = {"fp32": 1e-3, "fp16": 2e-2, "int8": 0.25}[precision]
        assert np.abs(np.subtract(ours.logits, theirs.logits)).max() <= tolerance * scale
    assert dataclasses.asdict(engine.metadata.input) == dataclasses.asdict(reference.metadata.input)
