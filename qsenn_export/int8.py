"""`qsenn export --format onnx --int8`: the backbone quantised with onnxruntime's static
quantisation, the head left exact in float.

The head — pooling, c = a·(f − μ)/σ and logits = T·c + b with T the INT8 initializer + Cast —
is excluded from quantisation, so `features` and `logits` are computed exactly (to float
rounding) from the dequantised feature maps of the INT8 backbone: the contributions T[k, j]·c_j
still sum to the logit, and only the backbone's rounding separates them from the fp32 model.

The format was chosen by measurement (benchmarks/int8_formats.py; results in
benchmarks/results/int8_formats_*.json and docs/benchmarks.md). The activation type decides:
onnxruntime's fast integer kernels are u8·s8 (AVX-512 VNNI `vpdpbusd` on the AMD EPYC measured).
With uint8 activations and per-channel symmetric int8 weights every conv is a QLinearConv on
them, ~2.5× the fp32 model; int8 activations fall back to a generic SSE2 loop (QOperator, 0.4×)
or to float convs between DequantizeLinear/QuantizeLinear (QDQ, 1.1×). QOperator and QDQ with
uint8 activations ran alike; QOperator is kept because the file itself holds the integer ops
instead of relying on onnxruntime fusing the QDQ pattern at session start.

A TensorRT INT8 engine is built from the same quantisation in explicit form (TENSORRT_INT8): a QDQ
graph with symmetric int8 activations, the head again excluded, so the engine's head is float32
too. TensorRT 10 and 11 both build it; the calibrator interface is gone from 11.
"""

from __future__ import annotations

import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import onnxruntime.quantization

from qsenn_runtime.metadata import INPUT_NAME, ModelMetadata

from .errors import ExportError
from .formats import CALIBRATION_BATCH
from .graph import attach_metadata, head_nodes, store_ternary_as_int8

QUANTISED_OP_PREFIXES = (
    "QLinear",
    "QuantizeLinear",
    "DequantizeLinear",
    "ConvInteger",
    "MatMulInteger",
    "DynamicQuantize",
)


@dataclass(frozen=True)
class Int8Settings:
    """How onnxruntime quantises the backbone; the defaults are the measured choice."""

    format: str = "QOperator"  # QuantFormat: QOperator or QDQ
    activations: str = "QUInt8"  # QuantType of activations: QUInt8 or QInt8
    calibration: str = "MinMax"  # CalibrationMethod
    # TensorRT's explicit quantisation: symmetric activations (its Q/DQ layers take zero point 0),
    # a Q/DQ pair of its own in front of every quantised input (TensorRT cannot share one between
    # layers), float weights behind a Q/DQ pair, float biases (TensorRT fuses them itself).
    tensorrt: bool = False

    def describe(self) -> str:
        symmetric = "symmetric " if self.tensorrt else ""
        return (
            f"{self.format}, {symmetric}{self.activations} activations, per-channel QInt8 weights, "
            f"{self.calibration} calibration"
        )

    def extra_options(self) -> dict:
        options: dict = {"ActivationSymmetric": self.tensorrt, "WeightSymmetric": True, "CalibStridedMinMax": 1}
        if self.tensorrt:
            options.update(AddQDQPairToWeight=True, DedicatedQDQPair=True, QuantizeBias=False)
        return options


# What `qsenn export --format trt --int8` builds: TensorRT 10 and 11 both read Q/DQ graphs (11 has no
# calibrator interface left).
TENSORRT_INT8 = Int8Settings(format="QDQ", activations="QInt8", calibration="MinMax", tensorrt=True)


def quantised_head_nodes(model: onnx.ModelProto) -> list[str]:
    """Head nodes that run quantised arithmetic (an INT8 export must have none)."""
    nodes = {node.name: node for node in model.graph.node}
    return [
        f"{name} ({nodes[name].op_type})"
        for name in head_nodes(model.graph)
        if nodes[name].op_type.startswith(QUANTISED_OP_PREFIXES)
    ]


class ImageReader(onnxruntime.quantization.CalibrationDataReader):
    """Calibration batches of preprocessed images (N×3×H×W float32 in [0, 1]).

    `__len__` and `set_range` let quantize_static calibrate one batch at a time
    (CalibStridedMinMax): the MinMax calibrator otherwise keeps every intermediate tensor of
    every image in memory (hundreds of MB per ResNet-50 image at 448 px)."""

    def __init__(self, images: np.ndarray, batch_size: int = CALIBRATION_BATCH):
        self.batches = [
            np.ascontiguousarray(images[i : i + batch_size], dtype=np.float32)
            for i in range(0, len(images), batch_size)
        ]
        self.pending = iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)

    def set_range(self, start_index: int, end_index: int) -> None:
        self.pending = iter(self.batches[start_index:end_index])

    def get_next(self) -> dict | None:
        batch = next(self.pending, None)
        return None if batch is None else {INPUT_NAME: batch}


def quantize_static_model(
    model: onnx.ModelProto, calibration: np.ndarray, settings: Int8Settings, nodes_to_exclude: list[str] | None
) -> onnx.ModelProto:
    """onnxruntime's pre-processing (shape inference, BN folding, constant folding) and static
    quantisation with per-channel weights; `nodes_to_exclude` are named in the pre-processed graph,
    None excludes the head. The result is as onnxruntime writes it (T folded to float)."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quant_pre_process, quantize_static

    with tempfile.TemporaryDirectory(prefix="qsenn-int8-") as scratch:
        source, prepared, quantised = (Path(scratch) / name for name in ("fp32.onnx", "pre.onnx", "int8.onnx"))
        onnx.save(model, str(source))
        quant_pre_process(str(source), str(prepared))
        if nodes_to_exclude is None:
            nodes_to_exclude = head_nodes(onnx.load(str(prepared)).graph)
        quantize_static(
            str(prepared),
            str(quantised),
            ImageReader(calibration),
            quant_format=QuantFormat[settings.format],
            per_channel=True,
            activation_type=QuantType[settings.activations],
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod[settings.calibration],
            nodes_to_exclude=nodes_to_exclude,
            extra_options=settings.extra_options(),
        )
        return onnx.load(str(quantised))


def quantization_record(settings: Int8Settings, calibration: np.ndarray, calibration_source: str) -> dict:
    """metadata.quantization: how the backbone was quantised (the head stays float)."""
    return {
        "precision": "int8",
        "tool": f"onnxruntime {onnxruntime.__version__} quantize_static",
        **asdict(settings),
        "weights": "QInt8 per-channel symmetric",
        "calibration_images": len(calibration),
        "calibration_source": calibration_source,
        "float_nodes": "head: pooling, c = a·(f − μ)/σ, logits = W·c + b",
    }


def quantize_backbone(
    model: onnx.ModelProto,
    calibration: np.ndarray,
    metadata: ModelMetadata,
    calibration_source: str,
    settings: Int8Settings = Int8Settings(),
) -> onnx.ModelProto:
    """The fp32 export `model` with an INT8 backbone, T back as the INT8 initializer + Cast, and
    the metadata extended by how it was quantised; checked."""
    if len(calibration) == 0:
        raise ExportError("INT8 calibration needs at least one image")
    quantised = quantize_static_model(model, calibration, settings, None)
    if metadata.is_ternary:
        store_ternary_as_int8(quantised, metadata.weights)  # pre-processing folded the Cast away
    quantised_head = quantised_head_nodes(quantised)
    if quantised_head:
        raise ExportError(f"internal error: INT8 quantisation reached the head: {', '.join(quantised_head)}")
    metadata = metadata.with_quantization(quantization_record(settings, calibration, calibration_source))
    return attach_metadata(quantised, metadata, "the INT8 graph")


def quantize_for_tensorrt(model: onnx.ModelProto, calibration: np.ndarray) -> onnx.ModelProto:
    """The QDQ graph a TensorRT INT8 engine is built from: the backbone quantised explicitly
    (TENSORRT_INT8), the head float32 with T as a float initializer (pre-processing folds its Cast)."""
    if len(calibration) == 0:
        raise ExportError("INT8 calibration needs at least one image")
    quantised = quantize_static_model(model, calibration, TENSORRT_INT8, None)
    quantised_head = quantised_head_nodes(quantised)
    if quantised_head:
        raise ExportError(f"internal error: INT8 quantisation reached the head: {', '.join(quantised_head)}")
    return quantised
