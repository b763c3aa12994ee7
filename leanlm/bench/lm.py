"""Language-model quality: perplexity, KL divergence / top-1 agreement vs a reference, SQuAD.

Perplexity uses the standard sliding window: windows of `window` tokens advance by `stride`,
and each token is scored once, by the first window that has it past the overlap, so every
prediction sees at least `window - stride` tokens of context. KL divergence KL(reference || model)
and top-1 agreement compare two models' next-token distributions on exactly those positions.
Confidence intervals come from a block bootstrap over consecutive scored tokens (neighbouring
tokens are correlated, so resampling single tokens would be too optimistic).

Example:
    >>> from leanlm.bench.lm import perplexity, compare
    >>> perplexity(lm, tokens=4096)["perplexity"]
    >>> compare(lm_int8, reference=lm, tokens=4096)["kld"]
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch

from leanlm.data.metrics import exact_match, f1_score, normalize_answer  # noqa: F401 (SQuAD rules; re-exported)
from leanlm.data.squad import read_squad
from leanlm.errors import DataError, LeanlmError

LogitsFn = Callable[[torch.Tensor], torch.Tensor]  # ids (T,) -> logits (T, V)
BLOCK = 64  # tokens per bootstrap block


def logits_fn(model: Any) -> LogitsFn:
    """A function ids (T,) -> float32 logits (T, V) for a LeanModel, a FastDecoder or a callable."""
    if hasattr(model, "net") and hasattr(model, "reset"):  # FastDecoder: a fresh sequence each call
        def run_fast(ids: torch.Tensor) -> torch.Tensor:
            model.reset(int(ids.numel()))
            return model.forward(ids, all_logits=True)

        return run_fast
    if getattr(model, "task", None) is not None:
        if model.task != "causal-lm":
            raise LeanlmError(f"language-model metrics need a causal-lm model; this one is {model.task}")

        @torch.inference_mode()
        def run_model(ids: torch.Tensor) -> torch.Tensor:
            ids = ids[None].to(model.device)
            return model(input_ids=ids, attention_mask=torch.ones_like(ids))[0].float()

        return run_model
    if callable(model):
        return model
    raise LeanlmError(f"cannot compute logits with a {type(model).__name__}")


def tokenize_text(tokenizer: Any, text: str | None, tokens: int | None) -> torch.Tensor:
    """Token ids (N,) of `text` (default: WikiText-2 test), cut to `tokens` ids."""
    if text is None:
        from leanlm.data import load_text

        text = load_text("wikitext-2", "test")
    if tokens is not None:
        if tokens < 2:
            raise LeanlmError(f"tokens must be >= 2, got {tokens}")
        text = text[: tokens * 12]  # plenty of characters for `tokens` ids, without tokenizing 1 MB
    ids = tokenizer(text, add_special_tokens=False, return_tensors="pt").input_ids[0]
    if tokens is not None:
        ids = ids[:tokens]
    if ids.numel() < 2:
        raise DataError("the text has fewer than 2 tokens; nothing to score")
    return ids


def windows(n: int, window: int, stride: int) -> Iterator[tuple[int, int, int]]:
    """(begin, end, first scored target index) of each sliding window over n tokens."""
    if window < 2 or not 1 <= stride < window:
        # stride < window: every window's first token is context only, so each target has a predictor
        raise LeanlmError(f"need window >= 2 and 1 <= stride < window, got window={window} stride={stride}")
    prev_end = 1  # token 0 has no prediction
    begin = 0
    while prev_end < n:
        end = min(begin + window, n)
        yield begin, end, prev_end
        prev_end = end
        begin += stride


def _scored(fns: Sequence[LogitsFn], ids: torch.Tensor, window: int, stride: int) -> Iterator[tuple[torch.Tensor, list[torch.Tensor]]]:
    """Per window: targets (n,) and each model's logits (n, V) predicting them."""
    for begin, end, first in windows(int(ids.numel()), window, stride):
        chunk = ids[begin:end]
        targets = ids[first:end]
        # logits at window position p predict token begin + p + 1
        lo, hi = first - 1 - begin, end - 1 - begin
        yield targets, [fn(chunk)[lo:hi].float().cpu() for fn in fns]


def _context_limit(model: Any, window: int) -> int:
    cfg = getattr(getattr(model, "module", None), "config", None)
    limit = getattr(cfg, "max_position_embeddings", None)
    return min(window, int(limit)) if limit else window


def perplexity(model: Any, text: str | None = None, tokens: int | None = 4096, window: int = 1024,
               stride: int = 512, confidence: float = 0.95, tokenizer: Any = None) -> dict[str, Any]:
    """Sliding-window perplexity of a causal LM on a text (default: WikiText-2 test).

    Args:
        model: a causal-lm LeanModel (any backend that returns logits), a FastDecoder, or a
            function ids (T,) -> logits (T, V) (then pass `tokenizer`).
        text: the text to score; None = WikiText-2 test (raw).
        tokens: score at most this many tokens of it (None = all; ~290k for WikiText-2 test).
        window: tokens per forward (capped at the model's context window).
        stride: how far windows advance; each scored token sees >= window - stride of context.
        confidence: level of the bootstrap confidence interval.

    Returns {"perplexity", "nll", "ci": [low, high], "tokens", "window", "stride"}.

    Example:
        >>> perplexity(leanlm.load("smollm2-135m"), tokens=2048)["perplexity"]
    """
    tok = tokenizer or getattr(model, "tokenizer", None)
    if tok is None:
        raise LeanlmError("perplexity needs a tokenizer: pass a LeanModel or tokenizer=...")
    window = _context_limit(model, window)
    stride = min(stride, window - 1)
    ids = tokenize_text(tok, text, tokens)
    fn = logits_fn(model)
    nll = []
    for targets, (logits,) in _scored([fn], ids, window, stride):
        nll.append(torch.nn.functional.cross_entropy(logits, targets, reduction="none").double().numpy())
    v = np.concatenate(nll)
    lo, hi = bootstrap_ci(v, confidence)
    return {"perplexity": math.exp(v.mean()), "nll": float(v.mean()), "ci": [math.exp(lo), math.exp(hi)],
            "tokens": int(v.size), "window": window, "stride": stride, "confidence": confidence}


def compare(model: Any, reference: Any, text: str | None = None, tokens: int | None = 4096, window: int = 1024,
            stride: int = 512, confidence: float = 0.95, tokenizer: Any = None) -> dict[str, Any]:
    """KL divergence and top-1 agreement of `model` against `reference` (e.g. its float original).

    Both score the same tokens of the same windows. KLD is KL(reference || model) in nats per
    token, averaged; top-1 agreement is the fraction of positions where both pick the same
    next token. Also reports both perplexities.

    Args:
        model, reference: causal-lm LeanModels, FastDecoders or logits functions (same tokenizer).
        text, tokens, window, stride, confidence: as for `perplexity`.

    Returns {"kld", "kld_ci", "top1", "top1_ci", "perplexity", "reference_perplexity", "tokens", ...}.

    Example:
        >>> compare(quantized, reference=float_model, tokens=4096)
    """
    tok = tokenizer or getattr(model, "tokenizer", None) or getattr(reference, "tokenizer", None)
    if tok is None:
        raise LeanlmError("compare needs a tokenizer: pass LeanModels or tokenizer=...")
    window = min(_context_limit(model, window), _context_limit(reference, window))
    stride = min(stride, window - 1)
    ids = tokenize_text(tok, text, tokens)
    fns = [logits_fn(model), logits_fn(reference)]
    kl, agree, nll_m, nll_r = [], [], [], []
    for targets, (lm, lr) in _scored(fns, ids, window, stride):
        if lm.shape != lr.shape:
            raise LeanlmError(f"model and reference disagree on vocabulary size ({lm.shape[-1]} vs {lr.shape[-1]})")
        logp_m, logp_r = lm.log_softmax(-1), lr.log_softmax(-1)
        kl.append((logp_r.exp() * (logp_r - logp_m)).sum(-1).clamp(min=0).double().numpy())
        agree.append((lm.argmax(-1) == lr.argmax(-1)).double().numpy())
        nll_m.append((-logp_m.gather(1, targets[:, None])[:, 0]).double().numpy())
        nll_r.append((-logp_r.gather(1, targets[:, None])[:, 0]).double().numpy())
    kl_v, ag_v = np.concatenate(kl), np.concatenate(agree)
    nm, nr = np.concatenate(nll_m), np.concatenate(nll_r)
    return {
        "kld": float(kl_v.mean()), "kld_ci": list(bootstrap_ci(kl_v, confidence)),
        "top1": float(ag_v.mean()), "top1_ci": list(bootstrap_ci(ag_v, confidence)),
        "perplexity": math.exp(nm.mean()), "reference_perplexity": math.exp(nr.mean()),
        "tokens": int(kl_v.size), "window": window, "stride": stride, "confidence": confidence,
    }


def bootstrap_ci(values: np.ndarray, confidence: float = 0.95, resamples: int = 1000, block: int = BLOCK,
                 seed: int = 0) -> tuple[float, float]:
    """Percentile CI of the mean, resampling blocks of `block` consecutive values."""
    if not 0 < confidence < 1:
        raise LeanlmError(f"confidence must be in (0, 1), got {confidence}")
    values = np.asarray(values, dtype=np.float64)
    n_blocks = max(1, values.size // block)
    if n_blocks < 2:  # too few tokens to bootstrap blocks: normal approximation over values
        half = 1.96 * values.std(ddof=1) / math.sqrt(values.size) if values.size > 1 else 0.0
        return float(values.mean() - half), float(values.mean() + half)
    blocks = values[: n_blocks * block].reshape(n_blocks, block).mean(1)
    rng = np.random.default_rng(seed)
    means = blocks[rng.integers(0, n_blocks, size=(resamples, n_blocks))].mean(1)
    a = (1 - confidence) / 2
    return float(np.quantile(means, a)), float(np.quantile(means, 1 - a))


# --------------------------------------------------------------------------- SQuAD

def load_squad(path: str | Path, n: int | None = None) -> list[dict[str, Any]]:
    """Questions of a SQuAD v1.1 JSON file: [{"id", "context", "question", "answers"}], in file order."""
    examples = read_squad(path).examples
    return [{"id": e.id, "context": e.context, "question": e.question, "answers": [a.text for a in e.answers]}
            for e in examples[:n]]


SQUAD_PROMPT = ("Answer the question with a short phrase copied from the context.\n\n"
                "Context: {context}\n\nQuestion: {question}")


def squad(model: Any, path: str | Path, n: int = 50, max_new_tokens: int = 24, config: Any = None,
          draft: Any = None) -> dict[str, Any]:
    """Exact match and F1 (SQuAD v1.1 rules, percent) of an instruct model answering questions.

    Each question is one chat turn: context + question, greedy decoding, first line of the reply.

    Args:
        model: a causal-lm LeanModel with a chat template.
        path: a SQuAD v1.1 JSON file (e.g. the dev set).
        n: how many questions, taken in file order.
        max_new_tokens: answer length limit.
        config: a GenerationConfig to start from (e.g. fast=True); chat/stop are set here.

    Returns {"exact_match", "f1", "f1_ci", "n", "examples": first few predictions}.

    Example:
        >>> squad(leanlm.load("smollm2-135m"), "squad-v1.1-dev.json", n=20)["f1"]
    """
    from leanlm.generate import GenerationConfig, generate

    cfg = (config or GenerationConfig()).replace(max_new_tokens=max_new_tokens, temperature=0.0, stop=("\n",))
    questions = load_squad(path, n)
    em, f1, examples = [], [], []
    for q in questions:
        messages = [{"role": "user", "content": SQUAD_PROMPT.format(context=q["context"], question=q["question"])}]
        pred = generate(model, messages, cfg, draft=draft).strip()
        em.append(max(exact_match(pred, a) for a in q["answers"]))
        f1.append(max(f1_score(pred, a) for a in q["answers"]))
        if len(examples) < 5:
            examples.append({"question": q["question"], "prediction": pred, "answers": q["answers"][:3]})
    f = np.array(f1)
    half = 1.96 * f.std(ddof=1) / math.sqrt(f.size) if f.size > 1 else 0.0
    return {"exact_match": 100 * float(np.mean(em)), "f1": 100 * float(f.mean()),
            "f1_ci": [100 * (f.mean() - half), 100 * (f.mean() + half)], "n": len(questions), "examples": examples}
