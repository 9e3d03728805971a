"""How right the atlas's attribute names are where the truth is known: on the embedded synthetic
dataset every class is a known combination of attributes (shape, colour, pattern, count,
outline), while the background varies per image and belongs to no class.

A feature's *name* here is its best attribute by A_{j,a} (atlas.json "attributes"[0]), whether
or not it clears the atlas's naming threshold, so the figures judge what the features learned,
not the threshold. Over the used features that raise at least one class:

* naming precision: the share whose name is an attribute of every class the feature raises;
* shared precision: the same over the features that raise two or more classes (the shared
  concepts, where a name has to be right to be useful);
* mean best alignment: the mean of max_a A_{j,a} over all used features;
* class recall: per class, the share of its true attributes that the names of its positive
  features cover; the mean over the classes.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

from ..data.cub_layout import SYNTH_INFO_FILE
from ..data.synth import SynthSpec, class_table
from ..errors import QsennError


@dataclass(frozen=True)
class NamingFigures:
    used_features: int
    raising_features: int  # used features that raise at least one class
    precision: float
    shared_features: int  # features that raise two or more classes
    shared_precision: float
    mean_best_alignment: float
    class_recall: float
    recall_per_class: dict[str, float]
    name_groups: dict[str, int]  # attribute group of each used feature's name → features

    def to_json(self) -> dict:
        return asdict(self)


def synth_class_attributes(dataset_folder: Path) -> dict[str, set[str]]:
    """{class folder name: its attribute names `group::value`} of a synthetic dataset on disk."""
    info_file = Path(dataset_folder) / SYNTH_INFO_FILE
    try:
        spec = SynthSpec(**json.loads(info_file.read_text(encoding="utf-8"))["spec"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise QsennError(f"cannot read the synthetic dataset's spec {info_file} ({exc}); generate it again") from None
    return {c.folder: {f"{g}::{v}" for g, v in c.attribute_values().items()} for c in class_table(spec)}


def naming_figures(atlas: dict, class_attributes: dict[str, set[str]]) -> NamingFigures:
    """The four figures (module docstring) of an atlas (atlas.json) against the classes' truth."""
    used = [f for f in atlas["features"] if f["used"]]
    if not used:
        raise QsennError("the atlas has no used features; nothing to check")
    missing = sorted({r["class"] for f in used for r in f["raises"]} - set(class_attributes))
    if missing:
        raise QsennError(f"the atlas names class {missing[0]!r}, which the dataset's truth does not list")
    named = {f["index"]: f["attributes"][0]["attribute"] for f in used if f["attributes"]}

    def precise(feature: dict) -> bool:
        name = named.get(feature["index"])
        return name is not None and all(name in class_attributes[r["class"]] for r in feature["raises"])

    raising = [f for f in used if f["raises"]]
    shared = [f for f in raising if len(f["raises"]) >= 2]
    recall = {}
    for name, truth in class_attributes.items():
        if name not in atlas["classes"]:
            continue
        covered = {named.get(f["index"]) for f in used if any(r["class"] == name for r in f["raises"])}
        recall[name] = len(truth & covered) / len(truth)
    return NamingFigures(
        used_features=len(used),
        raising_features=len(raising),
        precision=_share(precise(f) for f in raising),
        shared_features=len(shared),
        shared_precision=_share(precise(f) for f in shared),
        mean_best_alignment=sum(f["attributes"][0]["score"] if f["attributes"] else 0.0 for f in used) / len(used),
        class_recall=sum(recall.values()) / len(recall) if recall else 0.0,
        recall_per_class=recall,
        name_groups=dict(Counter(named[f["index"]].split("::")[0] for f in used if f["index"] in named).most_common()),
    )


def _share(flags) -> float:
    flags = list(flags)
    return sum(flags) / len(flags) if flags else 0.0
