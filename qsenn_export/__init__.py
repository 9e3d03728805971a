"""Export of trained Q-SENN models to ONNX and TensorRT (built in a later issue)."""
