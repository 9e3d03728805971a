"""Q-SENN quantisation (spec §7): a ternary head with one shared magnitude, and its bias.

The input is one entry of the regularisation path (§6), picked by `quantization_entry`.
The default mode implements the fixes of spec §13 (A, B, C); `reference_compat=True`
reproduces the original code, quirks included, for parity checks.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .errors import QsennError

# Value of each bin of the reference's bucketize (spec §7.2 table): bin 0 (w ≤ −Mx) gets
# +a although its entry is negative (odd-A), bins 1 and 3 get −a and +a, bin 2 is zero.
_REFERENCE_BIN_SIGN = torch.tensor([1, -1, 0, 1], dtype=torch.int8)


@dataclass(frozen=True)
class TernaryHead:
    """Wq = magnitude · ternary and bq = bias (spec §7.5)."""

    ternary: Tensor  # K×F int8 in {−1, 0, +1}
    magnitude: float  # the shared a > 0
    bias: Tensor  # K float32

    @property
    def weight(self) -> Tensor:
        """The float32 matrix the model's frozen head holds."""
        return self.magnitude * self.ternary.to(torch.float32)


def quantization_entry(path_len: int) -> int:
    """Index of the path entry to quantise: the last one with λ > 0, i.e. path_len − 2.

    The path ends with the unregularised λ = 0 solution; the reference drops it and takes
    the least regularised remaining one (λ = 0.001·λ_max, entry 99 of 101). Threshold and
    bias both come from that entry (spec §7, odd-D: intended, kept).
    """
    if path_len < 2:
        raise QsennError(
            f"the regularisation path has {path_len} entries; quantisation needs one with "
            "λ > 0 before the final λ = 0 entry — rerun the path stage"
        )
    return path_len - 2


def threshold(weight: Tensor, target: int) -> tuple[float, float]:
    """(t, Mx) of spec §7.1 for a non-zero count `target` = T = r·K, global over the matrix.

    t is the midpoint of the T-th and (T+1)-th largest non-zero magnitude, or the smallest
    non-zero magnitude when T ≥ m (m = number of non-zeros); Mx is the largest magnitude.
    Computed in the weight's dtype, as the reference does.
    """
    ranked = _ranked_magnitudes(weight)
    return float(_threshold(ranked, target)), float(ranked[0])


def quantize(weight: Tensor, bias: Tensor, n_per_class: int, *, reference_compat: bool = False) -> TernaryHead:
    """Quantise a path entry W* (K×F), b* (K) to a ternary head with r·K non-zeros (spec §7).

    reference_compat=False (default): the largest-magnitude entry keeps its sign and counts
    in the average (fix A); when all classes have the same net sign count every bias is
    Bmax (fix B); when T ≥ m every non-zero is kept (fix C).
    reference_compat=True: the original's bins, closed on the right, with the sign flip of
    bin 0 (odd-A), NaN biases for equal net counts (odd-B) and, when T ≥ m, the smallest
    entry dropped if positive and kept if negative (odd-C).
    """
    _check_entry(weight, bias, n_per_class)
    target = n_per_class * weight.shape[0]
    if reference_compat:
        ternary, magnitude = _discretize_like_reference(weight, target)
    else:
        ternary, magnitude = _discretize(weight, target)
    return TernaryHead(ternary, magnitude, _ternary_bias(ternary, bias, reference_compat))


def _check_entry(weight: Tensor, bias: Tensor, n_per_class: int) -> None:
    if weight.dim() != 2 or bias.dim() != 1 or bias.shape[0] != weight.shape[0]:
        raise QsennError(
            f"cannot quantise a weight of shape {tuple(weight.shape)} with a bias of shape "
            f"{tuple(bias.shape)}: expected K×F and K from the same path entry"
        )
    if n_per_class < 1:
        raise QsennError(f"n_per_class must be at least 1, got {n_per_class}")
    if not (torch.isfinite(weight).all() and torch.isfinite(bias).all()):
        raise QsennError(
            "the regularisation path produced non-finite weights or biases; "
            "rerun the path stage (check the extracted features for NaN/inf)"
        )
    if not weight.any():
        raise QsennError(
            "the regularisation path produced an all-zero solution; nothing to quantise. "
            "The features probably carry no class signal (constant or broken extraction): "
            "check the feature statistics and the path stage's log"
        )


def _ranked_magnitudes(weight: Tensor) -> Tensor:
    """Non-zero magnitudes, largest first: v_1 ≥ … ≥ v_m."""
    magnitudes = weight.abs().flatten()
    return magnitudes[magnitudes != 0].sort(descending=True).values


def _threshold(ranked: Tensor, target: int) -> Tensor:
    if target < len(ranked):
        return (ranked[target - 1] + ranked[target]) / 2
    return ranked[-1]


def _discretize(weight: Tensor, target: int) -> tuple[Tensor, float]:
    ranked = _ranked_magnitudes(weight)
    magnitudes = weight.abs()
    if target < len(ranked):
        # |w| > t with t = (v_T + v_{T+1})/2 is the set |w| > v_{T+1}: no magnitude lies
        # strictly between the two. Comparing with v_{T+1} avoids the float midpoint of two
        # adjacent values rounding onto v_T and dropping it.
        # Ties at the cut (v_T = v_{T+1}, so t equals both): every entry of that magnitude
        # is dropped, whatever its sign — fewer than T non-zeros rather than a pick by
        # position, and never more than the budget r·K. (The reference drops the positive
        # ones and keeps the negative ones there.)
        kept = magnitudes > ranked[target]
        if not kept.any():
            raise QsennError(
                f"the {target + 1} largest weights of the path entry all have the same "
                f"magnitude {float(ranked[0]):g}, so none lies above the threshold; "
                "nothing to quantise — check the path stage (a degenerate solution)"
            )
    else:
        kept = weight != 0  # fix C: the budget allows every non-zero
    ternary = (torch.sign(weight) * kept).to(torch.int8)  # fix A: −Mx keeps its sign
    magnitude = float(magnitudes[kept].double().mean())
    return ternary, magnitude


def _discretize_like_reference(weight: Tensor, target: int) -> tuple[Tensor, float]:
    ranked = _ranked_magnitudes(weight)
    t, mx = _threshold(ranked, target), ranked[0]
    # bucketize (right=False) gives bin i for edges[i-1] < w ≤ edges[i]: bins closed on
    # the right, so +t → 0 and −t → −a (odd-C); w = −Mx falls into bin 0 (odd-A).
    bins = torch.bucketize(weight, torch.stack([-mx, -t, t, mx]))
    averaged = (bins == 1) | (bins == 3)  # bin 0 is left out of the average (odd-A)
    # With bins 1 and 3 empty the reference keeps its initial value Mx as the magnitude.
    magnitude = float(weight[averaged].abs().mean()) if averaged.any() else float(mx)
    return _REFERENCE_BIN_SIGN[bins], magnitude


def _ternary_bias(ternary: Tensor, bias: Tensor, reference_compat: bool) -> Tensor:
    """Spec §7.3: +Bmax for the smallest net sign count, −Bmax for the largest, linear between."""
    net_count = (ternary > 0).sum(dim=1) - (ternary < 0).sum(dim=1)
    bmax = bias.abs().max().to(torch.float32)
    distance = net_count - net_count.min()
    steps = int(distance.max())
    if steps == 0 and not reference_compat:
        return bmax.expand(len(bias)).clone()  # fix B: equal biases leave predictions unchanged
    # Tensor division on purpose: with steps = 0 it gives inf, and 0·inf makes every bias
    # NaN, as in the reference (odd-B).
    step = 2 * bmax / steps
    return torch.clamp(bmax - distance * step, -bmax, bmax)
