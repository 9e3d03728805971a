"""Feature names and descriptions: the class-based name every feature has, and the file a person
edits (`RUN/atlas/<type>/feature_names.json`) that `qsenn export` writes into the model.

A names file is one of
* a JSON list of F names (what `qsenn validate-run` writes),
* an object {index: name} (features it leaves out keep `feature j`),
* an object {index: {"name": …, "description": …, "suggested": {…}}}: what `qsenn atlas` writes.
  `suggested` holds what the atlas proposed; an entry whose name or description differs from
  it was edited by a person, and a rerun of the atlas keeps it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import QsennError, path_problem
from ..rundir import write_json_atomic

SUGGESTED = "suggested"


@dataclass(frozen=True)
class FeatureText:
    """What a person reads about a feature."""

    name: str
    description: str = ""

    def to_json(self) -> dict:
        return {"name": self.name, "description": self.description}


def default_texts(n_features: int) -> list[FeatureText]:
    return [FeatureText(f"feature {j}") for j in range(n_features)]


def class_based_names(weights: np.ndarray, class_names: Sequence[str]) -> list[str]:
    """A name per feature from the global explanation: '+Trouser/+Dress −Bag', the classes whose
    logit it raises (W > 0) and lowers (W < 0); 'unused' where no class reads it."""
    names = []
    for column in np.asarray(weights).T:
        raised = "/".join(f"+{class_names[int(k)]}" for k in np.flatnonzero(column > 0))
        lowered = "/".join(f"−{class_names[int(k)]}" for k in np.flatnonzero(column < 0))
        names.append(" ".join(part for part in (raised, lowered) if part) or "unused")
    return names


def read_feature_names(path: Path, n_features: int) -> list[FeatureText]:
    """The F features' names and descriptions from a names file (module docstring)."""
    path = Path(path)
    problem = path_problem(path)
    if problem is not None:
        raise QsennError(
            f"feature names file {path}: {problem}; pass a JSON file of names (`qsenn atlas RUN` writes "
            "RUN/atlas/<type>/feature_names.json)"
        )
    try:
        given = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise QsennError(
            f"cannot read feature names from {path} ({exc}); fix the JSON or delete the file to start again"
        ) from None
    texts = default_texts(n_features)
    for j, entry in _entries(path, given, n_features).items():
        texts[j] = _text(path, j, entry)
    return texts


def read_suggestions(path: Path, n_features: int) -> dict[int, FeatureText]:
    """What the atlas last suggested, per feature, as recorded in its names file."""
    given = json.loads(Path(path).read_text(encoding="utf-8"))
    if not isinstance(given, dict):
        return {}
    suggested = {}
    for j, entry in _entries(path, given, n_features).items():
        if isinstance(entry, dict) and isinstance(entry.get(SUGGESTED), dict):
            suggested[j] = _text(path, j, entry[SUGGESTED])
    return suggested


def merge_edits(path: Path, suggested: list[FeatureText]) -> tuple[list[FeatureText], list[int]]:
    """The names to write: the new suggestions, except where the file at `path` holds an entry a
    person edited (it differs from what was suggested then), which is kept. Returns the texts and
    the indices of the kept entries."""
    if not Path(path).exists():
        return list(suggested), []
    current = read_feature_names(path, len(suggested))
    before = read_suggestions(path, len(suggested))
    texts, kept = list(suggested), []
    for j, text in enumerate(current):
        if j in before and text != before[j]:
            texts[j] = text
            kept.append(j)
    return texts, kept


def write_feature_names(path: Path, texts: Sequence[FeatureText], suggested: Sequence[FeatureText]) -> None:
    write_json_atomic(
        Path(path),
        {str(j): {**text.to_json(), SUGGESTED: hint.to_json()} for j, (text, hint) in enumerate(zip(texts, suggested))},
    )


def _entries(path: Path, given, n_features: int) -> dict[int, object]:
    if isinstance(given, list):
        if len(given) != n_features:
            raise QsennError(f"{path} lists {len(given)} feature names; the model has {n_features} features")
        return dict(enumerate(given))
    if not isinstance(given, dict):
        raise QsennError(f"{path} must hold a JSON list of names or an object {{index: name}}")
    try:
        entries = {int(j): entry for j, entry in given.items()}
    except ValueError:
        raise QsennError(f"{path}: the keys must be feature indices 0..{n_features - 1}") from None
    outside = sorted(j for j in entries if not 0 <= j < n_features)
    if outside:
        raise QsennError(f"{path}: entry {outside[0]} is not a feature of this model (0..{n_features - 1})")
    return entries


def _text(path: Path, j: int, entry) -> FeatureText:
    if isinstance(entry, str):
        entry = {"name": entry}
    name = entry.get("name") if isinstance(entry, dict) else None
    description = entry.get("description", "") if isinstance(entry, dict) else None
    if not isinstance(name, str) or not name.strip() or not isinstance(description, str):
        raise QsennError(
            f"{path}: entry {j}: {entry!r} is not a non-empty name (or an object with a non-empty "
            '"name" and a text "description") of a feature'
        )
    return FeatureText(name.strip(), description.strip())
