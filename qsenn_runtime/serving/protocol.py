"""The Open Inference Protocol's REST encoding (KServe v2, as Triton speaks it), both directions.

A request or response body is a JSON object, optionally followed by the binary tensor data
extension: a tensor whose JSON entry has `parameters.binary_data_size` carries no `data`; its
bytes follow the JSON, tensor after tensor in order, and the HTTP header
`Inference-Header-Content-Length` says where the JSON ends. In binary a BYTES tensor is each
element as a little-endian uint32 length followed by its bytes; in JSON it is a list of
strings. Numbers are little-endian, row-major.

numpy only: the server and the remote client both use this module.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import QsennRuntimeError

HEADER_LENGTH = "Inference-Header-Content-Length"
BINARY_SIZE = "binary_data_size"
BINARY_OUTPUT = "binary_data_output"  # request parameter: every output in binary
BYTES = "BYTES"
DATATYPES: dict[str, np.dtype] = {
    name: np.dtype(dtype).newbyteorder("<")
    for name, dtype in (
        ("BOOL", np.bool_),
        ("UINT8", np.uint8),
        ("UINT16", np.uint16),
        ("UINT32", np.uint32),
        ("UINT64", np.uint64),
        ("INT8", np.int8),
        ("INT16", np.int16),
        ("INT32", np.int32),
        ("INT64", np.int64),
        ("FP16", np.float16),
        ("FP32", np.float32),
        ("FP64", np.float64),
    )
}
_LENGTH_PREFIX = struct.Struct("<I")

Parameters = dict[str, Any]  # values: bool, number or string


class ProtocolError(QsennRuntimeError):
    """A request the server refuses: `status` is the HTTP status, the message one line."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Tensor:
    name: str
    datatype: str
    shape: tuple[int, ...]
    data: np.ndarray | tuple[bytes, ...]  # numbers: an array of `shape`; BYTES: the elements, row-major
    parameters: Parameters = field(default_factory=dict)

    @classmethod
    def of(cls, name: str, array: np.ndarray) -> Tensor:
        """A numeric tensor from an array (its dtype must be one of DATATYPES)."""
        for datatype, dtype in DATATYPES.items():
            if array.dtype == dtype:
                return cls(name, datatype, tuple(array.shape), array)
        raise ValueError(f"no protocol datatype for numpy dtype {array.dtype}")

    @classmethod
    def of_bytes(cls, name: str, elements: Sequence[bytes], shape: tuple[int, ...] | None = None) -> Tensor:
        return cls(name, BYTES, (len(elements),) if shape is None else shape, tuple(elements))

    @property
    def batch(self) -> int:
        return self.shape[0] if self.shape else 1


@dataclass(frozen=True)
class RequestedOutput:
    name: str
    binary: bool | None = None  # None: as the request's binary_data_output says
    parameters: Parameters = field(default_factory=dict)


@dataclass(frozen=True)
class InferRequest:
    inputs: tuple[Tensor, ...]
    outputs: tuple[RequestedOutput, ...] | None  # None: the model's default outputs
    parameters: Parameters
    id: str | None = None

    @property
    def binary_output(self) -> bool:
        return self.parameters.get(BINARY_OUTPUT) is True


@dataclass(frozen=True)
class InferResponse:
    model_name: str
    outputs: tuple[Tensor, ...]
    model_version: str | None = None
    id: str | None = None
    parameters: Parameters = field(default_factory=dict)

    def output(self, name: str) -> Tensor:
        for tensor in self.outputs:
            if tensor.name == name:
                return tensor
        raise KeyError(name)


# ---- decoding ---------------------------------------------------------------------------


def parse_infer_request(body: bytes, header_length: str | None) -> InferRequest:
    """An infer request body (with the header's value, if any); ProtocolError if malformed."""
    header, binary = _split(body, header_length)
    inputs = _entries(header, "inputs")
    outputs = _entries(header, "outputs") if header.get("outputs") is not None else None
    tensors, used = [], 0
    for index, entry in enumerate(inputs):
        tensor, used = _decode_tensor(entry, binary, used, f"input #{index}")
        tensors.append(tensor)
    if used != len(binary):
        raise ProtocolError(
            f"{len(binary) - used} bytes of binary data follow the JSON header but no input claims them "
            f"(check each input's parameters.{BINARY_SIZE} and the {HEADER_LENGTH} header)"
        )
    requested: list[RequestedOutput] = []
    for index, entry in enumerate(outputs or ()):
        name = entry.get("name")
        if not isinstance(name, str) or not name:
            raise ProtocolError(f'output #{index} of the request has no "name"')
        parameters = _parameters(entry, f"output {name!r}")
        binary_flag = parameters.get("binary_data")
        requested.append(RequestedOutput(name, None if binary_flag is None else bool(binary_flag), parameters))
    names = [t.name for t in tensors]
    if len(set(names)) != len(names):
        raise ProtocolError(f"the request names an input twice ({', '.join(names)})")
    request_id = header.get("id")
    return InferRequest(
        tuple(tensors),
        None if outputs is None else tuple(requested),
        _parameters(header, "the request"),
        None if request_id is None else str(request_id),
    )


def parse_infer_response(body: bytes, header_length: str | None) -> InferResponse:
    """An infer response body, as a client reads it (a malformed one is a ProtocolError)."""
    header, binary = _split(body, header_length)
    tensors, used = [], 0
    for index, entry in enumerate(_entries(header, "outputs")):
        tensor, used = _decode_tensor(entry, binary, used, f"output #{index}")
        tensors.append(tensor)
    name = header.get("model_name")
    version = header.get("model_version")
    return InferResponse(
        str(name) if name is not None else "",
        tuple(tensors),
        None if version is None else str(version),
        None if header.get("id") is None else str(header["id"]),
        _parameters(header, "the response"),
    )


def _split(body: bytes, header_length: str | None) -> tuple[dict, memoryview]:
    view = memoryview(body)
    if header_length is None:
        json_part, binary = view, view[len(view) :]
    else:
        try:
            length = int(header_length)
        except ValueError:
            raise ProtocolError(f"{HEADER_LENGTH} is {header_length!r}, not a number of bytes") from None
        if not 0 <= length <= len(view):
            raise ProtocolError(f"{HEADER_LENGTH} is {length} but the body has only {len(view)} bytes")
        json_part, binary = view[:length], view[length:]
    try:
        header = json.loads(bytes(json_part))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        # bytes after a complete JSON object: binary data whose header length is missing
        trailing = isinstance(exc, UnicodeDecodeError) or exc.msg == "Extra data"
        hint = f" (binary data needs the {HEADER_LENGTH} header)" if header_length is None and trailing else ""
        raise ProtocolError(f"the body is not valid JSON: {exc}{hint}") from None
    except RecursionError:
        raise ProtocolError("the JSON body is nested too deeply") from None
    if not isinstance(header, dict):
        raise ProtocolError(f"the JSON body must be an object, not {type(header).__name__}")
    return header, binary


def _entries(header: dict, key: str) -> list[dict]:
    entries = header.get(key)
    if not isinstance(entries, list) or not entries:
        raise ProtocolError(f'"{key}" must be a non-empty list of tensors')
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise ProtocolError(f"{key} #{index} must be an object, not {type(entry).__name__}")
    return entries


def _parameters(entry: dict, what: str) -> Parameters:
    parameters = entry.get("parameters", {})
    if not isinstance(parameters, dict):
        raise ProtocolError(f'"parameters" of {what} must be an object')
    return parameters


def _decode_tensor(entry: dict, binary: memoryview, offset: int, what: str) -> tuple[Tensor, int]:
    """The tensor of one JSON entry, its bytes taken from `binary` at `offset` when it has any;
    returns it and the offset after its bytes."""
    name = entry.get("name")
    if not isinstance(name, str) or not name:
        raise ProtocolError(f'{what} has no "name"')
    what = f"{name!r}"
    datatype = entry.get("datatype")
    if not isinstance(datatype, str) or (datatype != BYTES and datatype not in DATATYPES):
        raise ProtocolError(
            f"{what}: unknown datatype {datatype!r}; the protocol's are {', '.join([*DATATYPES, BYTES])}"
        )
    shape = entry.get("shape")
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise ProtocolError(f'{what}: "shape" must be a list of non-negative integers, not {shape!r}')
    count = math.prod(shape)
    parameters = _parameters(entry, what)
    size = parameters.get(BINARY_SIZE)
    if size is not None:
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise ProtocolError(f"{what}: {BINARY_SIZE} must be a non-negative integer, not {size!r}")
        if "data" in entry:
            raise ProtocolError(f'{what} has both "data" and {BINARY_SIZE}; give one of them')
        if offset + size > len(binary):
            raise ProtocolError(
                f"{what}: {BINARY_SIZE} {size} runs past the end of the body ({len(binary) - offset} bytes left)"
            )
        chunk = binary[offset : offset + size]
        data = _binary_bytes(chunk, count, what) if datatype == BYTES else _binary_numbers(chunk, datatype, count, what)
        offset += size
    else:
        if "data" not in entry:
            raise ProtocolError(f'{what} has neither "data" nor binary data ({BINARY_SIZE})')
        data = (
            _json_bytes(entry["data"], count, what)
            if datatype == BYTES
            else _json_numbers(entry["data"], datatype, count, what)
        )
    if isinstance(data, np.ndarray):
        data = data.reshape(shape)
    return Tensor(name, datatype, tuple(shape), data, parameters), offset


def _binary_numbers(chunk: memoryview, datatype: str, count: int, what: str) -> np.ndarray:
    dtype = DATATYPES[datatype]
    if len(chunk) != count * dtype.itemsize:
        raise ProtocolError(
            f"{what}: {len(chunk)} bytes of binary data, but {count} {datatype} values of the shape need "
            f"{count * dtype.itemsize}"
        )
    return np.frombuffer(chunk, dtype=dtype)


def _binary_bytes(chunk: memoryview, count: int, what: str) -> tuple[bytes, ...]:
    elements: list[bytes] = []
    offset = 0
    while offset < len(chunk):
        if len(elements) == count:
            raise ProtocolError(f"{what}: the binary data holds more than the shape's {count} BYTES elements")
        if offset + 4 > len(chunk):
            raise ProtocolError(f"{what}: BYTES element #{len(elements)} is cut off inside its 4-byte length")
        (length,) = _LENGTH_PREFIX.unpack_from(chunk, offset)
        offset += 4
        if offset + length > len(chunk):
            raise ProtocolError(
                f"{what}: BYTES element #{len(elements)} claims {length} bytes but only {len(chunk) - offset} follow"
            )
        elements.append(bytes(chunk[offset : offset + length]))
        offset += length
    if len(elements) != count:
        raise ProtocolError(f"{what}: the binary data holds {len(elements)} BYTES elements; the shape says {count}")
    return tuple(elements)


def _json_numbers(data: Any, datatype: str, count: int, what: str) -> np.ndarray:
    try:
        with np.errstate(over="ignore", invalid="ignore"):  # 1e300 as FP32 is inf: the caller judges it
            array = np.array(data, dtype=DATATYPES[datatype])
    except (ValueError, TypeError, OverflowError) as exc:
        raise ProtocolError(f'{what}: "data" is not a (nested) list of {datatype} numbers ({exc})') from None
    if array.size != count:
        raise ProtocolError(f'{what}: "data" holds {array.size} values; the shape says {count}')
    return array.reshape(-1)


def _json_bytes(data: Any, count: int, what: str) -> tuple[bytes, ...]:
    flat: list[bytes] = []

    def walk(value: Any) -> None:
        if isinstance(value, list):
            for item in value:
                walk(item)
        elif isinstance(value, str):
            flat.append(value.encode("utf-8"))
        else:
            raise ProtocolError(f'{what}: BYTES "data" must hold strings, not {type(value).__name__}')

    try:
        walk(data)
    except RecursionError:
        raise ProtocolError(f'{what}: "data" is nested too deeply') from None
    if len(flat) != count:
        raise ProtocolError(f'{what}: "data" holds {len(flat)} strings; the shape says {count}')
    return tuple(flat)


# ---- encoding ---------------------------------------------------------------------------


def encode_infer_request(
    inputs: Sequence[Tensor],
    outputs: Sequence[RequestedOutput] | None = None,
    parameters: Mapping[str, Any] | None = None,
    *,
    binary: bool = True,
) -> tuple[bytes, int | None]:
    """(body, value of the Inference-Header-Content-Length header or None for pure JSON)."""
    header: dict[str, Any] = {}
    if parameters:
        header["parameters"] = dict(parameters)
    if outputs is not None:
        header["outputs"] = [
            {
                "name": o.name,
                **(
                    {"parameters": {**o.parameters, **({} if o.binary is None else {"binary_data": o.binary})}}
                    if o.parameters or o.binary is not None
                    else {}
                ),
            }
            for o in outputs
        ]
    return _encode(header, "inputs", [(t, binary) for t in inputs])


def encode_infer_response(response: InferResponse, binary: Sequence[bool]) -> tuple[bytes, int | None]:
    """(body, header length or None); binary[i]: whether output i goes in binary."""
    header: dict[str, Any] = {"model_name": response.model_name}
    if response.model_version is not None:
        header["model_version"] = response.model_version
    if response.id is not None:
        header["id"] = response.id
    if response.parameters:
        header["parameters"] = response.parameters
    return _encode(header, "outputs", list(zip(response.outputs, binary)))


def _encode(header: dict, key: str, tensors: list[tuple[Tensor, bool]]) -> tuple[bytes, int | None]:
    entries, chunks = [], []
    for tensor, binary in tensors:
        entry: dict[str, Any] = {"name": tensor.name, "datatype": tensor.datatype, "shape": list(tensor.shape)}
        parameters = dict(tensor.parameters)
        if binary:
            chunk = _tensor_bytes(tensor)
            parameters[BINARY_SIZE] = len(chunk)
            chunks.append(chunk)
        else:
            entry["data"] = _tensor_json(tensor)
        if parameters:
            entry["parameters"] = parameters
        entries.append(entry)
    header[key] = entries
    text = json.dumps(header, separators=(",", ":"), allow_nan=False).encode()
    if not chunks:
        return text, None
    return b"".join([text, *chunks]), len(text)


def _tensor_bytes(tensor: Tensor) -> bytes:
    if tensor.datatype == BYTES:
        return b"".join(_LENGTH_PREFIX.pack(len(e)) + e for e in tensor.data)
    return np.ascontiguousarray(tensor.data, dtype=DATATYPES[tensor.datatype]).tobytes()


def _tensor_json(tensor: Tensor) -> list:
    if tensor.datatype == BYTES:
        try:
            return [bytes(e).decode("utf-8") for e in tensor.data]
        except UnicodeDecodeError:
            raise ProtocolError(
                f"output {tensor.name!r} holds bytes that are not UTF-8; ask for it in binary"
            ) from None
    # tolist() gives Python floats equal to the float32 values; JSON's shortest repr round-trips them
    return np.asarray(tensor.data).reshape(-1).tolist()


def error_body(message: str) -> bytes:
    """The protocol's error response."""
    return json.dumps({"error": message}).encode()
