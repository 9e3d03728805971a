"""Triton's model configuration for a qsenn model: one dict in the JSON form Triton's
`GET /v2/models/{name}/config` returns, written as `config.pbtxt` (protobuf text format) by
`qsenn export --format triton` and served by `qsenn serve` at the same endpoint.

The qsenn metadata travels in the config's `parameters` (key "qsenn", a string_value holding
the metadata JSON), so a client of any Triton server can rebuild the explanations.
Pure Python: the renderer covers the few protobuf text-format constructs a config needs.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from ..metadata import INPUT_NAME, METADATA_KEY, MetadataError, ModelMetadata

PLATFORM_ONNX = "onnxruntime_onnx"
PLATFORM_TENSORRT = "tensorrt_plan"
MODEL_FILES = {PLATFORM_ONNX: "model.onnx", PLATFORM_TENSORRT: "model.plan"}
LABELS_FILE = "labels.txt"  # class names, one per line: Triton's classification extension reads it
DEFAULT_QUEUE_DELAY_US = 2000
# Fields whose values are enum names (unquoted in text format) and the map fields of ModelConfig.
_ENUM_FIELDS = frozenset({"data_type", "kind", "format"})
_MAP_FIELDS = frozenset({"parameters"})


def model_config(
    name: str,
    metadata: ModelMetadata,
    *,
    platform: str,
    max_batch_size: int,
    feature_map_size: tuple[int, int] | None,
    instance_kind: str,
    instances: int = 1,
    queue_delay_us: int = DEFAULT_QUEUE_DELAY_US,
) -> dict[str, Any]:
    """The config of the exported graph: `images` in, `logits`, `features`, `feature_maps` out
    (batch dimension implicit, as max_batch_size > 0 makes it); feature_map_size None: dynamic."""
    size, K, F = metadata.input.size, metadata.num_classes, metadata.num_features
    h, w = feature_map_size or (-1, -1)
    return {
        "name": name,
        "platform": platform,
        "max_batch_size": max_batch_size,
        "input": [{"name": INPUT_NAME, "data_type": "TYPE_FP32", "dims": [3, size, size]}],
        "output": [
            {"name": "logits", "data_type": "TYPE_FP32", "dims": [K], "label_filename": LABELS_FILE},
            {"name": "features", "data_type": "TYPE_FP32", "dims": [F]},
            {"name": "feature_maps", "data_type": "TYPE_FP32", "dims": [F, h, w]},
        ],
        "dynamic_batching": {"max_queue_delay_microseconds": queue_delay_us},
        "instance_group": [{"count": instances, "kind": instance_kind}],
        "parameters": {METADATA_KEY: {"string_value": metadata.to_json()}},
    }


def labels_text(metadata: ModelMetadata) -> str:
    """One class name per line (a line break inside a name would shift every later label)."""
    return "".join(" ".join(name.splitlines()) + "\n" for name in metadata.class_names)


def metadata_from_config(config: Mapping[str, Any], source: str) -> ModelMetadata:
    """The qsenn metadata of a model config in Triton's JSON form; MetadataError if it has none."""
    parameters = config.get("parameters")
    entry = parameters.get(METADATA_KEY) if isinstance(parameters, Mapping) else None
    text = entry.get("string_value") if isinstance(entry, Mapping) else None
    if not isinstance(text, str):
        raise MetadataError(
            f"{source} has no qsenn metadata in its config (parameters key {METADATA_KEY!r}); "
            f"export the model with `qsenn export --format triton`"
        )
    try:
        return ModelMetadata.from_json(text)
    except MetadataError as exc:
        raise MetadataError(f"{source}: {exc}") from None


# ---- protobuf text format ----------------------------------------------------------------


def to_pbtxt(config: Mapping[str, Any]) -> str:
    """`config` (JSON form) as config.pbtxt."""
    return "".join(_message(config, 0))


def _message(message: Mapping[str, Any], depth: int) -> Iterator[str]:
    pad = "  " * depth
    for key, value in message.items():
        if key in _MAP_FIELDS:  # map<string, M>: one entry block per key
            for entry_key, entry in value.items():
                yield f"{pad}{key} {{\n{pad}  key: {quote(entry_key)}\n{pad}  value {{\n"
                yield from _message(entry, depth + 2)
                yield f"{pad}  }}\n{pad}}}\n"
        elif isinstance(value, Mapping):
            yield f"{pad}{key} {{\n"
            yield from _message(value, depth + 1)
            yield f"{pad}}}\n"
        elif isinstance(value, list) and value and all(isinstance(v, Mapping) for v in value):
            for item in value:  # a repeated message: one block per element
                yield f"{pad}{key} {{\n"
                yield from _message(item, depth + 1)
                yield f"{pad}}}\n"
        elif isinstance(value, list):
            yield f"{pad}{key}: [{', '.join(_scalar(key, v) for v in value)}]\n"
        else:
            yield f"{pad}{key}: {_scalar(key, value)}\n"


def _scalar(key: str, value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return value if key in _ENUM_FIELDS else quote(value)
    raise TypeError(f"cannot write {type(value).__name__} {value!r} of {key!r} in a model config")


def quote(text: str) -> str:
    """A protobuf text-format string literal: UTF-8 bytes, escaped as protobuf's CEscape does."""
    escaped = {ord("\\"): "\\\\", ord('"'): '\\"', ord("\n"): "\\n", ord("\r"): "\\r", ord("\t"): "\\t"}
    out = []
    for byte in text.encode("utf-8"):
        if byte in escaped:
            out.append(escaped[byte])
        elif 0x20 <= byte < 0x7F:
            out.append(chr(byte))
        else:
            out.append(f"\\{byte:03o}")
    return '"' + "".join(out) + '"'
