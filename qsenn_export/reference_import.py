"""`qsenn import-reference`: a checkpoint of the original Q-SENN code (a Q-SENN or an SLDD model)
→ a qsenn checkpoint.

The original saves a state dict with torchvision ResNet keys and the sparse head as
`linear.selection/mean/std/layer.weight/layer.bias` (spec §12.3), which is exactly
QResNet's layout; what it lacks is the provenance a qsenn checkpoint carries (classes,
input size, normalisation), which comes from the command line and the dataset constants.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from qsenn_runtime.metadata import HEAD_TERNARY
from qsenn_train.checkpoint import SPARSE_KEYS, install_sparse_head_from, model_record
from qsenn_train.data.base import RESIZE_IMAGENET, RESIZE_SHORTER, RESIZE_SQUARE, DatasetInfo
from qsenn_train.data.layouts import (
    CUB_MEAN,
    CUB_STD,
    STANFORD_CARS_MEAN,
    STANFORD_CARS_STD,
    TRAVELING_BIRDS_MEAN,
    TRAVELING_BIRDS_STD,
)
from qsenn_train.errors import QsennError
from qsenn_train.model import ARCHS, build_model
from qsenn_train.names import CROP_GT_DATASETS
from qsenn_train.rundir import atomic_write
from qsenn_train.torchfile import CodeCarryingFile, read_torch_file

from .errors import ExportError
from .fold import read_head

# (mean, std, resize mode) as the original code trained each dataset. Its ImageNet pipeline
# applies no normalisation (odd-L), so an imported ImageNet model must not get one either.
REFERENCE_INPUTS = {
    "CUB2011": (CUB_MEAN, CUB_STD, RESIZE_SHORTER),
    "TravelingBirds": (TRAVELING_BIRDS_MEAN, TRAVELING_BIRDS_STD, RESIZE_SHORTER),
    "StanfordCars": (STANFORD_CARS_MEAN, STANFORD_CARS_STD, RESIZE_SHORTER),
    "ImageNet": (None, None, RESIZE_IMAGENET),
}
SPARSE_DROPOUT = 0.1
_BLOCK_KEY = re.compile(r"^layer([1-4])\.(\d+)\.")


def load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a reference checkpoint: a state dict, or one wrapped as {"state_dict": …}."""
    if path.is_dir():
        inside = sorted(p.name for p in path.iterdir() if p.suffix in (".pth", ".pt", ".ckpt"))[:5]
        raise ExportError(
            f"{path} is a directory; pass the checkpoint file the original code saved"
            + (f" (it holds {', '.join(inside)})" if inside else " (it holds no .pth, .pt or .ckpt file)")
        )
    try:
        state = read_torch_file(path, "pass the state dict the original code saved (copy it again if damaged)")
    except CodeCarryingFile:
        raise ExportError(
            f"{path} holds a pickled model object, which qsenn does not load (loading "
            f"it would run code from the file); in the original code run "
            f"torch.save(model.state_dict(), 'weights.pth') and import that"
        ) from None
    except QsennError as exc:
        raise ExportError(str(exc)) from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ExportError(f"{path} is not a state dict (a mapping of names to tensors)")
    if state and all(k.startswith("module.") for k in state):  # saved from DataParallel
        state = {k[len("module.") :]: v for k, v in state.items()}
    missing = [k for k in SPARSE_KEYS if k not in state]
    if missing:
        raise ExportError(
            f"{path} has no sparse head ({', '.join(missing)} missing): it looks like a dense "
            f"checkpoint; import the fine-tuned Q-SENN model of the original run"
        )
    return state


def infer_arch(state: dict[str, torch.Tensor], source: Path) -> str:
    """The ResNet of model.ARCHS whose block type and blocks per stage match the keys."""
    blocks = [0, 0, 0, 0]
    for key in state:
        match = _BLOCK_KEY.match(key)
        if match:
            stage, index = int(match[1]) - 1, int(match[2])
            blocks[stage] = max(blocks[stage], index + 1)
    bottleneck = "layer1.0.conv3.weight" in state
    for arch, (block, layers, _) in ARCHS.items():
        if layers == blocks and (block.__name__ == "Bottleneck") == bottleneck:
            return arch
    raise ExportError(
        f"{source}: no known ResNet has {blocks} {'bottleneck' if bottleneck else 'basic'} "
        f"blocks per stage; supported: {', '.join(ARCHS)}"
    )


def read_class_names(path: Path | None, num_classes: int) -> tuple[str, ...]:
    if path is None:
        return tuple(f"class {k}" for k in range(num_classes))
    names = tuple(line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip())
    if len(names) != num_classes:
        raise ExportError(
            f"{path} lists {len(names)} class names but the checkpoint has {num_classes} "
            f"classes; give one name per line, in class-index order"
        )
    return names


def import_reference(
    path: Path,
    dataset: str,
    *,
    data_root: Path,
    class_names: Path | None = None,
    img_size: int = 448,
    crop_gt: bool = False,
    reduced_strides: bool = False,
) -> dict:
    """The qsenn checkpoint record of a reference checkpoint (after checking its head is ternary)."""
    if dataset not in REFERENCE_INPUTS:
        raise ExportError(f"the original code trains {', '.join(REFERENCE_INPUTS)}; got {dataset!r}")
    if crop_gt and dataset not in CROP_GT_DATASETS:
        raise ExportError(f"--crop-gt applies only to {' and '.join(CROP_GT_DATASETS)}")
    path = Path(path)
    state = load_state_dict(path)
    num_classes = state["linear.layer.weight"].shape[0]
    model = build_model(infer_arch(state, path), num_classes, reduced_strides=reduced_strides, dropout=SPARSE_DROPOUT)
    install_sparse_head_from(model, state, SPARSE_DROPOUT)
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:  # missing/unexpected keys or shape mismatches, listed by torch
        detail = (str(exc).strip().splitlines() or [type(exc).__name__])[-1].strip()  # the specific line
        raise ExportError(f"{path} does not match {model.arch}: {detail}") from None
    # A ternary head is a Q-SENN model, a sparse real-valued one an SLDD model (the same layout).
    model_type = "qsenn" if read_head(model, str(path)).kind == HEAD_TERNARY else "sldd"
    mean, std, resize_mode = REFERENCE_INPUTS[dataset]
    info = DatasetInfo(
        name=dataset,
        root=str(data_root),
        class_names=read_class_names(class_names, num_classes),
        mean=mean,
        std=std,
        resize_mode=RESIZE_SQUARE if crop_gt else resize_mode,
        crop_gt=crop_gt,
    )
    return model_record(
        model, info, img_size, recipe="reference", model_type=model_type, seed=None, imported_from=path.name
    )


def save_record(record: dict, out: Path) -> None:
    atomic_write(Path(out), lambda tmp: torch.save(record, tmp))
