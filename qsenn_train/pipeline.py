"""`qsenn train` and `qsenn evaluate`: the stages in order, each cached in the run directory."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from .checkpoint import model_from_record, model_record
from .context import DataSplits, RunContext, RunOptions, open_data, prepare, seed_stage, timed
from .device import Device
from .evaluation import evaluate_metrics
from .metrics import METRIC_KEYS
from .model import QResNet, build_model
from .recipes import Recipe
from .run import DENSE, ModelEntry, Run
from .rundir import stage_key
from .sparsify import final_checkpoint, sparse_folder, sparsify
from .training import Schedule, make_sgd, run_epochs


def dense_key(recipe: Recipe, seed: int) -> str:
    variant = recipe.data_variant()
    return stage_key(
        "dense",
        recipe.dataset,
        recipe.crop_gt,
        recipe.arch,
        recipe.img_size,
        recipe.reduced_strides,
        recipe.pretrained,
        recipe.do_dense,
        recipe.dense,
        recipe.fdl_beta,
        recipe.dense_dropout,
        seed,
        *([variant] if variant else []),
    )


def dense_name(key: str) -> str:
    return f"dense-{key}.pt"


def dense_stage(ctx: RunContext, key: str) -> QResNet:
    """Dense training (spec §3), or the pretrained/initial network when dense training is off."""
    r = ctx.recipe
    name, partial = dense_name(key), f"dense-{key}.partial.pt"
    record = ctx.world.on_main(f"dense-{key}: reading the dense model", lambda: ctx.run.load_torch(name))
    if record is not None:
        ctx.echo(f"dense model: reusing {ctx.run.file(name)}")
        return ctx.device.prepare(model_from_record(record))

    seed_stage(ctx, "dense")
    model = ctx.device.prepare(
        build_model(
            r.arch,
            ctx.info.num_classes,
            reduced_strides=r.reduced_strides,
            pretrained=r.pretrained,
            dropout=r.dense_dropout,
        )
    )
    history: list[dict] = []
    # Each stage's timed block ends with its result saved: a kill anywhere before is inside the stage.
    with timed(ctx, f"dense-{key}", "dense training"):
        if r.do_dense:
            optimizer, scheduler = make_sgd(
                [
                    {"params": model.backbone_parameters(), "lr": r.dense.lr},
                    {"params": model.head_parameters(), "lr": r.dense.head_lr},
                ],
                r.dense,
            )
            sched = Schedule(
                "dense", optimizer, scheduler, r.dense.epochs, r.dense.batch_size, r.eval_every, partial_name=partial
            )
            history = run_epochs(
                model,
                ctx.train_set,
                ctx.test_set,
                sched,
                device=ctx.device,
                fdl_beta=r.fdl_beta,
                seed=ctx.seed,
                workers=r.workers,
                run=ctx.run,
                echo=ctx.echo,
                world=ctx.world,
                sync_batchnorm=ctx.sync_batchnorm,
            )
        ctx.run.save_torch(
            name,
            model_record(model, ctx.info, r.img_size, recipe=r.name, seed=ctx.seed, stage="dense", history=history),
        )
        ctx.run.remove(partial)
    return model


def metrics_name(label: str) -> str:
    return f"metrics_{label}.json"


def metrics_stage(ctx: RunContext, model: QResNet, label: str, scope: str) -> dict:
    """The metrics of a model (`label`: dense, qsenn or sldd), cached by the scope (key) of the
    model they describe; computed by rank 0 over the whole training and test sets."""

    def compute() -> dict:
        name = metrics_name(label)
        cached = ctx.run.load_json(name)
        if cached is not None and cached.get("model") == scope:
            return cached
        with timed(ctx, scope, f"metrics ({label})"):
            result = compute_metrics(model, ctx.data, ctx.recipe, ctx.device)
            result["model"] = scope
            ctx.run.save_json(name, result)
        return result

    return ctx.world.on_main(f"metrics ({label}) (rank 0 computes them while the other ranks wait)", compute)


def compute_metrics(model: QResNet, data: DataSplits, recipe: Recipe, device: Device) -> dict:
    return evaluate_metrics(
        model,
        data.train_eval_set,
        data.test_set,
        data.info,
        device=device,
        batch_size=recipe.metrics_batch_size,
        workers=recipe.workers,
    )


def train(recipe: Recipe, opts: RunOptions, echo: Callable[[str], None] = print) -> dict:
    """Run every stage of the recipe, register the finished model; return the dense and final metrics."""
    ctx = prepare(recipe, opts, echo)
    try:
        key = dense_key(recipe, ctx.seed)
        model = dense_stage(ctx, key)
        dense_metrics = metrics_stage(ctx, model, DENSE, f"dense-{key}")
        folder = sparse_folder(ctx, key)
        model = sparsify(ctx, model, folder)
        final_metrics = metrics_stage(ctx, model, recipe.model_type, folder)
        if ctx.world.is_main:
            _register(ctx, model, key, folder, dense_metrics, final_metrics)
    finally:
        ctx.world.close()
    return {
        "run_dir": str(ctx.run.path),
        DENSE: dense_metrics,
        recipe.model_type: final_metrics,
        "timings": dict(ctx.timings),
    }


def _register(ctx: RunContext, model: QResNet, key: str, folder: str, dense_metrics: dict, final_metrics: dict) -> None:
    recipe, echo = ctx.recipe, ctx.echo
    entry = ModelEntry(
        model_type=recipe.model_type,
        checkpoint=final_checkpoint(ctx, folder),
        folder=folder,
        metrics=metrics_name(recipe.model_type),
        dense_checkpoint=dense_name(key),
        dense_key=key,
        dense_metrics=metrics_name(DENSE),
        recipe=recipe.to_json(),
        seed=ctx.seed,
        finished=round(time.time(), 3),
        world_size=ctx.world.size,
    )
    ctx.run.register(recipe.model_type, entry.to_json())
    ctx.run.event("done", model_type=recipe.model_type, dense=dense_metrics, final=final_metrics)
    run = Run(ctx.run.path, echo=echo)
    echo(summary_table({DENSE: dense_metrics, **{t: run.metrics(run.entry(t).metrics) or {} for t in run.model_types}}))
    echo(class_explanation(model, ctx.info.class_names))
    echo(
        f"final {recipe.model_type} model: {ctx.run.file(entry.checkpoint)} (registered in {run.path / 'models.json'})"
    )


def summary_table(rows: dict[str, dict]) -> str:
    header = f"{'model':<8}" + "".join(f"{k:>12}" for k in METRIC_KEYS)
    lines = [header, "-" * len(header)]
    for label, m in rows.items():
        cells = "".join(f"{m[k]:>12d}" if k == "NFfeatures" else f"{m[k]:>12.4f}" for k in METRIC_KEYS)
        lines.append(f"{label:<8}{cells}")
    return "\n".join(lines)


def class_explanation(model: QResNet, class_names: tuple[str, ...], k: int = 0) -> str:
    """One class's features and their signs: what the sparse head makes the class mean."""
    if not model.is_sparse:
        return ""
    row = model.head_weight[k].detach().cpu()
    selection = model.sparse_head.selection.cpu()
    terms = [
        f"{'+' if row[j] > 0 else '-'}feature {j} (channel {int(selection[j])}, w {row[j]:+.3f})"
        for j in row.nonzero().flatten().tolist()
    ]
    bias = float(model.head_bias[k])
    return f"class {class_names[k]!r}: " + ", ".join(terms) + f"; bias {bias:+.3f}"


def evaluate_run(
    run_dir: Path,
    data_root: Path | None = None,
    device: str = "auto",
    model_type: str | None = None,
    echo: Callable[[str], None] = print,
) -> dict:
    """`qsenn evaluate RUN`: recompute the metrics of the run's finished models (all of them, or
    `model_type`) and of their dense model, and rewrite their metrics files. config.json is read,
    never written; the data root defaults to the one the run was trained with."""
    run = Run(run_dir, echo=echo)
    types = (model_type,) if model_type is not None else run.model_types
    entries = [run.entry(t) for t in types] if types else []
    if not entries:
        run.entry(None)  # raises the line that says what to finish
    resolved = Device.resolve(device)
    # Every checkpoint is read before any metric is computed or written: a damaged one is refused
    # with nothing rewritten, and before the dataset is opened.
    jobs: list[tuple[Recipe, list[tuple[str, dict, str, str]]]] = []  # per entry: label, record, scope, file
    done: set[str] = set()
    for entry in entries:
        scopes = {DENSE: (entry.dense_checkpoint, f"dense-{entry.dense_key}", entry.dense_metrics)}
        scopes[entry.model_type] = (entry.checkpoint, entry.folder, entry.metrics)
        models = []
        for label, (checkpoint, scope, metrics_file) in scopes.items():
            if checkpoint in done:  # the dense model Q-SENN and SLDD share
                continue
            done.add(checkpoint)
            models.append((label, run.load_record(checkpoint), scope, metrics_file))
        jobs.append((entry.load_recipe(), models))
    rows: dict[str, dict] = {}
    for recipe, models in jobs:
        data = open_data(recipe, data_root or run.data_root, echo)
        for label, record, scope, metrics_file in models:
            model = resolved.prepare(model_from_record(record))
            rows[label] = compute_metrics(model, data, recipe, resolved)
            run.files.save_json(metrics_file, {**rows[label], "model": scope})
    echo(summary_table(rows))
    return rows
