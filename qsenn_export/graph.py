"""Edits of the exported ONNX graph: T stored as int8 (and back, for TensorRT's parser), the
qsenn metadata attached and the graph checked."""

from __future__ import annotations

import copy

import numpy as np
import onnx
from onnx import helper, numpy_helper

from qsenn_runtime.errors import first_line
from qsenn_runtime.metadata import METADATA_KEY, ModelMetadata

from .errors import ExportError

TERNARY_INITIALIZER = "ternary"


def _producer(graph: onnx.GraphProto, output: str) -> onnx.NodeProto:
    for node in graph.node:
        if output in node.output:
            return node
    raise ExportError(f"internal error: the exported graph has no node computing {output!r}")


def store_ternary_as_int8(model: onnx.ModelProto, ternary: np.ndarray, logits: str = "logits") -> None:
    """Replace the float copy of T feeding the logits node by an INT8 initializer + Cast.

    The exporter folds the torch classifier's weight into a float initializer (as T or
    Tᵀ); it is found by value, so a graph that does not hold T there is an error.
    """
    graph = model.graph
    node = _producer(graph, logits)
    initializers = {init.name: init for init in graph.initializer}
    for position, name in enumerate(node.input):
        if name not in initializers:
            continue
        values = numpy_helper.to_array(initializers[name])
        orientation = next(
            (t for t in (ternary, ternary.T) if values.shape == t.shape and np.array_equal(values, t)), None
        )
        if orientation is None:
            continue
        if any(name in other.input for other in graph.node if other is not node):
            raise ExportError("internal error: T is shared with another node of the exported graph")
        graph.initializer.remove(initializers[name])
        graph.initializer.append(numpy_helper.from_array(orientation.astype(np.int8), TERNARY_INITIALIZER))
        cast = helper.make_node(
            "Cast",
            [TERNARY_INITIALIZER],
            [f"{TERNARY_INITIALIZER}_float"],
            name="ternary_to_float",
            to=onnx.TensorProto.FLOAT,
        )
        node.input[position] = cast.output[0]
        graph.node.insert(0, cast)  # its only input is an initializer: first is a valid order
        return
    raise ExportError("internal error: the exported logits node does not read T; cannot store it as int8")


def ternary_as_float(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy with T as a float initializer (no INT8 constant + Cast).

    For TensorRT's ONNX parser, which historically accepts INT8 constants only inside
    Q/DQ pairs; the engine's T is exact in fp16/fp32 anyway and the metadata carries it.
    """
    model = copy.deepcopy(model)
    graph = model.graph
    cast = next((n for n in graph.node if n.op_type == "Cast" and list(n.input) == [TERNARY_INITIALIZER]), None)
    int8 = next((i for i in graph.initializer if i.name == TERNARY_INITIALIZER), None)
    if cast is None or int8 is None:
        raise ExportError("the ONNX model has no int8 T initializer; export it with qsenn export")
    graph.initializer.remove(int8)
    graph.initializer.append(numpy_helper.from_array(numpy_helper.to_array(int8).astype(np.float32), cast.output[0]))
    graph.node.remove(cast)
    return model


def attach_metadata(model: onnx.ModelProto, metadata: ModelMetadata, what: str) -> onnx.ModelProto:
    """Store the qsenn metadata in the model's properties and run the full ONNX checker; `what`
    names the graph in the error ("the exported graph", "the INT8 graph")."""
    helper.set_model_props(model, {METADATA_KEY: metadata.to_json()})
    try:
        onnx.checker.check_model(model, full_check=True)
    except onnx.checker.ValidationError as exc:
        raise ExportError(f"internal error: {what} fails the ONNX checker: {first_line(exc)}") from None
    return model
