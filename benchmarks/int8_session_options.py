"""Which onnxruntime session options make the INT8 backbone fastest at batch 1 on the CPU, and how
one session per core serves next to one session on all cores (issue 15, item 4).

Every option runs in a worker process of its own (its threads never meet another option's), all
loaded at once; the parent hands out timed calls round-robin, in bursts of `--burst` calls each,
rotating the order every round, so every option and PyTorch eager (the baseline of every ratio)
see the same machine over the same minutes. The first call of a burst follows the other workers'
calls (the threads went idle meanwhile: a request after a quiet moment); the others follow each
other back to back (a stream of requests). Agreement (top-1, same top-5 features) is against the
PyTorch model on the same images.

The serving part runs after: `--clients` client threads, each sending `--requests` batch-1 calls
back to back, against one session with all threads shared by the clients, and against one
single-threaded session per client.

    python benchmarks/int8_session_options.py [MODEL_OR_RUN] [--arch resnet50 --img-size 448]
        [--rounds 12] [--burst 5] [--threads 2] [--clients 2] [--requests 40]

Results: benchmarks/results/int8_session_options[_selected]_<model>_<cpu>_<versions>.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import torch
from runtime_common import add_model_arguments, quantisation_inputs

from qsenn_bench.bench import agreement
from qsenn_bench.environment import environment
from qsenn_bench.measurement import REPO_ROOT, latency_summary
from qsenn_bench.reporting import RESULTS, save_result
from qsenn_bench.sources import model_label
from qsenn_export.formats import FORMATS
from qsenn_export.int8 import Int8Settings, quantize_backbone
from qsenn_export.verify import SourceForward

# name → session settings. "runtime default" is the session qsenn_runtime.load opens on the CPU
# (onnxruntime's defaults with the given threads: spinning on, sequential, every graph optimisation).
OPTIONS: dict[str, dict] = {
    "runtime default": {},
    "no spinning": {"config": {"session.intra_op.allow_spinning": "0"}},
    "spinning stops after each run": {"config": {"session.force_spinning_stop": "1"}},
    "dynamic block base 4": {"config": {"session.dynamic_block_base": "4"}},
    "dynamic block base 4 + spinning stops": {
        "config": {"session.dynamic_block_base": "4", "session.force_spinning_stop": "1"}
    },
    "pinned: one thread per core": {"pin": True},
    "pinned + dynamic block base 4": {"pin": True, "config": {"session.dynamic_block_base": "4"}},
    "parallel execution": {"parallel": True},
    "graph level extended (no NHWC layout)": {"level": "ORT_ENABLE_EXTENDED"},
    "graph level basic": {"level": "ORT_ENABLE_BASIC"},
    "1 thread": {"threads": 1},
}
TORCH = "torch eager fp32"

WORKER = r"""
import json, os, sys, time
import numpy as np
spec = json.loads(sys.argv[1])
images = np.load(spec["images"])
threads = spec["threads"]
if spec.get("torch"):
    import torch
    torch.set_num_threads(threads)
    model = torch.load(spec["model"], weights_only=False).eval()
    def forward(x):
        with torch.no_grad():
            return [t.numpy() for t in model(torch.from_numpy(x))]
    sessions = [forward]
else:
    import onnxruntime as ort
    def session(threads, cpu):
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        for key, value in spec.get("config", {}).items():
            options.add_session_config_entry(key, value)
        if spec.get("pin") and threads > 1:  # the pool's threads on cores 2..n (1-based), the caller on the first
            options.add_session_config_entry("session.intra_op_thread_affinities", ";".join(str(c) for c in range(2, threads + 1)))
        if spec.get("level"):
            options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, spec["level"])
        if spec.get("parallel"):
            options.execution_mode = ort.ExecutionMode.ORT_PARALLEL
            options.inter_op_num_threads = threads
        s = ort.InferenceSession(spec["model"], options, providers=["CPUExecutionProvider"])
        names = ["logits", "features", "feature_maps"]
        return lambda x: s.run(names, {"images": x})
    count = spec.get("sessions", 1)
    sessions = [session(threads, i) for i in range(count)]
    if spec.get("pin"):
        os.sched_setaffinity(0, {0})
first = sessions[0]
out = {"logits": [], "features": [], "feature_maps": []}
for image in images:
    for name, value in zip(out, first(image[None])):
        out[name].append(value)
np.savez(spec["outputs"], **{k: np.concatenate(v) for k, v in out.items()})
probe = np.ascontiguousarray(images[:1])
for _ in range(3):
    first(probe)
print("ready", flush=True)
for line in sys.stdin:
    command = line.split()
    if command[0] == "burst":
        times = []
        for _ in range(int(command[1])):
            start = time.perf_counter()
            first(probe)
            times.append(time.perf_counter() - start)
        print(json.dumps(times), flush=True)
    elif command[0] == "serve":  # clients, requests: each client thread its own session if there are several
        import threading
        clients, requests = int(command[1]), int(command[2])
        latencies = [[] for _ in range(clients)]
        def client(i):
            call = sessions[i % len(sessions)]
            if spec.get("pin"):
                os.sched_setaffinity(0, {i % os.cpu_count()})
            for _ in range(requests):
                start = time.perf_counter()
                call(probe)
                latencies[i].append(time.perf_counter() - start)
        workers = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
        start = time.perf_counter()
        for w in workers: w.start()
        for w in workers: w.join()
        print(json.dumps({"wall_s": time.perf_counter() - start, "latencies": sum(latencies, [])}), flush=True)
"""


class Worker:
    """One option in a process of its own, loaded and warm, answering timed bursts."""

    def __init__(self, name: str, spec: dict, scratch: Path):
        self.name = name
        self.outputs_path = scratch / f"outputs-{abs(hash(name))}.npz"
        spec = {**spec, "outputs": str(self.outputs_path)}
        env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
        self.process = subprocess.Popen(
            [sys.executable, "-c", WORKER, json.dumps(spec)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        self.times: list[float] = []
        self.first_times: list[float] = []

    def wait_ready(self) -> None:
        line = self.process.stdout.readline() if self.process.stdout else ""
        if line.strip() != "ready":
            raise SystemExit(f"the worker of '{self.name}' failed to start (see its error above)")

    def ask(self, command: str):
        assert self.process.stdin and self.process.stdout
        self.process.stdin.write(command + "\n")
        self.process.stdin.flush()
        return json.loads(self.process.stdout.readline())

    def burst(self, calls: int) -> None:
        times = self.ask(f"burst {calls}")
        self.first_times.append(times[0])
        self.times.extend(times)

    def outputs(self) -> dict[str, np.ndarray]:
        with np.load(self.outputs_path) as data:
            return {k: data[k] for k in data.files}

    def close(self) -> None:
        if self.process.stdin:
            self.process.stdin.close()
        self.process.wait(timeout=60)


def summary(seconds: list[float]) -> dict:
    result = latency_summary(seconds)
    return {k: result[k] for k in ("n", "median_ms", "p90_ms", "min_ms", "mean_ms")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_model_arguments(parser)
    parser.add_argument("--rounds", type=int, default=12, help="rounds of one burst per option")
    parser.add_argument("--burst", type=int, default=5, help="timed calls per option per round")
    parser.add_argument(
        "--threads", type=int, default=os.cpu_count() or 1, help="intra-op threads (torch: its threads)"
    )
    parser.add_argument("--clients", type=int, default=os.cpu_count() or 1, help="client threads of the serving part")
    parser.add_argument("--requests", type=int, default=40, help="calls per client in the serving part")
    parser.add_argument(
        "--only", action="append", choices=list(OPTIONS), help="time only these options (repeatable; default: all)"
    )
    parser.add_argument("--serving", action=argparse.BooleanOptionalAction, default=True, help="run the serving part")
    args = parser.parse_args()

    inputs = quantisation_inputs(args, args.threads)
    source, metadata, fp32_model, images = inputs.source, inputs.metadata, inputs.fp32_model, inputs.images
    images_description, calibration_description = inputs.images_description, inputs.calibration_description
    settings = Int8Settings()  # what `qsenn export --int8` writes
    print(f"quantising: {settings.describe()}")
    int8_model = quantize_backbone(fp32_model, inputs.calibration, metadata, calibration_description, settings)

    with tempfile.TemporaryDirectory(prefix="qsenn-int8-options-") as folder:
        scratch = Path(folder)
        onnx.save(int8_model, str(scratch / "int8.onnx"))
        torch.save(SourceForward(source.model, source.head.scale, source.info).eval(), scratch / "torch.pt")
        np.save(scratch / "images.npy", np.ascontiguousarray(images, dtype=np.float32))
        common = {"images": str(scratch / "images.npy"), "threads": args.threads}
        int8 = {**common, "model": str(scratch / "int8.onnx")}
        workers = [Worker(TORCH, {**common, "torch": True, "model": str(scratch / "torch.pt")}, scratch)]
        chosen = {name: option for name, option in OPTIONS.items() if not args.only or name in args.only}
        workers += [Worker(name, {**int8, **option}, scratch) for name, option in chosen.items()]
        for worker in workers:
            worker.wait_ready()
        print(f"{len(workers)} workers ready; {args.rounds} rounds of {args.burst} calls each")
        for round_index in range(args.rounds):
            shift = round_index % len(workers)
            for worker in workers[shift:] + workers[:shift]:
                worker.burst(args.burst)
        reference = workers[0].outputs()
        tolerance = FORMATS["onnx"].tolerances["int8"]
        rows = {}
        for worker in workers:
            rows[worker.name] = {
                "settings": OPTIONS.get(worker.name, {"torch": True}),
                "latency": summary(worker.times),
                "after_idle": summary(worker.first_times),
                "back_to_back": summary([t for i, t in enumerate(worker.times) if i % args.burst]),
            }
            if worker is not workers[0]:
                rows[worker.name]["agreement"] = agreement(
                    reference, worker.outputs(), metadata, tolerance, images_description
                )
        for worker in workers:
            worker.close()

        serving = {}
        serve_specs = {
            f"1 session × {args.threads} threads, shared": {**int8},
            f"{args.clients} sessions × 1 thread, one per client": {
                **int8,
                "threads": 1,
                "sessions": args.clients,
            },
            f"{args.clients} sessions × 1 thread, pinned one per core": {
                **int8,
                "threads": 1,
                "sessions": args.clients,
                "pin": True,
            },
        }
        for name, spec in serve_specs.items() if args.serving else ():
            worker = Worker(name, spec, scratch)
            worker.wait_ready()
            served = worker.ask(f"serve {args.clients} {args.requests}")
            worker.close()
            serving[name] = {
                "requests_per_s": args.clients * args.requests / served["wall_s"],
                "latency": summary(served["latencies"]),
            }

    baseline = rows[TORCH]["latency"]["median_ms"]
    env = {**environment(), "threads": args.threads}
    print(
        f"\n{model_label(source)}, INT8 ({settings.format}, {settings.activations}), batch 1, {args.threads} threads, "
        f"onnxruntime {env.get('onnxruntime')}, torch {env.get('torch')}, load {' '.join(map(str, env['load_average']))}"
    )
    print(
        f"{'option':<40}{'median':>8}{'p90':>8}{'min':>8}{'×torch':>8}{'idle med':>10}{'b2b med':>9}"
        f"{'top-1':>8}{'top-5 f':>9}"
    )
    for name, row in rows.items():
        latency, agreed = row["latency"], row.get("agreement", {})
        row["speedup_vs_torch_median"] = baseline / latency["median_ms"]
        top1 = f"{100 * agreed['top1']:.1f}%" if agreed else ""
        top5 = f"{100 * agreed['top5_features']:.1f}%" if agreed else ""
        print(
            f"{name:<40}{latency['median_ms']:>8.1f}{latency['p90_ms']:>8.1f}{latency['min_ms']:>8.1f}"
            f"{row['speedup_vs_torch_median']:>8.2f}{row['after_idle']['median_ms']:>10.1f}"
            f"{row['back_to_back']['median_ms']:>9.1f}{top1:>8}{top5:>9}"
        )
    print(f"\nserving: {args.clients} clients × {args.requests} back-to-back batch-1 requests")
    print(f"{'layout':<48}{'req/s':>8}{'median':>8}{'p90':>8}")
    for name, row in serving.items():
        latency = row["latency"]
        print(f"{name:<48}{row['requests_per_s']:>8.1f}{latency['median_ms']:>8.1f}{latency['p90_ms']:>8.1f}")

    out = save_result(
        "int8_session_options" + ("_selected" if args.only else ""),
        model_label(source),
        {
            "model": model_label(source),
            "environment": env,
            "rounds": args.rounds,
            "burst": args.burst,
            "int8": settings.describe(),
            "agreement_images": images_description,
            "calibration": calibration_description,
            "options": rows,
            "serving": {"clients": args.clients, "requests_per_client": args.requests, "layouts": serving},
            "measured_at": time.strftime("%Y-%m-%d %H:%M:%S"),
        },
        RESULTS,
        ("torch", "onnxruntime"),
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
