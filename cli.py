"""The `qsenn` command. Each subcommand imports its package lazily, so that commands of the
runtime never import torch and `qsenn --help` answers at once."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from qsenn_train.names import (
    ARCHS,
    AUGMENTATIONS,
    DATASETS,
    DEFAULT_STAGE_TIMEOUT_S,
    MODEL_TYPES,
    PATH_SOLVERS,
    TABLE_DTYPES,
)

DEFAULT_DATA_ROOT = Path(os.environ.get("QSENN_DATA_ROOT", Path.home() / "tmp" / "Datasets"))


def _job_rank() -> str | None:
    """This process's rank when it is one of several of a torchrun job (torchrun's variables)."""
    return os.environ.get("RANK") if int(os.environ.get("WORLD_SIZE", "1")) > 1 else None


def _fail(message: str) -> None:
    rank = _job_rank()
    click.echo(f"error: rank {rank}: {message}" if rank is not None else f"error: {message}", err=True)
    sys.exit(2)


def _rank_stopped(exc: Exception) -> str:
    """One line for a rank stopped by an unexpected error (most often a peer rank that is gone);
    the traceback goes to a file, not between the other ranks' lines."""
    import tempfile
    import traceback

    from qsenn_runtime.errors import first_line

    path = Path(tempfile.gettempdir()) / f"qsenn-train-rank{_job_rank()}-{os.getpid()}.txt"
    path.write_text("".join(traceback.format_exception(exc)))
    return (
        f"stopped by {type(exc).__name__}: {first_line(exc)} (when another rank failed, its line says why; "
        f"traceback in {path})"
    )


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
def qsenn() -> None:
    """Q-SENN and SLDD: train, export and serve self-explaining image classifiers."""


# ---- train ------------------------------------------------------------------------------


@qsenn.command()
@click.option(
    "--dataset",
    type=click.Choice(DATASETS),
    default=None,
    help="Dataset (default: the recipe's; the embedded synthetic dataset for the demo recipe).",
)
@click.option(
    "--recipe",
    default=None,
    metavar="NAME",
    help="Named configuration: paper (the specification's numbers), paper-imagenet, demo, "
    "tiny, fashion-mnist. Default: demo for synth, paper-imagenet for ImageNet, "
    "fashion-mnist for fashion-mnist, paper otherwise.",
)
@click.option("--arch", type=click.Choice(ARCHS), default=None, help="Backbone (recipe default).")
@click.option(
    "--model-type",
    type=click.Choice(MODEL_TYPES),
    default=None,
    help="qsenn (4 quantised fine-tuning rounds) or sldd (one pruned fine-tuning).",
)
@click.option(
    "--seed", type=int, default=None, help="Run seed; random in [0, 10^6) if omitted. Names the run directory."
)
@click.option(
    "--dense/--no-dense",
    "do_dense",
    default=None,
    help="Train the dense model (off: use the initial/pretrained network as the dense model).",
)
@click.option("--crop-gt/--no-crop-gt", default=None, help="Use the ground-truth-cropped CUB/TravelingBirds images.")
@click.option("--n-features", type=int, default=None, help="Number of selected features F (paper: 50).")
@click.option("--n-per-class", type=int, default=None, help="Average features per class r (paper: 5).")
@click.option(
    "--fdl-beta",
    type=float,
    default=None,
    help="Weight of the Feature Diversity Loss in dense training and fine-tuning (paper: 0.196; 0 turns it off).",
)
@click.option("--img-size", type=int, default=None, help="Input size in pixels (paper: 448).")
@click.option(
    "--reduced-strides/--no-reduced-strides",
    default=None,
    help="Stride 1 in the first blocks of layer3 and layer4 (feature maps 4× larger per side).",
)
@click.option(
    "--pretrained/--no-pretrained",
    default=None,
    help="Start from torchvision's ImageNet weights (must be in the torch hub cache; nothing is downloaded).",
)
@click.option(
    "--reference-compat/--no-reference-compat",
    default=None,
    help="Reproduce the original code's quirks (spec §13) instead of the fixes.",
)
@click.option(
    "--data-root",
    type=click.Path(path_type=Path),
    default=DEFAULT_DATA_ROOT,
    show_default=True,
    help="Folder holding the datasets (or the dataset folder itself); env QSENN_DATA_ROOT.",
)
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    default=Path("runs"),
    show_default=True,
    help="Runs go to OUT/<arch>/<dataset>/<seed>/.",
)
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--amp", is_flag=True, help="Mixed precision (fp16 autocast) on CUDA.")
@click.option("--channels-last", is_flag=True, help="NHWC memory format on CUDA.")
@click.option("--workers", type=int, default=None, help="Data-loader worker processes (recipe default).")
@click.option(
    "--augment",
    type=click.Choice(AUGMENTATIONS),
    default=None,
    help="Training augmentation after the resize/crop: paper (§3.2: flip, colour jitter, "
    "TrivialAugmentWide), flip (the flip only; for small images) or flip-gray (the flip, and half "
    "of the images in grey). Recipe default.",
)
@click.option(
    "--limit-train",
    type=int,
    default=None,
    metavar="N",
    help="Smoke run: only N training images, evenly spaced (own run directory, *_trainN).",
)
@click.option(
    "--limit-test",
    type=int,
    default=None,
    metavar="N",
    help="Smoke run: only N test images, evenly spaced (own run directory, *_testN).",
)
@click.option(
    "--path-solver",
    type=click.Choice(PATH_SOLVERS),
    default=None,
    help="Regularisation path solver: glm-saga (the package, reference-faithful; default) or matrix "
    "(glm-saga's batches, λ grid, prox and stopping rule with a matrix-form step: 3x faster on the "
    "paper's path, 25x per epoch at K=1000; not bit-identical, see docs/benchmarks.md).",
)
@click.option(
    "--saga-table-dtype",
    type=click.Choice(TABLE_DTYPES),
    default=None,
    help="dtype of the N×K SAGA residual table of the path (bfloat16/float16 halve it; matrix solver only).",
)
@click.option(
    "--saga-table-device",
    default=None,
    metavar="DEVICE",
    help="Where the path's SAGA residual table lives (e.g. cpu while the solver runs on cuda). Default: the solver's device.",
)
@click.option(
    "--resume",
    is_flag=True,
    help="Continue a run: finished stages are reused, a killed stage restarts from its last checkpoint.",
)
@click.option("--overwrite", is_flag=True, help="Delete the run directory first.")
@click.option(
    "--nproc-per-node",
    type=int,
    default=None,
    metavar="N",
    help="Train with N processes on this node (one per GPU; gloo on the CPU) through torch's elastic "
    "launcher, as torchrun does. The recipe's global batch is split over all processes.",
)
@click.option("--nnodes", type=int, default=1, show_default=True, help="Nodes of the job (run the command on each).")
@click.option("--node-rank", type=int, default=0, show_default=True, help="This node's rank among --nnodes.")
@click.option("--master-addr", default=None, metavar="HOST", help="Node 0's address (several nodes).")
@click.option("--master-port", type=int, default=None, metavar="PORT", help="Node 0's port (default 29500).")
@click.option(
    "--sync-batchnorm/--no-sync-batchnorm",
    default=True,
    show_default=True,
    help="With several processes: BatchNorm statistics over the global batch (as one process computes "
    "them), or per process (torch's DDP default).",
)
@click.option(
    "--stage-timeout",
    type=float,
    default=DEFAULT_STAGE_TIMEOUT_S,
    show_default=True,
    metavar="SECONDS",
    help="With several processes: how long the others wait for rank 0's sparse-GLM stages.",
)
def train(
    dataset,
    recipe,
    arch,
    model_type,
    seed,
    do_dense,
    crop_gt,
    n_features,
    n_per_class,
    fdl_beta,
    img_size,
    reduced_strides,
    pretrained,
    reference_compat,
    data_root,
    out,
    device,
    amp,
    channels_last,
    workers,
    augment,
    limit_train,
    limit_test,
    path_solver,
    saga_table_dtype,
    saga_table_device,
    resume,
    overwrite,
    nproc_per_node,
    nnodes,
    node_rank,
    master_addr,
    master_port,
    sync_batchnorm,
    stage_timeout,
) -> None:
    """Train a Q-SENN (or SLDD) model: dense training with the Feature Diversity Loss, then
    the sparsification stages. Every stage result is saved atomically in the run directory.

    With --nproc-per-node (or under torchrun) dense training and fine-tuning run as DDP,
    feature extraction is sharded, and rank 0 runs the sparse-GLM stages (docs/distributed.md)."""
    from qsenn_train.distributed import launched_by_torchrun
    from qsenn_train.launch import Launch, launch, without_launch_options
    from qsenn_train.pipeline import RunOptions
    from qsenn_train.pipeline import train as run_training
    from qsenn_train.recipes import resolve_recipe
    from qsenn_train.sparsify import saga_table_device as saga_table_device_of

    if nproc_per_node is not None:
        job = Launch(nproc_per_node, nnodes, node_rank, master_addr, master_port)
        if launched_by_torchrun():
            raise click.UsageError("this process already runs under torchrun; drop --nproc-per-node")
        job.check()
        if job.needed:
            argv = sys.argv[sys.argv.index("train") + 1 :]
            return launch(job, without_launch_options(argv), device)

    resolved = resolve_recipe(
        recipe,
        dataset,
        arch=arch,
        model_type=model_type,
        do_dense=do_dense,
        crop_gt=crop_gt,
        n_features=n_features,
        n_per_class=n_per_class,
        fdl_beta=fdl_beta,
        img_size=img_size,
        reduced_strides=reduced_strides,
        pretrained=pretrained,
        reference_compat=reference_compat,
        workers=workers,
        augment=augment,
        limit_train=limit_train,
        limit_test=limit_test,
        path_solver=path_solver,
        saga_table_dtype=saga_table_dtype,
        saga_table_device=saga_table_device,
    )
    saga_table_device_of(resolved)  # an unknown or absent device is refused now, not after dense training
    opts = RunOptions(
        seed=seed,
        data_root=data_root,
        out=out,
        device=device,
        amp=amp,
        channels_last=channels_last,
        resume=resume,
        overwrite=overwrite,
        sync_batchnorm=sync_batchnorm,
        stage_timeout_s=stage_timeout,
    )
    run_training(resolved, opts, echo=click.echo)


@qsenn.command()
@click.argument("run_dir", metavar="RUN", type=click.Path(path_type=Path, exists=True, file_okay=False))
@click.option(
    "--data-root",
    type=click.Path(path_type=Path),
    default=None,
    help="Folder holding the run's dataset (default: the one it was trained with).",
)
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option(
    "--model-type",
    type=click.Choice(MODEL_TYPES),
    default=None,
    help="Evaluate only this finished model and its dense model (default: every finished model).",
)
def evaluate(run_dir, data_root, device, model_type) -> None:
    """Recompute the metrics (Accuracy, NFfeatures, PerClass, diversity@5, Dependence,
    Alignment) of a run's finished models and their dense model, and rewrite their metrics_*.json
    (config.json is only read)."""
    from qsenn_train.pipeline import evaluate_run

    evaluate_run(run_dir, data_root, device=device, model_type=model_type, echo=click.echo)


# ---- data -------------------------------------------------------------------------------


@qsenn.group()
def data() -> None:
    """Dataset utilities."""


@data.command("examples")
@click.option("--recipe", default="demo", show_default=True, metavar="NAME", help="Recipe whose dataset to use.")
@click.option("--dataset", type=click.Choice(DATASETS), default=None, help="Dataset (default: the recipe's).")
@click.option(
    "--data-root",
    type=click.Path(path_type=Path),
    default=DEFAULT_DATA_ROOT,
    show_default=True,
    help="Folder holding the datasets; env QSENN_DATA_ROOT.",
)
@click.option("--count", type=click.IntRange(min=1), default=4, show_default=True, help="Images (one per class).")
def data_examples(recipe, dataset, data_root, count) -> None:
    """Print the files of COUNT test images from COUNT classes, one per line: images to try
    `qsenn predict` and `qsenn explain` on."""
    from qsenn_train.data import example_images
    from qsenn_train.recipes import resolve_recipe

    for path in example_images(resolve_recipe(recipe, dataset), data_root, count, echo=lambda line: None):
        click.echo(path)


@data.command("synth")
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--classes", "n_classes", type=int, default=16, show_default=True)
@click.option("--train-per-class", type=int, default=100, show_default=True)
@click.option("--test-per-class", type=int, default=50, show_default=True)
@click.option("--size", "image_size", type=int, default=64, show_default=True, help="Image side in pixels.")
@click.option("--seed", type=int, default=0, show_default=True)
def data_synth(out, n_classes, train_per_class, test_per_class, image_size, seed) -> None:
    """Write the embedded synthetic dataset (CUB-200-2011 layout) to OUT/CUB_200_2011."""
    from qsenn_train.data.synth import SynthSpec, generate

    spec = SynthSpec(
        n_classes=n_classes,
        train_per_class=train_per_class,
        test_per_class=test_per_class,
        image_size=image_size,
        seed=seed,
    )
    folder = generate(spec, out)
    click.echo(f"wrote {n_classes * (train_per_class + test_per_class)} images to {folder}")


# ---- export (qsenn_export) ---------------------------------------------------------------
# The format table is torch-free; it drives the option checks and the help below.
from qsenn_export import formats as export_formats  # noqa: E402

_FORMATS_HELP = (
    "\b\nFormats: name, artifact, suffix, runs on, precisions (verification tolerance: "
    "relative max|Δ|), options, install\n" + export_formats.help_table()
)


@qsenn.command("export", epilog=_FORMATS_HELP)
@click.argument("source", type=click.Path(path_type=Path))
@click.option(
    "--format",
    "fmt",
    type=click.Choice(list(export_formats.FORMATS)),
    default="onnx",
    show_default=True,
    help="Artifact to write (table below).",
)
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    default=None,
    help="Output file (default: RUN/model.<suffix>, or the checkpoint's name with the suffix); for a Triton "
    "format the repository folder (default: RUN/triton).",
)
@click.option(
    "--batch",
    type=int,
    default=None,
    help=export_formats.option_help(
        "batch",
        "ONNX: static batch size (default: dynamic). TensorRT: "
        f"largest batch of the engine (default {export_formats.DEFAULT_TRT_BATCH}). Triton: "
        f"max_batch_size (default {export_formats.DEFAULT_TRT_BATCH}).",
    ),
)
@click.option("--half", is_flag=True, help=export_formats.option_help("half", "FP16 engine."))
@click.option(
    "--int8",
    is_flag=True,
    help=export_formats.option_help(
        "int8",
        "INT8, calibrated on --calib: a TensorRT engine, or ONNX "
        "with an INT8 backbone and the exact float head "
        "(RUN/model.int8.onnx).",
    ),
)
@click.option(
    "--calib",
    type=click.Path(path_type=Path),
    default=None,
    metavar="DIR",
    help=export_formats.option_help(
        "calib",
        "Calibration images for --int8 (a few hundred training "
        "images; at most "
        f"{export_formats.CALIBRATION_LIMIT}, spread over the folder).",
    ),
)
@click.option(
    "--workspace",
    type=float,
    default=None,
    metavar="GIB",
    help=export_formats.option_help(
        "workspace", f"Builder workspace (default {export_formats.DEFAULT_WORKSPACE_GIB:g} GiB)."
    ),
)
@click.option(
    "--verify/--no-verify",
    default=True,
    show_default=True,
    help="Compare the artifact with its source (PyTorch for ONNX, the ONNX model for TensorRT); "
    "out of tolerance: non-zero exit, artifact kept only as *.failed.<suffix>.",
)
@click.option(
    "--verify-count",
    type=int,
    default=export_formats.DEFAULT_VERIFY_COUNT,
    show_default=True,
    help="Number of test images to verify on (the first ones of the checkpoint's dataset).",
)
@click.option(
    "--verify-images",
    type=click.Path(path_type=Path),
    default=None,
    metavar="DIR",
    help="Verify on these image files instead of the dataset's test images.",
)
@click.option(
    "--feature-names",
    type=click.Path(path_type=Path),
    default=None,
    metavar="FILE",
    help="JSON file of feature names for the metadata: a list of F names, {index: name} or the atlas's "
    "{index: {name, description}} (`qsenn validate-run` writes RUN/feature_names_<type>.json); overrides "
    "the atlas's names. Default: the atlas's, else feature 0..F-1.",
)
@click.option(
    "--evidence-count",
    type=int,
    default=export_formats.DEFAULT_EVIDENCE_COUNT,
    show_default=True,
    help="Training images (spread over the split) the evidence score of every prediction is calibrated "
    "on; 0: no calibration (predictions then carry no evidence or weak-evidence flag).",
)
@click.option(
    "--evidence-images",
    type=click.Path(path_type=Path),
    default=None,
    metavar="DIR",
    help="Calibrate the evidence on these images (training images) instead of the dataset's.",
)
@click.option(
    "--model-type",
    type=click.Choice(MODEL_TYPES),
    default=None,
    help="Which finished model of the run: qsenn or sldd (default: the only one).",
)
@click.option(
    "--name",
    default=None,
    metavar="NAME",
    help=export_formats.option_help("name", "Model name in the Triton repository (default: <arch>_<dataset>)."),
)
@click.option(
    "--atlas",
    type=click.Path(path_type=Path),
    default=None,
    metavar="DIR",
    help="Embed this `qsenn atlas` folder (default: RUN/atlas/<type> when it was written): names, descriptions, "
    "attributes and prototypes of every feature. An atlas of another model is refused.",
)
@click.option(
    "--prototypes",
    type=click.IntRange(min=0),
    default=export_formats.DEFAULT_PROTOTYPES,
    show_default=True,
    metavar="K",
    help="Prototype thumbnails embedded per feature from the atlas.",
)
@click.option("--no-prototypes", is_flag=True, help="Embed the atlas without prototypes (same as --prototypes 0).")
def export_command(
    source,
    fmt,
    out,
    batch,
    half,
    int8,
    calib,
    workspace,
    verify,
    verify_count,
    verify_images,
    feature_names,
    evidence_count,
    evidence_images,
    model_type,
    name,
    atlas,
    prototypes,
    no_prototypes,
) -> None:
    """Export a trained Q-SENN or SLDD model: SOURCE is a run directory (its finished model;
    --model-type when it holds both), a folder of runs (the most recently finished one) or a
    checkpoint file. The graph normalises its input, computes only the selected channels and holds
    the head: Q-SENN's ternary T as int8 (its magnitude folded into the features), or SLDD's sparse
    real weights; the qsenn metadata travels with it. Default output: RUN/<type>.<suffix>."""
    from qsenn_export import export

    options = export_formats.make_options(
        fmt,
        out=out,
        batch=batch,
        half=half,
        int8=int8,
        calib=calib,
        workspace=workspace,
        verify=verify,
        verify_count=verify_count,
        verify_images=verify_images,
        feature_names=feature_names,
        evidence_count=evidence_count,
        evidence_images=evidence_images,
        model_type=model_type,
        name=name,
        atlas=atlas,
        prototypes=0 if no_prototypes else prototypes,
    )
    export_formats.validate(options)  # before torch loads: a refused option answers at once
    export(source, options, echo=click.echo)


@qsenn.command("validate-run")
@click.argument("run_dir", metavar="RUN", type=click.Path(path_type=Path))
@click.option(
    "--results-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    metavar="DIR",
    help="Where the result JSON goes (default: RUN; `make validate` uses benchmarks/results).",
)
@click.option(
    "--sheet",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Contact sheet PNG of the top features (default: RUN/features.png; needs qsenn[plot]).",
)
@click.option(
    "--sheet-features",
    type=click.IntRange(min=1),
    default=12,
    show_default=True,
    help="Features on the contact sheet (the most used ones).",
)
@click.option(
    "--top-images",
    type=click.IntRange(min=1),
    default=8,
    show_default=True,
    help="Test images per feature (those that activate it most).",
)
def validate_run_command(run_dir, results_dir, sheet, sheet_features, top_images) -> None:
    """Check a trained run on its whole test set: dense, Q-SENN and SLDD metrics and stage times,
    feature names from the global explanation (RUN/feature_names_<type>.json), every finished
    model exported to ONNX with them, qsenn_runtime over every test image against PyTorch (argmax
    agreement, identity residual), and a contact sheet of the Q-SENN model's top features; writes
    one JSON result."""
    from qsenn_bench.validation import validate_run

    validate_run(
        run_dir,
        results_dir=results_dir,
        sheet=sheet,
        sheet_features=sheet_features,
        top_images=top_images,
        echo=click.echo,
    )


@qsenn.command("atlas")
@click.argument("run_dir", metavar="RUN", type=click.Path(path_type=Path))
@click.option(
    "--model-type",
    type=click.Choice(MODEL_TYPES),
    default=None,
    help="Which finished model of the run: qsenn or sldd (default: the only one).",
)
@click.option(
    "--top", type=click.IntRange(min=1), default=16, show_default=True, help="Most-activating images per feature."
)
@click.option(
    "--split", type=click.Choice(("train", "test")), default="train", show_default=True, help="Images to search."
)
@click.option(
    "--clip",
    type=click.Path(path_type=Path),
    default=None,
    metavar="PATH",
    help="Also name features by language: a Hugging Face CLIP model folder on disk (needs qsenn[concepts]; "
    "nothing is downloaded).",
)
@click.option(
    "--concepts",
    type=click.Path(path_type=Path),
    default=None,
    metavar="FILE",
    help="With --clip: phrases to name features by, one per line (default: built from the dataset's attribute names).",
)
def atlas_command(run_dir, model_type, top, split, clip, concepts) -> None:
    """What each feature means: for the run's final model, every feature's most-activating images
    (heat-mapped crops), the classes it raises and lowers, its importance, its activation per class,
    its best-aligned attributes (where the dataset has annotations) and a suggested name. Writes
    RUN/atlas/<type>/ (atlas.json, thumbnails/, feature_names.json to edit; a rerun keeps edited
    names). `qsenn export` embeds it in the model."""
    from qsenn_train.atlas.build import build_atlas

    build_atlas(run_dir, model_type=model_type, top=top, split=split, clip=clip, concepts=concepts, echo=click.echo)


@qsenn.command("import-reference")
@click.argument("checkpoint", type=click.Path(path_type=Path))
@click.option(
    "--dataset",
    type=click.Choice(DATASETS),
    required=True,
    help="Dataset the original run trained on (sets normalisation and resize mode).",
)
@click.option(
    "--class-names",
    type=click.Path(path_type=Path),
    default=None,
    metavar="FILE",
    help="Class names, one per line in class-index order (default: class 0..K-1).",
)
@click.option("--img-size", type=int, default=448, show_default=True, help="Input size the model was trained at.")
@click.option("--crop-gt", is_flag=True, help="The run used the ground-truth-cropped images (square resize).")
@click.option("--reduced-strides", is_flag=True, help="The run used --reduced_strides.")
@click.option(
    "--data-root",
    type=click.Path(path_type=Path),
    default=DEFAULT_DATA_ROOT,
    show_default=True,
    help="Where the dataset lies (export verifies on its test images when present).",
)
@click.option("--out", type=click.Path(path_type=Path), required=True, help="qsenn checkpoint to write (.pt).")
def import_reference_command(
    checkpoint, dataset, class_names, img_size, crop_gt, reduced_strides, data_root, out
) -> None:
    """Convert a checkpoint of the original Q-SENN code (state dict, spec §12.3) into a qsenn
    checkpoint that `qsenn export` takes: a ternary head is a Q-SENN model, a sparse real-valued one
    an SLDD model."""
    from qsenn_export.reference_import import import_reference, save_record

    record = import_reference(
        checkpoint,
        dataset,
        data_root=data_root,
        class_names=class_names,
        img_size=img_size,
        crop_gt=crop_gt,
        reduced_strides=reduced_strides,
    )
    save_record(record, out)
    state = record["state_dict"]
    click.echo(
        f"imported {checkpoint} ({record['arch']}, {record['num_classes']} classes, "
        f"{len(state['linear.selection'])} features) to {out}; export it with `qsenn export {out}`"
    )


# ---- bench (qsenn_bench) -------------------------------------------------------------------------
from qsenn_bench.backend_table import BENCH_BACKENDS  # noqa: E402  (torch-free)

_BENCH_HELP = "\b\nBackends (the first is the baseline of every ratio):\n" + "\n".join(
    f"{b.name:<17} {'+'.join(b.devices):<8} {b.title}" for b in BENCH_BACKENDS.values()
)


def _names(text: str) -> tuple[str, ...]:
    return tuple(name.strip() for name in text.split(",") if name.strip())


def _sizes(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(size) for size in _names(text))
    except ValueError:
        raise click.BadParameter(f"{text!r}: give comma-separated batch sizes, e.g. 1,8,32") from None


@qsenn.command("bench", epilog=_BENCH_HELP)
@click.argument("source", metavar="[MODEL_OR_RUN]", required=False, type=click.Path(path_type=Path))
@click.option("--arch", type=click.Choice(ARCHS), default=None, help="With --random: the backbone.")
@click.option("--img-size", type=int, default=None, help="With --random: the input size in pixels.")
@click.option(
    "--random",
    "random_weights",
    is_flag=True,
    help="Random weights and a random ternary head of the paper's size (200 classes, 50 features), "
    "exported on the fly: speed of an architecture no trained model exists for.",
)
@click.option(
    "--backends",
    default=",".join(BENCH_BACKENDS),
    show_default=True,
    help="Comma-separated backends to time; those this machine cannot run are skipped with the reason.",
)
@click.option(
    "--check",
    default="",
    metavar="BACKENDS",
    help="Comma-separated backends only compared with the baseline (outputs), not timed.",
)
@click.option("--batch", "batches", default="1,8,32", show_default=True, help="Comma-separated batch sizes.")
@click.option("--warmup", type=int, default=3, show_default=True, help="Untimed calls per backend and batch.")
@click.option("--iters", type=int, default=20, show_default=True, help="Timed calls per backend and batch.")
@click.option(
    "--threads", type=int, default=None, help="CPU threads of torch and onnxruntime (default: all usable CPUs)."
)
@click.option("--device", default="auto", show_default=True, help="Torch device: auto, cpu, cuda or cuda:N.")
@click.option(
    "--provider", default=None, help="onnxruntime execution provider of the onnx backend (default: the best available)."
)
@click.option(
    "--images",
    type=int,
    default=64,
    show_default=True,
    help="Images for the agreement with the baseline (the first test images; random ones for --random).",
)
@click.option(
    "--calib",
    type=click.Path(path_type=Path),
    default=None,
    metavar="DIR",
    help="INT8 calibration images (default: training images of the model's dataset).",
)
@click.option("--calib-count", type=int, default=128, show_default=True, help="INT8 calibration images used.")
@click.option(
    "--memory/--no-memory",
    default=True,
    show_default=True,
    help="Measure peak memory (CPU: a fresh process per backend and batch).",
)
@click.option(
    "--artifacts",
    type=click.Path(path_type=Path),
    default=None,
    metavar="DIR",
    help="Keep the exported models in DIR (default: a temporary folder).",
)
@click.option(
    "--json",
    "json_out",
    type=click.Path(path_type=Path),
    default=None,
    help="Write the results as JSON (a folder: a file named by model, device and versions).",
)
@click.option(
    "--csv",
    "csv_out",
    type=click.Path(path_type=Path),
    default=None,
    help="Write one CSV row per backend and batch (a folder: named like --json).",
)
@click.option(
    "--model-type",
    type=click.Choice(MODEL_TYPES),
    default=None,
    help="Which finished model of a run: qsenn or sldd (default: the only one).",
)
def bench_command(
    source,
    arch,
    img_size,
    random_weights,
    backends,
    check,
    batches,
    warmup,
    iters,
    threads,
    device,
    provider,
    images,
    calib,
    calib_count,
    memory,
    artifacts,
    json_out,
    csv_out,
    model_type,
) -> None:
    """Latency (min/median/p90/p99), images per second, peak memory, and top-1 and top-5-feature
    agreement with the PyTorch fp32 baseline, per backend and batch size; the backends' timed calls
    are interleaved so that ratios survive a noisy machine."""
    from qsenn_bench.bench import BenchConfig, run_bench
    from qsenn_bench.reporting import table, write_csv, write_json
    from qsenn_bench.sources import bench_source

    config = BenchConfig(
        backends=_names(backends),
        check_only=_names(check),
        batches=_sizes(batches),
        warmup=warmup,
        iters=iters,
        threads=threads,
        device=device,
        provider=provider,
        images=images,
        calib=calib,
        calib_count=calib_count,
        memory=memory,
        artifacts=artifacts,
    )
    config.validate()
    result = run_bench(bench_source(source, arch, img_size, random_weights, model_type), config, echo=click.echo)
    click.echo(table(result))
    for out, write in ((json_out, write_json), (csv_out, write_csv)):
        if out is not None:
            click.echo(f"wrote {write(result, out)}")


# ---- runtime (qsenn_runtime; never imports torch) -----------------------------------------
from qsenn_runtime.report import FORMATS as INSPECT_FORMATS  # noqa: E402  (torch- and numpy-free)

_PROVIDER_HELP = (
    "onnxruntime execution provider: cpu, cuda, tensorrt or a full name such as "
    "CUDAExecutionProvider (default: CUDA where available, else the CPU; tensorrt builds and caches "
    "an engine for batches up to --batch-size; INT8 models run on the CPU; engines always run on TensorRT)."
)


def image_budget_options(command):
    """--max-image-pixels and --max-image-bytes: the runtime's per-image decoding budget."""
    from qsenn_runtime.limits import MAX_IMAGE_BYTES, MAX_IMAGE_PIXELS  # imports nothing

    command = click.option(
        "--max-image-bytes",
        type=click.IntRange(min=0),
        default=MAX_IMAGE_BYTES,
        show_default=True,
        help="Most bytes one image may decode to (0: no limit).",
    )(command)
    return click.option(
        "--max-image-pixels",
        type=click.IntRange(min=0),
        default=MAX_IMAGE_PIXELS,
        show_default=True,
        help="Most pixels one image may have (0: no limit); larger JPEGs are decoded at a reduced "
        "scale where the model's input size allows, other images are refused.",
    )(command)


def _load_model(model_path: Path, provider: str | None, batch_size: int = 16, **options):
    import warnings

    from PIL import Image

    import qsenn_runtime

    # The runtime refuses oversized images with its own message; Pillow's warning would only repeat it.
    warnings.simplefilter("ignore", Image.DecompressionBombWarning)
    return qsenn_runtime.load(model_path, provider, batch_size=batch_size, **options)


def _read_token(path: Path | None) -> str | None:
    if path is None:
        return None
    try:
        token = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise click.BadParameter(f"cannot read the token from {path} ({exc})", param_hint="--token-file") from None
    if not token or any(c.isspace() for c in token):
        raise click.BadParameter(f"{path} must hold one token without spaces", param_hint="--token-file")
    return token


def _open_model(paths, url, model_name, token_file, metadata, provider, budget: dict, batch_size: int = 16):
    """(model, image paths): a local MODEL followed by images, or with --url the served model
    --model and only images."""
    if url is None:
        for flag, value in (("--model", model_name), ("--token-file", token_file), ("--metadata", metadata)):
            if value is not None:
                raise click.UsageError(f"{flag} goes with --url (a served model)")
        if len(paths) < 2:
            raise click.UsageError("give the MODEL file and at least one IMAGE (or --url URL --model NAME IMAGE...)")
        return _load_model(paths[0], provider, batch_size, **budget), [str(p) for p in paths[1:]]
    if model_name is None:
        raise click.UsageError("--url needs --model NAME (the server lists its models: POST /v2/repository/index)")
    if provider is not None:
        raise click.UsageError("--provider applies to local models; the server chose its own")
    import qsenn_runtime

    model = qsenn_runtime.connect(
        url,
        model_name,
        token=_read_token(token_file),
        batch_size=batch_size,
        metadata=metadata,
        max_image_pixels=budget["max_image_pixels"],
    )
    return model, [str(p) for p in paths]


_REMOTE_OPTIONS = (
    click.option(
        "--url",
        default=None,
        metavar="URL",
        help="Use a served model instead of a file: an Open Inference Protocol server (qsenn serve, Triton, "
        "KServe), e.g. http://127.0.0.1:8000; then give only images.",
    ),
    click.option("--model", "model_name", default=None, metavar="NAME", help="With --url: the served model's name."),
    click.option(
        "--token-file",
        type=click.Path(dir_okay=False, path_type=Path),
        default=None,
        help="With --url: send the token in this file as `Authorization: Bearer`.",
    ),
    click.option(
        "--metadata",
        type=click.Path(dir_okay=False, path_type=Path),
        default=None,
        metavar="MODEL_FILE",
        help="With --url: read the qsenn metadata from this exported model when the server does not publish it.",
    ),
)


def _image_budget(max_image_pixels: int, max_image_bytes: int) -> dict:
    """The runtime's keyword arguments for the --max-image-* options (0: no limit)."""
    return {"max_image_pixels": max_image_pixels or None, "max_image_bytes": max_image_bytes or None}


def _remote_options(command):
    for option in reversed(_REMOTE_OPTIONS):
        command = option(command)
    return command


@qsenn.command()
@click.argument("paths", metavar="[MODEL] IMAGE...", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list (one object per image) for machines.")
@click.option(
    "--top-k",
    type=click.IntRange(min=1),
    default=3,
    show_default=True,
    help="Contributions listed per image (largest magnitude first).",
)
@click.option(
    "--batch-size", type=click.IntRange(min=1), default=16, show_default=True, help="Images per inference call."
)
@click.option("--provider", default=None, help=_PROVIDER_HELP)
@click.option(
    "--class", "classes", multiple=True, metavar="CLASS", help="Also explain this class (name or index); repeatable."
)
@_remote_options
@image_budget_options
def predict(
    paths,
    as_json,
    top_k,
    batch_size,
    provider,
    classes,
    url,
    model_name,
    token_file,
    metadata,
    max_image_pixels,
    max_image_bytes,
) -> None:
    """Classify images with an exported model (.onnx or TensorRT engine), or a served one (--url), and
    show why: the class, its probability and the signed feature contributions that sum, with the
    bias, to its logit. Exits with 1 when any image could not be read (the others are still predicted)."""
    import json

    from qsenn_runtime.report import prediction_table

    model, images = _open_model(
        paths,
        url,
        model_name,
        token_file,
        metadata,
        provider,
        _image_budget(max_image_pixels, max_image_bytes),
        batch_size,
    )
    results = model.predict(images, classes=classes)
    if as_json:
        click.echo(json.dumps([result.to_dict(top_k) for result in results], indent=2))
    else:
        click.echo(prediction_table(results, top_k))
    failed = sum(not result.ok for result in results)
    if failed:
        click.echo(f"error: {failed} of {len(results)} images could not be used (see above)", err=True)
        sys.exit(1)


@qsenn.command()
@click.argument("paths", metavar="[MODEL] IMAGE", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True, help="PNG to write.")
@click.option(
    "--top-k",
    type=click.IntRange(min=1),
    default=4,
    show_default=True,
    help="Features drawn as heat maps (the bar chart shows all of the class's features).",
)
@click.option(
    "--class",
    "class_",
    default=None,
    metavar="CLASS",
    help="Explain this class (name or index) instead of the predicted one.",
)
@click.option("--provider", default=None, help=_PROVIDER_HELP)
@_remote_options
@image_budget_options
def explain(
    paths, out, top_k, class_, provider, url, model_name, token_file, metadata, max_image_pixels, max_image_bytes
) -> None:
    """Draw why the model (a file, or a served one with --url) classified IMAGE as it did: the image,
    heat maps of the top contributing features, and the signed contributions plus the bias adding up
    to the logit (needs qsenn[plot])."""
    from qsenn_runtime.explain_plot import save_explanation  # first: a missing matplotlib fails fast

    if len(paths) != (1 if url else 2):
        raise click.UsageError("give one IMAGE" + ("" if url else " after the MODEL file"))
    budget = _image_budget(max_image_pixels, max_image_bytes)
    model, (image,) = _open_model(paths, url, model_name, token_file, metadata, provider, budget)
    explained = model.explain(image, class_)
    shown = explained.explanation.top(top_k)
    save_explanation(explained, out, top_k, prototypes={c.feature: model.prototypes(c.feature) for c in shown})
    explanation = explained.explanation
    click.echo(
        f"wrote {out}: {explained.prediction.class_name} "
        f"(probability {explained.prediction.probability:.3f}); "
        f"explained class {explanation.class_name}, logit {explanation.logit:.3f}"
    )


@qsenn.command("inspect")
@click.argument("model_path", metavar="MODEL", type=click.Path(path_type=Path))
@click.option("--format", "fmt", type=click.Choice(INSPECT_FORMATS), default="table", show_default=True)
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write to this file instead of standard output.",
)
def inspect_model(model_path, fmt, out) -> None:
    """The global explanation: every class with the features that raise (+1) and lower (−1) its
    logit, and every feature with the classes it serves. Reads only the metadata (no backend)."""
    from qsenn_runtime import read_metadata
    from qsenn_runtime.report import render

    text = render(read_metadata(model_path), fmt, source=str(model_path))
    if out is None:
        click.echo(text)
    else:
        out.write_text(text)
        click.echo(f"wrote {out}")


@qsenn.command("report")
@click.argument("model_path", metavar="MODEL", type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True, help="HTML file to write.")
@click.option(
    "--image",
    "images",
    multiple=True,
    type=click.Path(path_type=Path),
    metavar="IMG",
    help="Also show the local explanation of this image; repeatable.",
)
@click.option("--provider", default=None, help=_PROVIDER_HELP)
@image_budget_options
def report_command(model_path, out, images, provider, max_image_pixels, max_image_bytes) -> None:
    """The model card: one self-contained HTML page (no network) with every class and the features
    that raise and lower it (names, prototypes, weights, bias), a feature index (classes, prototypes,
    attributes, importance), a search box over class and feature names, provenance and metrics, and
    the local explanation of each --image."""
    from qsenn_runtime import read_metadata
    from qsenn_runtime.model_card import render_card, save_card

    if images:
        model = _load_model(model_path, provider, **_image_budget(max_image_pixels, max_image_bytes))
        metadata, explained = model.metadata, [model.explain(str(image)) for image in images]
    else:
        metadata, explained = read_metadata(model_path), []
    page = render_card(metadata, model_path.name, explained)
    save_card(out, page)
    click.echo(
        f"wrote {out} ({len(page.encode()):,} bytes): {metadata.num_classes} classes, {metadata.num_features} "
        f"features, {len(explained)} explained images"
    )


# ---- serve (qsenn_runtime.serving; never imports torch) -----------------------------------
_SERVE_HELP = """\b
Endpoints (Open Inference Protocol v2 REST, as Triton and KServe speak it):
  GET  /v2/health/live, /v2/health/ready   (no token needed)
  GET  /v2                                 server metadata
  GET  /v2/models/NAME                     model metadata; parameters.qsenn: the qsenn metadata
  GET  /v2/models/NAME/config              the Triton model config (qsenn export --format triton)
  GET  /v2/models/NAME/stats               backend calls by batch size
  POST /v2/models/NAME/infer               input images (FP32 N×3×S×S) or image_bytes (BYTES N)
  POST /v2/repository/index                the served models
\b
Infer request parameters: explain (true: the sorted signed contributions of the predicted
class in the output `explanations`), explain_classes ("cardinal,3": those classes too)."""

_MODEL_NAME = r"[A-Za-z0-9][A-Za-z0-9_.-]*"


def _model_names(paths: tuple[Path, ...], names: tuple[str, ...]) -> list[str]:
    import re

    if len(names) > len(paths):
        raise click.UsageError(f"{len(names)} --name for {len(paths)} MODEL files; give at most one per model")
    chosen = list(names) + [path.stem for path in paths[len(names) :]]
    for name in chosen:
        if not re.fullmatch(_MODEL_NAME, name):
            raise click.UsageError(f"model name {name!r}: use letters, digits, '_', '.' and '-' (it goes in URLs)")
    duplicates = sorted({name for name in chosen if chosen.count(name) > 1})
    if duplicates:
        raise click.UsageError(f"two models are named {duplicates[0]!r}; tell them apart with --name")
    return chosen


@qsenn.command(epilog=_SERVE_HELP)
@click.argument("model_paths", metavar="MODEL...", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "--name",
    "names",
    multiple=True,
    metavar="NAME",
    help="Name of a model at /v2/models/NAME, one per MODEL in order (default: the file's stem).",
)
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Interface to listen on; 0.0.0.0 opens the server to the network (add --token-file).",
)
@click.option(
    "--port", type=click.IntRange(0, 65535), default=8000, show_default=True, help="TCP port (0: a free one, printed)."
)
@click.option(
    "--token-file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Require `Authorization: Bearer TOKEN`, TOKEN being this file's content (the health endpoints stay open).",
)
@click.option(
    "--max-batch",
    type=click.IntRange(min=1),
    default=32,
    show_default=True,
    help="Most images per request and per backend call (capped by the model's own largest batch).",
)
@click.option(
    "--batch-window-ms",
    type=click.FloatRange(min=0),
    default=2.0,
    show_default=True,
    help="Dynamic batching: how long a request waits for others to share its backend call (0: off).",
)
@click.option(
    "--max-body-bytes",
    type=click.IntRange(min=1024),
    default=128 << 20,
    show_default=True,
    help="Larger request bodies (also once decompressed) get 413.",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=60.0,
    show_default=True,
    help="Seconds a request may take from arrival to response; slower ones get 503.",
)
@click.option(
    "--instances",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Backend calls running at once per model (Triton's instance count).",
)
@click.option(
    "--session-per-instance/--shared-session",
    default=True,
    show_default=True,
    help="Each instance its own backend session (Triton's model instances; without --threads the CPUs are "
    "split between them) or one session for all instances (less memory).",
)
@click.option("--provider", default=None, help=_PROVIDER_HELP)
@click.option(
    "--threads",
    type=click.IntRange(min=1),
    default=None,
    help="onnxruntime intra-op threads per session (default: all usable CPUs, split between the "
    "sessions of --instances).",
)
@image_budget_options
@click.option(
    "--spin/--no-spin",
    default=False,
    show_default=True,
    help="Let onnxruntime's idle threads spin-wait for the next call: a little lower latency on cores "
    "the server has to itself, CPU burnt (and other work slowed) where it shares them.",
)
@click.option(
    "--arena/--no-arena",
    default=False,
    show_default=True,
    help="onnxruntime's CPU memory arena: keeps the activations of the largest batch seen, and grows "
    "further as batch sizes vary; without it memory is returned after each call.",
)
@click.option("--access-log", is_flag=True, help="Log every request (uvicorn's access log).")
def serve(
    model_paths,
    names,
    host,
    port,
    token_file,
    max_batch,
    batch_window_ms,
    max_body_bytes,
    timeout,
    instances,
    session_per_instance,
    provider,
    threads,
    max_image_pixels,
    max_image_bytes,
    spin,
    arena,
    access_log,
) -> None:
    """Serve exported models (.onnx or TensorRT engines) over the Open Inference Protocol v2 REST API,
    with the explanations: `tritonclient.http`, KServe clients, curl and `qsenn_runtime.connect` work
    against it. Concurrent requests are batched dynamically; SIGINT or SIGTERM stops the server after
    the requests in flight are answered (needs qsenn[serve])."""
    from qsenn_runtime.serving.server import require_serving_stack
    from qsenn_runtime.serving.server import serve as run_server

    require_serving_stack()  # before minutes of loading: a missing extra answers at once
    from qsenn_runtime.serving.endpoint import ServingLimits

    limits = ServingLimits(
        max_batch=max_batch,
        batch_window_ms=batch_window_ms,
        max_body_bytes=max_body_bytes,
        timeout_s=timeout,
        instances=instances,
    )
    limits.validate()
    chosen = _model_names(model_paths, names)
    token = _read_token(token_file)
    budget = _image_budget(max_image_pixels, max_image_bytes)
    sessions = instances if session_per_instance else 1
    if threads is None and sessions > 1:  # the usable CPUs split between the sessions, as one per core
        threads = max(1, len(os.sched_getaffinity(0)) // sessions)
    models = [
        (
            name,
            [_load_model(path, provider, threads=threads, spin=spin, arena=arena, **budget) for _ in range(sessions)],
        )
        for name, path in zip(chosen, model_paths)
    ]
    run_server(models, host=host, port=port, limits=limits, token=token, access_log=access_log, echo=_echo_flushed)


def _echo_flushed(message: str) -> None:
    click.echo(message)
    sys.stdout.flush()  # a supervisor or test reading the pipe sees each line at once


# ---- extras: a runtime-only install (`pip install 'qsenn[cpu]'`) has no torch and no onnx -------

# The extras each command needs beyond the base install (numpy, Pillow, click); `qsenn --help`
# shows them, and running a command without them prints the pip line instead of a traceback.
COMMAND_EXTRAS: dict[str, tuple[str, ...]] = {
    "train": ("train",),
    "evaluate": ("train",),
    "data examples": ("train",),
    "export": ("train", "export"),
    "import-reference": ("train",),
    "atlas": ("train",),
    "validate-run": ("train", "export", "plot"),
    "bench": ("train", "export"),
    "predict": ("cpu",),
    "explain": ("cpu", "plot"),
    "report": ("cpu",),
    "serve": ("cpu", "serve"),
}
# The extra that brings each optional top-level module.
MODULE_EXTRAS = {
    "torch": "train",
    "torchvision": "train",
    "glm_saga": "train",
    "tqdm": "train",
    "scipy": "train",
    "onnx": "export",
    "onnxscript": "export",
    "onnxruntime": "cpu",
    "matplotlib": "plot",
    "tensorrt": "trt",
    "cuda": "trt",
    "transformers": "concepts",
    "starlette": "serve",
    "uvicorn": "serve",
}


def _extras_tag(extras: tuple[str, ...]) -> str:
    return f"[{','.join(extras)}]"


def _mark_commands_that_need_extras() -> None:
    for name, extras in COMMAND_EXTRAS.items():
        group: click.Group = qsenn
        *parents, leaf = name.split()
        for parent in parents:  # the data group
            subgroup = group.commands[parent]
            assert isinstance(subgroup, click.Group)
            group = subgroup
        command = group.commands[leaf]
        tag = _extras_tag(extras)
        command.short_help = f"{tag} {command.get_short_help_str(limit=57 - len(tag))}"


_mark_commands_that_need_extras()
qsenn.help = (
    f"{qsenn.help}\n\nA command marked [train], [export], … needs that extra: pip install 'qsenn[train,export]' "
    "(the runtime alone, pip install 'qsenn[cpu]', runs predict and inspect)."
)


def missing_extra_line(exc: ModuleNotFoundError, argv: list[str]) -> str:
    """One line for a command run without the extra that brings `exc.name`."""
    module = (exc.name or "").split(".")[0]
    extra = MODULE_EXTRAS.get(module)
    if extra is None:  # not an optional dependency: a broken install
        return f"{exc} (a dependency of qsenn is missing; reinstall qsenn)"
    words = [word for word in argv if not word.startswith("-")][:2]
    command = next((" ".join(words[:n]) for n in (2, 1) if " ".join(words[:n]) in COMMAND_EXTRAS), None)
    extras = COMMAND_EXTRAS.get(command or "", ())
    extras = extras if extra in extras else (extra,)
    what = f"`qsenn {command}`" if command else "this command"
    return f"{what} needs {module}, which is not installed: pip install 'qsenn[{','.join(extras)}]'"


# ---- entry point ------------------------------------------------------------------------


def user_errors() -> tuple[type[Exception], ...]:
    """Each package's own error base class: a problem the user can fix, printed as one line."""
    from qsenn_bench.errors import BenchError
    from qsenn_export.errors import ExportError
    from qsenn_runtime.errors import QsennRuntimeError
    from qsenn_train.errors import QsennError

    return (QsennError, ExportError, QsennRuntimeError, BenchError)


def main() -> None:
    try:
        qsenn.main(standalone_mode=False)
    except (click.exceptions.Abort, KeyboardInterrupt) as exc:
        if isinstance(exc.__cause__, EOFError):  # click turns an EOFError from any depth into Abort
            from qsenn_runtime.errors import first_line

            _fail(
                f"a file ended unexpectedly ({first_line(exc.__cause__)}): one this command read is empty or truncated"
            )
        if sys.argv[1:2] == ["train"]:
            _fail("interrupted; finished epochs and stages are saved, rerun with --resume to continue")
        _fail("interrupted")
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except ModuleNotFoundError as exc:  # before user_errors(): it imports torch-side packages
        _fail(missing_extra_line(exc, sys.argv[1:]))
    except user_errors() as exc:
        if getattr(exc, "quiet", False):  # another rank of the job printed the cause
            sys.exit(getattr(exc, "exit_code", 2))
        _fail(str(exc))
    except Exception as exc:
        if _job_rank() is None:
            raise
        _fail(_rank_stopped(exc))


if __name__ == "__main__":
    main()
