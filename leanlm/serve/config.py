"""`ServeConfig`: the server's limits and batching knobs in one frozen, validated dataclass."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from leanlm.config import BaseConfig, check


@dataclass(frozen=True)
class ServeConfig(BaseConfig):
    """How `leanlm serve` batches and protects itself.

    Args:
        max_batch: most texts per forward pass (1 = dynamic batching off).
        max_batch_tokens: most padded tokens (texts x longest text) per forward pass, so a few
            long texts do not share a batch with many short ones at the long ones' cost.
        split_cost_tokens: a forward call's fixed cost, in padded tokens, used to split a gathered
            batch into length-sorted parts (see `leanlm.serve.buckets`); 0 runs every batch whole.
        max_wait_ms: how long the first queued request waits for others to join its batch.
        max_queue: most requests waiting per model and endpoint; past it the server answers 429.
        api_key: when set, /v1/* needs `Authorization: Bearer <api_key>` (/health, /ready, /metrics stay open).
        max_body_bytes: largest request body accepted (413 above).
        max_tokens: most tokens in one input text or prompt (capped by the model's context).
        max_texts: most texts in one request.
        max_new_tokens: most tokens one completion may generate (a request's max_tokens is checked against it).
        timeout_s: a request still waiting or running after this long gets 504.
        warmup: run one tiny request per model before reporting ready.
        knowledge_base: passages for /v1/answer without a context (a .txt/.jsonl/SQuAD .json file, a
            directory of them, or a saved `leanlm.index` directory); see `leanlm.serve.knowledge`.
        embedder: the model that embeds the knowledge base and the questions (a served model's
            name, a directory or a bundled name; default: the only served embedding model, else minilm-l6).
        threads: intra-op threads of each server process's models (torch, and LEANLM_THREADS for
            ONNX Runtime / OpenVINO); None: every core this process may use. With `--workers N`
            the CLI defaults it to cores // N, so N processes do not fight over the same cores.

    Example:
        >>> app = create_app(ModelRegistry.load(["runs/sentiment"], ServeConfig(max_batch=16, api_key="s3cret")))
    """

    max_batch: int = 32
    max_batch_tokens: int = 16384
    split_cost_tokens: int = 128
    max_wait_ms: float = 5.0
    max_queue: int = 256
    api_key: Optional[str] = None
    max_body_bytes: int = 1_000_000
    max_tokens: int = 512
    max_texts: int = 256
    max_new_tokens: int = 512
    timeout_s: float = 60.0
    warmup: bool = True
    knowledge_base: Optional[str] = None
    embedder: Optional[str] = None
    threads: Optional[int] = None

    def validate(self) -> None:
        at_least = {name: 1 for name in ("max_batch", "max_batch_tokens", "max_queue", "max_body_bytes", "max_tokens",
                                         "max_texts", "max_new_tokens")} | {"split_cost_tokens": 0}
        for name, low in at_least.items():
            value = getattr(self, name)
            check(isinstance(value, int) and not isinstance(value, bool) and value >= low,
                  f"{name} must be an integer >= {low}, got {value!r}")
        check(isinstance(self.max_wait_ms, (int, float)) and 0 <= self.max_wait_ms <= 10_000,
              f"max_wait_ms must be in [0, 10000], got {self.max_wait_ms!r}")
        check(isinstance(self.timeout_s, (int, float)) and self.timeout_s > 0,
              f"timeout_s must be > 0, got {self.timeout_s!r}")
        check(self.api_key is None or (isinstance(self.api_key, str) and self.api_key.strip() != ""),
              "api_key must be a non-empty string when given")
        check(self.threads is None or (isinstance(self.threads, int) and not isinstance(self.threads, bool)
                                       and self.threads >= 1), f"threads must be an integer >= 1, got {self.threads!r}")
        for name in ("knowledge_base", "embedder"):
            value = getattr(self, name)
            check(value is None or (isinstance(value, str) and value.strip() != ""),
                  f"{name} must be a non-empty string when given")


def apply_threads(threads: Optional[int]) -> None:
    """Set this process's intra-op threads before its models load (None: leave the defaults)."""
    if threads is None:
        return
    import os

    import torch

    torch.set_num_threads(threads)
    os.environ["LEANLM_THREADS"] = str(threads)  # read by the ONNX Runtime and OpenVINO runners
