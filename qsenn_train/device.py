"""Where and how tensors are computed: the one resolver of `--device` for every command."""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import TypeVar

import torch
from torch import nn

from .errors import QsennError

DEVICE_CHOICES = "auto, cpu, cuda or cuda:N"
ModuleT = TypeVar("ModuleT", bound=nn.Module)


def resolve_torch_device(name: str = "auto", flag: str = "--device") -> torch.device:
    """`auto` is the GPU when CUDA sees one, else the CPU; an unavailable or malformed name is one
    clear line (naming `flag`, the option it came from)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise QsennError(f"{flag} {name!r} is not a device; use {DEVICE_CHOICES}") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise QsennError(f"{flag} {name}: no NVIDIA GPU is visible to CUDA (check nvidia-smi); use {flag} cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise QsennError(f"{flag} {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif device.type != "cpu":
        raise QsennError(f"{flag} {name!r} is not supported; use {DEVICE_CHOICES}")
    return device


@dataclass(frozen=True)
class Device:
    """A torch device plus how training uses it."""

    torch_device: torch.device
    amp: bool = False  # fp16 autocast + GradScaler (CUDA only)
    channels_last: bool = False  # NHWC memory format (CUDA only)

    @classmethod
    def resolve(cls, name: str = "auto", amp: bool = False, channels_last: bool = False) -> Device:
        device = resolve_torch_device(name)
        if (amp or channels_last) and device.type != "cuda":
            raise QsennError("--amp and --channels-last need --device cuda; drop them on the CPU")
        return cls(device, amp, channels_last)

    def batch(self, images: torch.Tensor) -> torch.Tensor:
        images = images.to(self.torch_device, non_blocking=True)
        return images.contiguous(memory_format=torch.channels_last) if self.channels_last else images

    def prepare(self, model: ModuleT) -> ModuleT:
        model = model.to(self.torch_device)
        return model.to(memory_format=torch.channels_last) if self.channels_last else model

    def autocast(self) -> AbstractContextManager:
        return torch.autocast("cuda", dtype=torch.float16) if self.amp else nullcontext()
