"""The packages' import directions, read from the source (AST), so a stray import fails here and
not on a user's machine:

    qsenn_train  ──►  qsenn_export  ──►  qsenn_runtime        qsenn_bench on top of all three

- qsenn_train imports neither qsenn_export, qsenn_runtime nor qsenn_bench;
- qsenn_runtime imports nothing of ours (and never torch);
- qsenn_export uses the runtime's contract but not training's pipeline, context or epoch loop;
- nothing imports qsenn_bench but the CLI, the tests and the benchmarks (and of qsenn_bench only
  its test helper cli_runs runs the CLI in-process).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
OURS = ("qsenn_train", "qsenn_export", "qsenn_runtime", "qsenn_bench", "cli")
TRAINING_RUN_MODULES = ("qsenn_train.pipeline", "qsenn_train.context", "qsenn_train.training", "qsenn_train.sparsify")


def imported_modules(path: Path, package: str) -> set[str]:
    """Absolute names of every module `path` imports, at top level or inside functions; relative
    imports are resolved against `package` (the dotted name of the file's package)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)
    return found


def package_imports(package: str) -> dict[str, set[str]]:
    """{file: modules of ours it imports} for every file of `package`."""
    result = {}
    for path in sorted((REPO / package).rglob("*.py")):
        dotted = ".".join(path.relative_to(REPO).with_suffix("").parts)
        own_package = dotted if path.name == "__init__.py" else dotted.rsplit(".", 1)[0]
        ours = {m for m in imported_modules(path, own_package) if m.split(".")[0] in OURS}
        result[str(path.relative_to(REPO))] = ours
    return result


def offenders(package: str, forbidden) -> list[str]:
    return [
        f"{file} imports {module}"
        for file, modules in package_imports(package).items()
        for module in sorted(modules)
        if forbidden(module)
    ]


def _top(module: str) -> str:
    return module.split(".")[0]


def test_train_imports_neither_export_runtime_nor_bench():
    assert offenders("qsenn_train", lambda m: _top(m) in ("qsenn_export", "qsenn_runtime", "qsenn_bench", "cli")) == []


def test_runtime_imports_nothing_of_ours():
    assert offenders("qsenn_runtime", lambda m: _top(m) not in ("qsenn_runtime",)) == []


def test_export_does_not_import_the_training_pipeline_context_or_loop():
    def forbidden(module: str) -> bool:
        return _top(module) in ("qsenn_bench", "cli") or module.startswith(TRAINING_RUN_MODULES)

    assert offenders("qsenn_export", forbidden) == []


def test_bench_sits_on_top_and_nothing_else_imports_it():
    for package in ("qsenn_train", "qsenn_export", "qsenn_runtime"):
        assert offenders(package, lambda m: _top(m) == "qsenn_bench") == []
    # The test helper that runs the command line in-process; nothing else of the package does.
    assert offenders("qsenn_bench", lambda m: _top(m) == "cli") == ["qsenn_bench/testing/cli_runs.py imports cli"]


@pytest.mark.parametrize(
    "source, package, expected",
    [
        ("from ..errors import QsennError", "qsenn_train.data", "qsenn_train.errors"),
        ("from . import faults", "qsenn_train", "qsenn_train.faults"),
        ("import qsenn_runtime.metadata as m", "qsenn_export", "qsenn_runtime.metadata"),
        ("def f():\n    from qsenn_export.fold import read_head", "qsenn_bench", "qsenn_export.fold"),
    ],
)
def test_the_reader_sees_every_kind_of_import(tmp_path, source, package, expected):
    path = tmp_path / "m.py"
    path.write_text(source + "\n")
    assert expected in imported_modules(path, package)


def test_a_forbidden_import_is_reported(tmp_path, monkeypatch):
    """The check itself can fail: a runtime file that imports training is named."""
    fake = tmp_path / "qsenn_runtime"
    fake.mkdir()
    (fake / "bad.py").write_text("def f():\n    from qsenn_train.model import QResNet\n")
    monkeypatch.setattr(__import__(__name__), "REPO", tmp_path)
    assert offenders("qsenn_runtime", lambda m: _top(m) != "qsenn_runtime") == [
        "qsenn_runtime/bad.py imports qsenn_train.model",
        "qsenn_runtime/bad.py imports qsenn_train.model.QResNet",
    ]
