import math

import pytest
import torch

from qsenn_train.fdl import feature_diversity_loss

BETA = 0.196


def fdl_by_loops(maps, logits, weight, beta):
    """Spec §2 steps 1–6 written out with Python loops, one number at a time."""
    B, C, H, W = maps.shape
    total = 0.0
    for b in range(B):
        k = int(torch.argmax(logits[b]))
        w = [abs(float(weight[k, c])) for c in range(C)]
        norm = math.sqrt(sum(x * x for x in w)) + 1e-5
        w_hat = [x / norm for x in w]
        flat = [[float(v) for v in maps[b, c].flatten()] for c in range(C)]
        avg = [sum(f) / len(f) for f in flat]
        top = max(max(avg), 1e-6)
        v = 0.0
        for p in range(H * W):
            best = -math.inf
            for c in range(C):
                soft = math.exp(flat[c][p]) / sum(math.exp(x) for x in flat[c])
                best = max(best, soft * (avg[c] / top) * w_hat[c])
            v += best
        total += v
    return -beta / B * total


def test_uniform_maps_reduce_to_largest_normalised_weight():
    # Constant maps: softmax 1/P everywhere, every scale 1, so v = max_c ŵ_c = 4 / (5 + 1e-5).
    maps = torch.full((1, 2, 3, 3), 2.0)
    weight = torch.tensor([[3.0, -4.0], [1.0, 1.0]])
    logits = torch.tensor([[5.0, 1.0]])
    loss = feature_diversity_loss(maps, logits, weight, BETA)
    assert loss.item() == pytest.approx(-BETA * 4 / (5 + 1e-5), rel=1e-6)


def test_two_channel_example_by_hand():
    # Channel 0 = [0, ln 3]: softmax [1/4, 3/4], mean ln3/2; channel 1 = [ln 2, ln 2]: softmax
    # [1/2, 1/2], mean ln 2 (the largest, scale 1). ŵ = 1/(√2 + 1e-5) for both channels.
    maps = torch.tensor([[[[0.0, math.log(3)]], [[math.log(2), math.log(2)]]]])
    weight = torch.tensor([[1.0, -1.0], [0.0, 9.0]])
    logits = torch.tensor([[2.0, -1.0]])
    s0 = (math.log(3) / 2) / math.log(2)
    w_hat = 1 / (math.sqrt(2) + 1e-5)
    expected = -BETA * (max(0.25 * s0, 0.5) + max(0.75 * s0, 0.5)) * w_hat
    assert expected == pytest.approx(-0.15167, abs=1e-5)
    assert feature_diversity_loss(maps, logits, weight, BETA).item() == pytest.approx(expected, rel=1e-6)


def test_matches_loop_implementation_on_random_batch():
    g = torch.Generator().manual_seed(0)
    maps = torch.relu(torch.randn(4, 5, 3, 2, generator=g))
    weight = torch.randn(3, 5, generator=g)
    logits = torch.randn(4, 3, generator=g)
    got = feature_diversity_loss(maps, logits, weight, BETA).item()
    assert got == pytest.approx(fdl_by_loops(maps, logits, weight, BETA), rel=1e-5)


def test_uses_prediction_not_label_and_ignores_zero_weights():
    maps = torch.tensor([[[[0.0, 3.0]], [[3.0, 0.0]]]])
    weight = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    # predicted class 0 looks only at channel 0; class 1 only at channel 1: same value by symmetry
    a = feature_diversity_loss(maps, torch.tensor([[1.0, 0.0]]), weight, BETA)
    b = feature_diversity_loss(maps, torch.tensor([[0.0, 1.0]]), weight, BETA)
    assert a.item() == pytest.approx(b.item())
    # a weight on a zero-activation channel contributes nothing
    maps0 = torch.tensor([[[[0.0, 3.0]], [[0.0, 0.0]]]])
    only_dead = feature_diversity_loss(maps0, torch.tensor([[0.0, 1.0]]), weight, BETA)
    assert only_dead.item() == pytest.approx(0.0, abs=1e-7)


def test_gradient_reaches_maps_and_weight():
    g = torch.Generator().manual_seed(1)
    maps = torch.relu(torch.randn(2, 4, 3, 3, generator=g)).requires_grad_()
    weight = torch.randn(3, 4, generator=g, requires_grad=True)
    logits = torch.randn(2, 3, generator=g)
    feature_diversity_loss(maps, logits, weight, BETA).backward()
    assert maps.grad.abs().sum() > 0
    assert weight.grad.abs().sum() > 0  # odd-Z: no detach of |W|


def fdl_with_tie_sharing(maps, logits, weight, beta):
    """The formula with every max written as the mean over its tied arguments (the subgradient
    that splits the gradient evenly among ties): max_c x_c = Σ_c x_c·m_c / Σ_c m_c, m the detached
    mask of the maxima."""

    def shared_max(x, dim):
        mask = (x == x.max(dim=dim, keepdim=True).values).to(x.dtype).detach()
        return (x * mask).sum(dim=dim, keepdim=True) / mask.sum(dim=dim, keepdim=True)

    flat = maps.flatten(2)
    w = weight[logits.argmax(1)].abs()
    w = w / (w.norm(dim=1, keepdim=True) + 1e-5)
    avg = flat.mean(dim=2)
    scale = avg / torch.clamp(shared_max(avg, 1), min=1e-6)
    weighted = flat.softmax(dim=2) * (scale * w).unsqueeze(2)
    return -beta * shared_max(weighted, 1).squeeze(1).sum(dim=1).mean()


@pytest.mark.parametrize("case", ["duplicated channels", "all-zero maps"])
def test_tied_maxima_share_the_gradient(case):
    g = torch.Generator().manual_seed(2)
    if case == "all-zero maps":
        maps = torch.zeros(2, 3, 2, 2)
    else:
        base = torch.relu(torch.randn(2, 1, 2, 2, generator=g)) + 0.1
        maps = torch.cat([base, base, 0.5 * base], dim=1)  # channels 0 and 1 tie everywhere
    weight = torch.tensor([[1.0, 1.0, 1.0], [2.0, 2.0, 1.0]], requires_grad=True)
    logits = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    got = maps.clone().requires_grad_()
    want = maps.clone().requires_grad_()
    feature_diversity_loss(got, logits, weight, BETA).backward()
    fdl_with_tie_sharing(want, logits, weight.detach(), BETA).backward()
    assert torch.allclose(got.grad, want.grad, atol=1e-7)
    assert torch.equal(got.grad[:, 0], got.grad[:, 1])  # the tied channels get the same share
    assert got.grad[:, :2].abs().sum() > 0
