"""Reading a file written by `torch.save` without letting it run code (`weights_only=True`), with
every failure — missing, empty, truncated, corrupt, a pickle that names code, an exported model
handed over instead — as one line naming the file. The only `torch.load` of the packages."""

from __future__ import annotations

import pickle
import warnings
from pathlib import Path
from typing import Any

import torch

from .errors import QsennError, first_line, path_problem


def refused_global(exc: pickle.UnpicklingError) -> bool:
    """Whether the weights-only unpickler refused a class or function the file names (which a full
    unpickler would import and call), rather than bytes that are no checkpoint at all."""
    return "GLOBAL" in str(exc)


# The first bytes of what `qsenn export` writes, to name a file handed to the wrong command.
ENGINE_MAGIC = b"QSENN-TRT\x00"  # qsenn_runtime.engine_file.MAGIC (training may not import the runtime)
EXPORTED_SUFFIXES = (".onnx", ".engine", ".plan", ".trt")


class UnreadableFile(QsennError):
    """A file torch cannot load: missing, empty, truncated, corrupt, or no torch.save file.
    `problem` says which, in words that follow the file's name."""

    def __init__(self, path: Path, problem: str, remedy: str) -> None:
        super().__init__(f"{path} {problem}; {remedy}")
        self.path, self.problem = path, problem


class CodeCarryingFile(QsennError):
    """A pickle that names classes or functions: loading it fully could run code, so it is refused."""


def exported_model_kind(path: Path, head: bytes) -> str | None:
    """ "a qsenn TensorRT engine" or "an ONNX model" when the file looks like an export, else None."""
    if head.startswith(ENGINE_MAGIC):
        return "a qsenn TensorRT engine"
    # An ONNX ModelProto opens with ir_version (field 1, a small varint), then a length-delimited
    # field (producer name, graph, …): 0x08, 1..31, then a tag byte of wire type 2.
    onnx_like = len(head) > 2 and head[0] == 0x08 and 0 < head[1] < 32 and head[2] & 7 == 2
    if path.suffix.lower() in EXPORTED_SUFFIXES or onnx_like:
        return "an exported engine" if path.suffix.lower() != ".onnx" and not onnx_like else "an ONNX model"
    return None


def _as_predicate(problem: str) -> str:
    """path_problem's words after the file's name: 'is a directory, not a file', 'does not exist'."""
    if problem == "no such file":
        return "does not exist"
    if problem.startswith(("a ", "not ")):
        return f"is {problem}"
    return f"cannot be opened ({problem})"


def read_torch_file(path: Path, remedy: str) -> Any:
    """`torch.load(path, weights_only=True)`: tensors and plain data only, nothing that runs code.

    Every way it fails is one line naming the file (UnreadableFile: '<path> is empty (0 bytes)…;
    <remedy>'), torch's own warnings included: they would only repeat the line. A pickle naming
    classes or functions is a CodeCarryingFile."""
    path = Path(path)
    problem = path_problem(path)
    if problem is not None:
        raise UnreadableFile(path, _as_predicate(problem), remedy)
    with open(path, "rb") as file:
        head = file.read(16)
    if not head:
        raise UnreadableFile(path, "is empty (0 bytes: an interrupted download or copy, or a full disk)", remedy)
    exported = exported_model_kind(path, head)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:  # torch's own text suggests weights_only=False: not here
        if refused_global(exc):
            raise CodeCarryingFile(
                f"refusing to load {path}: it holds objects other than tensors and plain data, "
                f"which could run code when loaded"
            ) from None
        problem = "is not a torch.save file, or a corrupt one"
    except Exception as exc:  # a cut zip archive: RuntimeError, OSError, EOFError…; torch's text runs on
        problem = f"is truncated or corrupt (torch: {first_line(exc).split('. ')[0]})"
    if exported is not None:
        raise UnreadableFile(
            path,
            f"is {exported}, already exported, not a training checkpoint",
            f"use it as it is (`qsenn predict {path} IMAGE`, `qsenn inspect {path}`)",
        )
    raise UnreadableFile(path, problem, remedy)
