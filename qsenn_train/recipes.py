"""Recipes: named, frozen configurations. Every number of the method lives here.

`paper` holds the numbers of the specification (qsenn-algorithm.md); `demo` and `tiny`
scale the same pipeline down for the embedded dataset and for tests.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from .data.synth import SynthSpec
from .errors import QsennError
from .names import AUGMENTATIONS, CROP_GT_DATASETS, PATH_SOLVERS, SMALL_STEM_ARCHS, TABLE_DTYPES


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
    head_lr: float | None = None  # dense training: the head gets its own learning rate


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
    lam_factor: float = 1.0  # selection only: every λ is scaled by 0.1 (odd-F)


@dataclass(frozen=True)
class FinetuneSettings:
    """Q-SENN's iterative fine-tuning (spec §9.2): call n ≥ 2 gets lr·decay^(n−2)."""

    schedule: SGDSchedule
    iterations: int = 4
    short_epochs: int = 10  # epochs of every iteration but the last
    lr_decay_per_iteration: float = 0.9
    dropout: float = 0.1


# Recipe fields that change the data a run sees beyond the dataset's name (see data_variant).
DATA_VARIANT_FIELDS = ("augment", "limit_train", "limit_test")
# Recipe fields that change how the regularisation path is solved (see solver_variant).
SOLVER_VARIANT_FIELDS = ("path_solver", "saga_table_dtype")


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
    fdl_beta: float = 0.196  # spec §2 (only defined for ResNet-50 there; used for all)
    dense_dropout: float = 0.2
    eval_every: int = 5  # test pass when epoch % eval_every == 0 (reporting only)
    extraction_batch_size: int = 16
    val_fraction: float = 0.1
    metrics_batch_size: int = 100
    sldd_drop_rate: float = 0.5
    reference_compat: bool = False  # reproduce the original code's quirks (spec §13)
    workers: int = 2
    synth: SynthSpec = field(default_factory=SynthSpec)  # the embedded dataset's size
    augment: str = "paper"  # training augmentation (names.AUGMENTATIONS)
    # Smoke runs: this many training / test images, evenly spaced over the split (None: all).
    limit_train: int | None = None
    limit_test: int | None = None
    # The regularisation path's solver (names.PATH_SOLVERS) and its SAGA table: dtype
    # (names.TABLE_DTYPES) and device (None: the solver's; "cpu" keeps it off the GPU).
    path_solver: str = "glm-saga"
    saga_table_dtype: str = "float32"
    saga_table_device: str | None = None

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> Recipe:
        nested = {
            "dense": SGDSchedule,
            "sldd_finetune": SGDSchedule,
            "selection": SagaSettings,
            "glm_path": SagaSettings,
            "synth": SynthSpec,
        }
        kwargs = {k: (nested[k](**v) if k in nested else v) for k, v in d.items()}
        ft = dict(d["finetune"])
        ft["schedule"] = SGDSchedule(**ft["schedule"])
        kwargs["finetune"] = FinetuneSettings(**ft)
        return cls(**kwargs)

    def replace(self, **changes) -> Recipe:
        return dataclasses.replace(self, **changes)

    def batch_sizes(self) -> dict[str, int]:
        """The global batch of every SGD schedule of this recipe's model type."""
        sizes = {"dense training": self.dense.batch_size} if self.do_dense else {}
        if self.model_type == "sldd":
            return {**sizes, "SLDD fine-tuning": self.sldd_finetune.batch_size}
        return {**sizes, "fine-tuning": self.finetune.schedule.batch_size}

    def data_variant(self) -> dict:
        """The data settings that differ from the full dataset under the paper's augmentation.

        Stage keys and the run directory's name carry them only when set, so the results of
        runs made before these settings existed stay valid.
        """
        return self._changed(DATA_VARIANT_FIELDS)

    def solver_variant(self) -> dict:
        """The path-solver settings that differ from the defaults (the sparsification stages'
        keys carry them only when set, so earlier results stay valid)."""
        return self._changed(SOLVER_VARIANT_FIELDS)

    def _changed(self, names: tuple[str, ...]) -> dict:
        defaults = {f.name: f.default for f in dataclasses.fields(self)}
        return {k: getattr(self, k) for k in names if getattr(self, k) != defaults[k]}

    @property
    def subset_tag(self) -> str:
        """`_train300_test100` for a run on a subset (empty for the full dataset): results of
        smoke runs never land in the directory of a full run."""
        return "".join(
            f"_{split}{limit}"
            for split, limit in (("train", self.limit_train), ("test", self.limit_test))
            if limit is not None
        )


# ---- the specification's numbers -------------------------------------------------------

_PAPER_DENSE = SGDSchedule(
    lr=0.005, head_lr=0.01, momentum=0.9, weight_decay=5e-4, step_size=30, gamma=0.4, epochs=150, batch_size=16
)
_PAPER_FINETUNE = SGDSchedule(
    lr=1e-4, momentum=0.95, weight_decay=5e-4, step_size=10, gamma=0.4, epochs=40, batch_size=16
)
_PAPER_SELECTION = SagaSettings(
    alpha=0.8,
    lr=0.1,
    max_epochs=2000,
    tol=1e-4,
    lookbehind=3,
    n_lambdas=100,
    epsilon=0.001,
    batch_size=256,
    lam_factor=0.1,
)
_PAPER_GLM_PATH = SagaSettings(
    alpha=0.99, lr=0.1, max_epochs=2000, tol=1e-4, lookbehind=5, n_lambdas=100, epsilon=0.001, batch_size=256
)

PAPER = Recipe(
    name="paper",
    dataset="CUB2011",
    arch="resnet50",
    pretrained=True,
    img_size=448,
    dense=_PAPER_DENSE,
    finetune=FinetuneSettings(schedule=_PAPER_FINETUNE),
    sldd_finetune=_PAPER_FINETUNE,
    selection=_PAPER_SELECTION,
    glm_path=_PAPER_GLM_PATH,
    workers=8,
)

# ImageNet (spec §3.3, odd-L fixed): 224 px, batch 64, the pretrained model is the dense
# model, fine-tuning lr 0.005·0.4⁴.
_IMAGENET_FINETUNE = dataclasses.replace(_PAPER_FINETUNE, lr=1.28e-4, batch_size=64)
PAPER_IMAGENET = PAPER.replace(
    name="paper-imagenet",
    dataset="ImageNet",
    img_size=224,
    do_dense=False,
    dense=dataclasses.replace(_PAPER_DENSE, batch_size=64),
    finetune=FinetuneSettings(schedule=_IMAGENET_FINETUNE),
    sldd_finetune=_IMAGENET_FINETUNE,
    extraction_batch_size=64,
)

# ---- scaled-down recipes -----------------------------------------------------------------

# The embedded synthetic dataset on 2 CPU cores: a small ResNet from scratch, short schedules.
DEMO = PAPER.replace(
    name="demo",
    dataset="synth",
    arch="resnet18",
    pretrained=False,
    img_size=64,
    dense=dataclasses.replace(_PAPER_DENSE, lr=0.05, head_lr=0.05, epochs=16, step_size=6, batch_size=32),
    # The paper's shape at a fifth of the length: three short rounds that never reach their
    # step (odd-U), then a round four steps long.
    finetune=FinetuneSettings(
        schedule=dataclasses.replace(_PAPER_FINETUNE, lr=1e-3, epochs=8, step_size=2, batch_size=32), short_epochs=2
    ),
    sldd_finetune=dataclasses.replace(_PAPER_FINETUNE, lr=1e-3, epochs=8, step_size=2, batch_size=32),
    selection=dataclasses.replace(_PAPER_SELECTION, max_epochs=200),
    glm_path=dataclasses.replace(_PAPER_GLM_PATH, max_epochs=200),
    n_features=50,
    n_per_class=5,
    eval_every=4,
    extraction_batch_size=64,
    workers=0,  # decoding 64 px PNGs is cheap; worker processes only compete for 2 cores
    # Colour is a class attribute of the embedded dataset, and TrivialAugmentWide's photometric
    # operations change it: with the flip (and padded crop) only, the dense model is more accurate
    # and the features' attribute names more precise, on two seeds (docs/atlas.md).
    augment="flip",
)

# Unit and integration tests: a 1-block-per-stage ResNet at 32 px on a handful of images.
TINY = DEMO.replace(
    name="tiny",
    arch="resnet10",
    augment="paper",  # tests go through §3.2's whole training transform
    img_size=32,
    dense=dataclasses.replace(DEMO.dense, epochs=2, step_size=1, batch_size=8),
    finetune=FinetuneSettings(
        schedule=dataclasses.replace(DEMO.finetune.schedule, epochs=2, step_size=1, batch_size=8), short_epochs=1
    ),
    sldd_finetune=dataclasses.replace(DEMO.sldd_finetune, epochs=1, batch_size=8),
    selection=dataclasses.replace(_PAPER_SELECTION, max_epochs=30, n_lambdas=20),
    glm_path=dataclasses.replace(_PAPER_GLM_PATH, max_epochs=30, n_lambdas=20),
    n_features=6,
    n_per_class=2,
    eval_every=1,
    extraction_batch_size=16,
    workers=0,
    synth=SynthSpec(n_classes=4, train_per_class=8, test_per_class=4, image_size=32),
)

# Fashion-MNIST (`make validate`): all of it — dense, 4 Q-SENN rounds, SLDD, metrics, export and
# the runtime over the 10 000 test images — in under two hours on 2 CPU cores.
# * resnet18s at the native 28 px: the 3×3 stride-1 stem gives 2×2 last-stage maps (the FDL and
#   diversity@5 need positions); resnet18 at 64 px costs 1.4× that, 4×4 maps (stride-1 layer4) 2.4×.
# * "flip", lr 0.02: test top-1 after 3 epochs on 12 000 of the images (lr ×0.4 per epoch):
#   lr 0.05: flip 87.8 %, §3.2's augmentation 85.6 %, 4-px padded crop + flip 82.7 %;
#   lr 0.02: flip 88.8 %, §3.2's 87.8 %; lr 0.01: flip about as 0.02; lr 0.1 barely learns.
# * Measured by `make validate` on 2 cores of an AMD EPYC (docs/validation.md): 4.2 min per
#   training epoch, ~1.9 min per feature extraction and per glm-saga path (25 λ ≤ 20 epochs
#   each: the paper's 100 λ × ≤ 2000 cost ~15 min per path for the same solution within 0.1
#   point), under a minute per selection; dense 41.7 min (its first epoch slowed by other
#   work), SLDD 17.8, Q-SENN 46.2, validation 0.6: 108 min in all, ~97 min on a quiet machine.
FASHION_MNIST = DEMO.replace(
    name="fashion-mnist",
    dataset="fashion-mnist",
    arch="resnet18s",
    img_size=28,
    augment="flip",
    dense=dataclasses.replace(_PAPER_DENSE, lr=0.02, head_lr=0.02, epochs=6, step_size=2, batch_size=64),
    # The paper's fine-tuning lr is 1/50 of its dense lr; rounds of one epoch get 1/20.
    finetune=FinetuneSettings(
        schedule=dataclasses.replace(_PAPER_FINETUNE, lr=1e-3, epochs=2, step_size=1, batch_size=64), short_epochs=1
    ),
    sldd_finetune=dataclasses.replace(_PAPER_FINETUNE, lr=1e-3, epochs=2, step_size=1, batch_size=64),
    glm_path=dataclasses.replace(_PAPER_GLM_PATH, n_lambdas=25, max_epochs=20),
    eval_every=2,
    extraction_batch_size=256,
)

RECIPES = {r.name: r for r in (PAPER, PAPER_IMAGENET, DEMO, TINY, FASHION_MNIST)}

# The recipe a dataset gets when none is named.
DEFAULT_RECIPE_FOR_DATASET = {"synth": "demo", "ImageNet": "paper-imagenet", "fashion-mnist": "fashion-mnist"}


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
    if not recipe.fdl_beta >= 0:  # also refuses NaN
        raise QsennError(f"--fdl-beta must be ≥ 0, not {recipe.fdl_beta}")
    # Total stride 32 (16 for the small-image stem): anything smaller leaves no feature map.
    min_size = 16 if recipe.arch in SMALL_STEM_ARCHS else 32
    if recipe.img_size < min_size:
        raise QsennError(f"--img-size {recipe.img_size} is too small for {recipe.arch}; use {min_size} or more")
    if recipe.augment not in AUGMENTATIONS:
        raise QsennError(f"unknown augmentation {recipe.augment!r}; choose one of {', '.join(AUGMENTATIONS)}")
    if recipe.dataset == "ImageNet" and recipe.augment != "paper":
        raise QsennError("ImageNet has its own training augmentation (spec §3.3); drop --augment")
    for flag, limit in (("--limit-train", recipe.limit_train), ("--limit-test", recipe.limit_test)):
        if limit is not None and limit < 2:
            raise QsennError(f"{flag} {limit} is too small; use at least 2 images")
    if recipe.dataset == "ImageNet" and recipe.img_size != 224:
        raise QsennError("ImageNet runs at 224 px (spec §3.3); drop --img-size or set it to 224")
    check_path_solver(recipe.path_solver, recipe.saga_table_dtype)
    if recipe.crop_gt and recipe.dataset not in CROP_GT_DATASETS:
        raise QsennError(f"--crop-gt exists only for {' and '.join(CROP_GT_DATASETS)}")


def check_path_solver(solver: str, table_dtype: str) -> None:
    if solver not in PATH_SOLVERS:
        raise QsennError(f"unknown path solver {solver!r}; choose one of {', '.join(PATH_SOLVERS)}")
    if table_dtype not in TABLE_DTYPES:
        raise QsennError(f"unknown SAGA table dtype {table_dtype!r}; choose one of {', '.join(TABLE_DTYPES)}")
    if solver == "glm-saga" and table_dtype != "float32":
        raise QsennError(
            f"glm-saga keeps its SAGA table in float32; add --path-solver matrix for --saga-table-dtype {table_dtype}"
        )
