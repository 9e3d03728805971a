"""The one table of export formats: it drives option validation, `qsenn export --help`
and the benchmark's artifact backends. Nothing here imports torch, so the CLI can read it at start-up."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from .errors import ExportError

TOP_FEATURES = 5  # "the same top-5 contributing features" (see Tolerance.top_features)


@dataclass(frozen=True)
class Tolerance:
    """How close an exported model must stay to its reference.

    `rel` bounds max|Δ| / max(1, max|reference|) for the logits, the features c and the
    feature maps; `identity` (default: rel) bounds the identity residual
    max|logit − (T·c + b)| relative to the logits — an INT8 backbone under an exact float
    head keeps that at float rounding, however far its logits move.
    `argmax` is the least fraction of images whose predicted class agrees; an image whose
    two classes are tied within `tie` (relative like rel; default: rel) counts as agreeing.
    `top_features` is the least fraction of images for which the TOP_FEATURES features with
    the largest |contribution| to the reference's class are the reference's (0: unchecked).
    """

    rel: float
    argmax: float
    top_features: float = 0.0
    identity: float | None = None
    tie: float | None = None

    @property
    def identity_rel(self) -> float:
        return self.rel if self.identity is None else self.identity

    @property
    def tie_rel(self) -> float:
        return self.rel if self.tie is None else self.tie


@dataclass(frozen=True)
class ExportFormat:
    name: str  # value of --format
    title: str
    suffix: str  # of the written file
    devices: tuple[str, ...]  # where the artifact runs
    options: frozenset[str]  # format-specific options it accepts (keys of OPTION_FLAGS)
    extra: str  # pip extra that installs what building it needs
    tolerances: Mapping[str, Tolerance]  # by precision; the first is the default

    @property
    def default_precision(self) -> str:
        return next(iter(self.tolerances))


# INT8 quantises the backbone only; the head stays float, so the identity residual and
# the argmax ties keep the fp32 bounds while logits, features and maps carry the backbone's
# rounding (demo model, 800 test images: logits 2%, features 6%, maps 10% of their largest
# value); 0.25 leaves room for deeper backbones and still catches one that is broken.
INT8_TOLERANCE = Tolerance(rel=0.25, argmax=0.99, top_features=0.95, identity=1e-4, tie=1e-4)
# Every engine computes its head in float32 (trt_build): whatever the backbone's precision, the
# identity residual keeps the float32 bound of the ONNX model.
FP32_HEAD_IDENTITY = 1e-4
ONNX_TOLERANCES = {"fp32": Tolerance(rel=1e-4, argmax=1.0), "int8": INT8_TOLERANCE}
TRT_TOLERANCES = {
    "fp32": Tolerance(rel=1e-3, argmax=1.0, identity=FP32_HEAD_IDENTITY),
    "fp16": Tolerance(rel=2e-2, argmax=1.0, identity=FP32_HEAD_IDENTITY),
    "int8": INT8_TOLERANCE,
}
FORMATS: dict[str, ExportFormat] = {
    f.name: f
    for f in (
        ExportFormat(
            "onnx",
            "ONNX",
            ".onnx",
            ("CPU", "GPU"),
            frozenset({"batch", "int8", "calib"}),
            "export",
            ONNX_TOLERANCES,
        ),
        ExportFormat(
            "trt",
            "TensorRT engine",
            ".engine",
            ("GPU",),
            frozenset({"batch", "half", "int8", "calib", "workspace"}),
            "trt",
            TRT_TOLERANCES,
        ),
        # Triton model repositories: REPO/<name>/{config.pbtxt, labels.txt, 1/model.onnx or 1/model.plan};
        # the model inside is the onnx or trt export above, verified the same way.
        ExportFormat(
            "triton",
            "Triton repo (ONNX)",
            "REPO/",
            ("CPU", "GPU"),
            frozenset({"batch", "int8", "calib", "name"}),
            "export",
            ONNX_TOLERANCES,
        ),
        ExportFormat(
            "triton-trt",
            "Triton repo (TRT)",
            "REPO/",
            ("GPU",),
            frozenset({"batch", "half", "int8", "calib", "workspace", "name"}),
            "trt",
            TRT_TOLERANCES,
        ),
    )
}
# The artifact inside a Triton repository of each format.
TRITON_MODEL_FORMATS = {"triton": "onnx", "triton-trt": "trt"}

OPTION_FLAGS = {
    "batch": "--batch",
    "half": "--half",
    "int8": "--int8",
    "calib": "--calib",
    "workspace": "--workspace",
    "name": "--name",
}
DEFAULT_TRT_BATCH = 16  # largest batch of an engine's profile unless --batch says
DEFAULT_WORKSPACE_GIB = 4.0
DEFAULT_VERIFY_COUNT = 64
CALIBRATION_LIMIT = 512  # images; INT8 calibration gains little beyond a few hundred
CALIBRATION_BATCH = 8  # images per calibration batch (onnxruntime and TensorRT alike)
DEFAULT_EVIDENCE_COUNT = 1000  # training images the evidence score is calibrated on (a forward pass each)
DEFAULT_PROTOTYPES = 4  # atlas thumbnails embedded per feature (small JPEGs, ~3-5 KB each in base64)


@dataclass(frozen=True)
class ExportOptions:
    format: str = "onnx"
    out: Path | None = None
    batch: int | None = None  # ONNX: static batch (None: dynamic); TRT: profile max
    half: bool = False
    int8: bool = False
    calib: Path | None = None
    workspace: float | None = None  # GiB
    verify: bool = True
    verify_count: int = DEFAULT_VERIFY_COUNT
    verify_images: Path | None = None
    feature_names: Path | None = None  # JSON: a list of F names or {index: name}
    evidence_count: int = DEFAULT_EVIDENCE_COUNT  # 0: no evidence calibration
    evidence_images: Path | None = None  # calibrate on these instead of the dataset's training images
    model_type: str | None = None  # of a run that holds both; None: the only one
    atlas: Path | None = None  # the `qsenn atlas` folder to embed (None: the run's own, if written)
    prototypes: int = DEFAULT_PROTOTYPES  # thumbnails per feature embedded from the atlas (0: none)
    name: str | None = None  # Triton: the model's name in the repository
    given: frozenset[str] = field(default_factory=frozenset)  # format options the user set

    @property
    def export_format(self) -> ExportFormat:
        return FORMATS[self.format]

    @property
    def precision(self) -> str:
        return "int8" if self.int8 else "fp16" if self.half else self.export_format.default_precision

    @property
    def tolerance(self) -> Tolerance:
        return self.export_format.tolerances[self.precision]


def formats_taking(option: str) -> list[str]:
    return [f.name for f in FORMATS.values() if option in f.options]


def make_options(format: str, **values) -> ExportOptions:
    """ExportOptions with `given` = the format options that were set (not None/False)."""
    given = frozenset(k for k in OPTION_FLAGS if values.get(k) not in (None, False))
    return ExportOptions(format=format, given=given, **values)


def validate(options: ExportOptions) -> None:
    """Refuse options the format does not take and combinations that make no sense."""
    if options.format not in FORMATS:
        raise ExportError(f"unknown export format {options.format!r}; choose one of {', '.join(FORMATS)}")
    fmt = options.export_format
    for option in (o for o in OPTION_FLAGS if o in options.given - fmt.options):
        takers = formats_taking(option)
        raise ExportError(
            f"{OPTION_FLAGS[option]} is not available for {fmt.title} export"
            + (f"; formats that take it: {', '.join(takers)}" if takers else "")
        )
    if options.int8 and options.calib is None:
        raise ExportError("--int8 needs --calib DIR: a folder of calibration images (a few hundred training images)")
    if options.format == "trt" and options.half and options.int8:
        raise ExportError(
            "--half and --int8 do not combine for a TensorRT engine: its graph fixes each layer's type, "
            "and an INT8 engine runs the layers it does not quantise in float32; choose one"
        )
    if options.calib is not None and not options.int8:
        raise ExportError("--calib is only used with --int8; add --int8 or drop --calib")
    if options.batch is not None and options.batch < 1:
        raise ExportError(f"--batch must be at least 1, got {options.batch}")
    if options.workspace is not None and options.workspace <= 0:
        raise ExportError(f"--workspace must be a positive number of GiB, got {options.workspace}")
    if options.verify_count < 1:
        raise ExportError(f"--verify-count must be at least 1, got {options.verify_count}")
    if not options.verify and options.verify_images is not None:
        raise ExportError("--verify-images has no effect with --no-verify; drop one of them")
    if options.evidence_count < 0:
        raise ExportError(f"--evidence-count must be 0 (no calibration) or more, got {options.evidence_count}")
    if options.prototypes < 0:
        raise ExportError(f"--prototypes must be 0 or more, got {options.prototypes}")
    if options.evidence_count == 0 and options.evidence_images is not None:
        raise ExportError("--evidence-images has no effect with --evidence-count 0; drop one of them")


def _precisions(f: ExportFormat) -> str:
    return ", ".join(
        f"{p} {t.rel:g}"
        + (f" argmax≥{100 * t.argmax:.0f}%" if t.argmax < 1 else "")
        + (f" top-{TOP_FEATURES} features≥{100 * t.top_features:.0f}%" if t.top_features else "")
        for p, t in f.tolerances.items()
    )


def help_table() -> str:
    """The formats as `qsenn export --help` lists them."""
    lines = []
    name_width = max(len(f.name) for f in FORMATS.values())
    title_width = max(len(f.title) for f in FORMATS.values())
    for f in FORMATS.values():
        flags = ", ".join(OPTION_FLAGS[o] for o in OPTION_FLAGS if o in f.options)
        lines.append(
            f"{f.name:<{name_width}} {f.title:<{title_width}} {f.suffix:<8} {'+'.join(f.devices):<8} "
            f"{_precisions(f)}; {flags}; pip install 'qsenn[{f.extra}]'"
        )
    return "\n".join(lines)


def option_help(option: str, text: str) -> str:
    return f"{text} [{', '.join(formats_taking(option))}]"
