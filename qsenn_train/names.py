"""Names the CLI offers, free of torch so that `qsenn --help` answers at once.

The registries in model.py and data/layouts.py are keyed by exactly these names (tested).
"""

DATASETS = ("synth", "CUB2011", "TravelingBirds", "StanfordCars", "ImageNet", "folder", "fashion-mnist")
# The datasets with ground-truth-cropped images (--crop-gt), resized to a square (spec §3.2).
CROP_GT_DATASETS = ("CUB2011", "TravelingBirds")
ARCHS = ("resnet10", "resnet18", "resnet18s", "resnet34", "resnet50")
# Small-image variants: a 3×3 stride-1 stem conv instead of 7×7 stride 2 (total stride 16, not 32).
SMALL_STEM_ARCHS = ("resnet18s",)
MODEL_TYPES = ("qsenn", "sldd")
# Training augmentation: spec §3.2 in full, or "flip": its resize/crop and horizontal flip only,
# without colour jitter and TrivialAugmentWide (whose shifts of up to 32 px and shears of up
# to 0.99 ruin 28 px images and slow a schedule of a few epochs); "flip-gray": the flip, and
# half of the images in grey (colour no longer names a class alone; docs/atlas.md measures it).
AUGMENTATIONS = ("paper", "flip", "flip-gray")
# The regularisation path's solver (spec §6): the glm-saga package, or the same SAGA with the
# selection's matrix-form step (qsenn_train/saga_path.py).
PATH_SOLVERS = ("glm-saga", "matrix")
# dtype of the SAGA residual table (N×K; bfloat16/float16 halve it, matrix solver only).
TABLE_DTYPES = ("float32", "bfloat16", "float16")
# How long the other ranks of a distributed job wait for rank 0 to finish a stage it runs alone
# (selection, the glm-saga path, metrics); `qsenn train --stage-timeout`. The ImageNet path takes hours.
DEFAULT_STAGE_TIMEOUT_S = 4 * 3600
# The exit status of a rank that stopped because rank 0 failed in a stage it ran for all (the
# launcher then names rank 0 alone).
FOLLOWER_EXIT_CODE = 3
