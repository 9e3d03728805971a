"""Reads what the runtime checks in an ONNX file — its metadata_props, its 2-D int8 and float
initializers (where the head matrix lives) and the names and shapes of the graph's inputs and
outputs — with a minimal protobuf wire-format walker, so that the runtime needs no `onnx` package.

The file is memory-mapped and walked by offsets: the weights are skipped, never copied.
Field numbers are those of onnx.proto (ModelProto, GraphProto, TensorProto, ValueInfoProto,
TypeProto, TensorShapeProto).
"""

from __future__ import annotations

import mmap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

_VARINT, _FIXED64, _LENGTH_DELIMITED, _FIXED32 = 0, 1, 2, 5
_MODEL_IR_VERSION, _MODEL_GRAPH, _MODEL_METADATA_PROPS = 1, 7, 14
_GRAPH_INITIALIZER, _GRAPH_INPUT, _GRAPH_OUTPUT = 5, 11, 12
_VALUE_INFO_NAME, _VALUE_INFO_TYPE = 1, 2
_TYPE_TENSOR = 1  # TypeProto.tensor_type
_TENSOR_TYPE_SHAPE = 2  # TypeProto.Tensor.shape
_SHAPE_DIM = 1  # TensorShapeProto.dim
_DIM_VALUE = 1  # TensorShapeProto.Dimension.dim_value (dim_param, a name, is a dynamic dimension)
_ENTRY_KEY, _ENTRY_VALUE = 1, 2
_TENSOR_DIMS, _TENSOR_DATA_TYPE, _TENSOR_FLOAT_DATA, _TENSOR_INT32_DATA, _TENSOR_NAME, _TENSOR_RAW_DATA = (
    1,
    2,
    4,
    5,
    8,
    9,
)
_ONNX_FLOAT, _ONNX_INT8 = 1, 3
_MATRIX_DTYPES: dict[int, np.dtype] = {_ONNX_FLOAT: np.dtype("<f4"), _ONNX_INT8: np.dtype(np.int8)}
MAX_MATRIX_ELEMENTS = 1 << 22  # the head is K×F (ImageNet: 1000×2048); larger matrices are not read


class NotOnnxError(ValueError):
    """The bytes are not a protobuf-encoded ONNX model."""


@dataclass(frozen=True)
class Matrix:
    """A 2-D int8 or float32 initializer."""

    dtype: np.dtype
    dims: tuple[int, ...]
    values: np.ndarray | None  # None where the data lives outside the file or is too large


Shape = tuple[int | None, ...]  # None: a dynamic dimension


@dataclass(frozen=True)
class OnnxSummary:
    metadata_props: dict[str, str]
    matrices: dict[str, Matrix]  # 2-D int8 and float32 initializers, by name
    inputs: dict[str, Shape | None]  # the graph's inputs by name (None: no shape recorded)
    outputs: dict[str, Shape | None]


def read_onnx_summary(path: str | Path) -> OnnxSummary:
    with open(path, "rb") as file:
        if not file.seek(0, 2):
            raise NotOnnxError("the file is empty")
        with mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as buffer:
            return summarise(buffer)


def summarise(buffer) -> OnnxSummary:
    """`buffer`: bytes or an mmap holding a serialized ModelProto."""
    props: dict[str, str] = {}
    initializers: dict[str, Matrix] = {}
    inputs: dict[str, Shape | None] = {}
    outputs: dict[str, Shape | None] = {}
    seen_ir_version = seen_graph = False
    for field, wire, start, end in _fields(buffer, 0, len(buffer)):
        if field == _MODEL_IR_VERSION and wire == _VARINT:
            seen_ir_version = True
        elif field == _MODEL_GRAPH and wire == _LENGTH_DELIMITED:
            seen_graph = True
            for gfield, gwire, gstart, gend in _fields(buffer, start, end):
                if gfield == _GRAPH_INITIALIZER and gwire == _LENGTH_DELIMITED:
                    name, tensor = _matrix(buffer, gstart, gend)
                    if tensor is not None:
                        initializers[name] = tensor
                elif gfield in (_GRAPH_INPUT, _GRAPH_OUTPUT) and gwire == _LENGTH_DELIMITED:
                    name, shape = _value_info(buffer, gstart, gend)
                    (inputs if gfield == _GRAPH_INPUT else outputs)[name] = shape
        elif field == _MODEL_METADATA_PROPS and wire == _LENGTH_DELIMITED:
            entry = {f: _text(buffer, s, e) for f, w, s, e in _fields(buffer, start, end) if w == _LENGTH_DELIMITED}
            props[entry.get(_ENTRY_KEY, "")] = entry.get(_ENTRY_VALUE, "")
    if not (seen_ir_version and seen_graph):
        raise NotOnnxError("it holds no ONNX model (no IR version or no graph)")
    return OnnxSummary(props, initializers, inputs, outputs)


def _value_info(buffer, start: int, end: int) -> tuple[str, Shape | None]:
    """(name, shape) of a ValueInfoProto; the shape is None when the type records none."""
    name, shape = "", None
    for field, wire, s, e in _fields(buffer, start, end):
        if field == _VALUE_INFO_NAME and wire == _LENGTH_DELIMITED:
            name = _text(buffer, s, e)
        elif field == _VALUE_INFO_TYPE and wire == _LENGTH_DELIMITED:
            shape = _tensor_shape(buffer, s, e)
    return name, shape


def _tensor_shape(buffer, start: int, end: int) -> Shape | None:
    for field, wire, s, e in _fields(buffer, start, end):
        if field == _TYPE_TENSOR and wire == _LENGTH_DELIMITED:
            for tfield, twire, ts, te in _fields(buffer, s, e):
                if tfield == _TENSOR_TYPE_SHAPE and twire == _LENGTH_DELIMITED:
                    return tuple(
                        _dim(buffer, ds, de)
                        for dfield, dwire, ds, de in _fields(buffer, ts, te)
                        if dfield == _SHAPE_DIM and dwire == _LENGTH_DELIMITED
                    )
    return None


def _dim(buffer, start: int, end: int) -> int | None:
    for field, wire, _, value in _fields(buffer, start, end):
        if field == _DIM_VALUE and wire == _VARINT:
            return value
    return None


def _matrix(buffer, start: int, end: int) -> tuple[str, Matrix | None]:
    dims: list[int] = []
    name, data_type, raw = "", None, None
    typed: list[int] = []  # int32_data varints, or float_data's span
    float_span = None
    for field, wire, s, e in _fields(buffer, start, end):
        if field == _TENSOR_DIMS:
            dims += [e] if wire == _VARINT else _packed_varints(buffer, s, e)
        elif field == _TENSOR_DATA_TYPE and wire == _VARINT:
            data_type = e
        elif field == _TENSOR_NAME and wire == _LENGTH_DELIMITED:
            name = _text(buffer, s, e)
        elif field == _TENSOR_RAW_DATA and wire == _LENGTH_DELIMITED:
            raw = (s, e)
        elif field == _TENSOR_INT32_DATA:
            typed += [e] if wire == _VARINT else _packed_varints(buffer, s, e)
        elif field == _TENSOR_FLOAT_DATA and wire == _LENGTH_DELIMITED:
            float_span = (s, e)
    if data_type not in _MATRIX_DTYPES or len(dims) != 2:
        return name, None
    dtype = _MATRIX_DTYPES[data_type]
    count = dims[0] * dims[1]
    values = None
    if count <= MAX_MATRIX_ELEMENTS:
        if raw is not None and raw[1] - raw[0] == count * dtype.itemsize:
            values = np.frombuffer(buffer[raw[0] : raw[1]], dtype=dtype).reshape(dims).copy()
        elif data_type == _ONNX_INT8 and len(typed) == count:  # negative int32s: 64-bit two's-complement varints
            values = np.array([v - (1 << 64) if v >= 1 << 63 else v for v in typed], dtype=np.int64).reshape(dims)
        elif data_type == _ONNX_FLOAT and float_span is not None and float_span[1] - float_span[0] == 4 * count:
            values = np.frombuffer(buffer[float_span[0] : float_span[1]], dtype="<f4").reshape(dims).copy()
    return name, Matrix(dtype, tuple(dims), values)


def _fields(buffer, pos: int, end: int) -> Iterator[tuple[int, int, int, int]]:
    """(field number, wire type, start, end) per field; a varint yields (…, 0, value)."""
    while pos < end:
        key, pos = _varint(buffer, pos, end)
        field, wire = key >> 3, key & 7
        if field == 0:
            raise NotOnnxError("invalid protobuf field number 0")
        if wire == _VARINT:
            value, pos = _varint(buffer, pos, end)
            yield field, wire, 0, value
            continue
        if wire == _LENGTH_DELIMITED:
            length, pos = _varint(buffer, pos, end)
        elif wire in (_FIXED64, _FIXED32):
            length = 8 if wire == _FIXED64 else 4
        else:
            raise NotOnnxError(f"unsupported protobuf wire type {wire}")
        if pos + length > end:
            raise NotOnnxError("a protobuf field runs past the end of its message (truncated file?)")
        yield field, wire, pos, pos + length
        pos += length


def _varint(buffer, pos: int, end: int) -> tuple[int, int]:
    result = shift = 0
    while pos < end and shift < 70:
        byte = buffer[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
    raise NotOnnxError("truncated or overlong protobuf varint")


def _packed_varints(buffer, pos: int, end: int) -> list[int]:
    values = []
    while pos < end:
        value, pos = _varint(buffer, pos, end)
        values.append(value)
    return values


def _text(buffer, start: int, end: int) -> str:
    return bytes(buffer[start:end]).decode("utf-8", errors="replace")
