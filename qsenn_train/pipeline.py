"""`qsenn train` and `qsenn evaluate`: the stages in order, each cached in the run directory."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

from .checkpoint import load_checkpoint, model_from_record, model_record
from .context import RunContext, RunOptions, prepare, seed_stage, timed
from .errors import QsennError
from .evaluation import evaluate_metrics
from .model import QResNet, build_model
from .names import MODEL_TYPES
from .recipes import Recipe
from .rundir import CONFIG, FINAL_LINK, stage_key, temporary_name, write_json_atomic
from .sparsify import sparse_folder, sparsify
from .training import Schedule, make_sgd, run_epochs

METRIC_KEYS = ("Accuracy", "NFfeatures", "PerClass", "diversity", "Dependence", "Alignment")


def dense_key(ctx: RunContext) -> str:
    r = ctx.recipe
    variant = r.data_variant()
    return stage_key(
        "dense",
        r.dataset,
        r.crop_gt,
        r.arch,
        r.img_size,
        r.reduced_strides,
        r.pretrained,
        r.do_dense,
        r.dense,
        r.fdl_beta,
        r.dense_dropout,
        ctx.seed,
        *([variant] if variant else []),
    )


def dense_stage(ctx: RunContext, key: str) -> QResNet:
    """Dense training (spec §3), or the pretrained/initial network when dense training is off."""
    r = ctx.recipe
    name, partial = f"dense-{key}.pt", f"dense-{key}.partial.pt"
    record = ctx.run.load_torch(name)
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
    with timed(ctx, "dense training"):
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
            )
        ctx.run.save_torch(
            name,
            model_record(model, ctx.info, r.img_size, recipe=r.name, seed=ctx.seed, stage="dense", history=history),
        )
        ctx.run.remove(partial)
    return model


def metrics_stage(ctx: RunContext, model: QResNet, name: str, key: str, label: str) -> dict:
    """The metrics of a model, cached by the key of the model they describe."""
    cached = ctx.run.load_json(name)
    if cached is not None and cached.get("model") == key:
        return cached
    r = ctx.recipe
    with timed(ctx, f"metrics ({label})"):
        result = evaluate_metrics(
            model,
            ctx.train_eval_set,
            ctx.test_set,
            ctx.info,
            device=ctx.device,
            batch_size=r.metrics_batch_size,
            workers=r.workers,
        )
        result["model"] = key
        ctx.run.save_json(name, result)
    return result


def link_final(ctx: RunContext, target: str) -> None:
    """RUN/final.pt → the last finished model (a relative symlink, swapped atomically)."""
    link = ctx.run.file(FINAL_LINK)
    tmp = temporary_name(link)
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(target)
    os.replace(tmp, link)


def final_model_name(ctx: RunContext, folder: str) -> str:
    if ctx.recipe.model_type == "sldd":
        return f"{folder}/model.pt"
    return f"{folder}/iter{ctx.recipe.finetune.iterations - 1}/model.pt"


def train(recipe: Recipe, opts: RunOptions, echo: Callable[[str], None] = print) -> dict:
    """Run every stage of the recipe; return the dense and final metrics."""
    ctx = prepare(recipe, opts, echo)
    key = dense_key(ctx)
    model = dense_stage(ctx, key)
    dense_metrics = metrics_stage(ctx, model, "metrics_dense.json", key, "dense")
    folder = sparse_folder(ctx, key)
    model = sparsify(ctx, model, folder)
    final_metrics = metrics_stage(ctx, model, f"metrics_{recipe.model_type}.json", folder, recipe.model_type)
    link_final(ctx, final_model_name(ctx, folder))
    record_timings(ctx)
    ctx.run.event("done", dense=dense_metrics, final=final_metrics)
    echo(summary_table({"dense": dense_metrics, **sparse_metrics(ctx)}))
    echo(class_explanation(model, ctx.info.class_names))
    echo(f"final model: {ctx.run.file(FINAL_LINK)}")
    return {
        "run_dir": str(ctx.run.path),
        "dense": dense_metrics,
        recipe.model_type: final_metrics,
        "timings": dict(ctx.timings),
    }


def record_timings(ctx: RunContext) -> None:
    """timings.json: seconds per stage; a resumed run keeps the times of the stages it reused."""
    path = ctx.run.file("timings.json")
    timings = json.loads(path.read_text()) if path.exists() else {}
    timings.update({k: round(v, 2) for k, v in ctx.timings.items()})
    write_json_atomic(path, timings)


def sparse_metrics(ctx: RunContext) -> dict[str, dict]:
    """The final metrics of every model type trained in this run directory (they share the dense model)."""
    rows = {}
    for model_type in MODEL_TYPES:
        metrics = ctx.run.load_json(f"metrics_{model_type}.json")
        if metrics is not None:
            rows[model_type] = metrics
    return rows


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
    selection = model.linear.selection.cpu()
    terms = [
        f"{'+' if row[j] > 0 else '-'}feature {j} (channel {int(selection[j])}, w {row[j]:+.3f})"
        for j in row.nonzero().flatten().tolist()
    ]
    bias = float(model.head_bias[k])
    return f"class {class_names[k]!r}: " + ", ".join(terms) + f"; bias {bias:+.3f}"


def evaluate_run(
    run_dir: Path, data_root: Path | None = None, device: str = "auto", echo: Callable[[str], None] = print
) -> dict:
    """`qsenn evaluate RUN`: recompute the metrics of the run's dense and final models.

    The data root defaults to the one the run was trained with (config.json)."""
    config_file = Path(run_dir) / CONFIG
    if not config_file.is_file():
        raise QsennError(f"{run_dir} is not a run directory (no {CONFIG}); pass OUT/<arch>/<dataset>/<seed>")
    config = json.loads(config_file.read_text())
    recipe = Recipe.from_json(config["recipe"])
    opts = RunOptions(
        seed=config["seed"],
        data_root=data_root or Path(config["data_root"]),
        out=Path(run_dir).parents[2],
        device=device,
        resume=True,
    )
    ctx = prepare(recipe, opts, echo)
    key = dense_key(ctx)
    final = ctx.run.file(FINAL_LINK)
    models = {"dense": (ctx.run.file(f"dense-{key}.pt"), key)}
    if final.exists():  # a link's first component is the sparsification folder (its key)
        models[recipe.model_type] = (final, Path(os.readlink(final)).parts[0] if final.is_symlink() else FINAL_LINK)
    rows = {}
    for label, (path, model_key) in models.items():
        if not path.exists():
            echo(f"{label}: {path} not found (stage not finished), skipped")
            continue
        model, _ = load_checkpoint(path)
        rows[label] = evaluate_metrics(
            ctx.device.prepare(model),
            ctx.train_eval_set,
            ctx.test_set,
            ctx.info,
            device=ctx.device,
            batch_size=recipe.metrics_batch_size,
            workers=recipe.workers,
        )
        ctx.run.save_json(f"metrics_{label}.json", {**rows[label], "model": model_key})
    echo(summary_table(rows))
    return rows
