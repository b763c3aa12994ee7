"""Causal-LM pre-training of a Llama decoder (next-token prediction), through the one loop.

Documents are tokenized, joined with EOS after each one and cut into `seq_len` blocks (GPT-2 /
nanoGPT packing: no padding, every position is a training target). A fresh model is a Llama of
the configured shape with the tokenizer's vocabulary; `init` continues training an existing
causal LM (e.g. SmolLM2) instead. Checkpoints with exact resume, gradient accumulation, bf16
autocast and TensorBoard come from `leanlm.train.loop.train_loop`; validation is the held-out
loss, so the loop keeps the weights with the lowest one.

The output is a plain float Llama model directory (`model.safetensors` + tokenizer + leanlm.json):
it runs in the fast decoder, evaluates with `leanlm eval-lm` and exports to GGUF like a bundled
decoder. Pre-training is recorded under `record.training`, not as a technique, because the
weights are a new float model, not a transformed one (compression and fine-tuning treat it as
float).

Run it through the `pretrain` verb (`leanlm.train.pretrain`), which reads the corpus, picks the
tokenizer and saves the directory.

Example:
    >>> from leanlm.train.pretrain import pretrain
    >>> tok = leanlm.load("smollm2-135m").tokenizer
    >>> m = pretrain(CausalLm(layers=4, hidden=256), train_docs, "runs/my-llama", tokenizer=tok,
    ...              loop=LoopConfig(epochs=1, lr=1e-3), heldout=heldout_docs)
    >>> m.record.metrics["pretrain"]["heldout_perplexity"] < m.record.metrics["pretrain"]["heldout_perplexity_start"]
    True
"""
from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from typing import Any, ClassVar, Iterator, Sequence

import numpy as np
import torch

from leanlm.artifact import LeanModel, Record
from leanlm.config import BaseConfig, check, register, transform
from leanlm.errors import DataError, UnsupportedError
from leanlm.train.loop import LoopConfig, train_loop

FRESH_BASE = "leanlm-llama"  # record.base_model of a model pre-trained from random weights


@register("pretrain", "causal-lm")
@dataclass(frozen=True)
class CausalLm(BaseConfig):
    """Causal-LM pre-training (next-token prediction) of a Llama decoder on packed documents.

    Args:
        layers: decoder layers (ignored with `init`: the model keeps its own shape; so are the
            other shape fields below).
        hidden: model width; a multiple of `heads`.
        heads: attention heads; head size hidden / heads must be even (rotary embedding).
        kv_heads: key/value heads (grouped-query attention); divides `heads`.
        intermediate: SwiGLU feed-forward width (0 = 3 x hidden).
        max_position: context length the model supports (rotary tables, fast-decoder cache).
        tie_embeddings: share the token embedding with the output head (saves vocab x hidden).
        seq_len: tokens per training block; at most max_position (or init's context).
        batch_size: blocks per batch (effective batch = batch_size x loop.grad_accum).

    Example:
        >>> CausalLm(layers=6, hidden=384, heads=6, kv_heads=2, seq_len=256, batch_size=8)
    """

    tokenizer_kind: ClassVar[str] = "bpe"  # what `leanlm pretrain --tokenizer train` trains for it
    layers: int = 4
    hidden: int = 256
    heads: int = 4
    kv_heads: int = 2
    intermediate: int = 0
    max_position: int = 1024
    tie_embeddings: bool = True
    seq_len: int = 256
    batch_size: int = 8

    def validate(self) -> None:
        check(self.layers >= 1, f"layers must be >= 1, got {self.layers}")
        check(self.heads >= 1 and self.kv_heads >= 1, "heads and kv_heads must be >= 1")
        check(self.hidden % self.heads == 0, f"hidden ({self.hidden}) must be a multiple of heads ({self.heads})")
        check((self.hidden // self.heads) % 2 == 0, f"head size hidden/heads must be even, got {self.hidden // self.heads}")
        check(self.heads % self.kv_heads == 0, f"kv_heads ({self.kv_heads}) must divide heads ({self.heads})")
        check(self.intermediate >= 0, f"intermediate must be >= 0, got {self.intermediate}")
        check(self.seq_len >= 2, f"seq_len must be >= 2, got {self.seq_len}")
        check(self.seq_len <= self.max_position, f"seq_len ({self.seq_len}) exceeds max_position ({self.max_position})")
        check(self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}")


# --------------------------------------------------------------------------- data

def pack(docs: Sequence[str], tokenizer: Any, seq_len: int) -> torch.Tensor:
    """Training blocks (N, seq_len): documents with EOS after each, concatenated, then cut.

    The last partial block is dropped, so every batch has one length and needs no padding.
    """
    ids = stream(docs, tokenizer)
    n = ids.numel() // seq_len
    return ids[: n * seq_len].view(n, seq_len)


def stream(docs: Sequence[str], tokenizer: Any) -> torch.Tensor:
    """All documents' token ids (T,) with EOS after each; blank documents are skipped."""
    eos = tokenizer.eos_token_id
    if eos is None:
        raise UnsupportedError("the tokenizer has no EOS token; pre-training separates documents with EOS")
    texts = [d for d in docs if d and d.strip()]
    if not texts:
        return torch.zeros(0, dtype=torch.long)
    from leanlm.models.loading import quiet_transformers

    with quiet_transformers():  # "sequence longer than model_max_length": we cut blocks ourselves
        encoded = tokenizer(texts, add_special_tokens=False)["input_ids"]
    flat = np.fromiter((t for ids in encoded for t in (*ids, eos)), dtype=np.int64)
    return torch.from_numpy(flat)


def _batches(blocks: torch.Tensor, batch_size: int, seed: int, shuffle: bool) -> Iterator[dict[str, torch.Tensor]]:
    # the order depends only on (seed, epoch): what the loop needs for exact resume
    order = np.random.default_rng(seed).permutation(len(blocks)) if shuffle else np.arange(len(blocks))
    for i in range(0, len(order), batch_size):
        x = blocks[torch.from_numpy(order[i : i + batch_size])]
        yield {"input_ids": x, "labels": x}


@torch.inference_mode()
def heldout_loss(module: torch.nn.Module, ids: torch.Tensor, seq_len: int, batch_size: int = 8) -> float:
    """Mean next-token loss (nats) over a token stream (T,), cut into seq_len blocks (tail kept)."""
    n = ids.numel() // seq_len
    full = ids[: n * seq_len].view(n, seq_len)
    parts = [full[i : i + batch_size] for i in range(0, n, batch_size)]
    if ids.numel() - n * seq_len >= 2:
        parts.append(ids[n * seq_len :][None])
    total, count = 0.0, 0
    for x in parts:
        x = x.to(next(module.parameters()).device)
        targets = x.shape[0] * (x.shape[1] - 1)  # HF shifts labels: each block scores length-1 tokens
        total += float(module(input_ids=x, labels=x).loss) * targets
        count += targets
    return total / count


# --------------------------------------------------------------------------- model

def fresh_llama(config: CausalLm, tokenizer: Any, seed: int) -> LeanModel:
    """A randomly initialised Llama of `config`'s shape with `tokenizer`'s vocabulary."""
    from transformers import LlamaConfig

    from leanlm.models.loading import auto_class, quiet_transformers

    with quiet_transformers():
        cfg = LlamaConfig(vocab_size=len(tokenizer), hidden_size=config.hidden, num_hidden_layers=config.layers,
                          num_attention_heads=config.heads, num_key_value_heads=config.kv_heads,
                          intermediate_size=config.intermediate or 3 * config.hidden,
                          max_position_embeddings=config.max_position, tie_word_embeddings=config.tie_embeddings,
                          bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                          pad_token_id=tokenizer.pad_token_id)
        torch.manual_seed(seed)  # the training seed decides the initial weights too
        module = auto_class("causal-lm").from_config(cfg).eval()
    return LeanModel(module, tokenizer, Record(task="causal-lm", base_model=FRESH_BASE))


def _continued(init: LeanModel, tokenizer: Any, seq_len: int) -> LeanModel:
    """A trainable copy of `init` (the caller's model is left as it was)."""
    if init.task != "causal-lm" or not isinstance(init.module, torch.nn.Module):
        raise UnsupportedError(f"init must be a causal-lm model on the torch backend, got {init.task} on {init.backend}")
    if init.record.techniques:
        raise UnsupportedError("continue pre-training from a float model, not a compressed one "
                               f"({', '.join(t.get('type', '?') for t in init.record.techniques)})")
    rows = init.module.get_input_embeddings().weight.shape[0]
    if len(tokenizer) > rows:
        raise UnsupportedError(f"the tokenizer has {len(tokenizer)} tokens but init's embedding only {rows} rows; "
                               "use init's own tokenizer")
    limit = int(getattr(init.module.config, "max_position_embeddings", seq_len))
    if seq_len > limit:
        raise UnsupportedError(f"seq_len {seq_len} exceeds init's context of {limit} tokens")
    model = init.clone()
    model.tokenizer = tokenizer
    model.record.notes.append(f"continued pre-training (causal-lm) from {init.record.base_model}")
    return model


# --------------------------------------------------------------------------- transform

@transform(CausalLm)
def causal_lm(config: CausalLm, train_docs: list[str], heldout_docs: list[str], tokenizer: Any,
              loop: LoopConfig, init: LeanModel | None) -> tuple[LeanModel, dict[str, float]]:
    """Pre-train (or continue training) a causal LM; held-out loss/perplexity before and after.

    Returns the trained model (best held-out weights) and its metrics: heldout_loss_start,
    heldout_perplexity_start, heldout_loss, heldout_perplexity, train_tokens, heldout_tokens,
    steps, seconds.
    """
    tokenizer = tokenizer if tokenizer is not None else getattr(init, "tokenizer", None)
    if tokenizer is None:
        raise UnsupportedError("pre-training needs a tokenizer (or an init model that has one)")
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token  # batching and generation need one
    model = _continued(init, tokenizer, config.seq_len) if init is not None else None  # refuse before tokenizing
    blocks = pack(train_docs, tokenizer, config.seq_len)
    if len(blocks) == 0:
        got = stream(train_docs, tokenizer).numel()
        raise DataError(f"the training text has {got} tokens, fewer than one block of seq_len={config.seq_len}; "
                        "give more text or a smaller seq_len")
    held = stream(heldout_docs, tokenizer)
    if held.numel() < 2:
        raise DataError("the held-out text is empty; pre-training reports held-out loss and perplexity")
    model = model or fresh_llama(config, tokenizer, loop.seed)
    module = model.module
    bs = config.batch_size

    def evaluate(m: torch.nn.Module) -> float:
        return -heldout_loss(m, held, config.seq_len, bs)  # higher is better for the loop

    module.eval()
    start = heldout_loss(module, held, config.seq_len, bs)
    result = train_loop(
        module,
        lambda epoch: _batches(blocks, bs, loop.seed * 1000 + epoch, shuffle=True),
        math.ceil(len(blocks) / bs),
        lambda m, b: m(**b).loss,
        evaluate,
        loop,
        progress=sys.stderr.isatty(),
    )
    end = heldout_loss(module, held, config.seq_len, bs)
    metrics = {
        "heldout_loss_start": start, "heldout_perplexity_start": math.exp(start),
        "heldout_loss": end, "heldout_perplexity": math.exp(end),
        "train_tokens": float(blocks.numel()), "heldout_tokens": float(held.numel()),
        "steps": float(result.steps), "seconds": round(result.seconds, 1),
    }
    model.record.data = {"train_docs": len(train_docs), "train_tokens": int(blocks.numel()),
                         "train_blocks": len(blocks), "heldout_docs": len(heldout_docs),
                         "heldout_tokens": int(held.numel())}
    model.record.training = {"objective": config.name, "config": config.to_dict(), "loop": loop.to_dict(),
                             "tokenizer": getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__,
                             "init": init.record.base_model if init is not None else None,
                             "parameters": sum(p.numel() for p in module.parameters()),
                             "result": result.to_dict()}
    model.record.metrics["heldout"] = {"loss_start": start, "perplexity_start": math.exp(start), "loss": end,
                                       "perplexity": math.exp(end), "tokens": int(held.numel())}
    return model, metrics

