"""Real servers for the serve tests: tiny saved model directories, uvicorn in a subprocess on loopback."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]
KEY = "test-key-123"


@pytest.fixture(scope="session")
def model_dirs(tmp_path_factory):
    """A tiny classifier, a tiny embedder and a tiny decoder, saved as leanlm model directories."""
    from leanlm.models.tiny import tiny_decoder, tiny_encoder

    root = tmp_path_factory.mktemp("serve-models")
    return {
        "clf": tiny_encoder("sequence-classification").save(root / "clf"),
        "emb": tiny_encoder("feature-extraction").save(root / "emb"),
        "lm": tiny_decoder().save(root / "lm"),
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`leanlm serve ...` in a subprocess; `url` is its loopback base URL."""

    def __init__(self, args: list[str], log: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        env = {**os.environ, "PYTHONWARNINGS": "ignore"}
        self.proc = subprocess.Popen([sys.executable, "-m", "leanlm.cli", "serve", *args, "--host", "127.0.0.1",
                                      "--port", str(self.port)], cwd=ROOT, env=env,
                                     stdout=subprocess.DEVNULL, stderr=open(log, "w"))
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.tail()}")
            try:
                if httpx.get(self.url + "/ready", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"server not ready after 90 s:\n{self.tail()}")

    def tail(self) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-30:])

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


@pytest.fixture(scope="session")
def server(model_dirs, tmp_path_factory):
    """All three models, an API key, small limits (so the limit tests stay small)."""
    d = model_dirs
    s = Server([str(d["clf"]), "--name", f"emb={d['emb']}", "--name", f"lm={d['lm']}", "--api-key", KEY,
                "--max-batch", "32", "--max-wait-ms", "20", "--max-body-bytes", "20000", "--max-tokens", "64",
                "--max-texts", "40", "--max-new-tokens", "32"], tmp_path_factory.mktemp("logs") / "server.log")
    yield s
    s.stop()


@pytest.fixture(scope="session")
def tight_server(model_dirs, tmp_path_factory):
    """Batching off and a queue of one: concurrent requests must be shed with 429."""
    s = Server([str(model_dirs["clf"]), "--max-batch", "1", "--max-queue", "1", "--no-warmup", "--no-access-log"],
               tmp_path_factory.mktemp("logs") / "tight.log")
    yield s
    s.stop()


@pytest.fixture
def client(server):
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {KEY}"}, timeout=30) as c:
        yield c
