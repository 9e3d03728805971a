"""Load figures of `qsenn serve` (docs/serving.md): 1, 8 and 32 concurrent clients, each sending a
fixed number of infer requests (one image as a binary FP32 `images` tensor, as
`qsenn_runtime.connect` sends it), with dynamic batching on and off.

Two servers run side by side on free ports of 127.0.0.1 (one batching, one not); each level is
split into rounds that alternate between them, so that both see the same machine load; each
level is bounded in requests and in time. Reported per level: requests/s, p50/p90/p99 latency, errors (anything but
200), the mean images per backend call (the server's statistics), the server's CPU time per
request, the largest |Δlogit| against the local runtime on the same images, and each server's
RSS before and after.

    nice -n 10 python benchmarks/serve_load.py MODEL.onnx --label demo-resnet18-64
    nice -n 10 python benchmarks/serve_load.py --resnet50-448      # random weights, exported here

Writes benchmarks/results/serve_load_<label>_<cpu>_ort<version>.json and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from runtime_common import RESULTS, cpu_name

import qsenn_runtime
from qsenn_bench.testing.serve_process import ServeProcess
from qsenn_runtime.serving.protocol import HEADER_LENGTH, Tensor, encode_infer_request, parse_infer_response

MODEL_NAME = "bench"


def export_resnet50_448(folder: Path) -> Path:
    """A random-weight ResNet-50 at 448 px with the paper's head size, as `qsenn bench --random`."""
    path = folder / "resnet50-448-random.onnx"
    if path.is_file():
        return path
    import onnx

    from qsenn_export.bench import random_source
    from qsenn_export.metadata import build_metadata
    from qsenn_export.onnx_export import OPSET, fold_source, to_onnx

    source = random_source("resnet50", 448)
    model = to_onnx(fold_source(source), build_metadata(source, OPSET), batch=None)
    onnx.save(model, str(path))
    return path


def request_body(x: np.ndarray) -> tuple[bytes, dict[str, str]]:
    body, length = encode_infer_request([Tensor.of("images", x)], binary=True)
    return body, {HEADER_LENGTH: str(length), "Content-Type": "application/octet-stream"}


def statistics(server: ServeProcess) -> dict:
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    connection.request("GET", f"/v2/models/{MODEL_NAME}/stats")
    stats = json.loads(connection.getresponse().read())["model_stats"][0]
    connection.close()
    return {"rows": stats["inference_count"], "calls": stats["execution_count"]}


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (all its threads): /proc/PID/stat fields 14, 15."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Sample:
    """One burst of requests at one server: what the clients saw and what the server spent."""

    latencies: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    deltas: list[float] = field(default_factory=list)
    seconds: float = 0.0
    cpu_seconds: float = 0.0
    rows: int = 0
    calls: int = 0


def measure(
    server: ServeProcess, clients: int, per_client: int, time_limit: float, requests: list[tuple], sample: Sample
) -> None:
    """`clients` threads with one keep-alive connection each, `per_client` requests each (fewer if
    `time_limit` runs out); adds to `sample`. requests: (body, headers, expected logits)."""
    lock = threading.Lock()
    barrier = threading.Barrier(clients + 1)
    deadline = [0.0]

    def client(index: int) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=max(time_limit, 60))
        body, headers, expected = requests[index % len(requests)]
        barrier.wait()
        for _ in range(per_client):
            if time.perf_counter() > deadline[0]:
                break
            began = time.perf_counter()
            delta = None
            try:
                connection.request("POST", f"/v2/models/{MODEL_NAME}/infer", body=body, headers=headers)
                response = connection.getresponse()
                content = response.read()
                elapsed = time.perf_counter() - began
                if response.status != 200:
                    failure = f"HTTP {response.status}: {content[:120]!r}"
                else:
                    failure = None
                    logits = parse_infer_response(content, response.getheader(HEADER_LENGTH)).output("logits").data
                    delta = float(np.abs(np.asarray(logits) - expected).max())
            except Exception as exc:  # counted, never hidden
                failure, elapsed = f"{type(exc).__name__}: {exc}", time.perf_counter() - began
                connection.close()
                connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=max(time_limit, 60))
            with lock:
                if failure is None and delta is not None:
                    sample.latencies.append(elapsed)
                    sample.deltas.append(delta)
                else:
                    sample.errors.append(str(failure))
        connection.close()

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(clients)]
    for thread in threads:
        thread.start()
    before = statistics(server)
    cpu_before = cpu_seconds(server.process.pid)
    began = time.perf_counter()
    deadline[0] = began + time_limit
    barrier.wait()
    for thread in threads:
        thread.join(time_limit + 120)
    sample.seconds += time.perf_counter() - began
    sample.cpu_seconds += cpu_seconds(server.process.pid) - cpu_before
    after = statistics(server)
    sample.rows += after["rows"] - before["rows"]
    sample.calls += after["calls"] - before["calls"]


def summary(sample: Sample, clients: int, requests: int) -> dict:
    ms = np.array(sample.latencies) * 1000
    done = len(sample.latencies)

    def percentile(q: int) -> float | None:
        return round(float(np.percentile(ms, q)), 2) if done else None

    return {
        "clients": clients,
        "requests": requests,
        "completed": done,
        "errors": len(sample.errors),
        "first_errors": sample.errors[:3],
        "time_limited": done + len(sample.errors) < requests,
        "seconds": round(sample.seconds, 3),
        "requests_per_s": round(done / sample.seconds, 2),
        "p50_ms": percentile(50),
        "p90_ms": percentile(90),
        "p99_ms": percentile(99),
        # CPU time the server spent per answered request: steadier than requests/s on a shared machine
        "server_cpu_ms_per_request": round(1000 * sample.cpu_seconds / done, 2) if done else None,
        "images_per_backend_call": round(sample.rows / sample.calls, 2) if sample.calls else None,
        "max_abs_logit_diff_vs_local": max(sample.deltas) if sample.deltas else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", nargs="?", type=Path, help="exported model (.onnx)")
    parser.add_argument("--resnet50-448", action="store_true", help="benchmark a random ResNet-50 at 448 px")
    parser.add_argument("--label", default=None, help="name of the model in the results (default: the file's stem)")
    parser.add_argument("--clients", default="1,8,32", help="concurrency levels (default 1,8,32)")
    parser.add_argument(
        "--requests", default=None, help="requests per client at each level (default: 200,100,50; ResNet-50: 16,4,2)"
    )
    parser.add_argument("--time-limit", type=float, default=180.0, help="seconds per level at most (default 180)")
    parser.add_argument(
        "--window-ms", type=float, default=2.0, help="batching window of the batching server (default 2)"
    )
    parser.add_argument("--max-batch", type=int, default=32, help="--max-batch of both servers (default 32)")
    parser.add_argument(
        "--rounds", type=int, default=4, help="rounds per level, alternating between the servers (default 4)"
    )
    parser.add_argument("--artifacts", type=Path, default=None, help="keep the exported ResNet-50 here")
    parser.add_argument(
        "--server-args",
        default="",
        help='more `qsenn serve` options for both servers, e.g. --server-args="--spin --arena"',
    )
    args = parser.parse_args()
    if (args.model is None) == (not args.resnet50_448):
        parser.error("give MODEL or --resnet50-448")
    levels = [int(c) for c in args.clients.split(",")]
    default_requests = "16,4,2" if args.resnet50_448 else "200,100,50"
    per_client = [int(n) for n in (args.requests or default_requests).split(",")]
    if len(per_client) != len(levels):
        parser.error("--requests needs one number per --clients level")

    with tempfile.TemporaryDirectory() as scratch:
        folder = args.artifacts or Path(scratch)
        folder.mkdir(parents=True, exist_ok=True)
        model_path = (
            export_resnet50_448(folder) if args.resnet50_448 else args.model
        ).resolve()  # the servers run in the repository
        label = args.label or model_path.stem
        local = qsenn_runtime.load(model_path, "cpu")
        size = local.metadata.input.size
        images = [np.random.default_rng(i).random((1, 3, size, size), dtype=np.float32) for i in range(8)]
        requests = [
            (*request_body(x), np.array([p.logits for p in local.predict_tensor(x)], np.float32)) for x in images
        ]
        common = [
            model_path,
            "--name",
            MODEL_NAME,
            "--max-batch",
            args.max_batch,
            "--timeout",
            args.time_limit + 60,
            *args.server_args.split(),
        ]
        servers = {
            "on": ServeProcess(*common, "--batch-window-ms", args.window_ms),
            "off": ServeProcess(*common, "--batch-window-ms", 0),
        }
        try:
            for server in servers.values():  # warm-up, then the RSS baseline
                measure(server, 2, 3, 60, requests, Sample())
            rss_before = {mode: server.rss_mib() for mode, server in servers.items()}
            load_before = os.getloadavg()
            rows = []
            # The last level runs twice: a server whose memory still grows the second time leaks;
            # one that only grew with the batch size holds onnxruntime's arena for that batch.
            schedule = [*zip(levels, per_client, [False] * len(levels)), (levels[-1], per_client[-1], True)]
            for clients, n, again in schedule:
                # Each level is split into rounds that alternate between the servers.
                rounds = max(1, min(args.rounds, n))
                samples = {mode: Sample() for mode in servers}
                for r in range(rounds):
                    share = n // rounds + (1 if r < n % rounds else 0)
                    for mode, server in servers.items():
                        measure(server, clients, share, args.time_limit / rounds, requests, samples[mode])
                for mode, server in servers.items():
                    row = {
                        "batching": mode,
                        "window_ms": args.window_ms if mode == "on" else 0,
                        "again": again,
                        "rounds": rounds,
                        **summary(samples[mode], clients, clients * n),
                        "server_rss_after_mib": round(server.rss_mib(), 1),
                    }
                    rows.append(row)
                    print(json.dumps(row), flush=True)
            rss_after = {mode: server.rss_mib() for mode, server in servers.items()}
            load_after = os.getloadavg()
        finally:
            codes = {mode: server.stop() for mode, server in servers.items()}

    import onnxruntime

    result = {
        "kind": "serve_load",
        "model": {
            "label": label,
            "file": str(model_path) if not args.resnet50_448 else "resnet50-448-random (exported by this script)",
            "classes": local.metadata.num_classes,
            "features": local.metadata.num_features,
            "input_px": size,
        },
        "environment": {
            "cpu": cpu_name(),
            "cpus_usable": len(os.sched_getaffinity(0)),
            "onnxruntime": onnxruntime.__version__,
            "loadavg_before": [round(v, 2) for v in load_before],
            "loadavg_after": [round(v, 2) for v in load_after],
            "note": "shared machine: other jobs ran meanwhile; compare rows within this file",
        },
        "settings": {
            "request": "one image, binary FP32 images tensor; outputs logits, features, class_index, class_name, probability",
            "max_batch": args.max_batch,
            "server_args": args.server_args,
            "time_limit_s": args.time_limit,
            "clients": levels,
            "requests_per_client": per_client,
        },
        "server_rss_mib": {
            mode: {"before": round(rss_before[mode], 1), "after": round(rss_after[mode], 1)} for mode in servers
        },
        "server_exit_codes": codes,
        "rows": rows,
    }
    slug = re.sub(r"[^a-z0-9]+", "-", cpu_name().lower()).strip("-")
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"serve_load_{label}_{slug}_ort{onnxruntime.__version__}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(table(result))
    print(f"wrote {out}")


def table(result: dict) -> str:
    rss = result["server_rss_mib"]
    lines = [
        "| model | batching | clients | requests | req/s | p50 ms | p99 ms | errors | images/call | server CPU ms/request | server RSS MiB (start → after) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in result["rows"]:
        mode = row["batching"]
        lines.append(
            f"| {result['model']['label']} | {'on, ' + format(row['window_ms'], 'g') + ' ms' if mode == 'on' else 'off'} "
            f"| {row['clients']}{' again' if row['again'] else ''} | {row['completed']}/{row['requests']} "
            f"| {row['requests_per_s']:.1f} "
            f"| {row['p50_ms']:.1f} | {row['p99_ms']:.1f} | {row['errors']} | {row['images_per_backend_call']} "
            f"| {row['server_cpu_ms_per_request']} "
            f"| {rss[mode]['before']:.0f} → {row['server_rss_after_mib']:.0f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
