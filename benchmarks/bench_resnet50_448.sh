#!/usr/bin/env bash
# The CPU goals of docs/benchmarks.md, on a quiet machine (nothing else running: check `uptime`;
# every result file records the load average it saw). Run from anywhere:
#
#     benchmarks/bench_resnet50_448.sh
#
# Writes benchmarks/results/<kind>_<model>_<cpu>_<versions>.{json,csv}.
#   1. speed: ResNet-50 at 448 px (random weights, random ternary head of the paper's size),
#      torch fp32 eager vs onnxruntime fp32 vs onnxruntime INT8, batch 1 and 8, all CPUs
#   2. agreement: the trained demo model on all 800 test images (INT8 calibrated on 256 training images)
#   3. runtime overhead over a bare onnxruntime session.run, on the ResNet-50 exports of step 1
#   4. the INT8 format choice: QOperator/QDQ × uint8/int8 activations, with their kernels
set -euo pipefail
cd "$(dirname "$0")/.."
QSENN=${QSENN:-.venv/bin/qsenn}
PYTHON=${PYTHON:-.venv/bin/python}
RESULTS=benchmarks/results
DEMO_RUN=${DEMO_RUN:-runs/demo/resnet18/synth/0}
ARTIFACTS=$(mktemp -d)
trap 'rm -rf "$ARTIFACTS"' EXIT
mkdir -p "$RESULTS"
uptime

"$QSENN" bench --arch resnet50 --img-size 448 --random --backends torch,onnx,onnx-int8 --batch 1,8 \
    --warmup 5 --iters 30 --images 16 --calib-count 64 --artifacts "$ARTIFACTS" --json "$RESULTS" --csv "$RESULTS"

if [ -e "$DEMO_RUN/final.pt" ]; then
    "$QSENN" bench "$DEMO_RUN" --backends torch,onnx,onnx-int8 --batch 1,32 --warmup 5 --iters 30 \
        --images 800 --calib-count 256 --json "$RESULTS" --csv "$RESULTS"
else
    echo "no trained demo model at $DEMO_RUN (make demo trains it); agreement step skipped" >&2
fi

# runtime_overhead.py names its results by the model file's stem.
cp "$ARTIFACTS/model.onnx" "$ARTIFACTS/resnet50-448-random.onnx"
cp "$ARTIFACTS/model.int8.onnx" "$ARTIFACTS/resnet50-448-random.int8.onnx"
for model in "$ARTIFACTS/resnet50-448-random.onnx" "$ARTIFACTS/resnet50-448-random.int8.onnx"; do
    "$PYTHON" benchmarks/runtime_overhead.py "$model" --batches 1 8 --repeats 30
done

"$PYTHON" benchmarks/int8_formats.py --iters 20
uptime
