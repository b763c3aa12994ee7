"""Speculative decoding: a cheap draft proposes k tokens, the target checks them in one forward.

Batch-1 decoding is bound by reading the weights, so the target scoring k+1 tokens costs about
as much as scoring one. Greedy: the target keeps the longest prefix of the draft's tokens that
equals its own argmax, then adds its own next token, so the output is exactly the target's own
greedy output. Sampling uses the standard accept/resample rule (Leviathan et al. 2023), which
leaves the target's sampling distribution unchanged.

Drafts: `layer_dropped(model, keep_every=2)` (a shallower copy of the target), any smaller
LeanModel with the same tokenizer, or a ready decoder such as the target's own weights packed to
int4 (`draft=fast_decoder(model, weights="int4")`).

Example:
    >>> draft = layer_dropped(model, keep_every=2)
    >>> leanlm.generate(model, "Once upon a time", GenerationConfig(max_new_tokens=64), draft=draft)
"""
from __future__ import annotations

import copy
import time
from typing import Any, Iterator

import torch

from leanlm.errors import ConfigError, UnsupportedError
from leanlm.generate.config import GenerationConfig
from leanlm.generate.loop import GenerationResult, _Context, make_decoder
from leanlm.generate.sampling import Sampler


def draft_decoder(draft: Any, config: GenerationConfig, target: Any) -> Any:
    """A decoder for the draft: a LeanModel (decoded with the same settings) or a ready decoder."""
    if hasattr(draft, "forward") and hasattr(draft, "rollback") and hasattr(draft, "reset"):
        dec = draft
    else:
        dec = make_decoder(draft, config)
    if dec is target:
        raise ConfigError("the draft decoder is the target's own decoder; use a different draft model or weights")
    return dec


def speculative_tokens(target: Any, draft: Any, ids: torch.Tensor, max_new: int, config: GenerationConfig,
                       res: GenerationResult) -> Iterator[int]:
    """Yield up to `max_new` tokens of the target, using `draft` to propose `config.draft_tokens` at a time."""
    draft = draft_decoder(draft, config, target)
    k = config.draft_tokens
    if getattr(draft, "max_length", 0) < ids.numel() + max_new:
        raise UnsupportedError("the draft model's context window is shorter than this generation")
    draft.reset(int(ids.numel()) + max_new + k + 1)
    if hasattr(target, "compile_length"):
        target.compile_length(k + 1)  # the verify forward gets its own compiled graph
    sampler = Sampler(config, device="cpu")
    ctx = _Context(ids, max_new + k + 1)
    # repetition penalty and sampling need the context at each position; plain greedy does not
    need_ctx = config.repetition_penalty != 1.0

    def probs_or_logits(logits: torch.Tensor, n: int) -> torch.Tensor:
        return sampler.process(logits, ctx.buf[:n] if need_ctx else None)

    t0 = time.perf_counter()
    logits = target.forward(ids)
    first = _choose(sampler, probs_or_logits(logits.cpu(), ctx.n))
    draft.forward(ids)
    res.prefill_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    ctx.append(first)
    produced = 1
    yield first
    while produced < max_new:
        n_ctx = ctx.n  # tokens so far; the last one is in neither cache yet
        kk = min(k, max_new - produced - 1)
        if kk == 0:  # one token left: a plain target step
            logits = target.forward(ctx.buf[n_ctx - 1 : n_ctx])
            token = _choose(sampler, probs_or_logits(logits.cpu(), n_ctx))
            ctx.append(token)
            produced += 1
            res.decode_s = time.perf_counter() - t0
            yield token
            break
        # draft catches up (one compiled step per pending token), then proposes kk tokens
        for j in range(draft.pos, n_ctx):
            logits_d = draft.forward(ctx.buf[j : j + 1])
        proposals: list[int] = []
        q_rows: list[torch.Tensor] = []
        for j in range(kk):
            pl = probs_or_logits(logits_d.cpu(), ctx.n)
            d = _choose(sampler, pl)
            proposals.append(d)
            q_rows.append(pl)
            ctx.append(d)
            if j < kk - 1:
                logits_d = draft.forward(torch.tensor([d]))
        ctx.n = n_ctx  # proposals are provisional until verified
        verify = ctx.buf[n_ctx - 1 : n_ctx + kk].clone()
        verify[1:] = torch.tensor(proposals)
        logits_t = target.forward(verify, all_logits=True).cpu()  # (kk+1, V)
        out: list[int] = []
        for j in range(kk + 1):
            ctx.buf[n_ctx : n_ctx + j] = torch.tensor(proposals[:j], dtype=torch.long)
            p_row = probs_or_logits(logits_t[j], n_ctx + j)
            if j == kk:
                out.append(_choose(sampler, p_row))  # all accepted: a bonus token from the target
                break
            ok, token = _verify(sampler, p_row, q_rows[j], proposals[j])
            out.append(token)
            if not ok:
                break
        n_ok = len(out) - 1
        res.drafted += kk
        res.accepted += n_ok
        target.rollback(n_ctx + n_ok)
        draft.rollback(min(draft.pos, n_ctx + n_ok))
        res.decode_s = time.perf_counter() - t0
        for token in out:
            ctx.append(token)
            produced += 1
            yield token
            if produced >= max_new:
                return


def _choose(sampler: Sampler, processed: torch.Tensor) -> int:
    if sampler.config.greedy:
        return int(processed.argmax())
    return int(torch.multinomial(processed.softmax(-1), 1, generator=sampler.generator))


def _verify(sampler: Sampler, p_logits: torch.Tensor, q_logits: torch.Tensor, proposed: int) -> tuple[bool, int]:
    """Accept the draft token or return the target's replacement."""
    if sampler.config.greedy:
        best = int(p_logits.argmax())
        return best == proposed, best
    p, q = p_logits.softmax(-1), q_logits.softmax(-1)
    u = float(torch.rand((), generator=sampler.generator))
    if u * float(q[proposed]) <= float(p[proposed]):
        return True, proposed
    residual = (p - q).clamp(min=0)
    total = float(residual.sum())
    if total <= 0:  # p == q: any token drawn from p is exact
        residual, total = p, 1.0
    return False, int(torch.multinomial(residual / total, 1, generator=sampler.generator))


def layer_dropped(model: Any, keep_every: int = 2, keep_last: bool = True) -> Any:
    """A copy of a decoder LeanModel that keeps every `keep_every`-th layer (a draft model).

    Args:
        model: a causal-lm LeanModel (torch backend, Llama-style `model.layers`).
        keep_every: keep layers 0, k, 2k, ...
        keep_last: also keep the final layer (it shapes the output distribution most).

    Example:
        >>> draft = layer_dropped(leanlm.load("smollm2-135m"), keep_every=3)   # 30 -> 11 layers
    """
    from leanlm.artifact import LeanModel

    if not isinstance(keep_every, int) or keep_every < 1:
        raise ConfigError(f"keep_every must be an integer >= 1, got {keep_every!r}")
    inner = getattr(model.module, "model", None)
    layers = getattr(inner, "layers", None)
    if layers is None:
        raise UnsupportedError("layer_dropped needs a decoder with model.layers (Llama family)")
    n = len(layers)
    keep = list(range(0, n, keep_every))
    if keep_last and n - 1 not in keep:
        keep.append(n - 1)
    # copy everything but the dropped layers (deepcopy of the module would copy them too)
    saved = inner.layers
    inner.layers = torch.nn.ModuleList()
    try:
        module = copy.deepcopy(model.module)
    finally:
        inner.layers = saved
    module.model.layers = torch.nn.ModuleList(copy.deepcopy(saved[i]) for i in keep)
    for new_idx, layer in enumerate(module.model.layers):
        attn = getattr(layer, "self_attn", None)
        if attn is not None and hasattr(attn, "layer_idx"):
            attn.layer_idx = new_idx  # the KV cache is indexed by layer position
    module.config.num_hidden_layers = len(keep)
    if getattr(module.config, "layer_types", None):
        module.config.layer_types = [module.config.layer_types[i] for i in keep]
    record = copy.deepcopy(model.record)
    record.notes = list(record.notes) + [f"draft: layers {keep} of {n}"]
    return LeanModel(module, model.tokenizer, record)
