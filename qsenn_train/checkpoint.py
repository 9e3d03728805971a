"""Model checkpoints that carry their own defaults (arch, classes, input size, normalisation).

A checkpoint is a plain dict of tensors and JSON-able values, so it loads with
`torch.load(..., weights_only=True)`: nothing in it can run code.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .data.base import DatasetInfo
from .errors import QsennError
from .model import QResNet, build_model
from .torchfile import CodeCarryingFile, read_torch_file

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


def load_checkpoint(path: Path) -> tuple[QResNet, dict]:
    """Load a model file written by qsenn (safe: weights_only)."""
    path = Path(path)
    try:
        record = read_torch_file(
            path, "pass a checkpoint written by `qsenn train` or `qsenn import-reference` (copy it again if damaged)"
        )
    except CodeCarryingFile as exc:
        raise QsennError(
            f"{exc}; qsenn loads only checkpoints it wrote (convert original ones with `qsenn import-reference`)"
        ) from None
    if not isinstance(record, dict):
        raise QsennError(f"{path} is not a qsenn model checkpoint")
    return model_from_record(record), record
