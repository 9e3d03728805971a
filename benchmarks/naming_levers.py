"""What the features learn, one recipe change at a time (issue 17, docs/atlas.md): trains the demo
recipe's model (Q-SENN unless `--set model_type='sldd'`) with recipe fields replaced, writes its
atlas, and prints the naming figures next to the accuracy (benchmarks/atlas_naming.py).

    python benchmarks/naming_levers.py OUT [--seed 0] [--set FIELD=VALUE ...]

FIELD is a field of qsenn_train.recipes.Recipe (`dense_dropout=0.0`, `augment='flip-gray'`) or of
one of its parts (`dense.epochs=32`, `finetune.dropout=0.0`, `finetune.schedule.epochs=16`); VALUE
is a Python literal. The run goes to OUT/<arch>/synth/<seed> and resumes there (a change that only
touches the sparsification reuses the dense model of an earlier run in the same OUT); the figures
go to OUT/naming_seed<seed>.json.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
from pathlib import Path

from atlas_naming import report

from qsenn_train.atlas.build import build_atlas
from qsenn_train.context import RunOptions
from qsenn_train.pipeline import train
from qsenn_train.recipes import DEMO, Recipe, validate
from qsenn_train.run import Run


def recipe_with(base: Recipe, assignments: list[str]) -> Recipe:
    """`base` with every `FIELD=VALUE` (or `SCHEDULE.FIELD=VALUE`, any depth) applied, validated."""
    recipe = base
    for assignment in assignments:
        path, sep, literal = assignment.partition("=")
        if not sep:
            raise SystemExit(f"--set {assignment!r}: write FIELD=VALUE")
        try:
            value = ast.literal_eval(literal)
        except (ValueError, SyntaxError):
            raise SystemExit(f"--set {assignment!r}: {literal!r} is not a Python literal (quote strings)") from None
        recipe = _replaced(recipe, path.split("."), value, assignment)
    validate(recipe)
    return recipe


def _replaced(obj, fields: list[str], value: object, assignment: str):
    """A copy of the dataclass `obj` with fields[0] (or the field below it) set to `value`."""
    head = fields[0]
    if not dataclasses.is_dataclass(obj) or head not in {f.name for f in dataclasses.fields(obj)}:
        raise SystemExit(f"--set {assignment!r}: no field {head!r} there")
    if len(fields) > 1:
        value = _replaced(getattr(obj, head), fields[1:], value, assignment)
    return dataclasses.replace(obj, **{head: value})  # type: ignore[type-var]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="folder of this lever's runs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", dest="assignments", action="append", default=[], metavar="FIELD=VALUE")
    parser.add_argument("--data-root", type=Path, default=Path("data"), help="datasets folder (make demo's)")
    args = parser.parse_args()
    recipe = recipe_with(DEMO, args.assignments)
    print(f"demo recipe with {', '.join(args.assignments) or 'no change'}")
    result = train(recipe, RunOptions(seed=args.seed, data_root=args.data_root, out=args.out, resume=True), echo=print)
    run_path = Path(result["run_dir"])
    build_atlas(run_path, model_type=recipe.model_type, echo=print)
    report(Run(run_path), recipe.model_type, args.out / f"naming_seed{args.seed}.json")


if __name__ == "__main__":
    main()
