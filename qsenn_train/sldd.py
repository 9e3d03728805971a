"""SLDD head (spec §8): pick a regularisation-path entry by sparsity, prune it by magnitude.

No quantisation: the kept weights stay real-valued and the bias is the entry's own.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from .errors import QsennError

# The reference prunes to 5·K entries whatever n_per_class is (odd-I).
REFERENCE_KEEP_PER_CLASS = 5


def choose_sldd_entry(weights: Sequence[Tensor], n_per_class: int, drop_rate: float = 0.5) -> int:
    """Index i* of the path entry SLDD uses (spec §8 steps 1–3; the λ = 0 entry included).

    s_i = nnz(W_i)/K and L = n_per_class / drop_rate. i* is the first entry with the largest
    s_i ≤ L; if that is entry 0 and Σ s_i > 1, entry 0 is excluded and the choice repeated.
    The reference takes an argmax over s_i·[s_i ≤ L], which implies two things:
    * an all-zero entry (s_i = 0) scores like a disqualified one, and the argmax of all
      zeros is index 0, so when no entry with 0 < s_i ≤ L exists the answer is entry 0;
    * this holds after the exclusion too: if no other entry qualifies, i* is entry 0 again.
    """
    if not weights:
        raise QsennError("the regularisation path is empty; rerun the path stage")
    mean_nnz = [int(torch.count_nonzero(w)) / w.shape[0] for w in weights]
    limit = n_per_class / drop_rate
    chosen = _densest_within(mean_nnz, limit, skip_first=False)
    if chosen == 0 and sum(mean_nnz) > 1:  # the reference's guard: "sometimes first one is odd"
        chosen = _densest_within(mean_nnz, limit, skip_first=True)
    return chosen


def _densest_within(mean_nnz: list[float], limit: float, skip_first: bool) -> int:
    scores = [s if s <= limit and not (skip_first and i == 0) else 0.0 for i, s in enumerate(mean_nnz)]
    return max(range(len(scores)), key=scores.__getitem__)  # max returns the first maximum


def prune_to_top(weight: Tensor, keep: int) -> Tensor:
    """Keep the `keep` largest |w| of `weight`, set the rest to 0 (spec §8 step 5).

    Ties at the cut are broken by position: among equal magnitudes the entry first in
    row-major order (lower class, then lower feature) survives, so exactly min(keep, nnz)
    entries remain. The reference sorts with an unstable argsort, so its pick among ties
    is unspecified. With nnz ≤ keep nothing changes. The input is not modified.
    """
    if keep < 0:
        raise ValueError(f"keep must be non-negative, got {keep}")
    flat = weight.flatten()
    survivors = torch.argsort(flat.abs(), descending=True, stable=True)[:keep]
    pruned = torch.zeros_like(flat)
    pruned[survivors] = flat[survivors]
    return pruned.view_as(weight)


def sldd_head(
    weights: Sequence[Tensor],
    biases: Sequence[Tensor],
    n_per_class: int,
    *,
    drop_rate: float = 0.5,
    reference_compat: bool = False,
) -> tuple[Tensor, Tensor, int]:
    """(W pruned, b of the chosen entry, chosen index) for the SLDD model (spec §8).

    W keeps n_per_class·K entries (fix I); reference_compat=True keeps 5·K (odd-I).
    """
    if len(weights) != len(biases):
        raise QsennError(
            f"the regularisation path has {len(weights)} weights but {len(biases)} biases; rerun the path stage"
        )
    if n_per_class < 1:
        raise QsennError(f"n_per_class must be at least 1, got {n_per_class}")
    chosen = choose_sldd_entry(weights, n_per_class, drop_rate)
    weight = weights[chosen]
    if not weight.any():
        raise QsennError(
            f"SLDD chose regularisation-path entry {chosen}, which is all zero: no entry has "
            f"between 0 and {n_per_class / drop_rate:g} non-zeros per class "
            "(n_per_class / drop_rate). Check the path stage, or raise n_per_class"
        )
    keep_per_class = REFERENCE_KEEP_PER_CLASS if reference_compat else n_per_class
    return prune_to_top(weight, keep_per_class * weight.shape[0]), biases[chosen].clone(), chosen
