"""Model checkpoints that carry their own defaults (arch, classes, input size, normalisation).

A checkpoint is a plain dict of tensors and JSON-able values, so it loads with
`torch.load(..., weights_only=True)`: nothing in it can run code.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch

from .data.base import DatasetInfo
from .errors import QsennError
from .model import QResNet, build_model

FORMAT = "qsenn.model"
VERSION = 1
SPARSE_KEYS = ("linear.selection", "linear.mean", "linear.std", "linear.layer.weight", "linear.layer.bias")


def model_record(model: QResNet, info: DatasetInfo, img_size: int, **extra: Any) -> dict:
    """The checkpoint dict of a model (state dict on the CPU plus its provenance)."""
    return {
        "format": FORMAT,
        "version": VERSION,
        "arch": model.arch,
        "num_classes": model.num_classes,
        "reduced_strides": model.reduced_strides,
        "dropout": model.dropout.p,
        "img_size": img_size,
        "dataset": info.to_json(),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        **extra,
    }


def model_from_record(record: dict) -> QResNet:
    """Rebuild the network: a sparse head is installed from its five tensors first (§12.3)."""
    if record.get("format") != FORMAT:
        raise QsennError(
            "not a qsenn model checkpoint (no 'format' entry); "
            "original Q-SENN checkpoints are converted with `qsenn import-reference`"
        )
    if record.get("version", 0) > VERSION:
        raise QsennError(
            f"checkpoint format version {record['version']} is newer than this qsenn ({VERSION}); upgrade qsenn"
        )
    state = record["state_dict"]
    model = build_model(
        record["arch"], record["num_classes"], reduced_strides=record["reduced_strides"], dropout=record["dropout"]
    )
    if "linear.selection" in state:
        install_sparse_head_from(model, state, record["dropout"])
    model.load_state_dict(state)
    return model


def install_sparse_head_from(model: QResNet, state: dict, dropout: float) -> None:
    """Build the sparse head from its five tensors of a state dict (§12.3), before load_state_dict."""
    selection, mean, std, weight, bias = (state[k] for k in SPARSE_KEYS)
    model.install_sparse_head(selection, mean, std, weight, bias, dropout=dropout)


def refused_global(exc: pickle.UnpicklingError) -> bool:
    """Whether the weights-only unpickler refused a class or function the file names (which a full
    unpickler would import and call), rather than bytes that are no checkpoint at all."""
    return "GLOBAL" in str(exc)


def load_checkpoint(path: Path) -> tuple[QResNet, dict]:
    """Load a model file written by qsenn (safe: weights_only)."""
    path = Path(path)
    if not path.is_file():
        raise QsennError(f"checkpoint not found: {path}")
    try:
        record = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:  # torch's own text suggests weights_only=False: not here
        if refused_global(exc):
            raise QsennError(
                f"refusing to load {path}: it holds objects other than tensors and plain "
                f"data, which could run code when loaded; qsenn loads only checkpoints "
                f"it wrote (convert original ones with `qsenn import-reference`)"
            ) from None
        raise QsennError(f"cannot load checkpoint {path}: it is not a torch.save file, or a corrupt one") from None
    except Exception as exc:
        raise QsennError(
            f"cannot load checkpoint {path}: {str(exc).splitlines()[0]} (only plain tensors and data are accepted)"
        ) from None
    if not isinstance(record, dict):
        raise QsennError(f"{path} is not a qsenn model checkpoint")
    return model_from_record(record), record
