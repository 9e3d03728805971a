"""Tiny ONNX models that satisfy the export contract, built with onnx.helper (no torch), so that
runtime tests need no trained model.

Graph: images → [Sub mean, Div std] → (Conv 3×3 stride 2 → Relu)+ → Gather the selected
channels → feature_maps → GlobalAveragePool → Flatten → ·scale + offset → features c
→ MatMul with Transpose(Cast(T int8)) → Add b → logits.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from qsenn_runtime.metadata import HEAD_TERNARY, METADATA_KEY, Feature, InputSpec, ModelMetadata

OPSET = 17
FEATURE_NAMES = (
    "orange fill",
    "dotted texture",
    "star outline",
    "purple fill",
    "three objects",
    "solid texture",
    "triangle outline",
    "thick border",
)


def toy_metadata(
    num_classes: int = 4,
    num_features: int = 6,
    *,
    size: int = 32,
    resize_mode: str = "shorter",
    channels: int = 8,
    seed: int = 0,
    mean=(0.4, 0.5, 0.6),
    std=(0.2, 0.25, 0.3),
    engine: dict | None = None,
    class_names: tuple[str, ...] | None = None,
    head_kind: str = HEAD_TERNARY,
) -> ModelMetadata:
    """Every class reads 2–3 features with weights ±1 (a ternary head) or real weights of the same
    signs, magnitudes 0.3..1.5 (a sparse head); feature j reads channel (3j + 1) mod channels."""
    rng = np.random.default_rng(seed)
    ternary = np.zeros((num_classes, num_features), dtype=np.int8)
    for k in range(num_classes):
        used = rng.choice(num_features, size=min(num_features, 2 + k % 2), replace=False)
        ternary[k, used] = rng.choice((-1, 1), size=len(used))
        ternary[k, used[0]] = 1
    weights = (
        ternary if head_kind == HEAD_TERNARY else (ternary * rng.uniform(0.3, 1.5, ternary.shape)).astype(np.float32)
    )
    features = tuple(
        Feature(
            j,
            (3 * j + 1) % channels,
            FEATURE_NAMES[j % len(FEATURE_NAMES)] + ("" if j < len(FEATURE_NAMES) else f" {j}"),
        )
        for j in range(num_features)
    )
    return ModelMetadata(
        class_names=class_names or tuple(f"class {k}" for k in range(num_classes)),
        features=features,
        head_kind=head_kind,
        weights=weights,
        bias=rng.normal(0, 0.5, num_classes).astype(np.float32),
        scale=1.5 if head_kind == HEAD_TERNARY else 1.0,
        input=InputSpec(size, resize_mode, mean, std),
        provenance={"dataset": "toy", "arch": "toy-conv", "seed": seed},
        engine=engine,
    )


def toy_model(
    metadata: ModelMetadata,
    *,
    widths: tuple[int, ...] = (8,),
    batch: int | str = "N",
    graph_weights: np.ndarray | None = None,
    graph_bias: np.ndarray | None = None,
    metadata_json: str | None = None,
    with_metadata: bool = True,
    seed: int = 0,
) -> onnx.ModelProto:
    """The contract's graph for `metadata`. graph_weights / graph_bias / metadata_json let tests
    build files whose graph and metadata disagree; batch: a static batch size or a dim name."""
    rng = np.random.default_rng(seed)
    size, F = metadata.input.size, metadata.num_features
    weights = metadata.weights if graph_weights is None else graph_weights
    bias = metadata.bias if graph_bias is None else graph_bias
    inits, nodes = [], []

    def const(name: str, array: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def per_channel(values) -> np.ndarray:
        return np.reshape(values, (1, 3, 1, 1)).astype(np.float32)

    x = "images"
    if metadata.input.mean is not None:
        nodes += [
            helper.make_node("Sub", [x, const("mean", per_channel(metadata.input.mean))], ["centred"]),
            helper.make_node("Div", ["centred", const("std", per_channel(metadata.input.std))], ["normalised"]),
        ]
        x = "normalised"
    channels_in = 3
    for layer, width in enumerate(widths):
        weight = rng.normal(0, (2 / (9 * channels_in)) ** 0.5, (width, channels_in, 3, 3)).astype(np.float32)
        nodes += [
            helper.make_node(
                "Conv",
                [
                    x,
                    const(f"conv{layer}.w", weight),
                    const(f"conv{layer}.b", rng.normal(0, 0.1, width).astype(np.float32)),
                ],
                [f"conv{layer}"],
                kernel_shape=[3, 3],
                strides=[2, 2],
                pads=[1, 1, 1, 1],
            ),
            helper.make_node("Relu", [f"conv{layer}"], [f"relu{layer}"]),
        ]
        x, channels_in = f"relu{layer}", width
    selected = np.array([f.channel for f in metadata.features], dtype=np.int64)
    nodes += [
        helper.make_node("Gather", [x, const("selected_channels", selected)], ["feature_maps"], axis=1),
        helper.make_node("GlobalAveragePool", ["feature_maps"], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["f"], axis=1),
        helper.make_node("Mul", ["f", const("feature_scale", rng.uniform(0.5, 2, F).astype(np.float32))], ["scaled"]),
        helper.make_node(
            "Add", ["scaled", const("feature_offset", rng.normal(0, 0.5, F).astype(np.float32))], ["features"]
        ),
        *_head_matrix(weights, metadata.is_ternary, const),
        helper.make_node("Transpose", ["W_float"], ["T_columns"], perm=[1, 0]),
        helper.make_node("MatMul", ["features", "T_columns"], ["class_sums"]),
        helper.make_node("Add", ["class_sums", const("b", np.asarray(bias, dtype=np.float32))], ["logits"]),
    ]
    K = np.asarray(weights).shape[0]
    graph = helper.make_graph(
        nodes,
        "toy_qsenn",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [batch, 3, size, size])],
        [
            helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, K]),
            helper.make_tensor_value_info("features", TensorProto.FLOAT, [batch, F]),
            helper.make_tensor_value_info("feature_maps", TensorProto.FLOAT, [batch, F, None, None]),
        ],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    if with_metadata:
        helper.set_model_props(model, {METADATA_KEY: metadata_json or metadata.to_json()})
    onnx.checker.check_model(model)
    return model


def _head_matrix(weights: np.ndarray, ternary: bool, const) -> list[onnx.NodeProto]:
    """A ternary head as the int8 initializer T read through a Cast (as qsenn export writes it),
    a sparse one as its float initializer W."""
    if ternary:
        return [
            helper.make_node(
                "Cast", [const("T", np.asarray(weights, dtype=np.int8))], ["W_float"], to=TensorProto.FLOAT
            )
        ]
    return [helper.make_node("Identity", [const("W", np.asarray(weights, dtype=np.float32))], ["W_float"])]


def save_toy_model(path: str | Path, metadata: ModelMetadata | None = None, **kwargs) -> ModelMetadata:
    """Write a toy model to `path`; returns its metadata."""
    metadata = metadata or toy_metadata()
    onnx.save(toy_model(metadata, **kwargs), str(path))
    return metadata
