"""`qsenn serve` in a child process for the tests and benchmarks/serve_load.py: on a free port of
127.0.0.1 (port 0; the port is read from the server's "listening on" line), stopped with SIGTERM
at the end, and sent SIGTERM by the kernel if the parent dies first (PR_SET_PDEATHSIG), so no
server outlives its test."""

from __future__ import annotations

import ctypes
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
_LISTENING = re.compile(r"listening on http://127\.0\.0\.1:(\d+)")
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


class ServeProcess:
    def __init__(self, *args: object, startup_timeout: float = 120.0, nice: int = 0):
        command = [sys.executable, "-m", "cli", "serve", *map(str, args), "--host", "127.0.0.1", "--port", "0"]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
        self.process = subprocess.Popen(
            (["nice", "-n", str(nice)] if nice else []) + command,
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            preexec_fn=_die_with_parent,
        )
        self.lines: list[str] = []
        self._port: int | None = None
        self._terminated = False
        self._ready = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()
        if not self._ready.wait(startup_timeout) or self._port is None:
            self.kill()
            raise RuntimeError(f"qsenn serve did not start within {startup_timeout:g} s:\n{self.output}")

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))
            match = _LISTENING.search(line)
            if match and self._port is None:
                self._port = int(match.group(1))
                self._ready.set()
        self._ready.set()  # the process ended (before listening, if _port is still None)

    @property
    def port(self) -> int:
        assert self._port is not None
        return self._port

    @property
    def address(self) -> str:
        """host:port, as tritonclient takes it."""
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.address}"

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def rss_mib(self) -> float:
        """Resident memory of the server process (the interpreter, not the nice wrapper: nice execs)."""
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise RuntimeError("no VmRSS")

    def terminate(self) -> None:
        """SIGTERM, once: a second one during the drain would kill the server outright."""
        if not self._terminated:
            self._terminated = True
            self.process.send_signal(signal.SIGTERM)

    def wait(self, timeout: float = 60.0) -> int:
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise

    def stop(self, timeout: float = 60.0) -> int:
        if self.process.poll() is None:
            self.terminate()
        code = self.wait(timeout)
        deadline = time.monotonic() + 5
        while self.lines and not self.lines[-1].startswith("stopped") and time.monotonic() < deadline:
            time.sleep(0.05)  # the reader thread catches up with the last lines
        return code

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def __enter__(self) -> ServeProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self.stop()
        finally:
            self.kill()
