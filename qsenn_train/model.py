"""ResNet backbones with the dense head (spec §1.3) and the sparse Q-SENN/SLDD head (§1.4).

State-dict keys follow the reference (§12.3): torchvision backbone keys at the top level,
`linear.weight/bias` for the dense head, `linear.selection/mean/std/layer.*` for the
sparse head, so checkpoints of the original code load unchanged.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import torch
from torch import Tensor, nn
from torchvision.models import resnet

from .errors import QsennError
from .names import SMALL_STEM_ARCHS
from .torchfile import read_torch_file

STD_CLAMP = 1e-6  # the head's lower bound on σ (spec §1.4; the GLM steps use 1e-5, odd-V)

# arch → (block, layers, torchvision weights enum or None)
ARCHS = {
    "resnet10": (resnet.BasicBlock, [1, 1, 1, 1], None),  # tests and tiny runs only
    "resnet18": (resnet.BasicBlock, [2, 2, 2, 2], resnet.ResNet18_Weights.IMAGENET1K_V1),
    # Small images (Fashion-MNIST at 28 px): 3×3 stride-1 stem, so 28 px give 2×2 last-stage maps.
    "resnet18s": (resnet.BasicBlock, [2, 2, 2, 2], None),
    "resnet34": (resnet.BasicBlock, [3, 4, 6, 3], resnet.ResNet34_Weights.IMAGENET1K_V1),
    "resnet50": (resnet.Bottleneck, [3, 4, 6, 3], resnet.ResNet50_Weights.IMAGENET1K_V1),
}
# Older file names of the same torchvision checkpoints (the reference uses resnet50-19c8e357).
LEGACY_WEIGHT_FILES = {"resnet50": "resnet50-19c8e357.pth"}


class ModelOutput(NamedTuple):
    logits: Tensor  # B×K
    feature_maps: Tensor  # B×C×h×w, the selected maps once a sparse head is installed
    pooled: Tensor  # B×C, pooled features after dropout (= raw pooled f in eval mode)


class SparseHead(nn.Module):
    """selection → (pool, dropout in the model) → standardise with trainable μ/σ → frozen linear."""

    selection: Tensor  # a buffer: channel indices (F, int64)

    def __init__(self, selection: Tensor, mean: Tensor, std: Tensor, weight: Tensor, bias: Tensor):
        super().__init__()
        n_features = len(selection)
        if weight.shape[1] != n_features or mean.shape != (n_features,) or std.shape != (n_features,):
            raise ValueError(
                f"sparse head shapes disagree: selection {n_features}, "
                f"mean {tuple(mean.shape)}, std {tuple(std.shape)}, weight {tuple(weight.shape)}"
            )
        self.register_buffer("selection", selection.to(torch.int64).clone())
        self.mean = nn.Parameter(mean.detach().float().clone())
        self.std = nn.Parameter(std.detach().float().clone())
        self.layer = nn.Linear(n_features, weight.shape[0])
        with torch.no_grad():
            self.layer.weight.copy_(weight)
            self.layer.bias.copy_(bias)
        self.layer.requires_grad_(False)

    def standardise(self, pooled: Tensor) -> Tensor:
        """(f − μ)/max(σ, 1e-6): what the ternary layer reads (times a: the features c)."""
        return (pooled - self.mean) / torch.clamp(self.std, min=STD_CLAMP)

    def forward(self, pooled: Tensor) -> Tensor:
        return self.layer(self.standardise(pooled))


class QResNet(nn.Module):
    """A torchvision ResNet body whose head is either dense (Linear) or a SparseHead."""

    def __init__(self, arch: str, num_classes: int, *, reduced_strides: bool = False, dropout: float = 0.2):
        super().__init__()
        if arch not in ARCHS:
            raise QsennError(f"unknown architecture {arch!r}; choose one of {', '.join(ARCHS)}")
        block, layers, _ = ARCHS[arch]
        body = resnet.ResNet(block, layers)
        self.arch = arch
        self.conv1, self.bn1, self.relu, self.maxpool = body.conv1, body.bn1, body.relu, body.maxpool
        if arch in SMALL_STEM_ARCHS:
            self.conv1 = nn.Conv2d(3, self.conv1.out_channels, kernel_size=3, stride=1, padding=1, bias=False)
            nn.init.kaiming_normal_(self.conv1.weight, mode="fan_out", nonlinearity="relu")  # as torchvision's
        self.layer1, self.layer2, self.layer3, self.layer4 = body.layer1, body.layer2, body.layer3, body.layer4
        if reduced_strides:
            _set_stride_one(self.layer3)
            _set_stride_one(self.layer4)
        self.reduced_strides = reduced_strides
        self.feature_dim = body.fc.in_features
        self.dropout = nn.Dropout(dropout)
        self.linear: nn.Linear | SparseHead = nn.Linear(self.feature_dim, num_classes)

    # -- the uniform model API ----------------------------------------------------------
    def forward_features(self, x: Tensor) -> Tensor:
        """All backbone feature maps after the last stage's ReLU (B×D×h×w, non-negative)."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def forward_head(self, maps: Tensor) -> ModelOutput:
        if isinstance(self.linear, SparseHead):
            maps = maps[:, self.linear.selection]
        pooled = self.dropout(maps.mean(dim=(2, 3)))
        return ModelOutput(self.linear(pooled), maps, pooled)

    def forward(self, x: Tensor) -> ModelOutput:
        return self.forward_head(self.forward_features(x))

    # -- head bookkeeping -----------------------------------------------------------------
    @property
    def is_sparse(self) -> bool:
        return isinstance(self.linear, SparseHead)

    @property
    def num_classes(self) -> int:
        return self.head_weight.shape[0]

    @property
    def sparse_head(self) -> SparseHead:
        """The sparse head (a QsennError for a dense model, which has none)."""
        if not isinstance(self.linear, SparseHead):
            raise QsennError("the model is dense: it has no sparse head (selection, μ, σ); use a Q-SENN or SLDD model")
        return self.linear

    @property
    def head_linear(self) -> nn.Linear:
        """The head's linear layer: the dense classifier, or the sparse head's frozen layer."""
        return self.linear.layer if isinstance(self.linear, SparseHead) else self.linear

    @property
    def head_weight(self) -> Tensor:
        """The classifier weight the FDL and the metrics read (K×C)."""
        return self.head_linear.weight

    @property
    def head_bias(self) -> Tensor:
        return self.head_linear.bias

    def install_sparse_head(
        self, selection: Tensor, mean: Tensor, std: Tensor, weight: Tensor, bias: Tensor, dropout: float = 0.1
    ) -> None:
        """Replace the whole head (fresh μ/σ, odd-T) and switch the dropout rate (§1.4)."""
        device = self.conv1.weight.device
        self.linear = SparseHead(selection, mean, std, weight, bias).to(device)
        self.dropout = nn.Dropout(dropout)

    def head_parameters(self) -> list[nn.Parameter]:
        return list(self.linear.parameters())

    def backbone_parameters(self) -> list[nn.Parameter]:
        head = {id(p) for p in self.head_parameters()}
        return [p for p in self.parameters() if id(p) not in head]


def _set_stride_one(layer: nn.Sequential) -> None:
    """Reduced strides (spec §1.2): first block of the stage with stride 1, projection kept."""
    first = layer[0]
    convs = [getattr(first, "conv1", None), getattr(first, "conv2", None)]
    downsample = getattr(first, "downsample", None)
    if isinstance(downsample, nn.Sequential):
        convs.append(downsample[0])
    for conv in convs:
        if isinstance(conv, nn.Conv2d) and conv.stride != (1, 1):
            conv.stride = (1, 1)


def build_model(
    arch: str, num_classes: int, *, reduced_strides: bool = False, pretrained: bool = False, dropout: float = 0.2
) -> QResNet:
    model = QResNet(arch, num_classes, reduced_strides=reduced_strides, dropout=dropout)
    if pretrained:
        load_pretrained(model, arch)
    return model


def pretrained_weights_path(arch: str) -> tuple[Path, list[Path]]:
    """Where torchvision's hub cache keeps the ImageNet weights, and the names we accept."""
    weights = ARCHS[arch][2]
    if weights is None:
        raise QsennError(f"no ImageNet weights exist for {arch}; train it with --no-pretrained")
    folder = Path(torch.hub.get_dir()) / "checkpoints"
    names = [Path(weights.url).name] + ([LEGACY_WEIGHT_FILES[arch]] if arch in LEGACY_WEIGHT_FILES else [])
    return folder, [folder / n for n in names]


def load_pretrained(model: QResNet, arch: str) -> None:
    """Non-strict load of torchvision's ImageNet checkpoint; fc kept only when K = 1000 (§1.1).

    Nothing is downloaded: the file must already be in the torch hub cache.
    """
    folder, candidates = pretrained_weights_path(arch)
    found = next((p for p in candidates if p.is_file()), None)
    if found is None:
        raise QsennError(
            f"ImageNet weights for {arch} not found: put {candidates[0].name} (torchvision "
            f"IMAGENET1K_V1) into {folder}, or train from scratch with --no-pretrained"
        )
    state = read_torch_file(found, "these ImageNet weights are damaged: delete the file and copy it again")
    fc_weight, fc_bias = state.pop("fc.weight", None), state.pop("fc.bias", None)
    missing, unexpected = model.load_state_dict(state, strict=False)
    backbone_missing = [k for k in missing if not k.startswith("linear.")]
    if backbone_missing or unexpected:
        raise QsennError(
            f"{found} does not match {arch}: missing {backbone_missing[:3]}, "
            f"unexpected {unexpected[:3]}; use the torchvision IMAGENET1K_V1 file"
        )
    if model.num_classes == 1000 and fc_weight is not None and not model.is_sparse:
        with torch.no_grad():
            model.head_linear.weight.copy_(fc_weight)
            model.head_linear.bias.copy_(fc_bias)
