"""Running the `qsenn` command line in-process, as its console script does."""

from __future__ import annotations

import sys

import cli
from qsenn_bench.testing.cli_runs import exit_status


def run_cli(capsys, *args) -> tuple[int, str, str]:
    """cli.main() as the `qsenn` script runs it: (exit code, stdout, stderr)."""
    argv, sys.argv = sys.argv, ["qsenn", *map(str, args)]
    try:
        cli.main()
        code = 0
    except SystemExit as exc:
        code = exit_status(exc)
    finally:
        sys.argv = argv
    captured = capsys.readouterr()
    return code, captured.out, captured.err
