"""Torch-free runtime for exported Q-SENN models: load an ONNX model or TensorRT engine, predict
with exact per-feature explanations, and read the global explanation.

    import qsenn_runtime
    model = qsenn_runtime.load("model.onnx")
    prediction = model.predict("bird.jpg")
    prediction.class_name, prediction.probability, prediction.explanation.contributions

    remote = qsenn_runtime.connect("http://127.0.0.1:8000", model="birds")  # same API, served elsewhere

Names are resolved on first use, so `import qsenn_runtime` (and its errors) costs nothing
until a model is loaded; onnxruntime and tensorrt are imported by the backend that needs them.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "load": "loader",
    "connect": "remote",
    "read_metadata": "loader",
    "Model": "model",
    "Prediction": "results",
    "PredictionError": "results",
    "Explanation": "results",
    "Contribution": "results",
    "ExplainedImage": "results",
    "ClassRule": "report",
    "ModelMetadata": "metadata",
    "MetadataError": "metadata",
    "QsennRuntimeError": "errors",
    "InputError": "errors",
    "BackendError": "errors",
    "IdentityCheckError": "errors",
}
__all__ = sorted(_EXPORTS)  # noqa: PLE0605  (a list, built from the one table above)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
