"""The evidence calibration an export stores in the metadata (qsenn_runtime.evidence): the scores
of the PyTorch model's predictions on training images, per predicted class."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

from qsenn_runtime.evidence import MIN_PER_CLASS, EvidenceCalibration
from qsenn_runtime.metadata import ModelMetadata
from qsenn_train.errors import QsennError

from .source import ExportSource
from .verify import folder_images, torch_outputs, training_images


def with_evidence(
    metadata: ModelMetadata,
    source: ExportSource,
    count: int,
    folder: Path | None,
    echo: Callable[[str], None] = print,
) -> ModelMetadata:
    """`metadata` with the evidence calibrated on `count` images of `folder` (spread over it), or
    else on `count` training images of the checkpoint's dataset; unchanged when `count` is 0 or
    the dataset is not on this machine (the runtime then reports no evidence)."""
    if count == 0:
        return metadata
    info = source.info
    if folder is not None:
        images = folder_images(folder, info, source.img_size, count, spread=True)
        description = f"{len(images)} images of {folder}"
    else:
        try:
            images = training_images(info, source.img_size, count)
        except QsennError as exc:
            echo(
                f"the evidence is not calibrated: the {info.name} training images are not available "
                f"({str(exc).split(';')[0]}); pass --evidence-images DIR (training images), or "
                f"--evidence-count 0 to silence this"
            )
            return metadata
        description = f"{len(images)} training images of {info.name}"
    outputs = torch_outputs(source.model, source.head.scale, source.info, images)
    calibration = EvidenceCalibration.fit(metadata.weights, outputs["features"], outputs["logits"], description)
    classes = len(calibration.per_class)
    echo(
        f"evidence calibrated on {description}: quantiles of its own for {classes} of {metadata.num_classes} "
        f"classes (those predicted for ≥ {MIN_PER_CLASS} of the images), pooled for the rest; a prediction "
        f"below the {100 * calibration.weak_below:.0f}th percentile of its class is flagged as weak evidence"
    )
    return dataclasses.replace(metadata, evidence=calibration)
