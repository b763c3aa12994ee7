"""`leanlm serve --workers 2`: two processes answer on one port, and stop together."""
from __future__ import annotations

import time

import httpx
import pytest

from leanlm.serve.process import ServerProcess

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")


@pytest.fixture(scope="module")
def clf_dir(tmp_path_factory):
    from leanlm.models.tiny import tiny_encoder

    return tiny_encoder().save(tmp_path_factory.mktemp("workers") / "clf")


def test_two_workers_share_one_port(clf_dir, tmp_path, sentences):
    with ServerProcess([str(clf_dir), "--workers", "2", "--no-access-log", "--no-warmup"], log=tmp_path / "w.log") as s:
        pids: set[int] = set()
        answered = 0
        # the first worker to load answers /ready; the other may still be loading (slow on a busy CPU)
        deadline = time.monotonic() + 60
        # a fresh connection per request, so the kernel hands them to whichever worker accepts
        while len(pids) < 2 and time.monotonic() < deadline:
            health = httpx.get(s.url + "/health", timeout=10).json()
            pids.add(health["pid"])
            r = httpx.post(s.url + "/v1/classify", json={"input": sentences[answered % len(sentences)]}, timeout=30)
            assert r.status_code == 200, r.text
            answered += 1
        assert len(pids) == 2, f"only pid(s) {pids} answered in {answered} requests: {s.tail(5)}"
        assert s.proc.pid not in pids  # the parent only supervises
        parent = s.proc
    assert parent.poll() is not None
    for pid in pids:  # the workers went with their parent
        assert not _alive(pid), f"worker {pid} outlived the server"


def _alive(pid: int) -> bool:
    import os

    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/status") as f:  # a zombie is gone for our purposes
            return "zombie" not in f.read()
    except OSError:
        return False


@pytest.mark.parametrize("argv,needle", [
    (["serve", "no-such-model", "--workers", "2"], "neither a directory nor a bundled name"),
    (["serve", "x", "--workers", "0"], "--workers"),
])
def test_workers_check_their_arguments_before_starting(argv, needle, capsys):
    from leanlm.cli import main

    with pytest.raises(SystemExit) as exc:
        main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 2 and len(err) == 1 and needle in err[0], err
