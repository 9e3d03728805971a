"""The evidence calibration an export stores in the metadata (qsenn_runtime.evidence): the
percentiles of the scores of the PyTorch model's predictions on training images."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

from qsenn_runtime.evidence import EvidenceCalibration
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
    echo(
        f"evidence calibrated on {description}: a prediction whose positive evidence is below "
        f"{calibration.threshold:.3f} (the {calibration.weak_below:g}th percentile there) is flagged as weak evidence"
    )
    return dataclasses.replace(metadata, evidence=calibration)
