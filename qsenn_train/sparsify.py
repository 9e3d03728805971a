"""From a dense model to Q-SENN (spec §9: four rounds of extract → select → path → quantise →
fine-tune) or SLDD (§8: one round with magnitude pruning). Every step is cached in the run
directory and skipped when its result is intact."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .checkpoint import model_from_record, model_record
from .context import RunContext, saga_threads, seed_stage, timed
from .device import resolve_torch_device
from .features import FeatureSet, extract_features, load_feature_set
from .glm_path import fit_path
from .model import QResNet
from .progress import progress
from .quantize import TernaryHead, quantization_entry, quantize
from .recipes import Recipe, SGDSchedule
from .rundir import stage_key
from .selection import select_features
from .sldd import sldd_head
from .training import Schedule, make_sgd, run_epochs


def sparse_folder(ctx: RunContext, dense_key: str) -> str:
    """Names the sparsification run by everything it depends on (the dense model included)."""
    r = ctx.recipe
    key = stage_key(
        dense_key,
        r.model_type,
        r.n_features,
        r.n_per_class,
        r.selection,
        r.glm_path,
        r.finetune,
        r.sldd_finetune,
        r.sldd_drop_rate,
        r.reference_compat,
        r.extraction_batch_size,
        r.val_fraction,
        r.fdl_beta,
        *([solver] if (solver := r.solver_variant()) else []),
    )
    return f"{r.model_type}_{r.n_features}_{r.n_per_class}-{key}"


@dataclass(frozen=True)
class Step:
    """Where one sparsification round lives: its folder (the model's cache key) and, for Q-SENN,
    the round (iter0..3); `prefix` names its files and seeds its random draws."""

    folder: str
    round_: str | None = None

    @property
    def prefix(self) -> str:
        return f"{self.folder}/{self.round_}" if self.round_ else self.folder


def timed_step(ctx: RunContext, step: Step, what: str):
    return timed(ctx, step.folder, what, step.round_)


def final_checkpoint(ctx: RunContext, folder: str) -> str:
    """Run-relative name of the final model of a sparsification folder."""
    if ctx.recipe.model_type == "sldd":
        return f"{folder}/model.pt"
    return f"{folder}/iter{ctx.recipe.finetune.iterations - 1}/model.pt"


def sparsify(ctx: RunContext, model: QResNet, folder: str) -> QResNet:
    if ctx.recipe.model_type == "sldd":
        return _sldd_round(ctx, model, Step(folder))
    for iteration in range(ctx.recipe.finetune.iterations):
        model = _qsenn_round(ctx, model, Step(folder, f"iter{iteration}"), iteration)
    return model


# ---- shared steps ------------------------------------------------------------------------


def _features(ctx: RunContext, model: QResNet, step: Step, seed_label: str) -> FeatureSet | None:
    """The step's features (§4): rank 0 gets them, the other ranks None (the GLM stages that
    read them run on rank 0); every rank takes part in extracting them."""
    cached = ctx.world.main_only(f"{step.prefix}: reading its features", lambda: load_feature_set(ctx.run, step.prefix))
    if ctx.world.broadcast(cached is not None):
        return cached
    r = ctx.recipe
    with timed_step(ctx, step, "feature extraction"):
        return extract_features(
            model,
            ctx.train_eval_set,
            ctx.test_set,
            ctx.run,
            step.prefix,
            batch_size=r.extraction_batch_size,
            workers=r.workers,
            device=ctx.device,
            seed=seed_stage(ctx, seed_label),
            val_fraction=r.val_fraction,
            n_classes=ctx.info.num_classes,
            world=ctx.world,
        )


def _selection(ctx: RunContext, model: QResNet, features: FeatureSet, step: Step) -> list[int]:
    """§5: the model's own selection once it has F features, else a fresh modified group elastic net."""
    r = ctx.recipe
    if model.is_sparse and len(model.sparse_head.selection) == r.n_features:
        return model.sparse_head.selection.tolist()
    name = f"{step.prefix}/selection.pt"
    cached = ctx.run.load_torch(name)
    if cached is not None:
        return cached["selected"]
    seed_stage(ctx, f"{step.prefix}/selection")
    with timed_step(ctx, step, "feature selection"), saga_threads(ctx):
        with progress(total=r.n_features, desc="selecting features") as bar:
            result = select_features(
                features.train,
                features.train_labels,
                features.stats.mean,
                features.stats.std,
                n_features=r.n_features,
                n_total=features.stats.n_total,
                max_reg_group=features.stats.max_reg_group,
                settings=r.selection,
                device=ctx.device.torch_device,
                n_classes=ctx.info.num_classes,
                progress=lambda admitted, total, lam_index: bar.update(admitted - bar.n),
            )
        # Per-round K×D solutions are large (ImageNet: ~400 MB); keep the admission log only.
        rounds = [{k: v for k, v in entry.items() if k not in ("weight", "bias")} for entry in result.rounds]
        ctx.run.save_torch(
            name,
            {"selected": result.selected, "rounds": rounds, "weight": result.weight.cpu(), "bias": result.bias.cpu()},
        )
    ctx.run.event("selection", step=step.prefix, selected=result.selected)
    return result.selected


def _path(ctx: RunContext, features: FeatureSet, selection: list[int] | None, step: Step) -> list[dict]:
    """§6: the 101-solution elastic-net path on the standardised selected features."""
    name = f"{step.prefix}/glm_path.pt"
    cached = ctx.run.load_torch(name)
    if cached is not None:
        return cached["path"]
    settings = ctx.recipe.glm_path
    seed_stage(ctx, f"{step.prefix}/glm_path")
    with timed_step(ctx, step, "regularisation path"), saga_threads(ctx):
        with progress(total=settings.n_lambdas + 1, desc=f"{ctx.recipe.path_solver} path") as bar:
            path = fit_path(
                features,
                selection,
                settings,
                n_classes=ctx.info.num_classes,
                device=ctx.device.torch_device,
                solver=ctx.recipe.path_solver,
                table_dtype=ctx.recipe.saga_table_dtype,
                table_device=saga_table_device(ctx.recipe),
                tick=lambda: bar.update(1),
                log=lambda line: ctx.run.event("glm_saga", step=step.prefix, line=line),
            )
        ctx.run.save_torch(name, {"path": path})
    return path


def saga_table_device(recipe: Recipe) -> torch.device | None:
    """Where the path's SAGA table lives: `--saga-table-device`, else (None) the solver's device."""
    if recipe.saga_table_device is None:
        return None
    return resolve_torch_device(recipe.saga_table_device, flag="--saga-table-device")


@dataclass(frozen=True)
class SparseHead:
    """What a round installs (§1.4/§7.5): S, fresh μ_S and σ_S from this step's statistics
    (odd-T), and the frozen weight and bias. Rank 0 computes it; every rank installs it."""

    selection: list[int]
    mean: torch.Tensor
    std: torch.Tensor
    weight: torch.Tensor
    bias: torch.Tensor

    @classmethod
    def of(cls, features: FeatureSet, selection: list[int], from_dense: bool, weight, bias) -> SparseHead:
        mean, std = features.stats.mean, features.stats.std
        if from_dense:  # D-dimensional statistics: restrict them to S
            mean, std = mean[selection], std[selection]
        return cls(selection, mean, std, weight, bias)

    def install(self, model: QResNet, dropout: float) -> None:
        model.install_sparse_head(
            torch.tensor(self.selection), self.mean, self.std, self.weight, self.bias, dropout=dropout
        )


def _finished(ctx: RunContext, step: Step) -> QResNet | None:
    """The model a finished round saved (its head included), or None."""
    record = ctx.world.on_main(
        f"{step.prefix}: reading its model", lambda: ctx.run.load_torch(f"{step.prefix}/model.pt")
    )
    return None if record is None else ctx.device.prepare(model_from_record(record))


def _glm_stages(step: Step, what: str) -> str:
    return f"{step.prefix}: {what} (rank 0 fits it while the other ranks wait)"


def _finetune(ctx: RunContext, model: QResNet, step: Step, schedule: SGDSchedule, lr: float, epochs: int) -> None:
    """§9.3: one SGD over the backbone and μ/σ (ternary weight and bias frozen); CE + FDL."""
    seed_stage(ctx, f"{step.prefix}/finetune")
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer, scheduler = make_sgd([{"params": trainable, "lr": lr}], schedule)
    sched = Schedule(
        f"{step.prefix} fine-tune",
        optimizer,
        scheduler,
        epochs,
        schedule.batch_size,
        ctx.recipe.eval_every,
        partial_name=f"{step.prefix}/model.partial.pt",
    )
    with timed_step(ctx, step, "fine-tuning"):
        history = run_epochs(
            model,
            ctx.train_set,
            ctx.test_set,
            sched,
            device=ctx.device,
            fdl_beta=ctx.recipe.fdl_beta,
            seed=ctx.seed,
            workers=ctx.recipe.workers,
            run=ctx.run,
            echo=ctx.echo,
            world=ctx.world,
            sync_batchnorm=ctx.sync_batchnorm,
        )
        ctx.run.save_torch(
            f"{step.prefix}/model.pt",
            model_record(
                model,
                ctx.info,
                ctx.recipe.img_size,
                recipe=ctx.recipe.name,
                model_type=ctx.recipe.model_type,
                seed=ctx.seed,
                stage=step.prefix,
                history=history,
            ),
        )
        ctx.run.remove(f"{step.prefix}/model.partial.pt")


# ---- Q-SENN ------------------------------------------------------------------------------


def _ternary_head(ctx: RunContext, path: list[dict], step: Step) -> TernaryHead:
    """§7: quantise entry 99 (λ = 0.001·λ_max, odd-D) to {−a, 0, +a} with the bias rule."""
    name = f"{step.prefix}/head.pt"
    cached = ctx.run.load_torch(name)
    if cached is not None:
        return TernaryHead(cached["ternary"], cached["magnitude"], cached["bias"])
    entry = path[quantization_entry(len(path))]
    with timed_step(ctx, step, "quantisation"):
        head = quantize(
            entry["weight"], entry["bias"], ctx.recipe.n_per_class, reference_compat=ctx.recipe.reference_compat
        )
        ctx.run.save_torch(
            name, {"ternary": head.ternary, "magnitude": head.magnitude, "bias": head.bias, "lam": entry["lam"]}
        )
    ctx.run.event("quantised", step=step.prefix, magnitude=head.magnitude, nonzeros=int((head.ternary != 0).sum()))
    return head


def _qsenn_round(ctx: RunContext, model: QResNet, step: Step, iteration: int) -> QResNet:
    if (done := _finished(ctx, step)) is not None:
        return done
    ft = ctx.recipe.finetune
    features = _features(ctx, model, step, f"{step.prefix}/features")
    from_dense = not model.is_sparse

    def fit() -> SparseHead:
        assert features is not None  # rank 0 holds them
        selection = _selection(ctx, model, features, step)
        path = _path(ctx, features, selection if from_dense else None, step)
        head = _ternary_head(ctx, path, step)
        return SparseHead.of(features, selection, from_dense, head.weight, head.bias)

    ctx.world.on_main(_glm_stages(step, "selection, glm-saga path and quantisation"), fit).install(model, ft.dropout)
    last = iteration == ft.iterations - 1
    # Fine-tuning call n = iteration + 2 of the reference's scheduler: lr·0.9^(n−2) (§9.2).
    lr = ft.schedule.lr * ft.lr_decay_per_iteration**iteration
    _finetune(ctx, model, step, ft.schedule, lr, ft.schedule.epochs if last else ft.short_epochs)
    return model


# ---- SLDD --------------------------------------------------------------------------------


def _sldd_round(ctx: RunContext, model: QResNet, step: Step) -> QResNet:
    if (done := _finished(ctx, step)) is not None:
        return done
    r = ctx.recipe
    features = _features(ctx, model, step, f"{step.prefix}/features")

    def fit() -> SparseHead:
        assert features is not None  # rank 0 holds them
        selection = _selection(ctx, model, features, step)
        path = _path(ctx, features, selection, step)
        weight, bias, index = sldd_head(
            [e["weight"] for e in path],
            [e["bias"] for e in path],
            r.n_per_class,
            drop_rate=r.sldd_drop_rate,
            reference_compat=r.reference_compat,
        )
        ctx.run.event(
            "sldd_entry", step=step.prefix, index=index, lam=path[index]["lam"], nonzeros=int((weight != 0).sum())
        )
        return SparseHead.of(features, selection, True, weight, bias)

    ctx.world.on_main(_glm_stages(step, "selection, glm-saga path and pruning"), fit).install(model, r.finetune.dropout)
    _finetune(ctx, model, step, r.sldd_finetune, r.sldd_finetune.lr, r.sldd_finetune.epochs)
    return model
