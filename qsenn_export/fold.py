"""The deployable Q-SENN/SLDD graph (spec §12.5), built from a trained QResNet.

    images ∈ [0, 1] → normalise → backbone, whose last residual block computes only the
    selected channels → maps M_S → pooled f → c = a·(f − μ)/max(σ, 1e-6) → logits = W·c + b

The head matrix W is Q-SENN's T ∈ {−1, 0, +1} with its shared magnitude a folded into c
(a "ternary" head), or SLDD's sparse real weights with a = 1 (a "sparse" head). In torch it is
a frozen float Linear (so the exporter and the MAC counter see an ordinary layer); for a ternary
head `graph.store_ternary_as_int8` then rewrites the exported graph so that the file holds T as
an INT8 initializer followed by a Cast.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torchvision.models import resnet

from qsenn_runtime.metadata import HEAD_SPARSE, HEAD_TERNARY
from qsenn_train.model import STD_CLAMP, QResNet

from .errors import ExportError

# Every non-zero weight of a Q-SENN head is ±a; float32 storage keeps them bit-identical,
# so anything beyond rounding noise means the head was never quantised (SLDD or dense).
MAGNITUDE_RTOL = 1e-5
HEAD_KIND_OF_MODEL_TYPE = {"qsenn": HEAD_TERNARY, "sldd": HEAD_SPARSE}


@dataclass(frozen=True)
class FoldedHead:
    """The exported head: logits = weights·c + bias with c = scale·(f − μ)/max(σ, 1e-6)."""

    kind: str  # HEAD_TERNARY or HEAD_SPARSE
    weights: Tensor  # K×F: int8 T ∈ {−1, 0, +1} (ternary) or float32 W (sparse)
    scale: float  # a (ternary), 1 (sparse)
    bias: Tensor  # K float32

    @property
    def num_features(self) -> int:
        return int(self.weights.shape[1])


def is_ternary(weight: Tensor) -> bool:
    """Every non-zero weight has one shared magnitude (within float rounding)."""
    magnitudes = weight.abs()[weight != 0]
    if magnitudes.numel() == 0:
        return False
    mean = float(magnitudes.mean())
    return float((magnitudes - mean).abs().max()) <= MAGNITUDE_RTOL * mean


def read_head(model: QResNet, source: str, model_type: str | None = None) -> FoldedHead:
    """The sparse head of a Q-SENN (ternary) or SLDD (sparse) model. `model_type` (from the run's
    registry or the checkpoint) decides the kind; without it, a head whose non-zero weights share
    one magnitude is ternary."""
    if not model.is_sparse:
        raise ExportError(
            f"{source} holds a dense model (no sparse head); export a finished Q-SENN or SLDD model of a run"
        )
    weight = model.head_weight.detach().cpu().float()
    bias = model.head_bias.detach().cpu().float().clone()
    nonzero = weight[weight != 0]
    if nonzero.numel() == 0:
        raise ExportError(
            f"{source}: every weight of the sparse head is zero; the model predicts only its bias and cannot be explained"
        )
    if model_type is not None and model_type not in HEAD_KIND_OF_MODEL_TYPE:
        raise ExportError(f"{source}: unknown model type {model_type!r}")
    if model_type is not None:
        kind = HEAD_KIND_OF_MODEL_TYPE[model_type]
    else:
        kind = HEAD_TERNARY if is_ternary(weight) else HEAD_SPARSE
    if kind == HEAD_SPARSE:
        return FoldedHead(HEAD_SPARSE, weight.clone(), 1.0, bias)
    if not is_ternary(weight):
        magnitudes = nonzero.abs()
        raise ExportError(
            f"{source}: a Q-SENN head must be ternary, but its non-zero weights range over "
            f"{float(magnitudes.min()):.4g}..{float(magnitudes.max()):.4g} (one shared magnitude expected); "
            f"the model was not quantised"
        )
    return FoldedHead(HEAD_TERNARY, torch.sign(weight).to(torch.int8), float(nonzero.abs().mean()), bias)


class ChannelSelect(nn.Module):
    """x[:, channels]: the identity shortcut of a block whose output is sliced."""

    channels: Tensor  # a buffer

    def __init__(self, channels: Tensor):
        super().__init__()
        self.register_buffer("channels", channels.clone())

    def forward(self, x: Tensor) -> Tensor:
        return x.index_select(1, self.channels)


def _sliced_conv(conv: nn.Conv2d, channels: Tensor) -> nn.Conv2d:
    """The same convolution computing only the output `channels`, in that order."""
    out = copy.deepcopy(conv)
    out.out_channels = len(channels)
    out.weight = nn.Parameter(conv.weight.detach()[channels].clone())
    if conv.bias is not None:
        out.bias = nn.Parameter(conv.bias.detach()[channels].clone())
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
        raise ExportError(f"cannot slice a {type(block).__name__} block; only torchvision ResNet blocks are supported")
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

    input_mean: Tensor  # buffers
    input_std: Tensor
    feature_mean: Tensor
    feature_scale: Tensor

    def __init__(self, model: QResNet, head: FoldedHead, mean, std):
        super().__init__()
        model = copy.deepcopy(model).eval().cpu()
        input_mean, input_std = input_normalisation(mean, std)
        self.register_buffer("input_mean", input_mean)
        self.register_buffer("input_std", input_std)
        sparse = model.sparse_head
        selection = sparse.selection
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
        self.register_buffer("feature_mean", sparse.mean.detach().clone())
        self.register_buffer("feature_scale", head.scale / torch.clamp(sparse.std.detach(), min=STD_CLAMP))
        self.classifier = nn.Linear(len(selection), len(head.bias))
        with torch.no_grad():
            self.classifier.weight.copy_(head.weights.to(torch.float32))
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
