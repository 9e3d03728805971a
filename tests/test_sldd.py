import pytest
import torch

from qsenn_train.errors import QsennError
from qsenn_train.sldd import choose_sldd_entry, prune_to_top, sldd_head


def path_with_counts(nnz_counts, n_classes=2, n_features=40):
    """One weight matrix per count, its first `nnz` entries (row-major) non-zero."""
    weights = []
    for nnz in nnz_counts:
        flat = torch.zeros(n_classes * n_features)
        flat[:nnz] = torch.arange(1, nnz + 1, dtype=torch.float32)
        weights.append(flat.view(n_classes, n_features))
    return weights


def chosen(mean_nnz_per_class, n_per_class=5, drop_rate=0.5, n_classes=4):
    counts = [round(s * n_classes) for s in mean_nnz_per_class]
    return choose_sldd_entry(path_with_counts(counts, n_classes), n_per_class, drop_rate)


# With r = 5 and drop rate 0.5 the limit is L = 10 non-zeros per class.
@pytest.mark.parametrize(
    "s,expected",
    [
        ([0, 2, 5, 8, 12, 20], 3),  # largest s ≤ L
        ([0, 2, 10, 11], 2),  # s = L qualifies
        ([0, 3, 8, 8, 15], 2),  # ties → the first
        ([0, 2, 4, 6], 3),  # the last (λ = 0) entry takes part
        ([12, 15, 20], 0),  # none qualifies → entry 0
        ([8, 3, 15], 1),  # i* = 0, Σ s > 1 → entry 0 excluded, choose again
        ([9, 12, 20], 0),  # …and nothing else qualifies → entry 0 after all
        ([0.5, 0.25, 0], 0),  # i* = 0 but Σ s ≤ 1 → stays
        ([1, 0.25, 0], 1),  # Σ s = 1.25 > 1 → excluded
        ([20, 0, 30], 0),  # an all-zero entry scores like a disqualified one
        ([0, 0, 15], 0),  # …also after the exclusion
    ],
)
def test_choose_sldd_entry(s, expected):
    assert chosen(s) == expected


def test_drop_rate_sets_the_limit():
    s = [0, 3, 6, 9]
    assert chosen(s, n_per_class=3, drop_rate=0.5) == 2  # L = 6
    assert chosen(s, n_per_class=3, drop_rate=1.0) == 1  # L = 3


def test_prune_keeps_largest_magnitudes():
    weight = torch.tensor([[0.5, -3.0, 0.0], [2.0, -0.1, 1.0]])
    pruned = prune_to_top(weight, 3)
    assert torch.equal(pruned, torch.tensor([[0.0, -3.0, 0.0], [2.0, 0.0, 1.0]]))
    assert weight[0, 0] == 0.5  # input untouched


def test_prune_with_budget_above_nnz_changes_nothing():
    weight = torch.tensor([[0.5, -3.0, 0.0], [2.0, -0.1, 1.0]])
    assert torch.equal(prune_to_top(weight, 5), weight)
    assert torch.equal(prune_to_top(weight, 100), weight)


def test_prune_ties_keep_the_first_in_row_major_order():
    weight = torch.tensor([[1.0, 0.0, -2.0], [2.0, -2.0, 2.0]])
    assert torch.equal(prune_to_top(weight, 2), torch.tensor([[0.0, 0.0, -2.0], [2.0, 0.0, 0.0]]))


def distinct_path(n_classes=4, n_features=10):
    """Entry 0 all zero; entry 1 has 24 = 6·K non-zeros of distinct magnitude; entry 2 is dense."""
    generator = torch.Generator().manual_seed(0)
    magnitudes = torch.randperm(n_classes * n_features, generator=generator).float() + 1
    signs = torch.where(torch.rand(n_classes * n_features, generator=generator) < 0.5, -1.0, 1.0)
    dense = (magnitudes * signs).view(n_classes, n_features)
    middle = dense.clone()
    middle.view(-1)[magnitudes.argsort()[:16]] = 0.0
    weights = [torch.zeros_like(dense), middle, dense]
    biases = [torch.zeros(n_classes), torch.tensor([0.1, -0.2, 0.3, -0.4]), torch.ones(n_classes)]
    return weights, biases


@pytest.mark.parametrize("reference_compat,keep", [(False, 3 * 4), (True, 5 * 4)])
def test_sldd_head_prunes_to_r_or_five_per_class(reference_compat, keep):
    weights, biases = distinct_path()
    # r = 3 → L = 6: entry 1 (s = 6) is chosen.
    weight, bias, index = sldd_head(weights, biases, 3, reference_compat=reference_compat)
    assert index == 1
    assert int(weight.count_nonzero()) == keep
    threshold = weights[1].abs().flatten().sort(descending=True).values[keep - 1]
    kept = weights[1].abs() >= threshold
    assert torch.equal(weight, torch.where(kept, weights[1], torch.zeros(())))
    assert torch.equal(bias, biases[1])


def test_sldd_head_refuses_an_all_zero_choice():
    weights, biases = distinct_path()
    with pytest.raises(QsennError, match="all zero"):
        sldd_head(weights[:1] + weights[2:], biases[:1] + biases[2:], 3)


def test_sldd_head_needs_matching_path_lengths():
    weights, biases = distinct_path()
    with pytest.raises(QsennError, match="biases"):
        sldd_head(weights, biases[:2], 3)
