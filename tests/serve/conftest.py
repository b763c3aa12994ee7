"""Real servers for the serve tests: tiny saved model directories, uvicorn in a subprocess on loopback."""
from __future__ import annotations

import httpx
import pytest

from leanlm.serve.process import ServerProcess

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


@pytest.fixture(scope="session")
def server(model_dirs, tmp_path_factory):
    """All three models, an API key, small limits (so the limit tests stay small)."""
    d = model_dirs
    s = ServerProcess([str(d["clf"]), "--name", f"emb={d['emb']}", "--name", f"lm={d['lm']}", "--api-key", KEY,
                       "--max-batch", "32", "--max-wait-ms", "20", "--max-body-bytes", "20000", "--max-tokens", "64",
                       "--max-texts", "40", "--max-new-tokens", "32"],
                      log=tmp_path_factory.mktemp("logs") / "server.log")
    yield s
    s.stop()


@pytest.fixture(scope="session")
def tight_server(model_dirs, tmp_path_factory):
    """Batching off and a queue of one: concurrent requests must be shed with 429."""
    s = ServerProcess([str(model_dirs["clf"]), "--max-batch", "1", "--max-queue", "1", "--no-warmup",
                       "--no-access-log"], log=tmp_path_factory.mktemp("logs") / "tight.log")
    yield s
    s.stop()


@pytest.fixture
def client(server):
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {KEY}"}, timeout=30) as c:
        yield c
