"""What the example applications share: a server to talk to (yours via --url, or one started here on
the bundled defaults), a JSON client that honours 429 + Retry-After, and the cached sentiment model.

Nothing here is part of the leanlm package; the applications are clients of `leanlm serve`.
"""
from __future__ import annotations

import contextlib
import sys
import time
from pathlib import Path
from typing import Any, Iterator, Sequence

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

import httpx  # noqa: E402

RUNS = ROOT / "runs" / "examples"
SENTIMENT_MODEL = RUNS / "sentiment-minilm"


def add_server_args(p: Any, model_help: str) -> None:
    p.add_argument("--url", help="A running `leanlm serve` (default: start one here on the bundled defaults).")
    p.add_argument("--model", help=model_help)
    p.add_argument("--api-key", help="The server's API key, if it has one.")


@contextlib.contextmanager
def server(url: str | None, serve_args: Sequence[str], log: Path | None = None) -> Iterator[str]:
    """`url` as is, or a `leanlm serve SERVE_ARGS` child process for the duration of the block."""
    if url:
        yield url.rstrip("/")
        return
    from leanlm.serve.process import ServerProcess

    print(f"starting leanlm serve {' '.join(serve_args)} ...", file=sys.stderr, flush=True)
    with ServerProcess(list(serve_args), log=log, ready_s=300) as s:
        yield s.url


class Client:
    """POST JSON to the server; a 429 waits the Retry-After the server sent, then tries again."""

    def __init__(self, url: str, api_key: str | None = None, retries: int = 20, timeout: float = 120.0):
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.http = httpx.Client(base_url=url, headers=headers, timeout=timeout)
        self.retries = retries

    def post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        for _ in range(self.retries):
            r = self.http.post(path, json=body)
            if r.status_code != 429:
                break
            time.sleep(float(r.headers.get("retry-after", "1")))
        if r.status_code != 200:
            raise SystemExit(f"error: {path} answered {r.status_code}: {_message(r)}")
        return r.json()

    def close(self) -> None:
        self.http.close()


def _message(r: httpx.Response) -> str:
    try:
        return r.json()["error"]["message"]
    except Exception:
        return r.text[:200]


def progress(done: int, total: int, what: str) -> None:
    """A one-line progress bar on stderr."""
    width = 30
    filled = int(width * done / max(total, 1))
    end = "\n" if done >= total else ""
    print(f"\r{what} [{'#' * filled}{'.' * (width - filled)}] {done}/{total}", end=end, file=sys.stderr, flush=True)


def sentiment_model(path: Path = SENTIMENT_MODEL, train_size: int = 4000) -> Path:
    """The sentiment classifier the examples serve by default: MiniLM-L6 fine-tuned on movie snippets with
    `leanlm.finetune` (one epoch on `train_size` examples, a few minutes on a laptop CPU), cached under runs/."""
    if (path / "leanlm.json").exists():
        return path
    import leanlm
    from leanlm.train.finetune import FinetuneConfig
    from leanlm.train.loop import LoopConfig

    print(f"no sentiment model at {path}: fine-tuning minilm-l6 on movie-snippets (once, then cached)",
          file=sys.stderr, flush=True)
    config = FinetuneConfig(loop=LoopConfig(epochs=1), train_size=train_size, eval_size=500)
    leanlm.finetune("minilm-l6", "movie-snippets", config, output=path, progress=True)
    return path
