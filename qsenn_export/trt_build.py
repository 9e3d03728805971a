"""`qsenn export --format trt`: a TensorRT 10 engine built from the exported ONNX model,
stored in the qsenn engine container and verified against the ONNX model.

TensorRT is imported only inside `require_tensorrt`, so this module loads without it.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import onnx
import torch

from qsenn_runtime.engine_file import pack_engine, read_engine_file
from qsenn_runtime.metadata import ENGINE_GPU_KEY, ENGINE_PRECISION_KEY, ENGINE_TENSORRT_KEY, INPUT_NAME, OUTPUT_NAMES
from qsenn_train.rundir import atomic_write

from ._common import OPSET, default_output, describe, fold_source, report_macs, to_onnx, write_verified
from .errors import ExportError
from .evidence import with_evidence
from .formats import (
    CALIBRATION_BATCH,
    CALIBRATION_LIMIT,
    DEFAULT_TRT_BATCH,
    DEFAULT_WORKSPACE_GIB,
    ExportOptions,
    Tolerance,
    validate,
)
from .graph import TERNARY_INITIALIZER, ternary_as_float
from .metadata import build_metadata
from .source import load_source
from .verify import (
    CHUNK,
    Outputs,
    Report,
    compare,
    folder_images,
    load_artifact,
    run_in_batches,
    runtime_outputs,
    verification_images,
)

INSTALL_HINT = "pip install 'qsenn[trt]'"


def cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "qsenn"


def timing_cache_path() -> Path:
    """Reused by every build on this machine: tactic timings make rebuilds much faster."""
    return cache_dir() / "trt-timing.cache"


def require_tensorrt():
    """The tensorrt module, or one ExportError line naming what is missing and how to get it."""
    missing = []
    try:
        import tensorrt
    except (ImportError, OSError):  # OSError: the package is there but its libraries are not
        tensorrt = None
        missing.append(f"TensorRT is not installed ({INSTALL_HINT})")
    if not torch.cuda.is_available():
        missing.append(
            "no NVIDIA GPU is visible to CUDA (check the driver with nvidia-smi; "
            "engines are built on the GPU they will run on)"
        )
    if missing:
        raise ExportError("cannot build a TensorRT engine: " + "; ".join(missing) + "; or export --format onnx")
    return tensorrt


@dataclass(frozen=True)
class ProfileShapes:
    """The optimisation profile of the dynamic batch: TensorRT tunes its kernels for `opt`."""

    min: tuple[int, int, int, int]
    opt: tuple[int, int, int, int]
    max: tuple[int, int, int, int]

    def to_json(self) -> dict:
        return {"min": list(self.min), "opt": list(self.opt), "max": list(self.max)}


def profile_shapes(max_batch: int, img_size: int) -> ProfileShapes:
    image = (3, img_size, img_size)
    return ProfileShapes((1, *image), (max(1, max_batch // 2), *image), (max_batch, *image))


def engine_info(
    tensorrt_version: str, gpu: str, capability: tuple[int, int], precision: str, shapes: ProfileShapes
) -> dict:
    """metadata.engine: what the engine was built with and for (it runs only there)."""
    return {
        ENGINE_TENSORRT_KEY: tensorrt_version,
        ENGINE_GPU_KEY: gpu,
        "compute_capability": f"{capability[0]}.{capability[1]}",
        ENGINE_PRECISION_KEY: precision,
        "profile": shapes.to_json(),
    }


def _calibrator(trt, images: torch.Tensor):
    """IInt8EntropyCalibrator2 fed with full batches of `images` from GPU memory.

    Implicit (calibrated) INT8 is deprecated since TensorRT 10.1 in favour of explicit Q/DQ
    quantisation, but still supported throughout TensorRT 10.
    """
    batch_size = min(CALIBRATION_BATCH, len(images))

    class EntropyCalibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self):
            trt.IInt8EntropyCalibrator2.__init__(self)
            whole = len(images) // batch_size * batch_size  # TensorRT wants equal batches
            self.batches = list(images[:whole].split(batch_size))
            self.current = None  # keeps the GPU copy alive while TensorRT reads it

        def get_batch_size(self) -> int:
            return batch_size

        def get_batch(self, names):
            if not self.batches:
                return None
            self.current = self.batches.pop(0).cuda().contiguous()
            return [self.current.data_ptr()]

        def read_calibration_cache(self):
            return None  # calibrate on every build: the images may have changed

        def write_calibration_cache(self, cache) -> None:
            pass

    return EntropyCalibrator(), batch_size


def build_engine(
    trt,
    model: onnx.ModelProto,
    shapes: ProfileShapes,
    options: ExportOptions,
    calibration: torch.Tensor | None,
    echo: Callable[[str], None],
) -> bytes:
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # TensorRT 10: networks are always explicit-batch
    parser = trt.OnnxParser(network, logger)
    ternary = any(init.name == TERNARY_INITIALIZER for init in model.graph.initializer)
    onnx_bytes = (ternary_as_float(model) if ternary else model).SerializeToString()
    if not parser.parse(onnx_bytes):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise ExportError(f"TensorRT cannot parse the exported ONNX model: {errors[0] if errors else 'unknown error'}")

    config = builder.create_builder_config()
    workspace = options.workspace or DEFAULT_WORKSPACE_GIB
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace * (1 << 30)))
    profile = builder.create_optimization_profile()
    profile.set_shape(INPUT_NAME, shapes.min, shapes.opt, shapes.max)
    config.add_optimization_profile(profile)
    if options.half:
        config.set_flag(trt.BuilderFlag.FP16)
    if options.int8:
        config.set_flag(trt.BuilderFlag.INT8)
        calibrator, batch_size = _calibrator(trt, calibration)
        config.int8_calibrator = calibrator
        calibration_profile = builder.create_optimization_profile()
        fixed = (batch_size, *shapes.max[1:])
        calibration_profile.set_shape(INPUT_NAME, fixed, fixed, fixed)
        config.set_calibration_profile(calibration_profile)

    cache_file = timing_cache_path()
    cache = config.create_timing_cache(cache_file.read_bytes() if cache_file.is_file() else b"")
    config.set_timing_cache(cache, ignore_mismatch=False)
    echo(
        f"building the {options.precision} engine (profile batch {shapes.min[0]}/{shapes.opt[0]}/"
        f"{shapes.max[0]}, workspace {workspace:g} GiB, timing cache {cache_file})"
    )
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise ExportError(
            "TensorRT failed to build the engine (its messages above say why); "
            "try a larger --workspace or a smaller --batch"
        )
    atomic_write(cache_file, lambda tmp: tmp.write_bytes(bytes(cache.serialize())))
    return bytes(plan)


def engine_outputs(trt, plan: bytes, images: np.ndarray, max_batch: int) -> Outputs:
    """Run the engine on the GPU (torch tensors as its buffers), at most max_batch at a time."""
    logger = trt.Logger(trt.Logger.WARNING)
    engine = trt.Runtime(logger).deserialize_cuda_engine(plan)
    if engine is None:
        raise ExportError("TensorRT cannot load the engine it just built (TensorRT/driver mismatch?)")
    context = engine.create_execution_context()
    # A stream of our own: TensorRT warns about (and synchronises around) the default one.
    stream = torch.cuda.Stream()

    def run(batch: np.ndarray) -> Outputs:
        with torch.cuda.stream(stream):
            inputs = torch.from_numpy(batch).cuda().contiguous()
            context.set_input_shape(INPUT_NAME, tuple(inputs.shape))
            context.set_tensor_address(INPUT_NAME, inputs.data_ptr())
            outputs = {
                name: torch.empty(tuple(context.get_tensor_shape(name)), dtype=torch.float32, device="cuda")
                for name in OUTPUT_NAMES
            }
            for name, tensor in outputs.items():
                context.set_tensor_address(name, tensor.data_ptr())
            if not context.execute_async_v3(stream.cuda_stream):
                raise ExportError("TensorRT failed to run the engine")
            stream.synchronize()
            return {name: tensor.cpu().numpy() for name, tensor in outputs.items()}

    return run_in_batches(run, images, min(CHUNK, max_batch))


def verify_engine(
    trt, path: Path, reference: Outputs, images: torch.Tensor, description: str, tolerance: Tolerance, max_batch: int
) -> Report:
    """Read the container back (metadata + plan) and compare the engine with the ONNX model."""
    metadata, plan = read_engine_file(path)
    return compare(reference, engine_outputs(trt, plan, images.numpy(), max_batch), metadata, tolerance, description)


def onnx_reference(model: onnx.ModelProto, images: np.ndarray) -> Outputs:
    """The outputs of the ONNX model the engine is built from, through qsenn_runtime on the CPU."""
    with tempfile.TemporaryDirectory(prefix="qsenn-trt-") as scratch:
        path = Path(scratch) / "reference.onnx"
        path.write_bytes(model.SerializeToString())
        return runtime_outputs(load_artifact(path), images)


def export_trt(source_path: Path, options: ExportOptions, echo: Callable[[str], None] = print) -> Path:
    validate(options)
    trt = require_tensorrt()
    source = load_source(source_path, options.model_type)
    out = options.out or default_output(source, options.export_format.suffix)
    shapes = profile_shapes(options.batch or DEFAULT_TRT_BATCH, source.img_size)
    echo(f"exporting {source.checkpoint} ({describe(source)}) to a TensorRT {trt.__version__} engine")
    folded = fold_source(source)
    report_macs(source, folded, echo)
    metadata = build_metadata(source, OPSET, options.feature_names)
    metadata = with_evidence(metadata, source, options.evidence_count, options.evidence_images, echo)
    model = to_onnx(folded, metadata, batch=None)
    calibration = None
    if options.int8:
        assert options.calib is not None  # validate() refuses --int8 without --calib
        calibration = folder_images(options.calib, source.info, source.img_size, CALIBRATION_LIMIT, spread=True)
        echo(f"calibrating on {len(calibration)} images of {options.calib}")
    plan = build_engine(trt, model, shapes, options, calibration, echo)
    device = torch.cuda.current_device()
    metadata = metadata.with_engine(
        engine_info(
            trt.__version__,
            torch.cuda.get_device_name(device),
            torch.cuda.get_device_capability(device),
            options.precision,
            shapes,
        )
    )
    data = pack_engine(metadata, plan)

    verify = None
    if options.verify:
        images, description = verification_images(
            source.info, source.img_size, options.verify_count, options.verify_images, echo
        )
        reference = onnx_reference(model, images.numpy())
        verify = partial(
            verify_engine,
            trt,
            reference=reference,
            images=images,
            description=description,
            tolerance=options.tolerance,
            max_batch=shapes.max[0],
        )
    write_verified(out, data, verify, echo)
    return out
