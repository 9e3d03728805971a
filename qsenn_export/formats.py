"""The one table of export formats: it drives option validation, `qsenn export --help`
and the benchmark. Nothing here imports torch, so the CLI can read it at start-up."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

from qsenn_train.errors import QsennError


@dataclass(frozen=True)
class Tolerance:
    """How close an exported model must stay to its reference.

    `rel` bounds max|Δ| / max(1, max|reference|) for the logits, the features c and the
    feature maps, and the identity residual max|logit − (T·c + b)| relative to the logits.
    `argmax` is the least fraction of images whose predicted class agrees; an image whose
    two classes are tied within the tolerance counts as agreeing.
    """

    rel: float
    argmax: float


@dataclass(frozen=True)
class ExportFormat:
    name: str                     # value of --format
    title: str
    suffix: str                   # of the written file
    devices: tuple[str, ...]      # where the artifact runs
    options: frozenset[str]       # format-specific options it accepts (keys of OPTION_FLAGS)
    extra: str                    # pip extra that installs what building it needs
    tolerances: Mapping[str, Tolerance]   # by precision; the first is the default

    @property
    def default_precision(self) -> str:
        return next(iter(self.tolerances))


FORMATS: dict[str, ExportFormat] = {f.name: f for f in (
    ExportFormat("onnx", "ONNX", ".onnx", ("CPU", "GPU"), frozenset({"batch"}), "export",
                 {"fp32": Tolerance(rel=1e-4, argmax=1.0)}),
    ExportFormat("trt", "TensorRT engine", ".engine", ("GPU",),
                 frozenset({"batch", "half", "int8", "calib", "workspace"}), "trt",
                 {"fp32": Tolerance(rel=1e-3, argmax=1.0), "fp16": Tolerance(rel=2e-2, argmax=1.0),
                  "int8": Tolerance(rel=1e-1, argmax=0.99)}),
)}

OPTION_FLAGS = {"batch": "--batch", "half": "--half", "int8": "--int8", "calib": "--calib",
                "workspace": "--workspace"}
DEFAULT_TRT_BATCH = 16          # largest batch of an engine's profile unless --batch says
DEFAULT_WORKSPACE_GIB = 4.0
DEFAULT_VERIFY_COUNT = 64


@dataclass(frozen=True)
class ExportOptions:
    format: str = "onnx"
    out: Path | None = None
    batch: int | None = None          # ONNX: static batch (None: dynamic); TRT: profile max
    half: bool = False
    int8: bool = False
    calib: Path | None = None
    workspace: float | None = None    # GiB
    verify: bool = True
    verify_count: int = DEFAULT_VERIFY_COUNT
    verify_images: Path | None = None
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
        raise QsennError(f"unknown export format {options.format!r}; choose one of {', '.join(FORMATS)}")
    fmt = options.export_format
    for option in (o for o in OPTION_FLAGS if o in options.given - fmt.options):
        takers = formats_taking(option)
        raise QsennError(f"{OPTION_FLAGS[option]} is not available for {fmt.title} export"
                         + (f"; formats that take it: {', '.join(takers)}" if takers else ""))
    if options.int8 and options.calib is None:
        raise QsennError("--int8 needs --calib DIR: a folder of calibration images (a few hundred "
                         "training images)")
    if options.calib is not None and not options.int8:
        raise QsennError("--calib is only used with --int8; add --int8 or drop --calib")
    if options.batch is not None and options.batch < 1:
        raise QsennError(f"--batch must be at least 1, got {options.batch}")
    if options.workspace is not None and options.workspace <= 0:
        raise QsennError(f"--workspace must be a positive number of GiB, got {options.workspace}")
    if options.verify_count < 1:
        raise QsennError(f"--verify-count must be at least 1, got {options.verify_count}")
    if not options.verify and options.verify_images is not None:
        raise QsennError("--verify-images has no effect with --no-verify; drop one of them")


def _precisions(f: ExportFormat) -> str:
    return ", ".join(f"{p} {t.rel:.0e}" + (f" argmax≥{100 * t.argmax:.0f}%" if t.argmax < 1 else "")
                     for p, t in f.tolerances.items())


def help_table() -> str:
    """The formats as `qsenn export --help` lists them."""
    lines = []
    for f in FORMATS.values():
        flags = ", ".join(OPTION_FLAGS[o] for o in OPTION_FLAGS if o in f.options)
        lines.append(f"{f.name:<5} {f.title:<16} {f.suffix:<8} {'+'.join(f.devices):<8} "
                     f"{_precisions(f)}; {flags}; pip install 'qsenn[{f.extra}]'")
    return "\n".join(lines)


def option_help(option: str, text: str) -> str:
    return f"{text} [{', '.join(formats_taking(option))}]"
