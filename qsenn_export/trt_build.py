"""`qsenn export --format trt`: a TensorRT 10 or 11 engine built from the exported ONNX model,
stored in the qsenn engine container and verified through qsenn_runtime's TensorRT backend — the
code that serves it.

The head is exact in every engine. The network is strongly typed (TensorRT 10's
NetworkDefinitionCreationFlag.STRONGLY_TYPED; always so in 11): every layer runs in the type the
ONNX graph gives its tensors, so the graph alone fixes the precision of each layer:

- fp32: the exported graph, with TF32 off, so float32 layers compute in float32;
- fp16: the backbone in float16 (graph.backbone_in_half), the head in float32;
- int8: the backbone quantised explicitly, Q/DQ nodes from onnxruntime's calibration
  (int8.quantize_for_tensorrt), the head in float32.

No weakly typed builder flag (FP16, INT8, OBEY_PRECISION_CONSTRAINTS: removed in TensorRT 11) and
no calibrator (IInt8EntropyCalibrator2: deprecated in 10.1, removed in 11) is used.

TensorRT and cuda-python are imported only inside `require_tensorrt`, so this module loads
without them.
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from types import ModuleType

import numpy as np
import onnx

from qsenn_runtime.backends import (
    cache_dir,
    cuda_device,
    import_cudart,
    import_tensorrt,
    profile_batches,
    tensorrt_major,
)
from qsenn_runtime.engine_file import pack_engine
from qsenn_runtime.errors import BackendError
from qsenn_runtime.metadata import (
    ENGINE_GPU_KEY,
    ENGINE_HEAD_PRECISION_KEY,
    ENGINE_PRECISION_KEY,
    ENGINE_TENSORRT_KEY,
    ENGINE_TENSORRT_MAJOR_KEY,
    INPUT_NAME,
)
from qsenn_train.rundir import atomic_write

from ._common import OPSET, default_output, describe, fold_source, report_macs, to_onnx, write_verified
from .atlas import find_atlas, with_atlas
from .errors import ExportError
from .evidence import with_evidence
from .formats import CALIBRATION_LIMIT, DEFAULT_TRT_BATCH, DEFAULT_WORKSPACE_GIB, ExportOptions, Tolerance, validate
from .graph import TERNARY_INITIALIZER, backbone_in_half, ternary_as_float
from .int8 import TENSORRT_INT8, quantization_record, quantize_for_tensorrt
from .metadata import build_metadata
from .source import load_source
from .verify import Outputs, Report, compare, folder_images, load_artifact, runtime_outputs, verification_images

HEAD_PRECISION = "fp32"  # of every engine this module builds


@dataclass(frozen=True)
class BuildTarget:
    """TensorRT, cuda-python and the GPU an engine is built on (and will only run on)."""

    trt: ModuleType
    gpu: str
    capability: tuple[int, int]

    @property
    def version(self) -> str:
        return str(self.trt.__version__)


def require_tensorrt() -> BuildTarget:
    """TensorRT of a supported major, cuda-python and a visible GPU, or one ExportError line naming
    everything that is missing and how to get it."""
    missing = []
    trt = None
    try:
        trt = import_tensorrt()
    except BackendError as exc:
        missing.append(str(exc))
    try:
        gpu, capability = cuda_device(import_cudart())
    except BackendError as exc:
        missing.append(str(exc))
    if missing or trt is None:
        raise ExportError(
            "cannot build a TensorRT engine (engines are built on the GPU they will run on): "
            + "; ".join(missing)
            + "; or export --format onnx"
        )
    return BuildTarget(trt, gpu, capability)


@dataclass(frozen=True)
class ProfileShapes:
    """The optimisation profile of the dynamic batch: TensorRT tunes its kernels for `opt`."""

    min: tuple[int, int, int, int]
    opt: tuple[int, int, int, int]
    max: tuple[int, int, int, int]

    def to_json(self) -> dict:
        return {"min": list(self.min), "opt": list(self.opt), "max": list(self.max)}


def profile_shapes(max_batch: int, img_size: int) -> ProfileShapes:
    low, opt, high = profile_batches(max_batch)
    image = (3, img_size, img_size)
    return ProfileShapes((low, *image), (opt, *image), (high, *image))


def engine_info(target: BuildTarget, precision: str, shapes: ProfileShapes) -> dict:
    """metadata.engine: what the engine was built with and for (it runs only there)."""
    return {
        ENGINE_TENSORRT_KEY: target.version,
        ENGINE_TENSORRT_MAJOR_KEY: tensorrt_major(target.version),
        ENGINE_GPU_KEY: target.gpu,
        "compute_capability": f"{target.capability[0]}.{target.capability[1]}",
        ENGINE_PRECISION_KEY: precision,
        ENGINE_HEAD_PRECISION_KEY: HEAD_PRECISION,
        "network": "strongly typed",
        "profile": shapes.to_json(),
    }


def timing_cache_path(target: BuildTarget) -> Path:
    """Reused by every build with this TensorRT on this GPU model: tactic timings make rebuilds much
    faster. A timing cache belongs to one TensorRT version and one device, hence one file each."""
    key = re.sub(r"[^a-z0-9.]+", "-", f"{target.version} {target.gpu} sm{target.capability[0]}{target.capability[1]}")
    return cache_dir() / f"trt-timing-{key.lower().strip('-')}.cache"


def network_graph(model: onnx.ModelProto, precision: str, calibration: np.ndarray | None = None) -> onnx.ModelProto:
    """The ONNX graph TensorRT parses for an engine of `precision`: T as a float initializer (the
    parser reads INT8 constants only behind DequantizeLinear), the backbone in float16 (fp16) or
    behind Q/DQ nodes (int8, calibrated on `calibration`), the head in float32 throughout."""
    if any(init.name == TERNARY_INITIALIZER for init in model.graph.initializer):
        model = ternary_as_float(model)
    if precision == "fp16":
        return backbone_in_half(model)
    if precision == "int8":
        if calibration is None:
            raise ExportError("internal error: an INT8 engine needs calibration images")
        return quantize_for_tensorrt(model, calibration)
    return model


def _set_timing_cache(config, cache_file: Path, echo: Callable[[str], None]):
    """Attach the cache of `cache_file` to `config`; one TensorRT rejects (another TensorRT or device,
    or a damaged file) is replaced by an empty one, which the build fills and saves."""
    blob = cache_file.read_bytes() if cache_file.is_file() else b""
    cache = config.create_timing_cache(blob)
    if cache is not None and config.set_timing_cache(cache, ignore_mismatch=False):
        return cache
    echo(f"the timing cache {cache_file} belongs to another TensorRT version or GPU; rebuilding it")
    cache = config.create_timing_cache(b"")
    if cache is None or not config.set_timing_cache(cache, ignore_mismatch=False):
        raise ExportError("TensorRT refused an empty timing cache (its messages above say why)")
    return cache


def build_engine(
    target: BuildTarget,
    graph: onnx.ModelProto,
    shapes: ProfileShapes,
    workspace_gib: float,
    echo: Callable[[str], None],
) -> bytes:
    """A serialized plan of `graph` (see network_graph), strongly typed, TF32 off."""
    trt = target.trt
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(graph.SerializeToString()):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise ExportError(f"TensorRT cannot parse the exported ONNX model: {errors[0] if errors else 'unknown error'}")

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
    config.clear_flag(trt.BuilderFlag.TF32)  # float32 stays float32: the head is exact
    profile = builder.create_optimization_profile()
    profile.set_shape(INPUT_NAME, shapes.min, shapes.opt, shapes.max)
    config.add_optimization_profile(profile)
    cache_file = timing_cache_path(target)
    cache = _set_timing_cache(config, cache_file, echo)
    echo(
        f"building a strongly typed engine (profile batch {shapes.min[0]}/{shapes.opt[0]}/{shapes.max[0]}, "
        f"workspace {workspace_gib:g} GiB, timing cache {cache_file})"
    )
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise ExportError(
            "TensorRT failed to build the engine (its messages above say why); "
            "try a larger --workspace or a smaller --batch"
        )
    timings = bytes(cache.serialize())

    def save(tmp: Path) -> None:
        tmp.write_bytes(timings)

    atomic_write(cache_file, save)
    return bytes(plan)


def verify_engine(path: Path, reference: Outputs, images: np.ndarray, description: str, tolerance: Tolerance) -> Report:
    """Load the written engine as a deployment does (qsenn_runtime.load: its metadata, the TensorRT
    version and GPU checks, the shapes) and compare what it computes with the ONNX model."""
    model = load_artifact(path, provider=None)
    return compare(reference, runtime_outputs(model, images), model.metadata, tolerance, description)


def onnx_reference(model: onnx.ModelProto, images: np.ndarray) -> Outputs:
    """The outputs of the ONNX model the engine is built from, through qsenn_runtime on the CPU."""
    with tempfile.TemporaryDirectory(prefix="qsenn-trt-") as scratch:
        path = Path(scratch) / "reference.onnx"
        path.write_bytes(model.SerializeToString())
        return runtime_outputs(load_artifact(path), images)


def export_trt(source_path: Path, options: ExportOptions, echo: Callable[[str], None] = print) -> Path:
    validate(options)
    target = require_tensorrt()
    source = load_source(source_path, options.model_type)
    out = options.out or default_output(source, options.export_format.suffix)
    shapes = profile_shapes(options.batch or DEFAULT_TRT_BATCH, source.img_size)
    echo(
        f"exporting {source.checkpoint} ({describe(source)}) to a TensorRT {target.version} {options.precision} "
        f"engine for the {target.gpu}"
    )
    folded = fold_source(source)
    report_macs(source, folded, echo)
    metadata = build_metadata(source, OPSET, options.feature_names)
    metadata = with_atlas(
        metadata, source, find_atlas(source, options.atlas), options.prototypes, options.feature_names is not None, echo
    )
    metadata = with_evidence(metadata, source, options.evidence_count, options.evidence_images, echo)
    model = to_onnx(folded, metadata, batch=None)
    calibration = None
    if options.int8:
        assert options.calib is not None  # validate() refuses --int8 without --calib
        images = folder_images(options.calib, source.info, source.img_size, CALIBRATION_LIMIT, spread=True)
        calibration = images.numpy()
        echo(
            f"quantising the backbone (Q/DQ, {TENSORRT_INT8.describe()}) on {len(calibration)} images of {options.calib}"
        )
        metadata = metadata.with_quantization(quantization_record(TENSORRT_INT8, calibration, str(options.calib)))
    graph = network_graph(model, options.precision, calibration)
    plan = build_engine(target, graph, shapes, options.workspace or DEFAULT_WORKSPACE_GIB, echo)
    data = pack_engine(metadata.with_engine(engine_info(target, options.precision, shapes)), plan)

    verify = None
    if options.verify:
        images, description = verification_images(
            source.info, source.img_size, options.verify_count, options.verify_images, echo
        )
        reference = onnx_reference(model, images.numpy())
        verify = partial(
            verify_engine,
            reference=reference,
            images=images.numpy(),
            description=description,
            tolerance=options.tolerance,
        )
    write_verified(out, data, verify, echo)
    return out
