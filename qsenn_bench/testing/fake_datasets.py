"""Tiny fake copies of each dataset layout of spec §11, for loader tests (no downloads).

Images are a few pixels of one solid colour; what matters is the files and their order.
"""

from __future__ import annotations

import gzip
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

CUB_CLASSES = ("001.Black_footed_Albatross", "002.Laysan_Albatross", "003.Sooty_Albatross")
CUB_ATTRIBUTES = ("has_bill_shape::curved", "has_wing_color::blue", "has_size::small")
IMAGES_PER_CLASS = 4


def solid_image(path: Path, color=(200, 30, 30), size=(12, 8)) -> Path:
    """A solid-colour image of size (width, height); the format follows the suffix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)
    return path


def write_lines(path: Path, lines) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")
    return path


@dataclass(frozen=True)
class CubRecord:
    image_id: int
    rel_path: str  # `<class folder>/<file>`
    label: int  # 0-based
    is_train: bool


@dataclass(frozen=True)
class FakeCub:
    cub_dir: Path
    records: tuple[CubRecord, ...]

    def split(self, train: bool) -> list[CubRecord]:
        """Records of a split in image-id order, the order the loader must keep."""
        return sorted((r for r in self.records if r.is_train == train), key=lambda r: r.image_id)


def _cub_records() -> tuple[CubRecord, ...]:
    # Ids run class by class as in the real files; every third image is a test image.
    records = []
    for label, class_name in enumerate(CUB_CLASSES):
        for k in range(IMAGES_PER_CLASS):
            image_id = label * IMAGES_PER_CLASS + k + 1
            rel = f"{class_name}/{class_name[4:]}_{image_id:04d}_{100 + k}.jpg"
            records.append(CubRecord(image_id, rel, label, is_train=image_id % 3 != 0))
    return tuple(records)


def make_cub_folder(cub_dir: Path, *, attributes: bool = True) -> FakeCub:
    """A CUB_200_2011 folder; metadata lines deliberately not in id order."""
    records = _cub_records()
    shuffled = records[1::2] + records[::2]
    write_lines(cub_dir / "classes.txt", (f"{i} {n}" for i, n in enumerate(CUB_CLASSES, start=1)))
    write_lines(cub_dir / "images.txt", (f"{r.image_id} {r.rel_path}" for r in shuffled))
    write_lines(cub_dir / "image_class_labels.txt", (f"{r.image_id} {r.label + 1}" for r in shuffled))
    write_lines(cub_dir / "train_test_split.txt", (f"{r.image_id} {int(r.is_train)}" for r in shuffled))
    for r in records:
        solid_image(cub_dir / "images" / r.rel_path, color=(10 * r.image_id, 100, 50))
    if attributes:
        # As in the CUB tarball: attributes.txt beside CUB_200_2011/, labels inside it.
        write_lines(cub_dir.parent / "attributes.txt", (f"{i} {n}" for i, n in enumerate(CUB_ATTRIBUTES, start=1)))
        write_lines(
            cub_dir / "attributes" / "image_attribute_labels.txt",
            (
                f"{r.image_id} {a} {(r.image_id + a) % 2} 3 1.5"
                for r in records
                for a in range(1, len(CUB_ATTRIBUTES) + 1)
            ),
        )
    return FakeCub(cub_dir, records)


def make_cub(data_root: Path, **kwargs) -> FakeCub:
    return make_cub_folder(data_root / "CUB200" / "CUB_200_2011", **kwargs)


def make_cropped(image_root: Path, cub: FakeCub, size=(10, 10)) -> None:
    """train_cropped/ and test_cropped/ under image_root with CUB's relative paths."""
    for r in cub.records:
        folder = "train_cropped" if r.is_train else "test_cropped"
        solid_image(image_root / folder / r.rel_path, color=(0, 0, 255), size=size)


def make_cub_crop(data_root: Path, cub: FakeCub) -> Path:
    crop_dir = data_root / "PPCUB200" / "CUB_200_2011"
    make_cropped(crop_dir, cub)
    return crop_dir


def make_traveling_birds(data_root: Path, cub: FakeCub, *, crop: bool = False) -> Path:
    """TravelingBirds/CUB_fixed: every image in both train/ and test/ (other backgrounds)."""
    tb_dir = data_root / "TravelingBirds" / "CUB_fixed"
    for split, color in (("train", (0, 200, 0)), ("test", (0, 0, 200))):
        for r in cub.records:
            solid_image(tb_dir / split / r.rel_path, color=color)
    if crop:
        make_cropped(data_root / "PPTravelingBirds" / "CUB_fixed", cub)
    return tb_dir


CARS_CLASSES = ("AM General Hummer SUV 2000", "Acura RL Sedan 2012", "Acura TL Sedan 2012")


def _cars_annotations(classes_1_based) -> np.ndarray:
    """The devkit's 1×N struct array (fields bbox_x1, …, class, fname)."""
    fields = ("bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class", "fname")
    annotations = np.zeros((1, len(classes_1_based)), dtype=[(f, object) for f in fields])
    for i, class_id in enumerate(classes_1_based):
        annotations[0, i] = (
            np.array([[1]]),
            np.array([[2]]),
            np.array([[10]]),
            np.array([[7]]),
            np.array([[class_id]], dtype=np.uint8),
            f"{i + 1:05d}.jpg",
        )
    return annotations


def make_stanford_cars(data_root: Path, train_classes=(3, 1, 2, 1), test_classes=(2, 3)) -> Path:
    """StanfordCars/stanford_cars with the devkit's .mat files (needs scipy)."""
    import scipy.io

    root = data_root / "StanfordCars" / "stanford_cars"
    (root / "devkit").mkdir(parents=True)
    scipy.io.savemat(root / "devkit" / "cars_meta.mat", {"class_names": np.array([list(CARS_CLASSES)], dtype=object)})
    scipy.io.savemat(root / "devkit" / "cars_train_annos.mat", {"annotations": _cars_annotations(train_classes)})
    scipy.io.savemat(root / "cars_test_annos_withlabels.mat", {"annotations": _cars_annotations(test_classes)})
    for folder, classes in (("cars_train", train_classes), ("cars_test", test_classes)):
        for i in range(len(classes)):
            solid_image(root / folder / f"{i + 1:05d}.jpg", size=(16, 9))
    return root


def make_class_folders(split_dir: Path, counts: dict[str, int], suffix: str = ".png") -> None:
    """<split_dir>/<class>/<k><suffix> for each class and count."""
    for class_name, count in counts.items():
        for k in range(count):
            solid_image(split_dir / class_name / f"img_{k}{suffix}", color=(40 * k, 80, 120))


def make_imagenet(data_root: Path) -> Path:
    root = data_root / "imagenet"
    make_class_folders(root / "train", {"n01440764": 2, "n01443537": 3}, suffix=".JPEG")
    make_class_folders(root / "val", {"n01440764": 1, "n01443537": 1}, suffix=".JPEG")
    return root


def idx_bytes(array: np.ndarray) -> bytes:
    """An IDX file of unsigned bytes: magic 0x0000080<ndim>, big-endian dims, data."""
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_idx(path: Path, array: np.ndarray, *, gz: bool = True) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = idx_bytes(array)
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def make_fashion_mnist(folder: Path, n_train: int = 6, n_test: int = 4, *, gz: bool = True) -> Path:
    """The four IDX files; image k of a split is filled with the value 10·k."""
    suffix = ".gz" if gz else ""
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = np.stack([np.full((28, 28), 10 * k, dtype=np.uint8) for k in range(n)])
        labels = np.arange(n, dtype=np.uint8) % 10
        write_idx(folder / f"{prefix}-images-idx3-ubyte{suffix}", images, gz=gz)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte{suffix}", labels, gz=gz)
    return folder
