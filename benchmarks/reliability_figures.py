"""The reliability figures of docs/reliability.md, measured with the same code as the tests:

  1. kill/resume: `qsenn train --recipe tiny` killed with SIGKILL inside every stage (one chain,
     qsenn_bench/testing/kill_chain.py), resumed, and compared with the uninterrupted run;
  2. hostile inputs: the corpus of tests/hostile/cases through the runtime library, `qsenn predict`,
     `qsenn inspect`, `qsenn train` and the commands that read checkpoints (export, import-reference,
     evaluate, validate-run, bench); how many runs ended in a traceback, with a wrong exit code or
     with files left behind;
  3. concurrency: one loaded toy model, 8 threads × 500 calls of mixed good and bad inputs.

    OMP_NUM_THREADS=1 python benchmarks/reliability_figures.py [--only kill|hostile|concurrency]

Prints the figures and writes benchmarks/results/reliability_tiny_<cpu>_<versions>.json.
"""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings
from collections import Counter
from pathlib import Path

import qsenn_bench.testing.hostile_inputs as hi
import qsenn_bench.testing.kill_chain as kc
from qsenn_bench.reporting import RESULTS, save_result
from qsenn_bench.testing import concurrency as concurrent_serving


def kill_figures(work: Path) -> dict:
    data_root = work / "data"
    reference = kc.run_train(data_root, work / "reference", kill_at=":0")
    if reference.returncode:
        raise SystemExit(f"the reference run failed:\n{reference.stderr}")
    reference_dir = work / "reference" / kc.RUN_SUBDIR
    start = time.perf_counter()
    chain = kc.run_chain(data_root, work / "chain", kc.stage_calls(reference_dir), echo=print)
    seconds = time.perf_counter() - start
    diff = kc.differences(chain.run_dir, reference_dir)
    per_stage = Counter(kc.short_stage(kill.stage) for kill in chain.kills if kill.returncode == -9)
    lost = [
        {
            "stage": kill.stage,
            "where": kill.where,
            "redone_epochs": kill.redone_epochs,
            "redone_stages": kill.redone_stages,
            "killed_in": kill.location,
        }
        for kill in chain.kills
        if kill.redone_epochs or kill.redone_stages
    ]
    print()
    print("kills survived per stage:")
    for stage, count in per_stage.items():
        print(f"  {stage:<28} {count}")
    print(
        f"{sum(per_stage.values())} of {len(chain.kills)} kills landed inside their stage and were "
        f"resumed; {len(lost)} lost finished work:"
    )
    for entry in lost:
        print(
            f"  {entry['stage']}: repeated {entry['redone_epochs'] or entry['redone_stages']} "
            f"(killed in {entry['killed_in']})"
        )
    print(
        f"resumed run vs uninterrupted: selection equal {diff['selection_equal']}, ternary heads "
        f"equal {all(diff['ternary_equal'])}, max |Δ| model {max(diff['model_max_diff']):.3g}, "
        f"logits {diff['logits_max_diff']:.3g}; {chain.temporaries_removed} stale temporaries "
        f"removed, {len(kc.temporaries(chain.run_dir))} left, {chain.damaged_reports} damaged results"
    )
    return {
        "kills": [
            {
                "stage": k.stage,
                "where": k.where,
                "call": k.n,
                "message": k.message,
                "returncode": k.returncode,
                "redone_epochs": k.redone_epochs,
                "redone_stages": k.redone_stages,
            }
            for k in chain.kills
        ],
        "per_stage": dict(per_stage),
        "lost_work": lost,
        "differences": diff,
        "temporaries_removed": chain.temporaries_removed,
        "damaged_reports": chain.damaged_reports,
        "chain_seconds": round(seconds, 1),
    }


def hostile_figures(work: Path) -> dict:
    from PIL import Image

    import qsenn_runtime

    outcomes = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        model = qsenn_runtime.load(hi.CASES / hi.GOOD_MODEL)
        outcomes += [
            hi.library_outcome(case, model)
            for case in hi.load_cases()
            if case["kind"] in ("image", "array", "tensor", "model")
        ]
    outcomes += hi.cli_predict_images(hi.load_cases(kind="image"))
    outcomes += [
        hi.cli_model(case, command) for case in hi.load_cases(kind="model") for command in ("predict", "inspect")
    ]
    outcomes += [
        hi.cli_train_dataset(case, work / "hostile-runs" / str(i))
        for i, case in enumerate(hi.load_cases(kind="dataset"))
    ]
    damaged = [(c, command) for c in hi.load_cases(kind="checkpoint") for command in hi.CHECKPOINT_ARGS]
    damaged += [(c, command) for c in hi.load_cases(kind="run") for command in hi.RUN_ARGS]
    for i, (case, command) in enumerate(damaged):
        (work / "damaged" / str(i)).mkdir(parents=True)
        outcomes.append(hi.cli_checkpoint(case, command, work / "damaged" / str(i)))
    rows = Counter((o.runner, o.case["kind"]) for o in outcomes)
    tracebacks = [f"{o.runner}: {o.case['file']}" for o in outcomes if o.traceback]
    wrong = [f"{o.runner}: {o.case['file']}: {o.error}" for o in outcomes if not o.as_expected]
    exits = [f"{o.runner}: {o.case['file']}: exit {o.exit_code}" for o in outcomes if o.wrong_exit_code]
    left = [f"{o.runner}: {o.case['file']}: {', '.join(o.left_behind)}" for o in outcomes if o.left_behind]
    print()
    print("hostile inputs (runner, kind: runs):")
    for (runner, kind), count in sorted(rows.items()):
        print(f"  {runner:<28} {kind:<10} {count}")
    cases = hi.load_cases()
    print(
        f"{len(cases)} cases ({sum(c['expect'] is not None for c in cases)} must fail, the rest must "
        f"work), {len(outcomes)} runs: {len(tracebacks)} tracebacks, {len(wrong)} not as expected, "
        f"{len(exits)} wrong exit codes, {len(left)} with files left behind"
    )
    for line in tracebacks + wrong + exits + left:
        print("  " + line)
    return {
        "cases": len(cases),
        "runs": len(outcomes),
        "tracebacks": tracebacks,
        "not_as_expected": wrong,
        "wrong_exit_codes": exits,
        "files_left_behind": left,
        "runs_per_runner": {f"{r} / {k}": n for (r, k), n in sorted(rows.items())},
    }


def concurrency_figures(work: Path) -> dict:
    from toy_onnx import save_toy_model

    import qsenn_runtime

    save_toy_model(work / "toy.onnx")
    model = qsenn_runtime.load(work / "toy.onnx")
    report = concurrent_serving.serve(model, concurrent_serving.mixed_inputs(work))
    print()
    print("concurrent serving: " + report.line())
    return {**report.__dict__, "growth_mib": report.growth_mib}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", choices=("kill", "hostile", "concurrency"))
    args = parser.parse_args()
    figures: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for name, measure in (
            ("kill", kill_figures),
            ("hostile", hostile_figures),
            ("concurrency", concurrency_figures),
        ):
            if args.only in (None, name):
                figures[name] = measure(work)
    kind = "reliability" if args.only is None else f"reliability-{args.only}"
    print(f"\nwrote {save_result(kind, 'tiny', figures, RESULTS)}")


if __name__ == "__main__":
    main()
