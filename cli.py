"""The `qsenn` command. Each subcommand imports its package lazily, so that commands of the
runtime never import torch and `qsenn --help` answers at once."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from qsenn_train.names import ARCHS, DATASETS, MODEL_TYPES

DEFAULT_DATA_ROOT = Path(os.environ.get("QSENN_DATA_ROOT", Path.home() / "tmp" / "Datasets"))


def _fail(message: str) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(2)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
def qsenn() -> None:
    """Q-SENN and SLDD: train, export and serve self-explaining image classifiers."""


# ---- train ------------------------------------------------------------------------------

@qsenn.command()
@click.option("--dataset", type=click.Choice(DATASETS), default=None,
              help="Dataset (default: the recipe's; the embedded synthetic dataset for the demo recipe).")
@click.option("--recipe", default=None, metavar="NAME",
              help="Named configuration: paper (the specification's numbers), paper-imagenet, demo, "
                   "tiny. Default: demo for synth, paper-imagenet for ImageNet, paper otherwise.")
@click.option("--arch", type=click.Choice(ARCHS), default=None, help="Backbone (recipe default).")
@click.option("--model-type", type=click.Choice(MODEL_TYPES), default=None,
              help="qsenn (4 quantised fine-tuning rounds) or sldd (one pruned fine-tuning).")
@click.option("--seed", type=int, default=None, help="Run seed; random in [0, 10^6) if omitted. Names the run directory.")
@click.option("--dense/--no-dense", "do_dense", default=None,
              help="Train the dense model (off: use the initial/pretrained network as the dense model).")
@click.option("--crop-gt/--no-crop-gt", default=None, help="Use the ground-truth-cropped CUB/TravelingBirds images.")
@click.option("--n-features", type=int, default=None, help="Number of selected features F (paper: 50).")
@click.option("--n-per-class", type=int, default=None, help="Average features per class r (paper: 5).")
@click.option("--img-size", type=int, default=None, help="Input size in pixels (paper: 448).")
@click.option("--reduced-strides/--no-reduced-strides", default=None,
              help="Stride 1 in the first blocks of layer3 and layer4 (feature maps 4× larger per side).")
@click.option("--pretrained/--no-pretrained", default=None,
              help="Start from torchvision's ImageNet weights (must be in the torch hub cache; nothing is downloaded).")
@click.option("--reference-compat/--no-reference-compat", default=None,
              help="Reproduce the original code's quirks (spec §13) instead of the fixes.")
@click.option("--data-root", type=click.Path(path_type=Path), default=DEFAULT_DATA_ROOT, show_default=True,
              help="Folder holding the datasets (or the dataset folder itself); env QSENN_DATA_ROOT.")
@click.option("--out", type=click.Path(path_type=Path), default=Path("runs"), show_default=True,
              help="Runs go to OUT/<arch>/<dataset>/<seed>/.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--amp", is_flag=True, help="Mixed precision (fp16 autocast) on CUDA.")
@click.option("--channels-last", is_flag=True, help="NHWC memory format on CUDA.")
@click.option("--workers", type=int, default=None, help="Data-loader worker processes (recipe default).")
@click.option("--resume", is_flag=True, help="Continue a run: finished stages are reused, a killed stage restarts from its last checkpoint.")
@click.option("--overwrite", is_flag=True, help="Delete the run directory first.")
def train(dataset, recipe, arch, model_type, seed, do_dense, crop_gt, n_features, n_per_class, img_size,
          reduced_strides, pretrained, reference_compat, data_root, out, device, amp, channels_last,
          workers, resume, overwrite) -> None:
    """Train a Q-SENN (or SLDD) model: dense training with the Feature Diversity Loss, then
    the sparsification stages. Every stage result is saved atomically in the run directory."""
    from qsenn_train.pipeline import RunOptions, train as run_training
    from qsenn_train.recipes import resolve_recipe

    resolved = resolve_recipe(recipe, dataset, arch=arch, model_type=model_type, do_dense=do_dense,
                              crop_gt=crop_gt, n_features=n_features, n_per_class=n_per_class,
                              img_size=img_size, reduced_strides=reduced_strides, pretrained=pretrained,
                              reference_compat=reference_compat, workers=workers)
    opts = RunOptions(seed=seed, data_root=data_root, out=out, device=device, amp=amp,
                      channels_last=channels_last, resume=resume, overwrite=overwrite)
    run_training(resolved, opts, echo=click.echo)


# ---- data -------------------------------------------------------------------------------

@qsenn.group()
def data() -> None:
    """Dataset utilities."""


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

    spec = SynthSpec(n_classes=n_classes, train_per_class=train_per_class,
                     test_per_class=test_per_class, image_size=image_size, seed=seed)
    folder = generate(spec, out)
    click.echo(f"wrote {n_classes * (train_per_class + test_per_class)} images to {folder}")


# ---- export (qsenn_export) ---------------------------------------------------------------


# ---- runtime (qsenn_runtime; never imports torch) -----------------------------------------


# ---- entry point ------------------------------------------------------------------------

def main() -> None:
    from qsenn_train.errors import QsennError

    try:
        qsenn.main(standalone_mode=False)
    except (click.exceptions.Abort, KeyboardInterrupt):
        _fail("interrupted; finished epochs and stages are saved, rerun with --resume to continue")
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except QsennError as exc:
        _fail(str(exc))


if __name__ == "__main__":
    main()
