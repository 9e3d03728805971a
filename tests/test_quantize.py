import math

import pytest
import torch

from qsenn_train.errors import QsennError
from qsenn_train.quantize import quantization_entry, quantize, threshold

BOTH_MODES = pytest.mark.parametrize("reference_compat", [False, True])

# Spec §7.4: K = 3, F = 4, r = 2 → T = 6.
WORKED_W = torch.tensor([[0.9, -0.2, 0.0, 0.4], [-0.1, 0.6, -0.5, 0.05], [0.3, 0.0, -0.7, 0.2]])
WORKED_B = torch.tensor([0.5, -1.2, 0.3])


def ternary(rows):
    return torch.tensor(rows, dtype=torch.int8)


def test_quantization_entry_is_last_nonzero_lambda():
    assert quantization_entry(101) == 99
    assert quantization_entry(2) == 0
    with pytest.raises(QsennError, match="λ > 0"):
        quantization_entry(1)


def test_worked_example_threshold():
    t, mx = threshold(WORKED_W, 6)
    assert t == pytest.approx(0.25)  # (v_6 + v_7)/2 = (0.3 + 0.2)/2
    assert mx == pytest.approx(0.9)


@BOTH_MODES
def test_worked_example(reference_compat):
    head = quantize(WORKED_W, WORKED_B, 2, reference_compat=reference_compat)
    assert torch.equal(head.ternary, ternary([[1, 0, 0, 1], [0, 1, -1, 0], [1, 0, -1, 0]]))
    assert head.magnitude == pytest.approx(3.4 / 6, rel=1e-6)  # 0.9+0.4+0.6+0.5+0.3+0.7
    # n = [2, 0, 0], Bmax = 1.2, steps = 2, step = 1.2.
    assert torch.allclose(head.bias, torch.tensor([-1.2, 1.2, 1.2]))
    assert head.bias.dtype == torch.float32


# Spec §7.4 sign-flip illustration: the largest magnitude, 0.9, is negative.
# Magnitudes 0.9, 0.7, 0.6, 0.5, 0.5, 0.4 | 0.3, 0.2, 0.1, 0.05 → t = 0.35, six kept.
FLIP_W = torch.tensor([[0.5, -0.9, 0.0, 0.4], [-0.1, 0.6, -0.5, 0.05], [0.3, 0.0, -0.7, 0.2]])


def test_sign_flip_reference_compat():
    head = quantize(FLIP_W, WORKED_B, 2, reference_compat=True)
    # −0.9 lands in bin 0: +a, and left out of a = (0.7+0.6+0.5+0.5+0.4)/5 = 2.7/5.
    assert torch.equal(head.ternary, ternary([[1, 1, 0, 1], [0, 1, -1, 0], [0, 0, -1, 0]]))
    assert head.magnitude == pytest.approx(0.54, rel=1e-6)
    assert head.weight[0, 1].item() == pytest.approx(0.54, rel=1e-6)
    # n = [3, 0, −1] → d = [4, 1, 0], steps 4, step 0.6.
    assert torch.allclose(head.bias, torch.tensor([-1.2, 0.6, 1.2]))


def test_sign_flip_fixed():
    head = quantize(FLIP_W, WORKED_B, 2)
    # −0.9 keeps its sign and counts: a = (0.9+0.7+0.6+0.5+0.5+0.4)/6 = 3.6/6 = 0.6.
    assert torch.equal(head.ternary, ternary([[1, -1, 0, 1], [0, 1, -1, 0], [0, 0, -1, 0]]))
    assert head.magnitude == pytest.approx(0.6, rel=1e-6)
    assert head.weight[0, 1].item() == pytest.approx(-0.6, rel=1e-6)
    # n = [1, 0, −1] → d = [2, 1, 0], steps 2, step 1.2.
    assert torch.allclose(head.bias, torch.tensor([-1.2, 0.0, 1.2]))


# r = 1, K = 2 → T = 2 < m = 4; t = 0.45 keeps 0.9 and 0.8: net counts [1, 1].
EQUAL_COUNT_W = torch.tensor([[0.9, 0.1], [0.1, 0.8]])
EQUAL_COUNT_B = torch.tensor([0.3, -0.7])


def test_equal_net_counts_reference_gives_nan_biases():
    head = quantize(EQUAL_COUNT_W, EQUAL_COUNT_B, 1, reference_compat=True)
    assert torch.isnan(head.bias).all()


def test_equal_net_counts_fixed_gives_bmax():
    head = quantize(EQUAL_COUNT_W, EQUAL_COUNT_B, 1)
    assert torch.equal(head.bias, torch.tensor([0.7, 0.7]))


# T = r·K = 4 ≥ m = 3, so t = v_m = 0.2, the smallest magnitude.
def test_budget_above_nnz_fixed_keeps_all_nonzeros():
    for smallest in (0.2, -0.2):
        w = torch.tensor([[0.9, smallest], [0.0, -0.5]])
        head = quantize(w, torch.tensor([0.1, 0.2]), 2)
        assert torch.equal(head.ternary, torch.sign(w).to(torch.int8))
        assert head.magnitude == pytest.approx(1.6 / 3, rel=1e-6)


def test_budget_above_nnz_reference_drops_smallest_if_positive():
    w = torch.tensor([[0.9, 0.2], [0.0, -0.5]])
    head = quantize(w, torch.tensor([0.1, 0.2]), 2, reference_compat=True)
    assert torch.equal(head.ternary, ternary([[1, 0], [0, -1]]))  # +t falls in (−t, t]
    assert head.magnitude == pytest.approx(1.4 / 2, rel=1e-6)


def test_budget_above_nnz_reference_keeps_smallest_if_negative():
    w = torch.tensor([[0.9, -0.2], [0.0, -0.5]])
    head = quantize(w, torch.tensor([0.1, 0.2]), 2, reference_compat=True)
    assert torch.equal(head.ternary, ternary([[1, -1], [0, -1]]))  # −t falls in (−Mx, −t]
    assert head.magnitude == pytest.approx(1.6 / 3, rel=1e-6)


# T = 2, magnitudes 0.9, 0.3, 0.3, 0.1: v_2 = v_3 = 0.3, so t = 0.3 equals both.
TIE_W = torch.tensor([[0.9, 0.3], [-0.3, 0.1]])


def test_tie_at_threshold_fixed_drops_both_signs():
    head = quantize(TIE_W, torch.tensor([0.1, 0.2]), 1)
    assert torch.equal(head.ternary, ternary([[1, 0], [0, 0]]))
    assert head.magnitude == pytest.approx(0.9, rel=1e-6)


def test_tie_at_threshold_reference_keeps_only_the_negative():
    head = quantize(TIE_W, torch.tensor([0.1, 0.2]), 1, reference_compat=True)
    assert torch.equal(head.ternary, ternary([[1, 0], [-1, 0]]))
    assert head.magnitude == pytest.approx(0.6, rel=1e-6)  # (0.9 + 0.3)/2


def test_midpoint_rounding_onto_v_T_still_keeps_it():
    # v_1 = 1 and v_2 = the float32 just below: their midpoint rounds to 1.0 = v_1, so a
    # literal |w| > t would keep nothing. Exact arithmetic keeps v_1, and so does quantize.
    below_one = torch.nextafter(torch.tensor(1.0), torch.tensor(0.0)).item()
    weight = torch.tensor([[1.0, below_one, 0.5]])
    assert threshold(weight, 1)[0] == 1.0
    assert torch.equal(quantize(weight, torch.zeros(1), 1).ternary, ternary([[1, 0, 0]]))


def test_all_top_magnitudes_tied_is_an_error():
    with pytest.raises(QsennError, match="same magnitude"):
        quantize(torch.tensor([[0.5, -0.5], [0.5, 0.0]]), torch.zeros(2), 1)


@BOTH_MODES
def test_all_zero_solution_is_an_error(reference_compat):
    with pytest.raises(QsennError, match="all-zero solution"):
        quantize(torch.zeros(3, 4), torch.ones(3), 2, reference_compat=reference_compat)


@pytest.mark.parametrize(
    "weight,bias",
    [
        (torch.ones(3, 4), torch.ones(4)),
        (torch.ones(12), torch.ones(3)),
        (torch.ones(3, 4), torch.ones(3, 1)),
    ],
)
def test_shape_mismatch_is_an_error(weight, bias):
    with pytest.raises(QsennError, match="shape"):
        quantize(weight, bias, 1)


def test_non_finite_weight_is_an_error():
    with pytest.raises(QsennError, match="non-finite"):
        quantize(torch.tensor([[1.0, math.nan]]), torch.zeros(1), 1)


def random_entry(seed, n_classes=7, n_features=9):
    generator = torch.Generator().manual_seed(seed)
    weight = torch.randn(n_classes, n_features, generator=generator)
    weight[torch.rand(n_classes, n_features, generator=generator) < 0.3] = 0.0
    return weight, torch.randn(n_classes, generator=generator)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("n_per_class", [1, 3, 9])  # T < m, T < m, T ≥ m
def test_fixed_mode_keeps_top_magnitudes_with_their_signs(seed, n_per_class):
    weight, bias = random_entry(seed)
    head = quantize(weight, bias, n_per_class)
    target, nnz = n_per_class * weight.shape[0], int(weight.count_nonzero())
    top = weight.abs().flatten().argsort(descending=True)[: min(target, nnz)]
    expected_kept = torch.zeros(weight.numel(), dtype=torch.bool)
    expected_kept[top] = True

    kept = head.ternary != 0
    assert head.ternary.dtype == torch.int8
    assert int(kept.sum()) == min(target, nnz)
    assert torch.equal(kept.flatten(), expected_kept)
    assert torch.equal(head.ternary[kept], torch.sign(weight[kept]).to(torch.int8))
    assert head.magnitude == pytest.approx(weight[kept].abs().mean().item(), rel=1e-6)
    assert torch.equal(head.weight, head.magnitude * head.ternary.float())
    assert torch.equal(head.weight.abs()[kept], torch.full((int(kept.sum()),), head.magnitude))


@pytest.mark.parametrize("seed", range(4))
def test_modes_agree_without_the_quirks(seed):
    # No quirk fires when T < m, there are no ties and the largest magnitude is positive.
    weight, bias = random_entry(seed)
    weight[weight.abs() == weight.abs().max()] = weight.abs().max()
    fixed = quantize(weight, bias, 3)
    reference = quantize(weight, bias, 3, reference_compat=True)
    assert torch.equal(fixed.ternary, reference.ternary)
    assert fixed.magnitude == pytest.approx(reference.magnitude, rel=1e-6)
    assert torch.allclose(fixed.bias, reference.bias)
