"""Test helpers that benchmarks use too: tiny toy models (torch-free ONNX ones and Q-SENN
checkpoints), fake dataset layouts, the SIGKILL chain over every training stage, the concurrent
serving check and the hostile-input harness. Nothing here downloads anything."""
