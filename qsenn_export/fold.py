"""The deployable Q-SENN graph (spec §12.5), built from a trained QResNet.

    images ∈ [0, 1] → normalise → backbone, whose last residual block computes only the
    selected channels → maps M_S → pooled f → c = a·(f − μ)/max(σ, 1e-6) → logits = T·c + b

T stays a {−1, 0, +1} matrix: in torch it is a frozen float Linear (so the exporter and
the MAC counter see an ordinary layer); `store_ternary_as_int8` then rewrites the exported
graph so that the file holds T as an INT8 initializer followed by a Cast.
"""

from __future__ import annotations

import copy

import numpy as np
import onnx
import torch
from onnx import helper, numpy_helper
from torch import Tensor, nn
from torchvision.models import resnet

from qsenn_runtime.metadata import METADATA_KEY, ModelMetadata
from qsenn_train.errors import QsennError
from qsenn_train.model import STD_CLAMP, QResNet
from qsenn_train.quantize import TernaryHead

# Every non-zero weight of a Q-SENN head is ±a; float32 storage keeps them bit-identical,
# so anything beyond rounding noise means the head was never quantised (SLDD or dense).
MAGNITUDE_RTOL = 1e-5
TERNARY_INITIALIZER = "ternary"


def ternary_head(model: QResNet, source: str) -> TernaryHead:
    """Split the sparse head's weight into T ∈ {−1, 0, +1} and the shared magnitude a."""
    if not model.is_sparse:
        raise QsennError(
            f"{source} holds a dense model (no sparse head); export the final Q-SENN model of a run (RUN/final.pt)"
        )
    weight = model.head_weight.detach().cpu()
    magnitudes = weight.abs()[weight != 0]
    if magnitudes.numel() == 0:
        raise QsennError(
            f"{source}: every weight of the sparse head is zero; the model predicts "
            f"only its bias and cannot be explained"
        )
    magnitude = float(magnitudes.mean())
    spread = float((magnitudes - magnitude).abs().max())
    if spread > MAGNITUDE_RTOL * magnitude:
        raise QsennError(
            f"{source}: the head is not ternary (non-zero weights range over "
            f"{float(magnitudes.min()):.4g}..{float(magnitudes.max()):.4g}, one shared magnitude "
            f"expected); it looks like an SLDD or dense model, and qsenn export takes Q-SENN models only"
        )
    return TernaryHead(torch.sign(weight).to(torch.int8), magnitude, model.head_bias.detach().cpu().float().clone())


class ChannelSelect(nn.Module):
    """x[:, channels]: the identity shortcut of a block whose output is sliced."""

    def __init__(self, channels: Tensor):
        super().__init__()
        self.register_buffer("channels", channels.clone())

    def forward(self, x: Tensor) -> Tensor:
        return x.index_select(1, self.channels)


def _sliced_conv(conv: nn.Conv2d, channels: Tensor) -> nn.Conv2d:
    out = nn.Conv2d(
        conv.in_channels,
        len(channels),
        conv.kernel_size,
        stride=conv.stride,
        padding=conv.padding,
        dilation=conv.dilation,
        groups=conv.groups,
        bias=conv.bias is not None,
    )
    with torch.no_grad():
        out.weight.copy_(conv.weight[channels])
        if conv.bias is not None:
            out.bias.copy_(conv.bias[channels])
    return out


def _sliced_bn(bn: nn.BatchNorm2d, channels: Tensor) -> nn.BatchNorm2d:
    out = nn.BatchNorm2d(len(channels), eps=bn.eps, momentum=bn.momentum)
    with torch.no_grad():
        for name in ("weight", "bias", "running_mean", "running_var"):
            getattr(out, name).copy_(getattr(bn, name)[channels])
    return out


def slice_last_block(block: nn.Module, channels: Tensor) -> nn.Module:
    """A copy of the last residual block that outputs only `channels`, in that order.

    The block's output is relu(bn(conv(h)) + shortcut(x)); both terms are per output
    channel, so slicing the final conv, its BN and the shortcut (projection weights or
    the identity) gives exactly the selected maps. Its first convs need every input.
    """
    block = copy.deepcopy(block)
    if isinstance(block, resnet.Bottleneck):
        block.conv3, block.bn3 = _sliced_conv(block.conv3, channels), _sliced_bn(block.bn3, channels)
    elif isinstance(block, resnet.BasicBlock):
        block.conv2, block.bn2 = _sliced_conv(block.conv2, channels), _sliced_bn(block.bn2, channels)
    else:
        raise QsennError(f"cannot slice a {type(block).__name__} block; only torchvision ResNet blocks are supported")
    if block.downsample is None:
        block.downsample = ChannelSelect(channels)
    else:
        projection, bn = block.downsample
        block.downsample = nn.Sequential(_sliced_conv(projection, channels), _sliced_bn(bn, channels))
    return block.eval()


def input_normalisation(mean, std) -> tuple[Tensor, Tensor]:
    """The dataset's Normalize as 1×3×1×1 tensors; identity where it has none (mean None)."""
    if mean is None:
        mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    return (
        torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1),
        torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1),
    )


class FoldedQSENN(nn.Module):
    """images → (logits, features c, selected feature maps); see the module docstring."""

    def __init__(self, model: QResNet, head: TernaryHead, mean, std):
        super().__init__()
        model = copy.deepcopy(model).eval().cpu()
        input_mean, input_std = input_normalisation(mean, std)
        self.register_buffer("input_mean", input_mean)
        self.register_buffer("input_std", input_std)
        selection = model.linear.selection
        self.backbone = nn.Sequential(
            model.conv1,
            model.bn1,
            model.relu,
            model.maxpool,
            model.layer1,
            model.layer2,
            model.layer3,
            *model.layer4[:-1],
            slice_last_block(model.layer4[-1], selection),
        )
        sparse = model.linear
        self.register_buffer("feature_mean", sparse.mean.detach().clone())
        self.register_buffer("feature_scale", head.magnitude / torch.clamp(sparse.std.detach(), min=STD_CLAMP))
        self.classifier = nn.Linear(len(selection), len(head.bias))
        with torch.no_grad():
            self.classifier.weight.copy_(head.ternary.to(torch.float32))
            self.classifier.bias.copy_(head.bias)
        self.requires_grad_(False)
        self.eval()

    def normalise(self, images: Tensor) -> Tensor:
        return (images - self.input_mean) / self.input_std

    def head(self, maps: Tensor) -> tuple[Tensor, Tensor]:
        """maps → (logits, features c)."""
        features = (maps.mean(dim=(2, 3)) - self.feature_mean) * self.feature_scale
        return self.classifier(features), features

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        maps = self.backbone(self.normalise(images))
        return (*self.head(maps), maps)


# ---- MAC counting ----------------------------------------------------------------------


def count_macs(module: nn.Module, img_size: int) -> int:
    """Multiply-accumulates of the Conv2d and Linear layers for one image.

    Forward hooks: a conv costs (output elements) × (in_channels/groups · kh · kw), a linear
    layer (output elements) × in_features. BN (folded into the convs on export), ReLU,
    additions and pooling are not counted.
    """
    total = 0

    def conv_hook(conv: nn.Conv2d, _inputs, output: Tensor) -> None:
        nonlocal total
        kh, kw = conv.kernel_size
        total += output.numel() * (conv.in_channels // conv.groups) * kh * kw

    def linear_hook(linear: nn.Linear, _inputs, output: Tensor) -> None:
        nonlocal total
        total += output.numel() * linear.in_features

    handles = [
        m.register_forward_hook(conv_hook if isinstance(m, nn.Conv2d) else linear_hook)
        for m in module.modules()
        if isinstance(m, (nn.Conv2d, nn.Linear))
    ]
    was_training = module.training
    try:
        module.eval()
        with torch.no_grad():
            module(torch.zeros(1, 3, img_size, img_size))
    finally:
        for handle in handles:
            handle.remove()
        module.train(was_training)
    return total


# ---- graph surgery -----------------------------------------------------------------------


def _producer(graph: onnx.GraphProto, output: str) -> onnx.NodeProto:
    for node in graph.node:
        if output in node.output:
            return node
    raise QsennError(f"internal error: the exported graph has no node computing {output!r}")


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
            raise QsennError("internal error: T is shared with another node of the exported graph")
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
    raise QsennError("internal error: the exported logits node does not read T; cannot store it as int8")


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
        raise QsennError("the ONNX model has no int8 T initializer; export it with qsenn export")
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
        raise QsennError(f"internal error: {what} fails the ONNX checker: {str(exc).splitlines()[0]}") from None
    return model
