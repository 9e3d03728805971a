"""The folded graph in torch: ternary split, exact last-block slicing, MAC counting."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

from qsenn_bench.testing.toy_models import ABSENT_DATASET, MAGNITUDE, sldd_model, ternary_model
from qsenn_export.errors import ExportError
from qsenn_export.fold import FoldedQSENN, count_macs, read_head, slice_last_block
from qsenn_export.verify import torch_outputs
from qsenn_train.model import build_model


def test_ternary_head_splits_weight_into_T_and_magnitude():
    model = ternary_model()
    head = read_head(model, "ckpt")
    assert head.kind == "ternary" and head.weights.dtype == torch.int8
    assert set(head.weights.unique().tolist()) <= {-1, 0, 1}
    assert head.scale == pytest.approx(MAGNITUDE)
    assert torch.equal(head.weights.float() * head.scale, model.head_weight)
    assert torch.equal(head.bias, model.head_bias)


def test_real_valued_head_is_sparse_and_keeps_its_weights():
    model = sldd_model()
    for model_type in (None, "sldd"):
        head = read_head(model, "ckpt", model_type)
        assert head.kind == "sparse" and head.scale == 1.0
        assert torch.equal(head.weights, model.head_weight)


def test_real_valued_head_is_refused_as_qsenn():
    with pytest.raises(ExportError, match="Q-SENN head must be ternary.*not quantised") as exc:
        read_head(sldd_model(), "ckpt.pt", "qsenn")
    assert "\n" not in str(exc.value)


def test_dense_model_is_refused():
    with pytest.raises(ExportError, match="dense model"):
        read_head(build_model("resnet10", 3), "ckpt.pt")


def _selected_channel_macs_saved(block: Any, maps_hw: int, n_all: int, n_selected: int) -> int:
    """MACs the slicing saves: the dropped channels of the final conv and of the projection."""
    last_conv = block.conv3 if hasattr(block, "conv3") else block.conv2
    per_channel = last_conv.in_channels * last_conv.kernel_size[0] * last_conv.kernel_size[1]
    if block.downsample is not None:
        per_channel += block.downsample[0].in_channels
    return (n_all - n_selected) * per_channel * maps_hw


@pytest.mark.parametrize("arch, img_size", [("resnet10", 64), ("resnet50", 64), ("resnet18s", 28)])
def test_sliced_last_block_gives_the_same_outputs_with_fewer_macs(arch, img_size):
    # resnet10's last block has a projection shortcut, resnet50's and resnet18s's an identity one.
    model = ternary_model(arch, num_classes=5, n_features=7, per_class=2)
    head = read_head(model, "ckpt")
    folded = FoldedQSENN(model, head, ABSENT_DATASET.mean, ABSENT_DATASET.std)
    images = torch.rand(3, 3, img_size, img_size)
    reference = torch_outputs(model, head.scale, ABSENT_DATASET, images)
    with torch.no_grad():
        logits, features, maps = folded(images)
    for name, value in (("logits", logits), ("features", features), ("feature_maps", maps)):
        expected = torch.from_numpy(reference[name])
        assert torch.allclose(value, expected, rtol=1e-5, atol=1e-5 * expected.abs().max()), name

    before, after = count_macs(model, img_size), count_macs(folded, img_size)
    hw = maps.shape[2] * maps.shape[3]
    saved = _selected_channel_macs_saved(model.layer4[-1], hw, model.feature_dim, 7)
    # Both heads are K×F linear layers, so only the last block differs.
    assert before - after == saved > 0


def test_slicing_keeps_the_selection_order():
    model = ternary_model("resnet10")
    block = model.layer4[-1]
    channels = torch.tensor([9, 2, 40])
    x = torch.rand(2, 256, 4, 4)
    with torch.no_grad():
        assert torch.allclose(slice_last_block(block, channels)(x), block(x)[:, channels], atol=1e-6)


def test_count_macs_matches_a_hand_count():
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5))
    assert count_macs(net, 10) == 8 * 10 * 10 * 3 * 3 * 3 + 5 * 8
