"""Opening a model file: recognise ONNX or our engine container, read and check the metadata
against the graph, and build the backend."""

from __future__ import annotations

import zipfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from .backend_api import Backend
from .engine_file import MAGIC, read_engine_file
from .errors import BackendError, path_problem
from .metadata import INPUT_NAME, METADATA_KEY, OUTPUT_NAMES, MetadataError, ModelMetadata
from .model import Model
from .onnx_proto import Matrix, NotOnnxError, OnnxSummary, read_onnx_summary
from .preprocess import MAX_IMAGE_BYTES, MAX_IMAGE_PIXELS, ImageBudget

DEFAULT_BATCH_SIZE = 16


def load(
    path: str | Path,
    provider: str | None = None,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    threads: int | None = None,
    max_image_pixels: int | None = MAX_IMAGE_PIXELS,
    spin: bool = True,
    arena: bool = True,
    max_image_bytes: int | None = MAX_IMAGE_BYTES,
) -> Model:
    """Open an exported model (`.onnx`, or an engine from `qsenn export --format trt`).

    provider: an onnxruntime execution provider ("cpu", "cuda", "tensorrt" or a full name such as
    "CUDAExecutionProvider"); default: CUDA where available, else the CPU. TensorRT only on
    request: its engine is built for batches up to `batch_size` and cached (backends.cache_dir()).
    INT8 QOperator models run on the CPU provider only. Engines run on TensorRT itself and take
    no provider. threads: onnxruntime's intra-op threads (default: its own choice).
    max_image_pixels, max_image_bytes: the most one encoded image (a file or
    bytes) may decode to, in pixels and in bytes (None: no limit); a JPEG over them is decoded at a
    reduced scale where the model's input size allows, any other image is refused with an
    InputError (decompression-bomb guard and memory budget: a server sets them per model).
    spin: onnxruntime's idle worker threads spin-wait for the next call (lowest latency when the
    cores are free); False lets them sleep, which a server sharing its cores wants. arena:
    onnxruntime's CPU memory arena, which keeps the largest activations seen (and grows further
    with varied batch sizes); False returns them after each call.
    """
    from .backends import QOPERATOR_CPU_ONLY, InputProfile, OnnxBackend, TensorRTBackend

    if batch_size < 1:
        raise ValueError(f"batch_size must be ≥ 1, not {batch_size}")
    budget = ImageBudget(max_image_pixels, max_image_bytes)  # a bad limit fails before the model loads
    path = Path(path)
    backend: Backend
    if _is_engine(path):
        if provider not in (None, "tensorrt", "trt"):
            raise BackendError(
                f"{path} is a TensorRT engine; it runs on TensorRT, not on the "
                f"execution provider {provider!r} (use the ONNX model for that)"
            )
        metadata, plan = read_engine_file(path)
        backend = TensorRTBackend(plan, metadata.engine or {}, str(path))
    else:
        metadata, summary = _onnx_metadata(path)
        quantization = metadata.quantization or {}
        static_batch = (summary.inputs.get(INPUT_NAME) or (None,))[0]
        backend = OnnxBackend(
            path,
            provider,
            threads,
            profile=InputProfile(metadata.input.size, batch_size, static_batch),
            cpu_only=QOPERATOR_CPU_ONLY if quantization.get("format") == "QOperator" else None,
            spin=spin,
            arena=arena,
        )
    check_io_shapes(metadata, backend.input_shapes, backend.output_shapes, str(path))
    return Model(
        metadata,
        backend,
        source=str(path),
        batch_size=batch_size,
        max_image_pixels=budget.max_pixels,
        max_image_bytes=budget.max_bytes,
    )


def read_metadata(path: str | Path) -> ModelMetadata:
    """The model's qsenn metadata, checked as `load` checks it but without building a backend (no
    onnxruntime, no TensorRT), so `qsenn inspect` refuses what `qsenn predict` refuses.

    ONNX: the metadata against the head matrix the graph holds (check_head_initializer) and against
    the graph's input and output names and shapes (check_io_shapes). Engines: the container, and
    the plan against the size and sha256 recorded when it was packed. Not checked here: whether
    onnxruntime knows every operator, and whether TensorRT can deserialize the plan (only a backend
    can tell; `load` does)."""
    path = Path(path)
    if _is_engine(path):
        return read_engine_file(path)[0]
    return _onnx_metadata(path)[0]


def _onnx_metadata(path: Path) -> tuple[ModelMetadata, OnnxSummary]:
    try:
        summary = read_onnx_summary(path)
    except NotOnnxError as exc:
        if is_torch_save_file(path):
            raise MetadataError(
                f"{path} is neither an ONNX model nor a qsenn engine: it is a torch.save file (a training "
                f"checkpoint); export it with `qsenn export {path}` and use the .onnx that writes"
            ) from None
        raise MetadataError(f"{path} is neither an ONNX model nor a qsenn engine ({exc})") from None
    text = summary.metadata_props.get(METADATA_KEY)
    if text is None:
        raise MetadataError(
            f"{path} is an ONNX model without qsenn metadata (metadata_props "
            f"key {METADATA_KEY!r}); export it with `qsenn export`"
        )
    try:
        metadata = ModelMetadata.from_json(text)
    except MetadataError as exc:
        raise MetadataError(f"{path}: {exc}") from None
    check_head_initializer(metadata, summary.matrices, str(path))
    check_io_shapes(metadata, summary.inputs, summary.outputs, str(path))
    return metadata, summary


def _is_engine(path: Path) -> bool:
    problem = path_problem(path)
    if problem == "no such file":
        raise MetadataError(f"model file not found: {path}")
    if problem is not None:
        raise MetadataError(
            f"model file {path} is {problem}" if problem.startswith(("a ", "not ")) else f"{path}: {problem}"
        )
    with open(path, "rb") as file:
        return file.read(len(MAGIC)) == MAGIC


# How torch.save files begin: a zip archive holding <name>/data.pkl (since torch 1.6), or the
# legacy format's pickled magic number 0x1950a86a20f9469cfc6c. Recognised without unpickling.
_LEGACY_TORCH_SAVE = bytes.fromhex("80028a0a6cfc9c46f9206aa85019")


def is_torch_save_file(path: Path) -> bool:
    with open(path, "rb") as file:
        head = file.read(len(_LEGACY_TORCH_SAVE))
    if head.startswith(_LEGACY_TORCH_SAVE):
        return True
    if not zipfile.is_zipfile(path):
        return False
    try:
        with zipfile.ZipFile(path) as archive:
            return any(name.endswith("/data.pkl") or name == "data.pkl" for name in archive.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def check_head_initializer(metadata: ModelMetadata, matrices: Mapping[str, Matrix], source: str) -> None:
    """The graph must hold the metadata's head matrix (K×F or transposed): a ternary head as an
    int8 initializer equal to T (and every int8 matrix of that shape must be T), a sparse head
    as a float initializer equal to W. Matrices stored outside the file are not compared."""
    weights = metadata.weights
    K, F = weights.shape
    shaped = {name: m for name, m in matrices.items() if m.dims in ((K, F), (F, K))}
    if metadata.is_ternary:
        int8 = {name: m for name, m in shaped.items() if m.dtype == np.int8}
        if not int8:
            raise MetadataError(
                f"{source}: the metadata describes a ternary head ({K} classes × {F} features) but the graph "
                f"holds no int8 initializer of that shape; this is not a qsenn export, export it again"
            )
        for name, matrix in int8.items():
            if matrix.values is None or _equals(matrix, weights):
                continue
            values = set(np.unique(matrix.values).tolist()) - {-1, 0, 1}
            how = (
                f"holds {', '.join(map(str, sorted(values)[:3]))}, outside {{-1, 0, +1}}"
                if values
                else "differs from the metadata's T"
            )
            raise MetadataError(
                f"{source}: the graph's int8 head initializer {name!r} {how}; the file was edited or "
                f"assembled wrongly, export it again"
            )
        return
    floats = [m for m in shaped.values() if m.dtype == np.float32]
    if any(m.values is None or _equals(m, weights) for m in floats):
        return
    raise MetadataError(
        f"{source}: the metadata's sparse head weights ({K} classes × {F} features) are not in the graph "
        f"(no float initializer of that shape holds them); the metadata does not belong to this graph, export it again"
    )


def _equals(matrix: Matrix, weights: np.ndarray) -> bool:
    return any(
        matrix.dims == m.shape and np.array_equal(np.asarray(matrix.values, dtype=np.float64), m.astype(np.float64))
        for m in (weights, weights.T)
    )


def check_io_shapes(
    metadata: ModelMetadata,
    inputs: Mapping[str, tuple | None],
    outputs: Mapping[str, tuple | None],
    source: str,
) -> None:
    """Input and output names and static dimensions must agree with the metadata (a dimension of
    None is dynamic; a shape of None, one the file does not record, is not compared)."""
    K, F, size = metadata.num_classes, metadata.num_features, metadata.input.size
    expected = {
        INPUT_NAME: (None, 3, size, size),
        "logits": (None, K),
        "features": (None, F),
        "feature_maps": (None, F, None, None),
    }
    actual = {**inputs, **outputs}
    missing = [name for name in (INPUT_NAME, *OUTPUT_NAMES) if name not in actual]
    if missing:
        raise MetadataError(
            f"{source}: the graph lacks {', '.join(missing)} (it has inputs "
            f"{', '.join(inputs)}; outputs {', '.join(outputs)}); this is not a "
            f"qsenn export"
        )
    for name, want in expected.items():
        have = actual[name]
        if have is None:
            continue
        if len(have) != len(want) or any(w is not None and h is not None and h != w for h, w in zip(have, want)):
            raise MetadataError(
                f"{source}: {name} has shape {_dims_text(have)} in the graph but the "
                f"metadata implies {_dims_text(want)} ({K} classes, {F} features, "
                f"{size} px); the metadata does not belong to this graph"
            )


def _dims_text(dims: tuple) -> str:
    return "×".join("?" if d is None else str(d) for d in dims)
