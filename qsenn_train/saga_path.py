"""glm-saga's regularisation path (spec §6) with the matrix-form SAGA step of the selection.

glm-saga forms each batch's gradient as a B×K×F outer-product tensor, twice per step; the
selection's solver (`ProximalSaga`) forms the change of the gradient as one K×B·B×F matmul.
Everything else is glm-saga's: its λ_max and metrics functions run on the same batches,
the λ and lr grids are its float32 logspace, the prox is its soft threshold with shrinkage,
and every epoch draws the permutation its loader would draw, including the passes glm-saga
makes only to count rows. Each λ therefore sees the same batches in the same order; only
the rounding of the gradient differs.
"""

from __future__ import annotations

import contextlib
import io
import math
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

import torch
from glm_saga import elasticnet
from torch import Tensor, nn
from torch.nn import functional as F

from .recipes import SagaSettings
from .selection import ProximalSaga, standardised_batches

if TYPE_CHECKING:  # glm_path imports this module
    from .glm_path import ShuffledBatches, Standardize


class GlmSagaSteps(ProximalSaga):
    """The matrix-form SAGA step with glm-saga's stopping objective, computed as glm-saga
    computes it: per-batch mean cross-entropy times |B| summed in float64, and the penalty in
    float32 with its λ. The stall rule compares objectives 1e-4 apart, so an objective that
    differs in the last bits would end some fits an epoch earlier or later."""

    def _batch_loss(self, log_probs: Tensor, targets: Tensor) -> Tensor:
        return F.nll_loss(log_probs, targets).double() * targets.numel()

    def _objective(self, loss_sum: Tensor, lam: float | Tensor) -> float:
        s, weight = self.settings, self.weight
        return (
            loss_sum.item() / self.n_total
            + lam * s.alpha * weight.norm(p=1)
            + 0.5 * lam * (1 - s.alpha) * (weight**2).sum()
        ).item()


def elastic_net_prox(lam: Tensor, lr: Tensor, alpha: float) -> Callable[[Tensor], Tensor]:
    """glm-saga's prox (soft threshold, then ÷ (1 + ρ)) with its float32 τ = lr·λ·α and
    ρ = lr·λ·(1 − α); softshrink gives the same bits in one kernel instead of six."""
    tau, shrink = (lr * lam * alpha).item(), 1 + lr * lam * (1 - alpha)
    return lambda weight: F.softshrink(weight, tau) / shrink


def saga_grid(max_lam: float, settings: SagaSettings) -> tuple[Tensor, Tensor]:
    """glm-saga's λ's (float32 logspace from λ_max to ε·λ_max, then 0) and its constant lr's."""
    lams = torch.logspace(math.log10(max_lam), math.log10(settings.epsilon * max_lam), settings.n_lambdas)
    lrs = torch.logspace(math.log10(settings.lr), math.log10(settings.lr), settings.n_lambdas)
    return torch.cat([lams, lams.new_zeros(1)]), torch.cat([lrs, lrs[-1:]])


def matrix_path(
    linear: nn.Linear,
    train: ShuffledBatches,
    val: Iterable | None,
    test: Iterable,
    preprocess: Standardize,
    settings: SagaSettings,
    *,
    table_dtype: torch.dtype = torch.float32,
    table_device: torch.device | None = None,
    tick: Callable[[], None] = lambda: None,
    log: Callable[[str], None] = lambda line: None,
) -> list[dict]:
    """The path glm_saga(linear, train, ..., do_zero=True, group=False) returns, entry by entry,
    each with the number of epochs its fit ran."""
    device = preprocess.device
    n_classes = linear.out_features
    alpha = settings.alpha
    # Four passes over the train batches, as in glm-saga (they draw from the global RNG).
    with contextlib.redirect_stdout(io.StringIO()):  # its "Calculating maximum regularization"
        max_lam = elasticnet.maximum_reg_loader(train, group=False, preprocess=preprocess) / max(0.001, alpha)
    lams, lrs = saga_grid(max_lam, settings)
    solver = GlmSagaSteps(
        standardised_batches(train.features, preprocess.mean, preprocess.std, device),
        train.labels.to(device),
        n_classes,
        len(train.labels),
        settings,
        device,
        table_dtype=table_dtype,
        table_device=table_device,
        order=train.order,
    )
    path = []
    for lam, lr in zip(lams, lrs):
        start = time.time()
        train.order()  # glm-saga's train_saga counts the rows with one pass of the loader
        epochs = solver.fit(lam, elastic_net_prox(lam, lr, alpha))
        with torch.no_grad():
            linear.weight.copy_(solver.weight)
            linear.bias.copy_(solver.bias)
        metrics = {}
        for split, loader in (("tr", train), ("val", val), ("test", test)):
            loss, acc = -1.0, -1.0
            if loader:  # batch by batch: the evaluation never holds more than one batch's logits
                with torch.no_grad():  # as glm-saga evaluates
                    loss_t, acc_t = elasticnet.elastic_loss_and_acc_loader(linear, loader, lam, alpha, preprocess)
                loss, acc = loss_t.item(), acc_t.item()
            metrics[f"loss_{split}"], metrics[f"acc_{split}"] = loss, acc
        path.append(
            {
                "lam": lam,
                "lr": lr,
                "alpha": alpha,
                "time": time.time() - start,
                "loss": metrics["loss_tr"],
                "metrics": metrics,
                "weight": linear.weight.detach().cpu().clone(),
                "bias": linear.bias.detach().cpu().clone(),
                "epochs": epochs,
            }
        )
        nnz = int(linear.weight.abs().gt(1e-5).sum())
        log(
            f"({len(path) - 1}) lambda {lam:.4f}, loss {metrics['loss_tr']:.4f}, acc {metrics['acc_tr']:.4f} "
            f"[val acc {metrics['acc_val']:.4f}] [test acc {metrics['acc_test']:.4f}], "
            f"sparsity {nnz / linear.weight.numel()} [{nnz}/{linear.weight.numel()}], epochs {epochs}"
        )
        tick()
    return path
