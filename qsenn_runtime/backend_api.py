"""What a Model needs of the engine that runs its graph: onnxruntime, TensorRT, or a remote server
(backends.py and its siblings implement it)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

import numpy as np

Shape = tuple  # of int, or None for a dynamic dimension


class Backend(Protocol):
    @property
    def name(self) -> str:
        """For reports, e.g. "onnxruntime 1.32.0 (CPUExecutionProvider)"."""
        ...

    @property
    def precision(self) -> str:
        """Of the computation that produces the logits ("fp32", "fp16", …)."""
        ...

    @property
    def head_precision(self) -> str:
        """Of the head (features c, logits): what bounds the identity check's tolerance."""
        ...

    @property
    def batch_range(self) -> tuple[int, int | None]:
        """The smallest and largest batch it accepts (None: any)."""
        ...

    @property
    def input_shapes(self) -> Mapping[str, Shape]: ...

    @property
    def output_shapes(self) -> Mapping[str, Shape]: ...

    def run(self, batch: np.ndarray, output_names: Sequence[str]) -> list[np.ndarray]:
        """The named outputs (float32) of one N×3×H×W float32 batch."""
        ...
