"""BatchNorm over the global batch of all ranks, on any backend.

torch's nn.SyncBatchNorm runs on GPUs only; this one works on gloo (CPU) too, so the test that
DDP equals one process with the same global batch runs on these machines, and the GPU path is
the same code. The statistics are the two-pass mean and population variance of the global
batch (as nn.BatchNorm2d computes them for one process); the all-reduces carry gradients,
so the backward pass sums the gradient terms over the ranks exactly as one process would.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.distributed as dist
from torch import nn


class _SumOverRanks(torch.autograd.Function):
    """y = Σ_r x_r on every rank; the gradient of x_q is Σ_r ∂L_r/∂y (each rank's loss uses y)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        total = x.clone()
        dist.all_reduce(total)
        return total

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        total = grad.clone()
        dist.all_reduce(total)
        return total


def all_reduce(x: torch.Tensor) -> torch.Tensor:
    return _SumOverRanks.apply(x)


class GlobalBatchNorm2d(nn.BatchNorm2d):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return super().forward(x)
        values = x.float()
        count = values.new_tensor([values.numel() / values.shape[1]])
        total = all_reduce(torch.cat([values.sum((0, 2, 3)), count]))
        n = total[-1]
        mean = total[:-1] / n
        centred = values - mean[None, :, None, None]
        var = all_reduce((centred * centred).sum((0, 2, 3))) / n
        self._track(mean.detach(), var.detach(), float(n.detach()))
        out = centred * torch.rsqrt(var + self.eps)[None, :, None, None]
        if self.affine:
            out = out * self.weight[None, :, None, None] + self.bias[None, :, None, None]
        return out.to(x.dtype)

    @torch.no_grad()
    def _track(self, mean: torch.Tensor, var: torch.Tensor, n: float) -> None:
        if not self.track_running_stats or self.running_mean is None or self.running_var is None:
            return
        assert self.num_batches_tracked is not None
        self.num_batches_tracked += 1
        factor = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
        unbiased = var * (n / max(n - 1.0, 1.0))
        self.running_mean.mul_(1 - factor).add_(mean.to(self.running_mean.dtype), alpha=factor)
        self.running_var.mul_(1 - factor).add_(unbiased.to(self.running_var.dtype), alpha=factor)


def _global_copy(bn: nn.BatchNorm2d) -> GlobalBatchNorm2d:
    """A GlobalBatchNorm2d sharing `bn`'s parameters and buffers (the optimiser keeps its references)."""
    copy = GlobalBatchNorm2d(bn.num_features, bn.eps, bn.momentum, bn.affine, bn.track_running_stats)
    copy.weight, copy.bias = bn.weight, bn.bias
    copy.running_mean, copy.running_var, copy.num_batches_tracked = (
        bn.running_mean,
        bn.running_var,
        bn.num_batches_tracked,
    )
    copy.train(bn.training)
    return copy


@contextmanager
def global_batchnorm(model: nn.Module, enabled: bool) -> Iterator[None]:
    """Inside the block every BatchNorm2d of `model` normalises over the global batch."""
    swapped: list[tuple[nn.Module, str, nn.Module]] = []
    if enabled:
        for parent in list(model.modules()):
            for name, child in list(parent.named_children()):
                if type(child) is nn.BatchNorm2d:
                    swapped.append((parent, name, child))
                    setattr(parent, name, _global_copy(child))
    try:
        yield
    finally:
        for parent, name, original in swapped:
            original.train(getattr(parent, name).training)
            setattr(parent, name, original)
