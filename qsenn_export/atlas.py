"""What an export carries of the run's atlas (`qsenn atlas`): every feature's name and
description (from the names file a person edits), its best attributes with their scores, and
its first K prototype thumbnails as base64 JPEGs, all in the qsenn metadata (ONNX models and
engines alike)."""

from __future__ import annotations

import base64
import dataclasses
from collections.abc import Callable
from pathlib import Path

from qsenn_runtime.metadata import Feature, ModelMetadata
from qsenn_train.atlas.build import NAMES_FILE, atlas_folder, read_atlas
from qsenn_train.atlas.feature_names import read_feature_names
from qsenn_train.errors import QsennError
from qsenn_train.rundir import sha256_file

from .errors import ExportError
from .source import ExportSource


def find_atlas(source: ExportSource, given: Path | None) -> Path | None:
    """The atlas folder to embed: `given`, else the source run's own one when it was written."""
    if given is not None:
        return Path(given)
    if source.run is None or source.model_type is None:
        return None
    folder = atlas_folder(source.run.path, source.model_type)
    return folder if folder.is_dir() else None


def with_atlas(
    metadata: ModelMetadata,
    source: ExportSource,
    folder: Path | None,
    prototypes: int,
    names_given: bool,
    echo: Callable[[str], None] = print,
) -> ModelMetadata:
    """`metadata` with the atlas in `folder` embedded (unchanged when there is none). The names
    come from the atlas's names file unless --feature-names gave them (`names_given`)."""
    if folder is None:
        return metadata
    try:
        atlas = read_atlas(folder)
    except QsennError as exc:
        raise ExportError(str(exc)) from None
    if atlas.get("checkpoint_sha256") != sha256_file(source.checkpoint):
        raise ExportError(
            f"the atlas in {folder} describes another model ({atlas.get('model_type')} model {atlas.get('checkpoint')} "
            f"of run {atlas.get('run')}), not {source.checkpoint}; write this model's atlas with `qsenn atlas RUN`"
        )
    described = atlas["features"]
    if len(described) != metadata.num_features:
        raise ExportError(
            f"the atlas in {folder} describes {len(described)} features; the model has {metadata.num_features}"
        )
    texts = None if names_given else read_feature_names(folder / NAMES_FILE, metadata.num_features)
    features = []
    for feature, entry in zip(metadata.features, described):
        pictures = tuple(_encoded(folder / shown["thumbnail"]) for shown in entry["top_images"][:prototypes])
        features.append(
            Feature(
                feature.index,
                feature.channel,
                feature.name if texts is None else texts[feature.index].name,
                feature.description if texts is None else texts[feature.index].description,
                tuple((a["attribute"], float(a["score"])) for a in entry["attributes"]),
                pictures,
                float(entry["importance"]),
            )
        )
    embedded = dataclasses.replace(metadata, features=tuple(features))
    added = len(embedded.to_json().encode()) - len(metadata.to_json().encode())
    what = f"and {prototypes} prototypes each" if prototypes else "(no prototypes)"
    echo(
        f"atlas of {folder} embedded: names, descriptions and attributes of {len(features)} features {what}, "
        f"{added:,} bytes of metadata"
    )
    return embedded


def _encoded(path: Path) -> str:
    try:
        return base64.b64encode(path.read_bytes()).decode("ascii")
    except OSError as exc:
        raise ExportError(f"cannot read the atlas thumbnail {path} ({exc.strerror}); write the atlas again") from None
