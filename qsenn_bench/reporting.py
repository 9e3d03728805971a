"""What a benchmark writes: result files named by model, device and versions (timm's habit), one
CSV row per backend and batch, and the printed table."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

from qsenn_export.formats import TOP_FEATURES

from .bench import TOP

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results"  # the committed results (source tree)


def save_result(
    kind: str, model: str, result: dict, folder: Path = RESULTS, libraries: tuple[str, ...] = ("torch", "onnxruntime")
) -> Path:
    """Write a benchmark's result as JSON into `folder`, named by result_name from its
    "environment" (added when missing) — the one naming scheme of every result file."""
    if "environment" not in result:
        from .environment import environment

        result = {**result, "environment": environment()}
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / (result_name(kind, model, result["environment"], libraries) + ".json")
    path.write_text(json.dumps(result, indent=2, default=str) + "\n")
    return path


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9.]+", "-", text.lower()).strip("-")


def result_name(kind: str, model: str, env: dict, libraries: tuple[str, ...] = ("torch", "onnxruntime")) -> str:
    """<kind>_<model>_<device>_<library><version>…, e.g.
    bench_resnet50-448-random_amd-epyc_torch2.14.1_onnxruntime1.32.0 (no suffix); every result file
    under benchmarks/results/ is named by this."""
    versions = "_".join(f"{name}{env[name]}" for name in libraries if name in env)
    return "_".join(part for part in (kind, slug(model), slug(env["device"]), versions) if part)


CSV_FIELDS = (
    "backend",
    "batch",
    "min_ms",
    "mean_ms",
    "median_ms",
    "p90_ms",
    "p95_ms",
    "p99_ms",
    "images_per_s",
    "speedup",
    "paired_speedup",
    "first_call_ms",
    "peak_memory_mib",
    "memory_kind",
    "top1",
    TOP,
    "logit_rel_err",
    "model",
    "device",
    "cpu",
    "gpu",
    "threads",
    "python",
    "torch",
    "onnxruntime",
    "onnx",
    "load_average",
)


def csv_rows(result: dict) -> list[dict]:
    env = result["environment"]
    rows = []
    for row in result["results"]:
        agreed = result["agreement"].get(row["backend"], {"top1": 1.0, TOP: 1.0, "logit_rel_err": 0.0})
        merged = {
            **row,
            **agreed,
            "model": result["model"]["label"],
            **{k: env.get(k) for k in ("device", "cpu", "gpu", "threads", "python", "torch", "onnxruntime", "onnx")},
            "load_average": " ".join(map(str, env["load_average"])),
        }
        rows.append({k: merged.get(k) for k in CSV_FIELDS})
    return rows


def output_path(path: Path, result: dict, suffix: str) -> Path:
    """`path` itself, or for an existing folder a file in it named by model, device and versions."""
    path = Path(path)
    if path.is_dir():
        return path / (result_name("bench", result["model"]["label"], result["environment"]) + suffix)
    return path


def write_json(result: dict, path: Path) -> Path:
    path = output_path(path, result, ".json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    return path


def write_csv(result: dict, path: Path) -> Path:
    path = output_path(path, result, ".csv")
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=CSV_FIELDS)
        writer.writeheader()
        writer.writerows(csv_rows(result))
    return path


def _percent(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.1f}%"


def table(result: dict) -> str:
    """The printed summary: one row per backend and batch size."""
    env = result["environment"]
    head = (
        f"{'backend':<17}{'batch':>6}{'min ms':>10}{'median':>10}{'p90':>10}{'p99':>10}{'img/s':>9}"
        f"{'×torch':>8}{'paired':>8}{'peak MiB':>10}{'top-1':>9}{f'top-{TOP_FEATURES} feat':>12}"
    )
    load = " ".join(map(str, env["load_average"]))
    lines = [
        f"{result['model']['label']} on {env['device']} ({env['threads']} threads; torch {env.get('torch')}, "
        f"onnxruntime {env.get('onnxruntime')}; load average {load})",
        head,
        "-" * len(head),
    ]
    for row in result["results"]:
        agreed = result["agreement"].get(row["backend"], {})
        memory = row.get("peak_memory_mib")
        memory = "—" if memory is None else f"{memory:.0f}"
        top1 = _percent(agreed.get("top1")) if agreed else "baseline"
        lines.append(
            f"{row['backend']:<17}{row['batch']:>6}{row['min_ms']:>10.2f}{row['median_ms']:>10.2f}"
            f"{row['p90_ms']:>10.2f}{row['p99_ms']:>10.2f}{row['images_per_s']:>9.1f}{row['speedup']:>8.2f}"
            f"{row['paired_speedup']:>8.2f}{memory:>10}{top1:>9}{_percent(agreed.get(TOP)) if agreed else '':>12}"
        )
    timed = {row["backend"] for row in result["results"]}
    for name, agreed in result["agreement"].items():
        if name not in timed or agreed.get("verdict", "OK") != "OK":
            lines.append(
                f"{name}: top-1 {_percent(agreed['top1'])}, top-{TOP_FEATURES} features "
                f"{_percent(agreed[TOP])}, rel Δlogit {agreed['logit_rel_err']:.1e} on {agreed['images']} "
                f"images — {agreed.get('verdict', 'OK')}"
            )
    for name, reason in result["skipped"].items():
        lines.append(f"{name}: skipped, {reason}")
    return "\n".join(lines)
