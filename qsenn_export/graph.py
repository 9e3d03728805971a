"""Edits of the exported ONNX graph: T stored as int8 (and back, for TensorRT's parser), the
backbone/head split, the backbone in float16 under a float32 head (for TensorRT's strongly typed
networks), the qsenn metadata attached and the graph checked."""

from __future__ import annotations

import copy

import numpy as np
import onnx
from onnx import helper, numpy_helper

from qsenn_runtime.errors import first_line
from qsenn_runtime.metadata import METADATA_KEY, ModelMetadata

from .errors import ExportError

TERNARY_INITIALIZER = "ternary"
HALF_SUFFIX = "_fp16"  # names of the float16 copies of backbone tensors


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


def ancestors(graph: onnx.GraphProto, outputs: list[str]) -> dict[str, onnx.NodeProto]:
    """The nodes (by name) that `outputs` depend on, directly or through other nodes."""
    producers = {output: node for node in graph.node for output in node.output}
    found: dict[str, onnx.NodeProto] = {}
    stack = list(outputs)
    while stack:
        node = producers.get(stack.pop())
        if node is not None and node.name not in found:
            found[node.name] = node
            stack.extend(node.input)
    return found


def head_nodes(graph: onnx.GraphProto) -> list[str]:
    """Names of the nodes that compute `logits` and `features` from the feature maps: every
    ancestor of those outputs that is not also an ancestor of `feature_maps`."""
    backbone = ancestors(graph, ["feature_maps"])
    return [name for name in ancestors(graph, ["logits", "features"]) if name not in backbone]


def tensor_types(model: onnx.ModelProto) -> dict[str, int]:
    """The element type (onnx.TensorProto.FLOAT, FLOAT16, …) of every tensor of the graph, by name,
    from ONNX shape inference."""
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    graph = inferred.graph
    types = {init.name: init.data_type for init in graph.initializer}
    for info in (*graph.input, *graph.value_info, *graph.output):
        types[info.name] = info.type.tensor_type.elem_type
    return types


def _half_attribute(node: onnx.NodeProto) -> None:
    """Float32 constants and casts inside the float16 region become float16."""
    for attribute in node.attribute:
        if attribute.type == onnx.AttributeProto.TENSOR and attribute.t.data_type == onnx.TensorProto.FLOAT:
            half = numpy_helper.to_array(attribute.t).astype(np.float16)
            attribute.t.CopyFrom(numpy_helper.from_array(half, attribute.t.name))
        elif node.op_type == "Cast" and attribute.name == "to" and attribute.i == onnx.TensorProto.FLOAT:
            attribute.i = onnx.TensorProto.FLOAT16


def backbone_in_half(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy whose backbone (every node `feature_maps` depends on) computes in float16 while the
    head (pooling, c = a·(f − μ)/σ, W·c + b) stays float32.

    The float32 image is cast to float16 where it enters the backbone, the backbone's float
    initializers are stored as float16 copies, and the feature maps are cast back to float32
    where they leave it (the `feature_maps` output and the head's pooling). A strongly typed
    TensorRT network runs every layer in the type of its tensors, so this graph alone fixes
    which layers run in reduced precision: the head computes in float32.
    """
    model = copy.deepcopy(model)
    graph = model.graph
    types = tensor_types(model)
    region = ancestors(graph, ["feature_maps"])
    produced = {output for node in region.values() for output in node.output}
    initializers = {init.name: init for init in graph.initializer}
    halves: dict[str, str] = {}  # float32 tensor name → its float16 twin
    casts_in: list[onnx.NodeProto] = []

    def half_of(name: str) -> str:
        if name not in halves:
            halves[name] = f"{name}{HALF_SUFFIX}"
            if name in produced:
                pass  # renamed where it is produced
            elif name in initializers:
                values = numpy_helper.to_array(initializers[name]).astype(np.float16)
                graph.initializer.append(numpy_helper.from_array(values, halves[name]))
            else:  # a graph input
                casts_in.append(
                    helper.make_node(
                        "Cast", [name], [halves[name]], name=f"{name}_to_fp16", to=onnx.TensorProto.FLOAT16
                    )
                )
        return halves[name]

    nodes: list[onnx.NodeProto] = []
    for node in graph.node:
        nodes.append(node)
        if node.name not in region:
            continue
        for position, name in enumerate(node.input):
            if name and types.get(name) == onnx.TensorProto.FLOAT:
                node.input[position] = half_of(name)
        leaving = []
        for position, name in enumerate(node.output):
            if types.get(name) == onnx.TensorProto.FLOAT:
                node.output[position] = half_of(name)
                leaving.append(name)
        _half_attribute(node)
        # The float32 name lives on for the consumers outside the region (or the graph output).
        nodes.extend(
            helper.make_node("Cast", [halves[name]], [name], name=f"{name}_to_fp32", to=onnx.TensorProto.FLOAT)
            for name in leaving
            if _used_outside(graph, name, region)
        )
    for init in [init for init in graph.initializer if init.name in halves and init.name in initializers]:
        if not any(init.name in node.input for node in nodes):
            graph.initializer.remove(init)  # only the backbone read it: its float16 twin replaces it
    del graph.node[:]
    graph.node.extend(casts_in + nodes)
    del graph.value_info[:]  # types changed; the checker infers them again
    return model


def _used_outside(graph: onnx.GraphProto, name: str, region: dict[str, onnx.NodeProto]) -> bool:
    return any(o.name == name for o in graph.output) or any(
        name in node.input for node in graph.node if node.name not in region
    )
