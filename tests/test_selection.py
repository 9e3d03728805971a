import dataclasses
import functools

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from qsenn_train.errors import QsennError
from qsenn_train.recipes import PAPER
from qsenn_train.selection import ProximalSaga, extended_prox, lambda_grid, select_features, standardised_batches

# The paper's selection settings, shortened for small problems.
FAST = dataclasses.replace(PAPER.selection, max_epochs=60, batch_size=64)

WORKED_EXAMPLE = torch.tensor([[0.1, 0.5, 0.9, 0.2], [0.0, 0.5, 0.1, 0.2]])


# ---- extended proximal operator (§5.3) -------------------------------------------------


def test_extended_prox_reproduces_the_worked_example():
    # τ = lr·λ·α = 0.3 and ρ = 0 with α = 1.
    selected = torch.tensor([True, False, False, False])
    out = extended_prox(WORKED_EXAMPLE, selected, lam=0.3, lr=1.0, alpha=1.0)
    expected = torch.tensor([[-0.2, 0.0, 0.6018, 0.0], [0.0, 0.0, 0.0669, 0.0]])
    assert torch.allclose(out, expected, atol=1e-4)


def test_extended_prox_divides_by_one_plus_rho():
    # lr·λ = 0.6 and α = 0.5: τ = 0.3 as above, ρ = 0.3.
    selected = torch.tensor([True, False, False, False])
    out = extended_prox(WORKED_EXAMPLE, selected, lam=0.6, lr=1.0, alpha=0.5)
    no_ridge = extended_prox(WORKED_EXAMPLE, selected, lam=0.3, lr=1.0, alpha=1.0)
    assert torch.allclose(out, no_ridge / 1.3, atol=1e-6)
    assert out[0, 0].item() == pytest.approx(-0.2 / 1.3, abs=1e-5)


def test_selected_column_with_the_largest_norm_does_not_block_the_strongest_unselected():
    weight = torch.tensor([[5.0, 1.0, 2.0, 0.5], [0.0, 0.0, 0.0, 0.0]])
    selected = torch.tensor([True, False, False, False])
    out = extended_prox(weight, selected, lam=0.1, lr=1.0, alpha=1.0)
    assert out[0].tolist() == pytest.approx([5.0 - 0.1, 0.0, 2.0 - 0.1, 0.0], abs=1e-5)


def test_unselected_columns_tying_with_the_minimum_admit_nothing():
    # The reference's argmax then lands on the (first) selected column.
    weight = torch.ones(2, 3)
    selected = torch.tensor([True, False, False])
    out = extended_prox(weight, selected, lam=0.1, lr=1.0, alpha=1.0)
    assert out[:, 1:].eq(0).all() and out[:, 0].ne(0).all()


def test_extended_prox_never_leaves_two_unselected_columns_and_keeps_weak_selected_ones():
    generator = torch.Generator().manual_seed(0)
    for _ in range(20):
        weight = torch.randn(5, 12, generator=generator)
        selected = torch.rand(12, generator=generator) < 0.3
        out = extended_prox(weight, selected, lam=2.0, lr=1.0, alpha=0.8)
        assert out[:, ~selected].ne(0).any(dim=0).sum() <= 1
        assert out[:, selected].ne(0).all()  # odd-E: never zeroed, even below τ


# ---- λ grid (§5.2) ------------------------------------------------------------------------


def test_lambda_grid():
    grid = lambda_grid(2.0, PAPER.selection)
    assert len(grid) == 101
    assert grid[0].item() == pytest.approx(0.1 * 2.0 / 0.8)
    ratios = grid[1:100] / grid[:99]
    assert torch.allclose(ratios, torch.full_like(ratios, 10 ** (-3 / 99)))
    assert grid[99].item() == pytest.approx(0.001 * grid[0].item())
    assert grid[100].item() == 0


# ---- SAGA (§5.4) against full-batch solvers --------------------------------------------------


def logistic_problem(n=200, d=6, k=3, seed=0, weak_columns=0):
    """Standardised features and labels drawn from a softmax model: not separable, so the
    unregularised optimum is finite. The last `weak_columns` barely matter."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=generator)
    x = (x - x.mean(0)) / x.std(0, unbiased=False)
    true_weight = torch.randn(k, d, generator=generator)
    true_weight[:, d - weak_columns :] *= 0.05
    labels = torch.multinomial(F.softmax(x @ true_weight.T, dim=1), 1, generator=generator).flatten()
    return x, labels


def saga_solution(x, labels, k, lam, prox, n_total, settings):
    batches = standardised_batches(x, torch.zeros(x.shape[1]), torch.ones(x.shape[1]), torch.device("cpu"))
    solver = ProximalSaga(batches, labels, k, n_total, settings, torch.device("cpu"))
    torch.manual_seed(0)
    epochs = solver.fit(lam, prox)
    return solver.weight, solver.bias, epochs


def group_elastic_net_prox(weight, lam, lr, alpha):
    """The textbook prox of λ[α Σ_j ‖W_j‖ + (1−α)/2 ‖W‖²] (clipped at zero)."""
    norms = weight.norm(dim=0)
    shrink = (1 - lr * lam * alpha / norms).clamp(min=0)
    return weight * shrink / (1 + lr * lam * (1 - alpha))


def full_batch_proximal_gradient(x, labels, k, lam, prox, lr, steps):
    """Minimises mean CE + the penalty in float64; gradients by autograd (independent of the
    residual formula SAGA uses)."""
    x = x.double()
    weight = torch.zeros(k, x.shape[1], dtype=torch.float64)
    bias = torch.zeros(k, dtype=torch.float64, requires_grad=True)
    for _ in range(steps):
        weight.requires_grad_(True)
        loss = F.cross_entropy(x @ weight.T + bias, labels)
        grad_weight, grad_bias = torch.autograd.grad(loss, [weight, bias])
        with torch.no_grad():
            weight = prox(weight - lr * grad_weight, lam)
            bias -= lr * grad_bias
    return weight.detach().float(), bias.detach().float()


# A negative tol never stops early: on the float32 objective the stall rule would fire long
# before the 1e-6 level compared here.
SAGA_TIGHT = dataclasses.replace(PAPER.selection, batch_size=16, max_epochs=150, tol=-1.0)


# The textbook prox on a problem with group-zeroed columns; the extended prox with every
# column selected only on strong columns, since odd-E makes a column below τ oscillate.
@pytest.mark.parametrize("prox_name, weak_columns", [("group_elastic_net", 2), ("extended_all_selected", 0)])
def test_saga_matches_full_batch_proximal_gradient_and_shows_the_n_total_scaling(prox_name, weak_columns):
    x, labels = logistic_problem(weak_columns=weak_columns)
    n, d = x.shape
    lr, alpha, lam = SAGA_TIGHT.lr, SAGA_TIGHT.alpha, 0.05
    if prox_name == "group_elastic_net":

        def prox(weight, lam):
            return group_elastic_net_prox(weight, lam, lr, alpha)
    else:
        all_selected = torch.ones(d, dtype=torch.bool)

        def prox(weight, lam):
            return extended_prox(weight, all_selected, lam, lr, alpha)

    def reference(lam):
        return full_batch_proximal_gradient(x, labels, 3, lam, prox, lr=lr, steps=3000)

    # n_total == N_tr: SAGA minimises the true objective.
    weight, bias, _ = saga_solution(x, labels, 3, lam, functools.partial(prox, lam=lam), n, SAGA_TIGHT)
    true_weight, true_bias = reference(lam)
    assert torch.allclose(weight, true_weight, atol=1e-4)
    assert torch.allclose(bias, true_bias, atol=1e-4)
    if weak_columns:
        assert true_weight[:, -1].eq(0).all()  # the problem does exercise group sparsity

    # odd-G: with n_total = N > N_tr the data term is scaled by N_tr/N, i.e. SAGA solves the
    # true problem at λ·N/N_tr (about 11 % more regularisation for the 90/10 split).
    n_total = round(n / 0.9)
    weight, bias, _ = saga_solution(x, labels, 3, lam, functools.partial(prox, lam=lam), n_total, SAGA_TIGHT)
    scaled_weight, scaled_bias = reference(lam * n_total / n)
    assert torch.allclose(weight, scaled_weight, atol=1e-4)
    assert torch.allclose(bias, scaled_bias, atol=1e-4)
    assert (weight - true_weight).abs().max() > 1e-2


def test_saga_at_lambda_zero_matches_lbfgs():
    x, labels = logistic_problem(seed=1)
    d = x.shape[1]
    prox = functools.partial(
        extended_prox, selected=torch.ones(d, dtype=torch.bool), lam=0.0, lr=SAGA_TIGHT.lr, alpha=SAGA_TIGHT.alpha
    )
    # Without the ridge term the problem is less well conditioned: give SAGA more epochs.
    longer = dataclasses.replace(SAGA_TIGHT, max_epochs=300)
    weight, bias, _ = saga_solution(x, labels, 3, 0.0, prox, len(labels), longer)

    params = torch.zeros(3 * d + 3, dtype=torch.float64, requires_grad=True)
    optimiser = torch.optim.LBFGS(
        [params], max_iter=500, tolerance_grad=1e-12, tolerance_change=1e-15, line_search_fn="strong_wolfe"
    )

    def closure():
        optimiser.zero_grad()
        loss = F.cross_entropy(x.double() @ params[: 3 * d].view(3, d).T + params[3 * d :], labels)
        loss.backward()
        return loss

    optimiser.step(closure)
    lbfgs_weight = params.detach()[: 3 * d].view(3, d).float()
    lbfgs_bias = params.detach()[3 * d :].float()
    # The CE is invariant to a common shift of the biases; SAGA keeps Σb = 0 from b = 0.
    lbfgs_bias -= lbfgs_bias.mean()
    assert torch.allclose(weight, lbfgs_weight, atol=1e-4)
    assert torch.allclose(bias, lbfgs_bias, atol=1e-4)


def test_saga_stops_after_lookbehind_epochs_without_progress_or_at_max_epochs():
    x, labels = logistic_problem(n=64)
    prox = functools.partial(
        extended_prox, selected=torch.zeros(x.shape[1], dtype=torch.bool), lam=0.01, lr=0.1, alpha=0.8
    )
    never_enough = dataclasses.replace(FAST, tol=1e9)  # only epoch 1 counts as progress
    assert saga_solution(x, labels, 3, 0.01, prox, 64, never_enough)[2] == FAST.lookbehind + 1
    always_enough = dataclasses.replace(FAST, tol=-1e9, max_epochs=7)
    assert saga_solution(x, labels, 3, 0.01, prox, 64, always_enough)[2] == 7


# ---- the selection loop (§5.5) ------------------------------------------------------------------

INFORMATIVE = [3, 11, 17, 26]


def selection_problem(n_total=600, d=30, k=4, seed=0):
    """Raw features where only INFORMATIVE carry the label (feature INFORMATIVE[c] is shifted
    for class c), on different scales and offsets; returns the train split (90 %) and the
    statistics of §4 over the whole set."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(n_total) % k
    x = torch.randn(n_total, d, generator=generator)
    x[torch.arange(n_total), torch.tensor(INFORMATIVE)[labels]] += 1.5
    features = x * (0.5 + 2.5 * torch.rand(d, generator=generator)) + 5 * torch.rand(d, generator=generator)
    one_hot = torch.eye(k)[labels]
    max_reg_group = (features.T @ (one_hot - one_hot.mean(0))).norm(dim=1).max().item() / n_total
    train = torch.randperm(n_total, generator=generator)[: n_total - n_total // 10]
    return dict(
        features=features[train],
        labels=labels[train],
        mean=features.mean(0),
        std=features.std(0, unbiased=False),
        n_total=n_total,
        max_reg_group=max_reg_group,
    )


def run_selection(problem, n_features, settings=FAST, seed=0, **kwargs):
    torch.manual_seed(seed)
    return select_features(
        problem["features"],
        problem["labels"],
        problem["mean"],
        problem["std"],
        n_features=n_features,
        n_total=problem["n_total"],
        max_reg_group=problem["max_reg_group"],
        settings=settings,
        **kwargs,
    )


def test_selects_exactly_the_informative_features():
    result = run_selection(selection_problem(), 4)
    assert result.selected == INFORMATIVE


def test_selecting_more_admits_one_feature_per_round_informative_first():
    calls = []
    problem = selection_problem()
    result = run_selection(problem, 7, progress=lambda *a: calls.append(a))
    lams = lambda_grid(problem["max_reg_group"], FAST)
    admitted = [r["feature"] for r in result.rounds]
    assert len(result.rounds) == 7 and len(set(admitted)) == 7
    assert sorted(admitted[:4]) == INFORMATIVE
    assert result.selected == sorted(admitted)
    # One call per SAGA fit; odd-H: every round starts its sweep again at the largest λ.
    assert sum(lam_index == 0 for _, _, lam_index in calls) == 7
    assert [n_admitted for n_admitted, _, _ in calls] == sorted(n for n, _, _ in calls)
    assert calls[-1][:2] == (7, 7)
    for i, r in enumerate(result.rounds):
        # Each round's solution uses exactly the features admitted so far.
        assert r["weight"].ne(0).any(dim=0).nonzero().flatten().tolist() == sorted(admitted[: i + 1])
        assert r["lam"] == pytest.approx(lams[r["lam_index"]].item())
    assert torch.equal(result.weight, result.rounds[-1]["weight"])


def test_the_fit_sees_standardised_features():
    # Rescaling and shifting the raw features (with μ, σ following, G kept) changes nothing.
    problem = selection_problem()
    scale, shift = torch.linspace(0.1, 30, 30), torch.linspace(-50, 50, 30)
    moved = dict(
        problem,
        features=problem["features"] * scale + shift,
        mean=problem["mean"] * scale + shift,
        std=problem["std"] * scale,
    )
    original, rescaled = run_selection(problem, 5), run_selection(moved, 5)
    assert rescaled.selected == original.selected
    assert torch.allclose(rescaled.weight, original.weight, atol=1e-3)


def test_memmap_input_gives_the_same_result_as_a_tensor(tmp_path):
    problem = selection_problem()
    on_disk = np.lib.format.open_memmap(
        tmp_path / "features.npy", mode="w+", dtype=np.float32, shape=tuple(problem["features"].shape)
    )
    on_disk[:] = problem["features"].numpy()
    on_disk.flush()
    from_tensor = run_selection(problem, 5)
    from_memmap = run_selection(dict(problem, features=np.load(tmp_path / "features.npy", mmap_mode="r")), 5)
    assert from_memmap.selected == from_tensor.selected
    assert [(r["feature"], r["lam_index"], r["epochs"]) for r in from_memmap.rounds] == [
        (r["feature"], r["lam_index"], r["epochs"]) for r in from_tensor.rounds
    ]
    assert torch.equal(from_memmap.weight, from_tensor.weight)
    assert torch.equal(from_memmap.bias, from_tensor.bias)


# ---- errors ---------------------------------------------------------------------------------


def test_more_features_than_columns_is_refused():
    with pytest.raises(QsennError, match="between 1 and 30"):
        run_selection(selection_problem(), 31)


def test_constant_features_are_refused():
    problem = selection_problem()
    constant = dict(problem, features=torch.ones_like(problem["features"]), max_reg_group=0.0)
    with pytest.raises(QsennError, match="every feature is constant"):
        run_selection(constant, 2)


def test_a_round_that_admits_nothing_even_at_lambda_zero_is_an_error():
    problem = selection_problem()
    # Constant columns standardise to exactly 0, so their gradient is exactly 0.
    constant = [i for i in range(30) if i not in INFORMATIVE]
    features, mean, std = problem["features"].clone(), problem["mean"].clone(), problem["std"].clone()
    features[:, constant], mean[constant], std[constant] = 2.0, 2.0, 0.0
    short = dataclasses.replace(FAST, n_lambdas=5, max_epochs=10)
    with pytest.raises(QsennError, match="after 4 of 5 features"):
        run_selection(dict(problem, features=features, mean=mean, std=std), 5, settings=short)
