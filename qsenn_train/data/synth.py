"""Embedded synthetic dataset: procedurally drawn images whose classes are combinations of
visual attributes, written in the CUB-200-2011 file layout.

Classes share attribute values the way bird species share colours and shapes, and every
image records what was drawn in `attributes/image_attribute_labels.txt`, so the CUB loader
and the CUB alignment metric run on it unchanged. Everything is a pure function of the
spec: each image has its own random stream, keyed by (seed, image id).
"""

from __future__ import annotations

import itertools
import json
import math
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from ..errors import QsennError
from .cub_layout import (
    ATTRIBUTE_LABELS_FILE,
    ATTRIBUTE_NAMES_FILE,
    BOXES_FILE,
    CLASSES_FILE,
    CUB_DIRNAME,
    IMAGES_FILE,
    LABELS_FILE,
    SPLIT_FILE,
    SYNTH_INFO_FILE,
)

SHAPES = ("circle", "square", "triangle", "star", "cross", "diamond")
COLORS = {
    "red": (215, 35, 35),
    "green": (35, 160, 55),
    "blue": (35, 75, 215),
    "yellow": (235, 205, 30),
    "purple": (135, 50, 185),
    "orange": (245, 130, 20),
}
PATTERNS = ("solid", "striped", "dotted", "checkered")
COUNTS = ("one", "two", "three")
OUTLINES = ("none", "dark")
BACKGROUNDS = ("plain", "gradient", "noise")

# Groups that define a class, in attribute-id order; the background group is per image.
CLASS_GROUPS = (
    ("has_shape", SHAPES),
    ("has_primary_color", tuple(COLORS)),
    ("has_pattern", PATTERNS),
    ("has_count", COUNTS),
    ("has_outline", OUTLINES),
)
BACKGROUND_GROUP = "has_background"
ATTRIBUTE_GROUPS = CLASS_GROUPS + ((BACKGROUND_GROUP, BACKGROUNDS),)
# attributes.txt order: attribute id = position + 1.
ATTRIBUTE_NAMES = tuple(f"{group}::{value}" for group, values in ATTRIBUTE_GROUPS for value in values)
MAX_CLASSES = math.prod(len(values) for _, values in CLASS_GROUPS)
MIN_IMAGE_SIZE = 32

# Independent random streams, so that e.g. the class table never shifts the images.
_CLASS_TABLE_STREAM = 0
_SPLIT_STREAM = 1
_IMAGE_STREAM = 2

# Label noise of the annotation file, mimicking CUB's annotators (fractions of rows).
_PROBABLY_FRACTION = 0.06  # certainty 3
_GUESSING_FRACTION = 0.03  # certainty 2
_NOT_VISIBLE_FRACTION = 0.02  # certainty 1, only on absent attributes (metric sanity check)

_OUTLINE_COLOR = (25, 25, 30)


@dataclass(frozen=True)
class SynthSpec:
    """Size and seed of a synthetic dataset; equal specs give byte-identical datasets."""

    n_classes: int = 16
    train_per_class: int = 100
    test_per_class: int = 50
    image_size: int = 64
    seed: int = 0

    def __post_init__(self):
        for name, value in asdict(self).items():
            if not isinstance(value, int) or isinstance(value, bool):
                raise QsennError(f"synthetic dataset {name} must be an integer, got {value!r}")
        for name in ("n_classes", "train_per_class", "test_per_class"):
            if getattr(self, name) <= 0:
                raise QsennError(
                    f"synthetic dataset {name} must be > 0, got {getattr(self, name)}; pass a positive count"
                )
        if self.n_classes > MAX_CLASSES:
            raise QsennError(
                f"synthetic dataset n_classes={self.n_classes} exceeds the "
                f"{MAX_CLASSES} distinct attribute combinations; use fewer classes"
            )
        if self.image_size < MIN_IMAGE_SIZE:
            raise QsennError(
                f"synthetic dataset image_size={self.image_size} is too small "
                f"to draw the attributes; use at least {MIN_IMAGE_SIZE}"
            )
        if self.seed < 0:
            raise QsennError(f"synthetic dataset seed must be >= 0, got {self.seed}")

    def tag(self) -> str:
        """Folder name that identifies the spec, e.g. `c16-tr100-te50-s64-seed0`."""
        return f"c{self.n_classes}-tr{self.train_per_class}-te{self.test_per_class}-s{self.image_size}-seed{self.seed}"


@dataclass(frozen=True)
class SynthClass:
    """One class: a combination of one value per class-defining attribute group."""

    class_id: int  # 1-based, as in CUB's classes.txt
    shape: str
    color: str
    pattern: str
    count: int  # number of objects drawn
    outlined: bool

    @property
    def folder(self) -> str:
        """CUB-style class folder name, e.g. `001.red_striped_circle_x2`."""
        name = f"{self.class_id:03d}.{self.color}_{self.pattern}_{self.shape}_x{self.count}"
        return name + "_outlined" if self.outlined else name

    def attribute_values(self) -> dict[str, str]:
        """The value of each class-defining group, keyed by group name."""
        return {
            "has_shape": self.shape,
            "has_primary_color": self.color,
            "has_pattern": self.pattern,
            "has_count": COUNTS[self.count - 1],
            "has_outline": OUTLINES[int(self.outlined)],
        }


def class_table(spec: SynthSpec) -> tuple[SynthClass, ...]:
    """The classes of `spec`: distinct combinations, chosen from the seed, that share values.

    Each group uses at most n_classes // 2 of its values, so every used value recurs in at
    least two classes (from 4 classes on) and no single group names the class. Classes are
    then picked greedily: each time a not yet chosen combination whose values are the least
    used so far (balanced counts within every group), among those the one whose value pairs
    across groups are the least used (groups vary independently, e.g. not every yellow class
    is a circle); remaining ties go by a seeded shuffle.
    """
    rng = np.random.default_rng([spec.seed, _CLASS_TABLE_STREAM])
    used_values = []
    for _, values in CLASS_GROUPS:
        n_used = min(len(values), max(2, spec.n_classes // 2))
        used_values.append(np.sort(rng.permutation(len(values))[:n_used]))
    combos = np.array(list(itertools.product(*used_values)))
    combos = combos[rng.permutation(len(combos))]
    group_pairs = list(itertools.combinations(range(len(CLASS_GROUPS)), 2))
    value_usage = [np.zeros(len(values)) for _, values in CLASS_GROUPS]
    pair_usage = {(g, h): np.zeros((len(CLASS_GROUPS[g][1]), len(CLASS_GROUPS[h][1]))) for g, h in group_pairs}
    # Value balance outranks pair balance: no pair total can reach this weight.
    value_weight = len(group_pairs) * spec.n_classes + 1
    taken = np.zeros(len(combos), dtype=bool)
    classes = []
    for class_id in range(1, spec.n_classes + 1):
        cost = value_weight * sum(usage[combos[:, g]] for g, usage in enumerate(value_usage))
        cost += sum(pair_usage[g, h][combos[:, g], combos[:, h]] for g, h in group_pairs)
        cost[taken] = np.inf
        pick = int(np.argmin(cost))
        taken[pick] = True
        combo = combos[pick]
        for g, usage in enumerate(value_usage):
            usage[combo[g]] += 1
        for g, h in group_pairs:
            pair_usage[g, h][combo[g], combo[h]] += 1
        shape, color, pattern, count, outline = (int(v) for v in combo)
        classes.append(
            SynthClass(class_id, SHAPES[shape], tuple(COLORS)[color], PATTERNS[pattern], count + 1, bool(outline))
        )
    return tuple(classes)


# ----------------------------------------------------------------------------- drawing


def _regular_polygon(n: int, start_angle: float = -math.pi / 2) -> np.ndarray:
    angles = start_angle + 2 * math.pi * np.arange(n) / n
    return np.stack([np.cos(angles), np.sin(angles)], axis=1)


def _star() -> np.ndarray:
    points = _regular_polygon(10)
    points[1::2] *= 0.45
    return points


def _cross() -> np.ndarray:
    a = 0.34  # half-width of an arm
    return np.array(
        [(-a, -1), (a, -1), (a, -a), (1, -a), (1, a), (a, a), (a, 1), (-a, 1), (-a, a), (-1, a), (-1, -a), (-a, -a)],
        dtype=float,
    )


# Outlines scaled into the unit circle, centred on the origin: an object of radius r never
# reaches beyond r, which is what placement relies on.
_SHAPE_POLYGONS = {
    name: polygon / np.linalg.norm(polygon, axis=1).max()
    for name, polygon in {
        "circle": _regular_polygon(28),
        "square": _regular_polygon(4, math.pi / 4),
        "triangle": _regular_polygon(3),
        "star": _star(),
        "cross": _cross(),
        "diamond": np.array([(0, -1), (0.6, 0), (0, 1), (-0.6, 0)], dtype=float),
    }.items()
}


def _muted_colors(rng: np.random.Generator, n: int) -> np.ndarray:
    """n greyish colours (n×3, within 40..230), so backgrounds never read as one of the
    saturated object colours."""
    return rng.uniform(70, 200, (n, 1)) + rng.uniform(-30, 30, (n, 3))


def _background(style: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """A size×size×3 uint8 background of the given style."""
    if style == "plain":
        return np.broadcast_to(_muted_colors(rng, 1).astype(np.uint8), (size, size, 3))
    if style == "gradient":
        angle = rng.uniform(0, 2 * math.pi)
        axis = np.linspace(-1, 1, size)
        ramp = math.cos(angle) * axis[None, :] + math.sin(angle) * axis[:, None]
        ramp = (ramp - ramp.min()) / (ramp.max() - ramp.min())
        start, end = _muted_colors(rng, 2)
        return (start + ramp[..., None] * (end - start)).astype(np.uint8)
    # "noise": smooth colour blotches, a coarse random grid upsampled.
    cells = int(rng.integers(3, 8))
    coarse = _muted_colors(rng, cells * cells).reshape(cells, cells, 3).astype(np.uint8)
    return np.asarray(Image.fromarray(coarse).resize((size, size), Image.Resampling.BILINEAR))


def _draw_distractors(draw: ImageDraw.ImageDraw, size: int, rng: np.random.Generator):
    """Thin lines and irregular small blobs: clutter that is none of the class shapes."""
    for _ in range(int(rng.integers(1, 4))):
        # Half of them take an object colour, so colour alone is a noisy cue.
        if rng.random() < 0.5:
            base = np.array(list(COLORS.values())[rng.integers(len(COLORS))], float)
        else:
            base = _muted_colors(rng, 1)[0] * rng.choice([0.5, 1.3])
        color = tuple(int(c) for c in np.clip(base + rng.normal(0, 15, 3), 0, 255))
        if rng.random() < 0.5:
            start = rng.uniform(0, size, 2)
            angle, length = rng.uniform(0, 2 * math.pi), rng.uniform(0.15, 0.45) * size
            end = start + length * np.array([math.cos(angle), math.sin(angle)])
            draw.line([tuple(start), tuple(end)], fill=color, width=int(rng.integers(1, 3)))
        else:
            centre = rng.uniform(0, size, 2)
            n = int(rng.integers(5, 8))
            radii = rng.uniform(0.5, 1.0, n) * rng.uniform(0.03, 0.06) * size
            angles = np.sort(rng.uniform(0, 2 * math.pi, n))
            points = centre + radii[:, None] * np.stack([np.cos(angles), np.sin(angles)], 1)
            draw.polygon([tuple(p) for p in points], fill=color)


def _place_objects(count: int, size: int, rng: np.random.Generator):
    """Centres and radii of `count` objects, each fully inside the image and not overlapping
    another (so every drawn attribute stays visible)."""
    base_radius = rng.uniform(0.12, 0.2) * size
    while True:
        radii = base_radius * rng.uniform(0.85, 1.15, count)
        centres: list[np.ndarray] = []
        for radius in radii:
            for _ in range(30):
                centre = rng.uniform(radius + 2, size - radius - 2, 2)
                if all(
                    math.dist(centre, other) - radius - other_radius >= 2 for other, other_radius in zip(centres, radii)
                ):
                    centres.append(centre)
                    break
            else:
                break
        if len(centres) == count:
            return np.array(centres), radii
        base_radius *= 0.9  # too crowded to fit: shrink and start over


def _pattern_mask(
    pattern: str, xs: np.ndarray, ys: np.ndarray, centre, angle: float, period: float, phase
) -> np.ndarray:
    """Which pixels (xs, ys) take the pattern's second tone, in the object's rotated frame."""
    dx, dy = xs + 0.5 - centre[0], ys + 0.5 - centre[1]
    u = (math.cos(angle) * dx + math.sin(angle) * dy) / period + phase[0]
    v = (-math.sin(angle) * dx + math.cos(angle) * dy) / period + phase[1]
    if pattern == "striped":
        return np.floor(u * 2) % 2 == 1
    if pattern == "checkered":
        return (np.floor(u * 2) + np.floor(v * 2)) % 2 == 1
    # "dotted": a dot at every lattice point.
    return np.hypot(u - np.round(u), v - np.round(v)) < 0.28


def _draw_image(cls: SynthClass, background: str, size: int, rng: np.random.Generator):
    """One image of `cls` as uint8 H×W×3 and the union box (x, y, w, h) of its objects."""
    canvas = Image.fromarray(_background(background, size, rng))
    _draw_distractors(ImageDraw.Draw(canvas), size, rng)

    pixels = np.array(canvas)  # writable uint8 copy
    outline_width = max(1, size // 32)
    centres, radii = _place_objects(cls.count, size, rng)
    polygons = []
    for centre, radius in zip(centres, radii):
        angle = rng.uniform(0, 2 * math.pi)
        rotation = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
        polygon = centre + radius * _SHAPE_POLYGONS[cls.shape] @ rotation.T
        polygons.append(polygon)
        mask_image = Image.new("L", (size, size))
        ImageDraw.Draw(mask_image).polygon([tuple(p) for p in polygon], fill=255)
        ys, xs = np.nonzero(np.asarray(mask_image))
        tone = np.clip(np.array(COLORS[cls.color]) + rng.normal(0, 12, 3), 0, 255)
        if cls.pattern == "solid":
            pixels[ys, xs] = tone
        else:
            # A lighter tint of the same colour, so the pattern never changes the hue.
            light = tone + 0.6 * (255 - tone)
            second = _pattern_mask(
                cls.pattern, xs, ys, centre, angle, rng.uniform(0.45, 0.6) * radius, rng.uniform(0, 1, 2)
            )
            pixels[ys, xs] = np.where(second[:, None], light, tone)

    if cls.outlined:
        canvas = Image.fromarray(pixels)
        draw = ImageDraw.Draw(canvas)
        for polygon in polygons:
            points = [tuple(p) for p in polygon]
            draw.line(points + points[:1], fill=_OUTLINE_COLOR, width=outline_width, joint="curve")
        pixels = np.asarray(canvas)

    noisy = pixels + rng.uniform(3, 10) * rng.standard_normal(pixels.shape, dtype=np.float32)
    extent = np.concatenate(polygons)
    pad = outline_width / 2 if cls.outlined else 0
    x0, y0 = extent.min(0) - pad
    x1, y1 = extent.max(0) + pad
    return np.clip(np.rint(noisy), 0, 255).astype(np.uint8), (x0, y0, x1 - x0, y1 - y0)


def _annotation_rows(image_id: int, present: np.ndarray, rng: np.random.Generator) -> list[str]:
    """`image_attribute_labels.txt` rows of one image: CUB-like certainties on true labels."""
    draw = rng.random(len(present))
    certainty = np.full(len(present), 4)
    certainty[draw < _PROBABLY_FRACTION + _GUESSING_FRACTION] = 2
    certainty[draw < _PROBABLY_FRACTION] = 3
    certainty[~present & (draw > 1 - _NOT_VISIBLE_FRACTION)] = 1
    seconds = rng.integers(1, 20, len(present))
    return [f"{image_id} {a + 1} {int(p)} {c} {t}" for a, (p, c, t) in enumerate(zip(present, certainty, seconds))]


def _save_png(pixels: np.ndarray, path: Path) -> None:
    Image.fromarray(pixels).save(path, format="PNG", compress_level=1)


# ----------------------------------------------------------------------------- writing


def _split_flags(spec: SynthSpec, class_id: int) -> np.ndarray:
    """1 = train, 0 = test, shuffled within the class so the splits interleave like CUB."""
    flags = np.array([1] * spec.train_per_class + [0] * spec.test_per_class)
    return np.random.default_rng([spec.seed, _SPLIT_STREAM, class_id]).permutation(flags)


def _write_lines(path: Path, lines) -> None:
    path.write_text("".join(f"{line}\n" for line in lines))


def _write_dataset(spec: SynthSpec, cub_dir: Path) -> None:
    classes = class_table(spec)
    attribute_index = {name: i for i, name in enumerate(ATTRIBUTE_NAMES)}
    image_lines, label_lines, split_lines, box_lines, annotation_lines = [], [], [], [], []
    channel_sum = np.zeros(3)
    channel_sq_sum = np.zeros(3)
    train_pixels = 0
    image_id = 0
    for cls in classes:
        (cub_dir / "images" / cls.folder).mkdir(parents=True)
        class_present = np.zeros(len(ATTRIBUTE_NAMES), dtype=bool)
        for group, value in cls.attribute_values().items():
            class_present[attribute_index[f"{group}::{value}"]] = True
        for is_train in _split_flags(spec, cls.class_id):
            image_id += 1
            rng = np.random.default_rng([spec.seed, _IMAGE_STREAM, image_id])
            background = BACKGROUNDS[rng.integers(len(BACKGROUNDS))]
            pixels, (x, y, w, h) = _draw_image(cls, background, spec.image_size, rng)
            relative = f"{cls.folder}/synth_{image_id:06d}.png"
            _save_png(pixels, cub_dir / "images" / relative)
            if is_train:
                values = pixels.reshape(-1, 3) / 255.0
                channel_sum += values.sum(0)
                channel_sq_sum += (values**2).sum(0)
                train_pixels += len(values)
            present = class_present.copy()
            present[attribute_index[f"{BACKGROUND_GROUP}::{background}"]] = True
            image_lines.append(f"{image_id} {relative}")
            label_lines.append(f"{image_id} {cls.class_id}")
            split_lines.append(f"{image_id} {int(is_train)}")
            box_lines.append(f"{image_id} {x:.1f} {y:.1f} {w:.1f} {h:.1f}")
            annotation_lines += _annotation_rows(image_id, present, rng)

    _write_lines(cub_dir / IMAGES_FILE, image_lines)
    _write_lines(cub_dir / LABELS_FILE, label_lines)
    _write_lines(cub_dir / SPLIT_FILE, split_lines)
    _write_lines(cub_dir / BOXES_FILE, box_lines)
    _write_lines(cub_dir / CLASSES_FILE, (f"{c.class_id} {c.folder}" for c in classes))
    _write_lines(cub_dir / ATTRIBUTE_NAMES_FILE, (f"{i + 1} {name}" for i, name in enumerate(ATTRIBUTE_NAMES)))
    (cub_dir / ATTRIBUTE_LABELS_FILE).parent.mkdir()
    _write_lines(cub_dir / ATTRIBUTE_LABELS_FILE, annotation_lines)

    mean = channel_sum / train_pixels
    std = np.sqrt(np.maximum(channel_sq_sum / train_pixels - mean**2, 0))
    info = {
        "name": "synth",
        "spec": asdict(spec),
        "mean": [round(float(m), 6) for m in mean],
        "std": [round(float(s), 6) for s in std],
    }
    (cub_dir / SYNTH_INFO_FILE).write_text(json.dumps(info, indent=2) + "\n")


def generate(spec: SynthSpec, out_dir: Path) -> Path:
    """Write the dataset of `spec` to `out_dir/CUB_200_2011` and return that folder.

    It is built in a temporary sibling folder and renamed at the end, so an interrupted run
    never leaves a folder that looks like a complete dataset.
    """
    out_dir = Path(out_dir)
    cub_dir = out_dir / CUB_DIRNAME
    if cub_dir.exists():
        raise QsennError(f"{cub_dir} already exists; delete it or generate into another folder")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        partial = Path(tempfile.mkdtemp(prefix=f".{CUB_DIRNAME}.partial-", dir=out_dir))
    except OSError as exc:
        raise QsennError(
            f"cannot create the synthetic dataset folder {out_dir} ({exc}); choose a writable data root"
        ) from None
    try:
        _write_dataset(spec, partial)
        partial.rename(cub_dir)
    except BaseException as exc:
        shutil.rmtree(partial, ignore_errors=True)
        if isinstance(exc, OSError):
            if cub_dir.exists():
                raise QsennError(
                    f"{cub_dir} was created by another process while this one "
                    f"generated it; use it, or delete it and retry"
                ) from None
            raise QsennError(
                f"cannot write the synthetic dataset to {out_dir} ({exc}); free disk space or choose another data root"
            ) from None
        raise
    return cub_dir


def is_complete(cub_dir: Path) -> bool:
    """True for a finished dataset folder (its info file is written last)."""
    return (Path(cub_dir) / SYNTH_INFO_FILE).is_file()


def ensure_synth(root: Path, spec: SynthSpec, echo: Callable[[str], None] = lambda line: None) -> Path:
    """The CUB folder `root/synth/<spec.tag()>/CUB_200_2011`, generated if not there yet."""
    dataset_dir = Path(root) / "synth" / spec.tag()
    cub_dir = dataset_dir / CUB_DIRNAME
    if is_complete(cub_dir):
        return cub_dir
    if cub_dir.exists():
        # Not written by generate() (which renames only finished folders): rebuild it.
        shutil.rmtree(cub_dir)
    echo(f"generating the embedded synthetic dataset ({spec.tag()}) in {dataset_dir}")
    try:
        return generate(spec, dataset_dir)
    except QsennError:
        # A concurrent run of the same spec may have finished first; its result is identical.
        if is_complete(cub_dir):
            return cub_dir
        raise
