"""Which onnxruntime static-quantisation format runs a Q-SENN backbone fastest on this CPU:
QOperator or QDQ, uint8 or int8 activations (weights always per-channel symmetric int8), each
with the head left float (qsenn_export.int8).

Per variant: latency at batch 1 interleaved with the fp32 model (both through qsenn_runtime),
the operator types of onnxruntime's optimised graph with their share of the node time (integer
kernels: QLinearConv, QLinearAdd; float fallback: DequantizeLinear → Conv), and agreement with
the fp32 model. The default is ResNet-50 at 448 px with random weights (speed; its agreement
figures say little); pass a trained run for meaningful agreement.

    python benchmarks/int8_formats.py [MODEL_OR_RUN] [--arch resnet50 --img-size 448]
                                      [--iters 10] [--threads N] [--calib-count 16] [--images 32]

Results: benchmarks/results/int8_formats_<model>_<cpu>_<versions>.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
from collections import Counter
from dataclasses import asdict
from pathlib import Path

import numpy as np
import onnx
from runtime_common import add_model_arguments, quantisation_inputs

import qsenn_runtime
from qsenn_bench.backends import runtime_runner
from qsenn_bench.bench import BenchConfig, agreement
from qsenn_bench.environment import environment
from qsenn_bench.measurement import latency_summary, onnx_op_profile, profile_line, time_interleaved
from qsenn_bench.reporting import RESULTS, result_name
from qsenn_bench.sources import model_label
from qsenn_export.formats import FORMATS
from qsenn_export.int8 import Int8Settings, quantize_backbone

VARIANTS = [Int8Settings(fmt, activations) for fmt in ("QOperator", "QDQ") for activations in ("QUInt8", "QInt8")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_model_arguments(parser)
    parser.add_argument("--iters", type=int, default=10, help="timed runs per variant")
    parser.add_argument("--threads", type=int, default=None, help="onnxruntime intra-op threads (default: all CPUs)")
    args = parser.parse_args()

    inputs = quantisation_inputs(args, args.threads)
    source, metadata, fp32_model = inputs.source, inputs.metadata, inputs.fp32_model
    images, images_description = inputs.images, inputs.images_description
    calibration, calibration_description = inputs.calibration, inputs.calibration_description
    config = BenchConfig(threads=args.threads, images=args.images, calib_count=args.calib_count)
    tolerance = FORMATS["onnx"].tolerances["int8"]

    with tempfile.TemporaryDirectory(prefix="qsenn-int8-formats-") as scratch:
        paths = {"fp32": Path(scratch) / "fp32.onnx"}
        onnx.save(fp32_model, str(paths["fp32"]))
        variants = {}
        for settings in VARIANTS:
            name = f"{settings.format}-{settings.activations}"
            print(f"quantising: {settings.describe()}")
            model = quantize_backbone(fp32_model, calibration, metadata, calibration_description, settings)
            paths[name] = Path(scratch) / f"{name}.onnx"
            onnx.save(model, str(paths[name]))
            variants[name] = {
                "settings": asdict(settings),
                "file_ops": dict(Counter(node.op_type for node in model.graph.node).most_common()),
            }

        runners = [
            runtime_runner(
                name, qsenn_runtime.load(path, "cpu", threads=config.cpu_threads, batch_size=1), name, 1, None
            )
            for name, path in paths.items()
        ]
        reference = runners[0].outputs(images)
        for runner in runners[1:]:
            variants[runner.name]["agreement"] = agreement(
                reference, runner.outputs(images), metadata, tolerance, images_description
            )
        for name, path in paths.items():
            profile = onnx_op_profile(path, images[:1], config.cpu_threads)
            print(profile_line(name, profile))
            variants.setdefault(name, {})["profile_batch1"] = profile
        times = time_interleaved(runners, {r.name: r.prepare(images[:1]) for r in runners}, warmup=2, iters=args.iters)

    fp32_median = float(np.median(times["fp32"]))
    for name, seconds in times.items():
        summary = latency_summary(seconds)
        variants[name]["latency_batch1"] = summary
        variants[name]["speedup_vs_onnx_fp32"] = fp32_median / (summary["median_ms"] / 1e3)
    passing = [n for n in variants if n != "fp32" and variants[n]["agreement"].get("verdict") == "OK"]
    fastest = min(
        passing or [n for n in variants if n != "fp32"], key=lambda n: variants[n]["latency_batch1"]["median_ms"]
    )

    env = {**environment(), "threads": config.cpu_threads}
    print(
        f"\n{model_label(source)}, batch 1, {config.cpu_threads} threads, onnxruntime {env.get('onnxruntime')}, "
        f"load average {' '.join(map(str, env['load_average']))}"
    )
    print(f"{'variant':<18}{'median ms':>10}{'×fp32':>7}{'top-1':>8}{'top-5 f':>9}  integer / float convs")
    for name, v in variants.items():
        ops, agreed = v["profile_batch1"], v.get("agreement", {})
        convs = (
            f"{ops.get('QLinearConv', {}).get('nodes', 0) + ops.get('ConvInteger', {}).get('nodes', 0)} / "
            f"{ops.get('Conv', {}).get('nodes', 0) + ops.get('FusedConv', {}).get('nodes', 0)}"
        )
        top1 = f"{100 * agreed['top1']:.1f}%" if agreed else ""
        top5 = f"{100 * agreed['top5_features']:.1f}%" if agreed else ""
        print(
            f"{name:<18}{v['latency_batch1']['median_ms']:>10.1f}{v['speedup_vs_onnx_fp32']:>7.2f}"
            f"{top1:>8}{top5:>9}  {convs}"
        )
    print(f"fastest variant within the INT8 tolerance: {fastest}")

    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / (result_name("int8_formats", model_label(source), env, ("onnxruntime",)) + ".json")
    out.write_text(
        json.dumps(
            {
                "model": model_label(source),
                "environment": env,
                "iters": args.iters,
                "agreement_images": images_description,
                "calibration": calibration_description,
                "fastest_within_tolerance": fastest,
                "variants": variants,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
