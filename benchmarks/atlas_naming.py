"""The naming figures of issue 17 (qsenn_train/atlas/truth.py) for a run on the embedded synthetic
dataset whose atlas was written (`qsenn atlas RUN`): naming precision over the used features and
over the shared ones, the mean best alignment, the class recall, which attribute groups name the
features, and per class its true attributes next to the names of its positive features.

    python benchmarks/atlas_naming.py RUN [--model-type qsenn] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from qsenn_train.atlas.build import atlas_folder, read_atlas
from qsenn_train.atlas.truth import naming_figures, synth_class_attributes
from qsenn_train.run import Run


def report(run: Run, model_type: str | None, json_out: Path | None = None) -> None:
    """Print the figures of the run's model (and write them to `json_out`)."""
    entry = run.entry(model_type)
    atlas = read_atlas(atlas_folder(run.path, entry.model_type))
    truth = synth_class_attributes(Path(run.info.root))
    figures = naming_figures(atlas, truth)
    metrics = run.metrics(entry.metrics) or {}
    print(
        f"{entry.model_type} model of {run.path} (test accuracy {metrics.get('Accuracy', float('nan')):.4f}, "
        f"Alignment {metrics.get('Alignment', float('nan')):.3f}):\n"
        f"  naming precision {figures.precision:.1%} over {figures.raising_features} used features that raise a class "
        f"({figures.used_features} used)\n"
        f"  shared precision {figures.shared_precision:.1%} over {figures.shared_features} features raising ≥ 2 classes\n"
        f"  mean best alignment {figures.mean_best_alignment:.3f}\n"
        f"  class recall {figures.class_recall:.1%}\n"
        f"  names by attribute group: {figures.name_groups}"
    )
    names = {f["index"]: (f["attributes"][0]["attribute"] if f["attributes"] else "-") for f in atlas["features"]}
    for name in atlas["classes"]:
        positive = [f["index"] for f in atlas["features"] if any(r["class"] == name for r in f["raises"])]
        print(f"  {name}: true {sorted(truth[name])}")
        print(f"      positive features: {', '.join(f'#{j} {names[j]}' for j in positive)}")
    if json_out is not None:
        result = {"run": str(run.path), "model_type": entry.model_type, "metrics": metrics, **figures.to_json()}
        json_out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {json_out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--model-type", default=None)
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args()
    report(Run(args.run), args.model_type, args.json)


if __name__ == "__main__":
    main()
