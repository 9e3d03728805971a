"""Running the `qsenn` command line in-process, as its console script does."""

from __future__ import annotations

import sys

import cli


def run_cli(capsys, *args) -> tuple[int, str, str]:
    """cli.main() as the `qsenn` script runs it: (exit code, stdout, stderr)."""
    argv, sys.argv = sys.argv, ["qsenn", *map(str, args)]
    try:
        cli.main()
        code = 0
    except SystemExit as exc:
        code = exc.code or 0
    finally:
        sys.argv = argv
    captured = capsys.readouterr()
    return code, captured.out, captured.err
