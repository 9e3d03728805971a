"""Loaders for the on-disk layouts of spec §11, the user's class-per-folder data and Fashion-MNIST.

Every loader returns (train, test, info) with no transform set; any problem with the files
is one QsennError line naming the file, where it was looked for and what to pass instead.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence, Sized
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np

from ..errors import QsennError
from ..names import CROP_GT_DATASETS
from .base import RESIZE_IMAGENET, RESIZE_SHORTER, RESIZE_SQUARE, ArrayImageDataset, DatasetInfo, ImageListDataset
from .cub_layout import (
    ATTRIBUTE_LABELS_FILE,
    ATTRIBUTE_NAMES_FILE,
    CLASSES_FILE,
    CUB_DIRNAME,
    IMAGES_DIR,
    IMAGES_FILE,
    LABELS_FILE,
    SPLIT_FILE,
    SYNTH_INFO_FILE,
)
from .idx import read_idx

Splits = tuple[ImageListDataset, ImageListDataset, DatasetInfo]
V = TypeVar("V")
RGB = tuple[float, float, float]

# Normalisation constants of spec §11.
CUB_MEAN, CUB_STD = (0.4853, 0.4964, 0.4295), (0.2300, 0.2258, 0.2625)
TRAVELING_BIRDS_MEAN, TRAVELING_BIRDS_STD = (0.4584, 0.4369, 0.3957), (0.2610, 0.2569, 0.2722)
STANFORD_CARS_MEAN, STANFORD_CARS_STD = (0.4593, 0.4466, 0.4453), (0.2920, 0.2910, 0.2988)
# Applied to ImageNet too, which the reference forgets (odd-L, fixed).
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
# Pixel statistics of the 60 000 Fashion-MNIST training images (grey, so equal per channel).
FASHION_MNIST_MEAN, FASHION_MNIST_STD = (0.2860,) * 3, (0.3530,) * 3

FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
# Where Debian's dataset-fashion-mnist package installs the files.
SYSTEM_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")

# The same extensions torchvision's ImageFolder accepts, compared case-insensitively.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")

_FIRST_IMAGES_CHECKED = 3
_INCOMPLETE = "the dataset folder is incomplete: restore it or pass --data-root pointing at a complete copy"


# ---------------------------------------------------------------- locating folders and files


def _find_dataset_dir(
    dataset: str, data_root: Path, nested: str, markers: Sequence[str], extra_candidates: Sequence[Path] = ()
) -> Path:
    """The first of data_root/nested, data_root (and extras) that holds one of `markers`."""
    candidates = [data_root / nested, data_root, *extra_candidates]
    for folder in candidates:
        if any((folder / marker).exists() for marker in markers):
            return folder
    where = " or ".join(str(c) for c in candidates)
    if not data_root.is_dir():
        where += f" ({data_root} does not exist)"
    raise QsennError(
        f"{dataset}: {markers[0]} not found in {where}; pass --data-root pointing at "
        f"the folder that holds {nested} (or at {Path(nested).name} itself)"
    )


def _require(dataset: str, path: Path) -> Path:
    """A file or folder the layout needs beside the one that located the dataset."""
    if not path.exists():
        raise QsennError(f"{dataset}: {path.name} not found in {path.parent}; {_INCOMPLETE}")
    return path


def _check_first_images(dataset: str, samples: Sequence[tuple[str, int]]) -> None:
    """Catch a wrong image folder at load time instead of in the first training batch."""
    for path, _ in samples[:_FIRST_IMAGES_CHECKED]:
        if not os.path.isfile(path):
            raise QsennError(f"{dataset}: image file {path} not found; {_INCOMPLETE}")


def _require_nonempty(dataset: str, split: str, samples: Sized, source: str) -> None:
    if len(samples) == 0:  # also for numpy label arrays
        raise QsennError(f"{dataset}: the {split} split is empty ({source}); {_INCOMPLETE}")


# ---------------------------------------------------------------- CUB-200-2011 metadata


class _BadValue(ValueError):
    """A field that parses but is out of range; its message says why."""


def _read_id_table(dataset: str, path: Path, layout: str, parse_value: Callable[[str], V]) -> dict[int, V]:
    """Lines `<id> <value>` of a CUB metadata file, keyed by id, in file order."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise QsennError(f"{dataset}: {path} is not UTF-8 text ({exc}); re-extract the dataset") from None
    table: dict[int, V] = {}
    for line_no, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        fields = line.split(maxsplit=1)
        try:
            if len(fields) != 2:
                raise ValueError
            key, value = int(fields[0]), parse_value(fields[1].strip())
        except _BadValue as exc:
            raise QsennError(
                f"{dataset}: {path} line {line_no}: {exc}; fix that line or re-extract the dataset"
            ) from None
        except ValueError:
            raise QsennError(
                f"{dataset}: {path} line {line_no} is malformed: expected "
                f"'{layout}', got {line.strip()!r}; fix that line or "
                f"re-extract the dataset"
            ) from None
        if key in table:
            raise QsennError(
                f"{dataset}: {path} line {line_no}: id {key} appears twice; fix that line or re-extract the dataset"
            )
        table[key] = value
    return table


def _read_names(dataset: str, path: Path, layout: str) -> tuple[str, ...]:
    """classes.txt / attributes.txt: ids must run 1..n so that position = id − 1."""
    names = _read_id_table(dataset, path, layout, str)
    if sorted(names) != list(range(1, len(names) + 1)):
        raise QsennError(f"{dataset}: ids in {path} are not 1..{len(names)}; re-extract the dataset")
    return tuple(names[i] for i in range(1, len(names) + 1))


def _class_id_parser(num_classes: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        class_id = int(text)
        if not 1 <= class_id <= num_classes:
            raise _BadValue(f"class id {class_id} outside 1..{num_classes} (classes.txt lists {num_classes} classes)")
        return class_id - 1

    return parse


def _parse_is_train(text: str) -> bool:
    if text not in ("0", "1"):
        raise _BadValue(f"split flag {text!r} is neither 1 (train) nor 0 (test)")
    return text == "1"


@dataclass(frozen=True)
class CubMetadata:
    """The id tables of a CUB_200_2011 folder; class ids already 0-based."""

    root: Path
    rel_paths: dict[int, str]  # image id -> `<class folder>/<file>`
    labels: dict[int, int]
    is_train: dict[int, bool]
    class_names: tuple[str, ...]
    attributes_file: Path | None
    attribute_names: tuple[str, ...]

    def split_ids(self, train: bool) -> list[int]:
        return sorted(i for i, flag in self.is_train.items() if flag == train)


def _attribute_names_file(cub_dir: Path) -> Path | None:
    # The CUB tarball puts attributes.txt beside CUB_200_2011/, not inside it; accept both.
    for candidate in (
        cub_dir / ATTRIBUTE_NAMES_FILE,
        cub_dir / "attributes" / ATTRIBUTE_NAMES_FILE,
        cub_dir.parent / ATTRIBUTE_NAMES_FILE,
    ):
        if candidate.is_file():
            return candidate
    return None


def _check_ids_covered(dataset: str, images_file: Path, ids: dict, other: dict, other_file: Path) -> None:
    missing = sorted(set(ids) - set(other))
    if missing:
        raise QsennError(
            f"{dataset}: image id {missing[0]} of {images_file} has no line in "
            f"{other_file} ({len(missing)} ids missing); re-extract the dataset"
        )


def read_cub_metadata(dataset: str, cub_dir: Path) -> CubMetadata:
    """Parse images.txt, image_class_labels.txt, train_test_split.txt and classes.txt."""
    images_file = _require(dataset, cub_dir / IMAGES_FILE)
    classes_file = _require(dataset, cub_dir / CLASSES_FILE)
    labels_file = _require(dataset, cub_dir / LABELS_FILE)
    split_file = _require(dataset, cub_dir / SPLIT_FILE)

    class_names = _read_names(dataset, classes_file, "<class_id> <class name>")
    rel_paths = _read_id_table(dataset, images_file, "<image_id> <relative path>", str)
    labels = _read_id_table(dataset, labels_file, "<image_id> <class_id>", _class_id_parser(len(class_names)))
    is_train = _read_id_table(dataset, split_file, "<image_id> <1 = train, 0 = test>", _parse_is_train)
    _check_ids_covered(dataset, images_file, rel_paths, labels, labels_file)
    _check_ids_covered(dataset, images_file, rel_paths, is_train, split_file)
    # Ids with a label or split line but no image are ignored: only listed images exist.
    is_train = {i: is_train[i] for i in rel_paths}

    attributes_file = cub_dir / ATTRIBUTE_LABELS_FILE
    names_file = _attribute_names_file(cub_dir)
    return CubMetadata(
        root=cub_dir,
        rel_paths=rel_paths,
        labels=labels,
        is_train=is_train,
        class_names=class_names,
        attributes_file=attributes_file if attributes_file.is_file() else None,
        attribute_names=(_read_names(dataset, names_file, "<attribute_id> <attribute name>") if names_file else ()),
    )


def _cub_info(
    meta: CubMetadata,
    *,
    name: str,
    root: Path,
    class_names: tuple[str, ...],
    mean: RGB | None,
    std: RGB | None,
    crop_gt: bool,
) -> DatasetInfo:
    return DatasetInfo(
        name=name,
        root=str(root),
        class_names=class_names,
        mean=mean,
        std=std,
        # GT crops are resized straight to a square (spec §3.2).
        resize_mode=RESIZE_SQUARE if crop_gt else RESIZE_SHORTER,
        crop_gt=crop_gt,
        attributes_file=None if meta.attributes_file is None else str(meta.attributes_file),
        attribute_names=meta.attribute_names,
    )


# ---------------------------------------------------------------- CUB-200-2011 and its crops


def _cub_split(dataset: str, meta: CubMetadata, train: bool, image_dir: Path) -> ImageListDataset:
    ids = meta.split_ids(train)
    _require_nonempty(
        dataset,
        "train" if train else "test",
        ids,
        f"{meta.root / 'train_test_split.txt'} marks no image as {'1 (train)' if train else '0 (test)'}",
    )
    samples = [(str(image_dir / meta.rel_paths[i]), meta.labels[i]) for i in ids]
    _check_first_images(dataset, samples)
    return ImageListDataset(samples, image_ids=ids)


def load_cub_folder(
    cub_dir: Path, *, name: str, mean: RGB | None, std: RGB | None, crop_dirs: tuple[Path, Path] | None = None
) -> Splits:
    """A folder in the CUB_200_2011 file layout; images from images/, or from the
    (train, test) GT-crop folders `crop_dirs`, which switches to the square resize."""
    meta = read_cub_metadata(name, cub_dir)
    train_dir, test_dir = crop_dirs or (cub_dir / IMAGES_DIR, cub_dir / IMAGES_DIR)
    train = _cub_split(name, meta, True, train_dir)
    test = _cub_split(name, meta, False, test_dir)
    info = _cub_info(
        meta, name=name, root=cub_dir, class_names=meta.class_names, mean=mean, std=std, crop_gt=crop_dirs is not None
    )
    return train, test, info


def _crop_dirs(dataset: str, candidates: Sequence[Path]) -> tuple[Path, Path]:
    """train_cropped/ and test_cropped/ (ProtoTree's preprocessing), in the first candidate
    that has them: the PP… tree of spec §11, or beside the uncropped images."""
    for folder in candidates:
        if (folder / "train_cropped").is_dir():
            return folder / "train_cropped", _require(dataset, folder / "test_cropped")
    where = " or ".join(str(c) for c in candidates)
    raise QsennError(
        f"{dataset}: train_cropped not found in {where}; --crop-gt needs the "
        f"GT-cropped images of ProtoTree's preprocessing there, or drop --crop-gt"
    )


def load_cub(data_root: Path, crop_gt: bool = False) -> Splits:
    cub_dir = _find_dataset_dir("CUB2011", data_root, f"CUB200/{CUB_DIRNAME}", [IMAGES_FILE])
    crop_dirs = _crop_dirs("CUB2011", [data_root / f"PPCUB200/{CUB_DIRNAME}", cub_dir]) if crop_gt else None
    return load_cub_folder(cub_dir, name="CUB2011", mean=CUB_MEAN, std=CUB_STD, crop_dirs=crop_dirs)


def load_synth_splits(cub_dir: Path) -> Splits:
    """The generated dataset: CUB layout plus qsenn_dataset.json with its name and normalisation."""
    description_file = _require("synth", Path(cub_dir) / SYNTH_INFO_FILE)
    try:
        description = json.loads(description_file.read_text(encoding="utf-8"))
        name = str(description["name"])
        mean, std = (tuple(float(v) for v in description[key]) for key in ("mean", "std"))
        if len(mean) != 3 or len(std) != 3:
            raise ValueError
    except (ValueError, KeyError, TypeError):
        raise QsennError(
            f"synth: {description_file} is malformed: expected "
            f'{{"name": ..., "mean": [r, g, b], "std": [r, g, b]}}; '
            f"regenerate the dataset"
        ) from None
    return load_cub_folder(Path(cub_dir), name=name, mean=mean, std=std)


# ---------------------------------------------------------------- class-per-folder layouts


def _is_image(filename: str) -> bool:
    return filename.lower().endswith(IMAGE_EXTENSIONS) and not filename.startswith(".")


def _class_folders(split_dir: Path) -> list[str]:
    return sorted(entry.name for entry in os.scandir(split_dir) if entry.is_dir() and not entry.name.startswith("."))


def image_files(class_dir: Path) -> list[str]:
    # os.walk needs no stat per file, which matters for ImageNet's 1.28 M images.
    found = []
    for folder, _, files in os.walk(class_dir, followlinks=True):
        found += [os.path.join(folder, name) for name in files if _is_image(name)]
    return sorted(found)


def _folder_samples(
    dataset: str, split_dir: Path, class_names: Sequence[str], train_dir: Path
) -> list[tuple[str, int]]:
    """Images of one split; a class folder the train split lacks is an error."""
    index = {name: i for i, name in enumerate(class_names)}
    samples = []
    for folder in _class_folders(split_dir):
        if folder not in index:
            raise QsennError(
                f"{dataset}: class folder {split_dir / folder} has no counterpart "
                f"in {train_dir}; every class needs training images"
            )
        samples += [(path, index[folder]) for path in image_files(split_dir / folder)]
    return samples


def _load_class_folders(dataset: str, train_dir: Path, test_dir: Path) -> tuple[tuple[str, ...], list, list]:
    """Classes = sorted train class folders (ImageFolder order); samples of both splits."""
    class_names = tuple(_class_folders(train_dir))
    if not class_names:
        raise QsennError(f"{dataset}: no class folders in {train_dir}; expected {train_dir}/<class name>/<image files>")
    train = _folder_samples(dataset, train_dir, class_names, train_dir)
    test = _folder_samples(dataset, test_dir, class_names, train_dir)
    image_kinds = f"no {'/'.join(IMAGE_EXTENSIONS)} files"
    _require_nonempty(dataset, "train", train, f"{image_kinds} under {train_dir}")
    _require_nonempty(dataset, "test", test, f"{image_kinds} under {test_dir}")
    return class_names, train, test


def load_image_folder(data_root: Path) -> Splits:
    """The user's data: <root>/train/<class>/… and <root>/test/<class>/… (or val/)."""
    root = data_root
    if not (root / "train").is_dir():
        raise QsennError(
            f"folder: {root / 'train'} not found; pass --data-root pointing at the "
            f"folder that holds train/<class>/<images> and test/<class>/<images>"
        )
    test_dir = next((root / name for name in ("test", "val") if (root / name).is_dir()), None)
    if test_dir is None:
        raise QsennError(
            f"folder: neither {root / 'test'} nor {root / 'val'} exists; "
            f"put the test images in test/<class>/<images> beside train/"
        )
    class_names, train, test = _load_class_folders("folder", root / "train", test_dir)
    info = DatasetInfo(
        name="folder",
        root=str(root),
        class_names=class_names,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        resize_mode=RESIZE_SHORTER,
    )
    return ImageListDataset(train), ImageListDataset(test), info


def load_imagenet(data_root: Path) -> Splits:
    """torchvision's ImageNet folder layout read directly: classes = sorted wnid folders."""
    root = _find_dataset_dir("ImageNet", data_root, "imagenet", ["train/"])
    val_dir = _require("ImageNet", root / "val")
    class_names, train, test = _load_class_folders("ImageNet", root / "train", val_dir)
    info = DatasetInfo(
        name="ImageNet",
        root=str(root),
        class_names=class_names,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        resize_mode=RESIZE_IMAGENET,
    )
    return ImageListDataset(train), ImageListDataset(test), info


# ---------------------------------------------------------------- TravelingBirds


def _traveling_birds_split(
    meta: CubMetadata, train: bool, split_dir: Path, samples: list[tuple[str, int]], image_dir: Path
) -> ImageListDataset:
    """Folder samples matched to CUB image ids, sorted by id, restricted to the CUB split."""
    id_of = {rel: i for i, rel in meta.rel_paths.items()}
    by_id = {}
    for path, label in samples:
        rel = Path(path).relative_to(split_dir).as_posix()
        if rel not in id_of:
            raise QsennError(
                f"TravelingBirds: image {path} is not listed in "
                f"{meta.root / 'images.txt'}; TravelingBirds and CUB200 must be "
                f"the same image set"
            )
        by_id[id_of[rel]] = (str(image_dir / rel), label)
    ids = [i for i in sorted(by_id) if meta.is_train[i] == train]
    _require_nonempty(
        "TravelingBirds",
        "train" if train else "test",
        ids,
        f"no image of {split_dir} is in that split of {meta.root / 'train_test_split.txt'}",
    )
    split_samples = [by_id[i] for i in ids]
    _check_first_images("TravelingBirds", split_samples)
    return ImageListDataset(split_samples, image_ids=ids)


def load_traveling_birds(data_root: Path, crop_gt: bool = False) -> Splits:
    dataset = "TravelingBirds"
    tb_dir = _find_dataset_dir(dataset, data_root, "TravelingBirds/CUB_fixed", ["train/"])
    # Image ids and the split come from CUB200, which lies beside the TravelingBirds folder.
    cub_dir = tb_dir.parent.parent / "CUB200" / CUB_DIRNAME
    if not (cub_dir / IMAGES_FILE).is_file():
        raise QsennError(
            f"{dataset}: images.txt not found in {cub_dir}; TravelingBirds takes its "
            f"image ids and split from CUB-200-2011: put CUB200/CUB_200_2011 beside "
            f"TravelingBirds/ in the --data-root folder"
        )
    meta = read_cub_metadata(dataset, cub_dir)
    train_dir, test_dir = tb_dir / "train", _require(dataset, tb_dir / "test")
    class_names, train_samples, test_samples = _load_class_folders(dataset, train_dir, test_dir)
    # The crop variant still takes its sample list from the uncropped folders (odd-AA).
    image_dirs = (
        _crop_dirs(dataset, [data_root / "PPTravelingBirds/CUB_fixed", tb_dir]) if crop_gt else (train_dir, test_dir)
    )
    train = _traveling_birds_split(meta, True, train_dir, train_samples, image_dirs[0])
    test = _traveling_birds_split(meta, False, test_dir, test_samples, image_dirs[1])
    info = _cub_info(
        meta,
        name=dataset,
        root=tb_dir,
        class_names=class_names,
        mean=TRAVELING_BIRDS_MEAN,
        std=TRAVELING_BIRDS_STD,
        crop_gt=crop_gt,
    )
    return train, test, info


# ---------------------------------------------------------------- Stanford Cars


def _load_mat(path: Path, key: str):
    try:
        import scipy.io
    except ImportError:
        raise QsennError(
            "StanfordCars: reading its .mat annotations needs scipy, which is not installed; run `pip install scipy`"
        ) from None
    try:
        content = scipy.io.loadmat(path, squeeze_me=True)
    except (ValueError, TypeError, OSError, NotImplementedError, scipy.io.matlab.MatReadError) as exc:
        raise QsennError(f"StanfordCars: cannot read {path} ({exc}); replace it with the devkit's original") from None
    if key not in content:
        raise QsennError(f"StanfordCars: {path} has no '{key}' entry; replace it with the devkit's original")
    return content[key]


def _cars_split(split: str, annotations_file: Path, image_dir: Path, num_classes: int) -> list[tuple[str, int]]:
    annotations = np.atleast_1d(_load_mat(annotations_file, "annotations"))
    samples = []
    for position, annotation in enumerate(annotations, start=1):
        try:
            fname, class_id = str(annotation["fname"]), int(annotation["class"])
        except (KeyError, ValueError, TypeError, IndexError):
            raise QsennError(
                f"StanfordCars: annotation {position} of {annotations_file} lacks "
                f"'fname' or 'class'; replace it with the devkit's original"
            ) from None
        if not 1 <= class_id <= num_classes:
            raise QsennError(
                f"StanfordCars: annotation {position} of {annotations_file} has class "
                f"{class_id} outside 1..{num_classes} (cars_meta.mat); replace it "
                f"with the devkit's original"
            )
        samples.append((str(image_dir / fname), class_id - 1))
    _require_nonempty("StanfordCars", split, samples, f"{annotations_file} lists no image")
    _check_first_images("StanfordCars", samples)
    return samples


def load_stanford_cars(data_root: Path) -> Splits:
    root = _find_dataset_dir("StanfordCars", data_root, "StanfordCars/stanford_cars", ["devkit/cars_meta.mat"])
    meta_file = root / "devkit" / "cars_meta.mat"
    train_file = _require("StanfordCars", root / "devkit" / "cars_train_annos.mat")
    test_file = _require("StanfordCars", root / "cars_test_annos_withlabels.mat")
    class_names = tuple(str(n) for n in np.atleast_1d(_load_mat(meta_file, "class_names")))
    train = _cars_split("train", train_file, _require("StanfordCars", root / "cars_train"), len(class_names))
    test = _cars_split("test", test_file, _require("StanfordCars", root / "cars_test"), len(class_names))
    info = DatasetInfo(
        name="StanfordCars",
        root=str(root),
        class_names=class_names,
        mean=STANFORD_CARS_MEAN,
        std=STANFORD_CARS_STD,
        resize_mode=RESIZE_SHORTER,
    )
    return ImageListDataset(train), ImageListDataset(test), info


# ---------------------------------------------------------------- Fashion-MNIST


def _idx_file(root: Path, stem: str) -> Path:
    """`stem.gz` as distributed, or `stem` when someone unpacked it."""
    for path in (root / f"{stem}.gz", root / stem):
        if path.is_file():
            return path
    return _require("fashion-mnist", root / f"{stem}.gz")


def _fashion_split(root: Path, split: str, prefix: str) -> ArrayImageDataset:
    images_file = _idx_file(root, f"{prefix}-images-idx3-ubyte")
    labels_file = _idx_file(root, f"{prefix}-labels-idx1-ubyte")
    images, labels = read_idx(images_file, 3), read_idx(labels_file, 1)
    if len(images) != len(labels):
        raise QsennError(
            f"fashion-mnist: {images_file} holds {len(images)} images but "
            f"{labels_file} {len(labels)} labels; "
            f"replace them with the original files"
        )
    if len(labels) and labels.max() >= len(FASHION_MNIST_CLASSES):
        raise QsennError(
            f"fashion-mnist: {labels_file} has label {labels.max()} outside 0..9; replace it with the original file"
        )
    _require_nonempty("fashion-mnist", split, labels, f"{images_file} holds no image")
    return ArrayImageDataset(images, labels.tolist())


def load_fashion_mnist(data_root: Path) -> Splits:
    root = _find_dataset_dir(
        "fashion-mnist",
        data_root,
        "fashion-mnist",
        ["train-labels-idx1-ubyte.gz", "train-labels-idx1-ubyte"],
        extra_candidates=[SYSTEM_FASHION_MNIST],
    )
    info = DatasetInfo(
        name="fashion-mnist",
        root=str(root),
        class_names=FASHION_MNIST_CLASSES,
        mean=FASHION_MNIST_MEAN,
        std=FASHION_MNIST_STD,
        resize_mode=RESIZE_SQUARE,
    )
    return _fashion_split(root, "train", "train"), _fashion_split(root, "test", "t10k"), info


# ---------------------------------------------------------------- entry point


def _load_synth_root(data_root: Path) -> Splits:
    return load_synth_splits(_find_dataset_dir("synth", data_root, CUB_DIRNAME, [SYNTH_INFO_FILE]))


_LOADERS: dict[str, Callable[..., Splits]] = {
    "CUB2011": load_cub,
    "TravelingBirds": load_traveling_birds,
    "StanfordCars": load_stanford_cars,
    "ImageNet": load_imagenet,
    "folder": load_image_folder,
    "fashion-mnist": load_fashion_mnist,
    "synth": _load_synth_root,
}
DATASET_NAMES: tuple[str, ...] = tuple(_LOADERS)


def _canonical_name(name: str) -> str:
    by_lower = {n.lower(): n for n in DATASET_NAMES}
    if name.lower() not in by_lower:
        raise QsennError(f"unknown dataset {name!r}; choose one of {', '.join(DATASET_NAMES)}")
    return by_lower[name.lower()]


def load_splits(name: str, data_root: str | Path, *, crop_gt: bool = False) -> Splits:
    """Train and test datasets (no transform yet) and the DatasetInfo of dataset `name`.

    `data_root` is the folder holding the datasets in the reference's sub-folders
    (CUB200/CUB_200_2011, TravelingBirds/CUB_fixed, …) or the dataset folder itself.
    """
    name = _canonical_name(name)
    data_root = Path(data_root).expanduser()
    if crop_gt and name not in CROP_GT_DATASETS:
        raise QsennError(f"{name}: --crop-gt applies only to {' and '.join(CROP_GT_DATASETS)}; drop --crop-gt")
    if name in CROP_GT_DATASETS:
        return _LOADERS[name](data_root, crop_gt=crop_gt)
    return _LOADERS[name](data_root)
