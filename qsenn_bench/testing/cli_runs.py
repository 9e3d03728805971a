"""Running the `qsenn` command line in this process, as its console script does (cli.main)."""

from __future__ import annotations

import contextlib
import io
import sys


def exit_status(exc: SystemExit) -> int:
    """The process's exit status for a SystemExit: None → 0, an int → itself, a message → 1."""
    if exc.code is None:
        return 0
    return exc.code if isinstance(exc.code, int) else 1


def run_cli(*args: object) -> tuple[int, str, str]:
    """cli.main() on `qsenn ARGS…`: (exit status, stdout, stderr); any other exception escapes."""
    import cli

    stdout, stderr = io.StringIO(), io.StringIO()
    saved, sys.argv = sys.argv, ["qsenn", *map(str, args)]
    code = 0
    try:
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            cli.main()
    except SystemExit as exc:
        code = exit_status(exc)
    finally:
        sys.argv = saved
    return code, stdout.getvalue(), stderr.getvalue()
