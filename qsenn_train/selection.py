"""Feature selection with the modified group elastic net, solved by proximal SAGA (spec §5).

Multinomial logistic regression on standardised features with a group lasso over feature
columns plus ridge; an extended proximal operator lets at most one new column in per step,
and the λ sweep restarts after every admitted feature until exactly F features are chosen.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from .errors import QsennError
from .features import GLM_STD_CLAMP
from .recipes import SagaSettings

COLUMN_NORM_EPS = 1e-6  # added to every column norm by the reference's prox


def extended_prox(weight: Tensor, selected: Tensor, lam: float, lr: float, alpha: float) -> Tensor:
    """Group elastic-net prox that keeps the selected columns and admits at most one more (§5.3)."""
    tau = lr * lam * alpha
    rho = lr * lam * (1 - alpha)
    norms = weight.norm(dim=0) + COLUMN_NORM_EPS
    # As in the reference: selected norms are overwritten with the smallest norm and the first
    # maximum wins, so if every unselected column ties with that minimum the winner can be a
    # selected column and nothing new gets in.
    strongest = torch.where(selected, norms.min(), norms).argmax()
    columns = torch.arange(norms.numel(), device=norms.device)
    keep = selected | ((columns == strongest) & (norms > tau))
    # odd-E: (1 − τ/ν) is not clipped at 0, so a selected column weaker than τ is reflected.
    scale = torch.where(keep, (1 - tau / norms) / (1 + rho), 0.0)
    return weight * scale


def lambda_grid(max_reg_group: float, settings: SagaSettings) -> Tensor:
    """λ_max = G/α, n_lambdas log-spaced down to ε·λ_max, then 0; all × lam_factor (§5.2, odd-F)."""
    if not max_reg_group > 0:
        raise QsennError(
            "cannot select features: every feature is constant on the training set; the dense "
            "model is dead/untrained (or the training set holds a single class). Check the dense "
            "training run (loss, learning rate) or the checkpoint it started from"
        )
    lam_max = max_reg_group / max(settings.alpha, 1e-3)  # the reference's guard against α = 0
    path = torch.logspace(
        math.log10(lam_max), math.log10(settings.epsilon * lam_max), settings.n_lambdas, dtype=torch.float64
    )
    return torch.cat([path, path.new_zeros(1)]) * settings.lam_factor


class _TensorBatches:
    """Features that fit in memory: standardised once, batches gathered on the device."""

    def __init__(self, features: Tensor, mean: Tensor, std: Tensor, device: torch.device):
        self.data = (features.to(device=device, dtype=torch.float32) - mean) / std
        self.n_columns = features.shape[1]

    def epoch(self, host_batches: Sequence[Tensor], device_batches: Sequence[Tensor]) -> Iterator[Tensor]:
        for rows in device_batches:
            yield self.data[rows]


class _MemmapBatches:
    """On-disk features (possibly larger than RAM): each batch is read and standardised on its
    own, the next one read by a helper thread while the current one is being computed."""

    def __init__(self, features: np.ndarray, mean: Tensor, std: Tensor, device: torch.device):
        self.features, self.mean, self.std, self.device = features, mean, std, device
        self.n_columns = features.shape[1]

    def _read(self, rows: Tensor) -> Tensor:
        # Sorted rows turn the fancy index into a forward sweep over the file.
        return torch.from_numpy(np.ascontiguousarray(self.features[rows.numpy()], dtype=np.float32))

    def epoch(self, host_batches: Sequence[Tensor], device_batches: Sequence[Tensor]) -> Iterator[Tensor]:
        with ThreadPoolExecutor(max_workers=1) as reader:
            pending = reader.submit(self._read, host_batches[0])
            for following in [*host_batches[1:], None]:
                raw = pending.result()
                if following is not None:
                    pending = reader.submit(self._read, following)
                yield (raw.to(self.device) - self.mean) / self.std


class ProximalSaga:
    """Minibatch proximal SAGA for multinomial logistic regression (§5.4).

    W, b, the per-sample residual table and the running gradient averages persist across
    `fit` calls: every λ (and every selection round) warm-starts from the previous state.
    Only the prox differs between the selection (§5) and the regularisation path (§6).
    """

    def __init__(
        self,
        batches: _TensorBatches | _MemmapBatches,
        labels: Tensor,
        n_classes: int,
        n_total: int,
        settings: SagaSettings,
        device: torch.device,
        *,
        table_dtype: torch.dtype = torch.float32,
        table_device: torch.device | None = None,
        order: Callable[[], Tensor] | None = None,
    ):
        n_samples = labels.numel()
        self.batches, self.labels, self.settings, self.device = batches, labels, settings, device
        # `order` draws an epoch's permutation (the path's: the DataLoader's draws, batches
        # left in that order); by default randperm from the global RNG, rows sorted per batch.
        self.order = order
        self.table_device = table_device or device
        # odd-G: the averages are normalised by n_total (the selection passes N incl. the
        # validation split), which scales the data term by N_tr/n_total.
        self.n_total = n_total
        self.one_hot = torch.eye(n_classes, device=device)
        self.weight = torch.zeros(n_classes, batches.n_columns, device=device)
        self.bias = torch.zeros(n_classes, device=device)
        # The reference allocates n_total rows, but only the N_tr train rows are ever used.
        # N×K is the solver's one large allocation (5.1 GB in fp32 for ImageNet): its dtype
        # and device are the caller's to choose; it is read and written a batch at a time.
        self.residual_table = torch.zeros(n_samples, n_classes, dtype=table_dtype, device=self.table_device)
        self.weight_grad_avg = torch.zeros_like(self.weight)
        self.bias_grad_avg = torch.zeros_like(self.bias)

    @torch.no_grad()
    def fit(self, lam: float | Tensor, prox: Callable[[Tensor], Tensor]) -> int:
        """Run epochs at one λ until the objective stalls (tol, lookbehind) or max_epochs;
        returns the number of epochs run."""
        s = self.settings
        best = math.inf
        epochs_without_progress = 0
        for epoch in range(1, s.max_epochs + 1):
            objective = self._objective(self._epoch(prox), lam)
            if objective + s.tol < best:
                best, epochs_without_progress = objective, 0
            else:
                epochs_without_progress += 1
            if epochs_without_progress >= s.lookbehind:
                return epoch
        return s.max_epochs

    def _objective(self, loss_sum: Tensor, lam: float | Tensor) -> float:
        """The epoch's mean loss plus the penalty (element-wise L1 even though the prox is
        grouped, as in the reference)."""
        s = self.settings
        return (
            loss_sum / self.n_total
            + lam * s.alpha * self.weight.abs().sum()
            + 0.5 * lam * (1 - s.alpha) * self.weight.square().sum()
        ).item()

    def _batch_loss(self, log_probs: Tensor, targets: Tensor) -> Tensor:
        """Σ −log p(y) over the batch."""
        return -log_probs.gather(1, targets[:, None]).sum()

    def _epoch(self, prox: Callable[[Tensor], Tensor]) -> Tensor:
        lr = self.settings.lr
        host_batches = self._epoch_rows()
        device_batches = torch.cat(host_batches).to(self.device).split(self.settings.batch_size)
        table_batches = device_batches if self.table_device == self.device else host_batches
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        batches = zip(device_batches, table_batches, self.batches.epoch(host_batches, device_batches))
        for rows, table_rows, x in batches:
            batch_size = rows.numel()
            targets = self.labels[rows]
            log_probs = torch.log_softmax(torch.addmm(self.bias, x, self.weight.T), dim=1)
            loss_sum += self._batch_loss(log_probs, targets)
            residuals = log_probs.exp_() - self.one_hot[targets]
            old = self.residual_table[table_rows].to(self.device, torch.float32)
            stored = residuals.to(self.table_device, self.residual_table.dtype)
            self.residual_table[table_rows] = stored
            change = residuals - old
            # (g − g_old) as one K×D matmul instead of a B×K×D outer-product tensor.
            weight_grad_change = (change.T @ x).div_(batch_size)
            bias_grad_change = change.mean(dim=0)
            self.weight = prox(self.weight - lr * (weight_grad_change + self.weight_grad_avg))
            self.bias = self.bias - lr * (bias_grad_change + self.bias_grad_avg)
            if stored.dtype != torch.float32:
                # The averages must stay the mean of what the table holds, or the rounding of
                # every stored residual would pile up in them as a drifting gradient bias.
                change = stored.to(self.device, torch.float32) - old
                weight_grad_change = (change.T @ x).div_(batch_size)
                bias_grad_change = change.mean(dim=0)
            self.weight_grad_avg.add_(weight_grad_change, alpha=batch_size / self.n_total)
            self.bias_grad_avg.add_(bias_grad_change, alpha=batch_size / self.n_total)
        return loss_sum

    def _epoch_rows(self) -> list[Tensor]:
        if self.order is not None:
            return list(self.order().split(self.settings.batch_size))
        # Global RNG, like the reference's shuffling loader (seeding it reproduces a run).
        order = torch.randperm(self.labels.numel())
        return [chunk.sort().values for chunk in order.split(self.settings.batch_size)]


def standardised_batches(features, mean, std, device: torch.device) -> _TensorBatches | _MemmapBatches:
    """x̂ = (f − μ)/max(σ, 1e-5): once for in-memory features, per batch for a memmap."""
    mean = torch.as_tensor(mean, dtype=torch.float32).to(device)
    std = torch.as_tensor(std, dtype=torch.float32).to(device).clamp(min=GLM_STD_CLAMP)
    if isinstance(features, np.memmap):
        return _MemmapBatches(features, mean, std, device)
    return _TensorBatches(torch.as_tensor(features), mean, std, device)


@dataclass
class SelectionResult:
    selected: list[int]  # the F chosen feature indices, ascending
    rounds: list[dict]  # per admitted feature, in admission order
    weight: Tensor  # final K×D solution (non-zero only in the selected columns)
    bias: Tensor


def select_features(
    features,
    labels,
    mean,
    std,
    *,
    n_features: int,
    n_total: int,
    max_reg_group: float,
    settings: SagaSettings,
    device="cpu",
    progress: Callable[[int, int, int], None] | None = None,
    n_classes: int | None = None,
) -> SelectionResult:
    """Choose `n_features` feature columns with the modified group elastic net (§5.5).

    features: raw pooled features of the train split (N_tr × D): tensor, array or np.memmap.
    mean, std: μ, σ of §4 over the whole training set. n_total: N incl. validation (odd-G).
    max_reg_group: G of §4, from raw features (odd-F). progress(n_admitted, n_features,
    lam_index) is called after every SAGA fit. n_classes defaults to max(label) + 1.
    """
    n_samples, n_columns = features.shape
    if not 1 <= n_features <= n_columns:
        raise QsennError(
            f"cannot select {n_features} features out of {n_columns}; choose --n-features between 1 and {n_columns}"
        )
    if len(labels) != n_samples or n_total < n_samples:
        raise ValueError(f"{len(labels)} labels and n_total={n_total} for {n_samples} feature rows")
    lams = lambda_grid(max_reg_group, settings).tolist()
    device = torch.device(device)
    if not isinstance(labels, torch.Tensor):
        labels = np.array(labels)  # a copy: memmaps are read-only and torch wants writable memory
    labels = torch.as_tensor(labels, dtype=torch.int64).to(device)
    n_classes = n_classes or int(labels.max()) + 1
    solver = ProximalSaga(
        standardised_batches(features, mean, std, device), labels, n_classes, n_total, settings, device
    )

    selected = torch.zeros(n_columns, dtype=torch.bool, device=device)
    rounds: list[dict] = []
    while len(rounds) < n_features:
        epochs_in_round = 0
        # odd-H: every round sweeps again from the largest λ, warm-started.
        for lam_index, lam in enumerate(lams):
            prox = functools.partial(extended_prox, selected=selected, lam=lam, lr=settings.lr, alpha=settings.alpha)
            epochs = solver.fit(lam, prox)
            epochs_in_round += epochs
            used = solver.weight.ne(0).any(dim=0)
            admitted = (used & ~selected).nonzero().flatten().tolist()
            if progress is not None:
                progress(len(rounds) + len(admitted), n_features, lam_index)
            if admitted:
                (feature,) = admitted  # the prox lets at most one new column through
                selected |= used
                rounds.append(
                    {
                        "feature": feature,
                        "lam_index": lam_index,
                        "lam": lam,
                        "epochs": epochs,
                        "epochs_in_round": epochs_in_round,
                        "weight": solver.weight.to("cpu", copy=True),
                        "bias": solver.bias.to("cpu", copy=True),
                    }
                )
                break
        else:
            raise QsennError(
                f"feature selection stalled after {len(rounds)} of {n_features} features: even "
                "λ = 0 admits no new feature because every remaining feature has a zero "
                "gradient (constant on the training split); ask for fewer --n-features"
            )
    return SelectionResult(
        selected=selected.nonzero().flatten().tolist(),
        rounds=rounds,
        weight=solver.weight.cpu(),
        bias=solver.bias.cpu(),
    )
