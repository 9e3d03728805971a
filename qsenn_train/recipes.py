"""Recipes: named, frozen configurations. Every number of the method lives here.

`paper` holds the numbers of the specification (qsenn-algorithm.md); `demo` and `tiny`
scale the same pipeline down for the embedded dataset and for tests.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from .data.synth import SynthSpec
from .errors import QsennError


@dataclass(frozen=True)
class SGDSchedule:
    """SGD with StepLR, stepped once per epoch (spec §3.1, §9.2)."""

    lr: float
    momentum: float
    weight_decay: float
    step_size: int
    gamma: float
    epochs: int
    batch_size: int
    head_lr: float | None = None   # dense training: the head gets its own learning rate


@dataclass(frozen=True)
class SagaSettings:
    """Proximal SAGA over a λ path (spec §5.2 for selection, §6 for the glm-saga path)."""

    alpha: float
    lr: float
    max_epochs: int
    tol: float
    lookbehind: int
    n_lambdas: int
    epsilon: float
    batch_size: int
    lam_factor: float = 1.0   # selection only: every λ is scaled by 0.1 (odd-F)


@dataclass(frozen=True)
class FinetuneSettings:
    """Q-SENN's iterative fine-tuning (spec §9.2): call n ≥ 2 gets lr·decay^(n−2)."""

    schedule: SGDSchedule
    iterations: int = 4
    short_epochs: int = 10        # epochs of every iteration but the last
    lr_decay_per_iteration: float = 0.9
    dropout: float = 0.1


@dataclass(frozen=True)
class Recipe:
    name: str
    dataset: str
    arch: str
    pretrained: bool
    img_size: int
    dense: SGDSchedule
    finetune: FinetuneSettings
    sldd_finetune: SGDSchedule
    selection: SagaSettings
    glm_path: SagaSettings
    model_type: str = "qsenn"
    n_features: int = 50
    n_per_class: int = 5
    reduced_strides: bool = False
    crop_gt: bool = False
    do_dense: bool = True
    fdl_beta: float = 0.196          # spec §2 (only defined for ResNet-50 there; used for all)
    dense_dropout: float = 0.2
    eval_every: int = 5              # test pass when epoch % eval_every == 0 (reporting only)
    extraction_batch_size: int = 16
    val_fraction: float = 0.1
    metrics_batch_size: int = 100
    sldd_drop_rate: float = 0.5
    reference_compat: bool = False   # reproduce the original code's quirks (spec §13)
    workers: int = 2
    synth: SynthSpec = field(default_factory=SynthSpec)   # the embedded dataset's size

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> "Recipe":
        nested = {
            "dense": SGDSchedule, "sldd_finetune": SGDSchedule,
            "selection": SagaSettings, "glm_path": SagaSettings, "synth": SynthSpec,
        }
        kwargs = {k: (nested[k](**v) if k in nested else v) for k, v in d.items()}
        ft = dict(d["finetune"])
        ft["schedule"] = SGDSchedule(**ft["schedule"])
        kwargs["finetune"] = FinetuneSettings(**ft)
        return cls(**kwargs)

    def replace(self, **changes) -> "Recipe":
        return dataclasses.replace(self, **changes)


# ---- the specification's numbers -------------------------------------------------------

_PAPER_DENSE = SGDSchedule(lr=0.005, head_lr=0.01, momentum=0.9, weight_decay=5e-4,
                           step_size=30, gamma=0.4, epochs=150, batch_size=16)
_PAPER_FINETUNE = SGDSchedule(lr=1e-4, momentum=0.95, weight_decay=5e-4,
                              step_size=10, gamma=0.4, epochs=40, batch_size=16)
_PAPER_SELECTION = SagaSettings(alpha=0.8, lr=0.1, max_epochs=2000, tol=1e-4, lookbehind=3,
                                n_lambdas=100, epsilon=0.001, batch_size=256, lam_factor=0.1)
_PAPER_GLM_PATH = SagaSettings(alpha=0.99, lr=0.1, max_epochs=2000, tol=1e-4, lookbehind=5,
                               n_lambdas=100, epsilon=0.001, batch_size=256)

PAPER = Recipe(
    name="paper", dataset="CUB2011", arch="resnet50", pretrained=True, img_size=448,
    dense=_PAPER_DENSE, finetune=FinetuneSettings(schedule=_PAPER_FINETUNE),
    sldd_finetune=_PAPER_FINETUNE, selection=_PAPER_SELECTION, glm_path=_PAPER_GLM_PATH,
    workers=8,
)

# ImageNet (spec §3.3, odd-L fixed): 224 px, batch 64, the pretrained model is the dense
# model, fine-tuning lr 0.005·0.4⁴.
_IMAGENET_FINETUNE = dataclasses.replace(_PAPER_FINETUNE, lr=1.28e-4, batch_size=64)
PAPER_IMAGENET = PAPER.replace(
    name="paper-imagenet", dataset="ImageNet", img_size=224, do_dense=False,
    dense=dataclasses.replace(_PAPER_DENSE, batch_size=64),
    finetune=FinetuneSettings(schedule=_IMAGENET_FINETUNE), sldd_finetune=_IMAGENET_FINETUNE,
    extraction_batch_size=64,
)

# ---- scaled-down recipes -----------------------------------------------------------------

# The embedded synthetic dataset on 2 CPU cores: a small ResNet from scratch, short schedules.
DEMO = PAPER.replace(
    name="demo", dataset="synth", arch="resnet18", pretrained=False, img_size=64,
    dense=dataclasses.replace(_PAPER_DENSE, lr=0.05, head_lr=0.05, epochs=24, step_size=8,
                              batch_size=32),
    finetune=FinetuneSettings(
        schedule=dataclasses.replace(_PAPER_FINETUNE, lr=1e-3, epochs=8, step_size=4,
                                     batch_size=32),
        short_epochs=3),
    sldd_finetune=dataclasses.replace(_PAPER_FINETUNE, lr=1e-3, epochs=8, step_size=4,
                                      batch_size=32),
    selection=dataclasses.replace(_PAPER_SELECTION, max_epochs=200),
    glm_path=dataclasses.replace(_PAPER_GLM_PATH, max_epochs=200),
    n_features=50, n_per_class=5, eval_every=4, extraction_batch_size=64, workers=2,
)

# Unit and integration tests: a 1-block-per-stage ResNet at 32 px on a handful of images.
TINY = DEMO.replace(
    name="tiny", arch="resnet10", img_size=32,
    dense=dataclasses.replace(DEMO.dense, epochs=2, step_size=1, batch_size=8),
    finetune=FinetuneSettings(
        schedule=dataclasses.replace(DEMO.finetune.schedule, epochs=2, step_size=1,
                                     batch_size=8),
        short_epochs=1),
    sldd_finetune=dataclasses.replace(DEMO.sldd_finetune, epochs=1, batch_size=8),
    selection=dataclasses.replace(_PAPER_SELECTION, max_epochs=30, n_lambdas=20),
    glm_path=dataclasses.replace(_PAPER_GLM_PATH, max_epochs=30, n_lambdas=20),
    n_features=6, n_per_class=2, eval_every=1, extraction_batch_size=16, workers=0,
    synth=SynthSpec(n_classes=4, train_per_class=8, test_per_class=4, image_size=32),
)

RECIPES = {r.name: r for r in (PAPER, PAPER_IMAGENET, DEMO, TINY)}

# The recipe a dataset gets when none is named.
DEFAULT_RECIPE_FOR_DATASET = {"synth": "demo", "ImageNet": "paper-imagenet"}


def get_recipe(name: str) -> Recipe:
    try:
        return RECIPES[name]
    except KeyError:
        raise QsennError(f"unknown recipe {name!r}; choose one of {', '.join(RECIPES)}") from None


def default_recipe_name(dataset: str) -> str:
    return DEFAULT_RECIPE_FOR_DATASET.get(dataset, "paper")


def resolve_recipe(name: str | None, dataset: str | None = None, **overrides) -> Recipe:
    """The named recipe (or the dataset's default) with the given non-None fields replaced."""
    base = get_recipe(name or default_recipe_name(dataset or "synth"))
    changes = {k: v for k, v in overrides.items() if v is not None}
    if dataset is not None:
        changes["dataset"] = dataset
    recipe = base.replace(**changes)
    validate(recipe)
    return recipe


def validate(recipe: Recipe) -> None:
    """Refuse combinations the method does not define, with the fix in the message."""
    if recipe.model_type not in ("qsenn", "sldd"):
        raise QsennError(f"unknown model type {recipe.model_type!r}; choose qsenn or sldd")
    if recipe.n_features < 1 or recipe.n_per_class < 1:
        raise QsennError("--n-features and --n-per-class must be at least 1")
    if recipe.img_size < 32:
        raise QsennError(f"--img-size {recipe.img_size} is too small for a ResNet; use 32 or more")
    if recipe.dataset == "ImageNet" and recipe.img_size != 224:
        raise QsennError("ImageNet runs at 224 px (spec §3.3); drop --img-size or set it to 224")
    if recipe.crop_gt and recipe.dataset not in ("CUB2011", "TravelingBirds"):
        raise QsennError("--crop-gt exists only for CUB2011 and TravelingBirds")
