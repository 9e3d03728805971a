"""Opening a model file: recognise ONNX or our engine container, read and check the metadata
against the graph, and build the backend."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from .engine_file import MAGIC, read_engine_file
from .errors import BackendError
from .metadata import INPUT_NAME, METADATA_KEY, OUTPUT_NAMES, MetadataError, ModelMetadata
from .model import Model
from .onnx_proto import Int8Tensor, NotOnnxError, read_onnx_summary
from .preprocess import MAX_IMAGE_PIXELS

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
) -> Model:
    """Open an exported model (`.onnx`, or an engine from `qsenn export --format trt`).

    provider: an onnxruntime execution provider ("cpu", "cuda", "tensorrt" or a full name such as
    "CUDAExecutionProvider"); default: the best available (TensorRT > CUDA > CPU). Engines run
    on TensorRT itself and take no provider. threads: onnxruntime's intra-op threads (default:
    its own choice). max_image_pixels: larger images are refused (decompression-bomb guard).
    spin: onnxruntime's idle worker threads spin-wait for the next call (lowest latency when the
    cores are free); False lets them sleep, which a server sharing its cores wants. arena:
    onnxruntime's CPU memory arena, which keeps the largest activations seen (and grows further
    with varied batch sizes); False returns them after each call.
    """
    from .backends import OnnxBackend, TensorRTBackend

    if batch_size < 1:
        raise ValueError(f"batch_size must be ≥ 1, not {batch_size}")
    path = Path(path)
    if _is_engine(path):
        if provider not in (None, "tensorrt", "trt"):
            raise BackendError(
                f"{path} is a TensorRT engine; it runs on TensorRT, not on the "
                f"execution provider {provider!r} (use the ONNX model for that)"
            )
        metadata, plan = read_engine_file(path)
        backend = TensorRTBackend(plan, metadata.engine, str(path))
    else:
        metadata = read_metadata(path)
        backend = OnnxBackend(path, provider, threads, spin, arena)
    check_io_shapes(metadata, backend.input_shapes, backend.output_shapes, str(path))
    return Model(metadata, backend, source=str(path), batch_size=batch_size, max_image_pixels=max_image_pixels)


def read_metadata(path: str | Path) -> ModelMetadata:
    """The model's qsenn metadata, without building a backend (no onnxruntime, no TensorRT).

    For ONNX it is also checked against the graph's int8 T initializer when the graph has one."""
    path = Path(path)
    if _is_engine(path):
        return read_engine_file(path)[0]
    try:
        summary = read_onnx_summary(path)
    except NotOnnxError as exc:
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
    check_ternary_initializer(metadata, summary.int8_initializers, str(path))
    return metadata


def _is_engine(path: Path) -> bool:
    if not path.is_file():
        raise MetadataError(f"model file not found: {path}" if not path.exists() else f"{path} is not a file")
    with open(path, "rb") as file:
        return file.read(len(MAGIC)) == MAGIC


def check_ternary_initializer(
    metadata: ModelMetadata, int8_initializers: Mapping[str, Int8Tensor], source: str
) -> None:
    """The graph's T (a 2-D int8 initializer of −1/0/+1, K×F or transposed) must equal the
    metadata's; graphs without such an initializer pass (nothing to compare)."""
    ternary = metadata.ternary
    candidates = {
        name: t
        for name, t in int8_initializers.items()
        if len(t.dims) == 2 and (t.values is None or np.isin(t.values, (-1, 0, 1)).all())
    }
    if not candidates or any(_equals_ternary(t, ternary) for t in candidates.values()):
        return
    name, tensor = next(iter(candidates.items()))
    how = "other values" if tensor.dims in (ternary.shape, ternary.T.shape) else f"shape {_dims_text(tensor.dims)}"
    raise MetadataError(
        f"{source}: the metadata's T ({ternary.shape[0]} classes × {ternary.shape[1]} "
        f"features) disagrees with the graph's int8 initializer {name!r} ({how}); "
        f"the file was edited or assembled wrongly, export it again"
    )


def _equals_ternary(tensor: Int8Tensor, ternary: np.ndarray) -> bool:
    return any(
        tensor.dims == m.shape and (tensor.values is None or np.array_equal(tensor.values, m))
        for m in (ternary, ternary.T)
    )


def check_io_shapes(
    metadata: ModelMetadata, inputs: Mapping[str, tuple], outputs: Mapping[str, tuple], source: str
) -> None:
    """Input and output names and static dimensions must agree with the metadata (None = dynamic)."""
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
        if len(have) != len(want) or any(w is not None and h is not None and h != w for h, w in zip(have, want)):
            raise MetadataError(
                f"{source}: {name} has shape {_dims_text(have)} in the graph but the "
                f"metadata implies {_dims_text(want)} ({K} classes, {F} features, "
                f"{size} px); the metadata does not belong to this graph"
            )


def _dims_text(dims: tuple) -> str:
    return "×".join("?" if d is None else str(d) for d in dims)
