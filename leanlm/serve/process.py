"""`leanlm serve` in a child process on a free loopback port: for tests, benchmarks and examples.

Example:
    >>> with ServerProcess(["runs/sentiment", "--max-batch", "16"]) as server:
    ...     httpx.post(server.url + "/v1/classify", json={"input": "a fine film"}).json()
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Sequence

from leanlm.errors import LeanlmError


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _child_env() -> dict[str, str]:
    # the child must import the same leanlm as this process (a checkout, not some installed copy)
    here = str(Path(__file__).resolve().parents[2])
    path = os.pathsep.join(p for p in (here, os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path, "PYTHONWARNINGS": "ignore"}


class ServerProcess:
    """Start `leanlm serve ARGS --host 127.0.0.1 --port <free>` and wait until /ready answers 200.

    Args:
        args: the serve command's arguments (models and options, without --host/--port).
        log: file for the server's stderr (default: discarded).
        ready_s: how long to wait for /ready before giving up (the server is stopped then).
    """

    def __init__(self, args: Sequence[str], log: str | os.PathLike | None = None, ready_s: float = 120.0):
        import httpx

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = Path(log) if log else None
        err = open(self.log, "w") if self.log else subprocess.DEVNULL
        self.proc = subprocess.Popen([sys.executable, "-m", "leanlm.cli", "serve", *args, "--host", "127.0.0.1",
                                      "--port", str(self.port)], stdout=subprocess.DEVNULL, stderr=err,
                                     env=_child_env())
        deadline = time.monotonic() + ready_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise LeanlmError(f"leanlm serve exited with {self.proc.returncode}: {self.tail(1)}")
            try:
                if httpx.get(self.url + "/ready", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        self.stop()
        raise LeanlmError(f"leanlm serve was not ready after {ready_s:g} s: {self.tail(1)}")

    def tail(self, lines: int = 30) -> str:
        """The last lines of the server's log (empty without a log file)."""
        if not self.log or not self.log.exists():
            return ""
        return " | ".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def rss_mb(self) -> float:
        """The server's resident memory in MiB (Linux /proc), its worker processes included; NaN where unknown."""
        total, pids = 0.0, [self.proc.pid]
        while pids:
            pid = pids.pop()
            try:
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) / 1024
                pids += [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
            except (OSError, ValueError):
                if pid == self.proc.pid:
                    return float("nan")
        return total

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM (in-flight requests finish), then SIGKILL if it does not exit within `timeout`."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def __enter__(self) -> "ServerProcess":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
