"""The fast decoder: a lean Llama forward over a pre-allocated KV cache, compiled once.

Hugging Face's eager forward spends most of a batch-1 decode step in Python and dispatch (tens of
small ops per layer, mask and cache bookkeeping). This module rebuilds the same computation from
the model's own weights with fewer, bigger ops (q/k/v and gate/up fused into one matmul each),
a static KV cache written in place, and rotary tables precomputed once; the single-token step is
then compiled by `torch.compile` (fullgraph, inductor freezing), so a token costs one call into
generated code. Weights can stay float (fp32/bf16) or be packed for PyTorch's native weight-only
int8 / int4 CPU kernels (`_weight_int8pack_mm`, `_weight_int4pack_mm_for_cpu`).

Numerics follow transformers' Llama exactly (RMSNorm in fp32, rotary in fp32 then cast), so the
float fast path reproduces the eager model's greedy tokens.

Example:
    >>> dec = fast_decoder(model, dtype="bfloat16", weights="int8")
    >>> logits = dec.forward(torch.tensor(prompt_ids))          # prefill -> (V,)
    >>> logits = dec.forward(torch.tensor([next_id]))           # one compiled decode step
"""
from __future__ import annotations

import weakref
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from leanlm.errors import UnsupportedError

SUPPORTED = ("llama", "mistral", "qwen2")
WEIGHTS = ("auto", "int8", "int4")
CACHE_BLOCK = 256  # cache capacities are rounded up to this, so few distinct compiled graphs exist
INT4_GROUP = 32


# --------------------------------------------------------------------------- packed linear layers

def quantize_int8(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-output-channel int8: w ~= q * scale[:, None]. w: (N, K)."""
    w = w.float()
    scale = (w.abs().amax(dim=1) / 127).clamp(min=1e-12)
    q = torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8)
    return q, scale


def quantize_int4(w: torch.Tensor, group: int = INT4_GROUP) -> tuple[torch.Tensor, torch.Tensor]:
    """Asymmetric groupwise int4 in PyTorch's CPU kernel layout: w ~= (q - 8) * s + z.

    Returns q (N, K) int32 in [0, 15] and scales_and_zeros (K // group, N, 2).
    """
    n, k = w.shape
    g = w.float().reshape(n, k // group, group)
    lo, hi = g.amin(-1), g.amax(-1)
    scale = ((hi - lo) / 15).clamp(min=1e-12)
    q = torch.round((g - lo[..., None]) / scale[..., None]).clamp(0, 15).to(torch.int32).reshape(n, k)
    zero = lo + 8 * scale
    return q, torch.stack([scale.t(), zero.t()], dim=-1).contiguous()


class PackedLinear(nn.Module):
    """y = x @ W.T (+ b) with W stored as float, int8 (per channel) or int4 (groupwise)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, kind: str, dtype: torch.dtype):
        super().__init__()
        self.kind = kind
        self.out_features = weight.shape[0]
        if kind != "float" and weight.device.type != "cpu":
            kind = self.kind = "float"  # the packed kernels below are CPU kernels; GPUs run bf16
        if kind == "float":
            self.weight = nn.Parameter(weight.detach().to(dtype).contiguous(), requires_grad=False)
        elif kind == "int8":
            q, s = quantize_int8(weight)
            self.weight = nn.Parameter(q, requires_grad=False)
            self.scale = nn.Parameter(s.to(dtype), requires_grad=False)
        elif kind == "int4":
            k = weight.shape[1]
            if k % INT4_GROUP:
                raise UnsupportedError(f"int4 weights need in_features divisible by {INT4_GROUP}, got {k}")
            q, sz = quantize_int4(weight)
            self.weight = nn.Parameter(torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, 1), requires_grad=False)
            self.scale = nn.Parameter(sz.to(dtype), requires_grad=False)
        else:
            raise ValueError(kind)
        self.bias = None if bias is None else nn.Parameter(bias.detach().to(dtype), requires_grad=False)

    @classmethod
    def from_int8(cls, qdata: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None,
                  dtype: torch.dtype) -> "PackedLinear":
        """Adopt an already-quantized int8 weight (e.g. torchao's Int8Tensor) without requantizing."""
        self = cls.__new__(cls)
        nn.Module.__init__(self)
        self.kind, self.out_features = "int8", qdata.shape[0]
        self.weight = nn.Parameter(qdata.contiguous(), requires_grad=False)
        self.scale = nn.Parameter(scale.reshape(-1).to(dtype), requires_grad=False)
        self.bias = None if bias is None else nn.Parameter(bias.detach().to(dtype), requires_grad=False)
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (..., K) -> (..., N)
        if self.kind == "float":
            return F.linear(x, self.weight, self.bias)
        shape = x.shape
        x2 = x.reshape(-1, shape[-1]).contiguous()  # the packed kernels ignore strides
        if self.kind == "int8":
            y = torch.ops.aten._weight_int8pack_mm(x2, self.weight, self.scale)
        else:
            y = torch.ops.aten._weight_int4pack_mm_for_cpu(x2, self.weight, INT4_GROUP, self.scale)
        y = y.reshape(*shape[:-1], self.out_features)
        return y if self.bias is None else y + self.bias


class OpaqueLinear(nn.Module):
    """A weight we cannot repack (a tensor subclass from some quantizer): call F.linear on it."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.weight, self.bias = linear.weight, linear.bias
        self.out_features = linear.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)


def _int8_parts(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(qdata, per-row scale) of a symmetric per-row int8 tensor subclass (torchao Int8Tensor)."""
    q, s = getattr(weight, "qdata", None), getattr(weight, "scale", None)
    if q is None or s is None or q.dtype != torch.int8 or q.dim() != 2 or s.numel() != q.shape[0]:
        return None
    if getattr(weight, "act_quant_kwargs", None) is not None:  # dynamic activation quant: not weight-only
        return None
    z = getattr(weight, "zero_point", None)
    if z is not None and bool((z != 0).any()):
        return None
    return q, s


class Fused(nn.Module):
    """Several linears on the same input as one matmul (q|k|v, gate|up); outputs split back."""

    def __init__(self, linears: Sequence[nn.Linear], kind: str, dtype: torch.dtype):
        super().__init__()
        self.sizes = [int(l.out_features) for l in linears]
        weights = [l.weight for l in linears]
        biases = [l.bias for l in linears]
        plain = all(type(w) in (torch.Tensor, nn.Parameter) for w in weights)
        int8 = [_int8_parts(w) for w in weights] if not plain else []
        self.parts = nn.ModuleList()
        bias = None if any(b is None for b in biases) else torch.cat([b.detach().float() for b in biases])
        if plain:
            self.parts.append(PackedLinear(torch.cat([w.detach().float() for w in weights]), bias, kind, dtype))
        elif int8 and all(p is not None for p in int8):
            q = torch.cat([p[0] for p in int8])
            s = torch.cat([p[1].reshape(-1).float() for p in int8])
            self.parts.append(PackedLinear.from_int8(q, s, bias, dtype))
        else:
            self.parts.extend(OpaqueLinear(l) for l in linears)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        if len(self.parts) == 1:
            return list(self.parts[0](x).split(self.sizes, dim=-1))
        return [p(x) for p in self.parts]


# --------------------------------------------------------------------------- the model

def _rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    # as transformers' LlamaRMSNorm: statistics in fp32, scale in the weight's dtype
    dtype = x.dtype
    h = x.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return weight * h.to(dtype)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


class FastLlama(nn.Module):
    """Llama-family forward over a static KV cache, built from a Hugging Face CausalLM module."""

    def __init__(self, hf: nn.Module, dtype: torch.dtype, weights: str = "auto"):
        super().__init__()
        cfg = hf.config
        if getattr(cfg, "model_type", None) not in SUPPORTED:
            raise UnsupportedError(f"the fast decoder supports {', '.join(SUPPORTED)} models, not "
                                   f"{getattr(cfg, 'model_type', type(hf).__name__)!r}; use fast=False")
        rope = getattr(hf.model, "rotary_emb", None)
        rope_type = (getattr(cfg, "rope_parameters", None) or {}).get("rope_type", "default")
        if rope is None or rope_type not in ("default", "linear", "llama3"):
            raise UnsupportedError(f"the fast decoder does not support rope type {rope_type!r}; use fast=False")
        device = next(hf.parameters()).device
        self.dtype = dtype
        self.n_layers = cfg.num_hidden_layers
        self.n_heads = cfg.num_attention_heads
        self.n_kv = cfg.num_key_value_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // self.n_heads
        self.eps = float(cfg.rms_norm_eps)
        self.max_positions = int(cfg.max_position_embeddings)
        kind = "float" if weights == "auto" else weights
        # the output head is the largest matrix (vocab x hidden): int8 keeps it accurate and fast
        head_kind = "int8" if kind == "int4" else kind
        emb = hf.model.embed_tokens.weight
        self.embed = nn.Parameter(emb.detach().to(dtype), requires_grad=False)
        self.layers = nn.ModuleList()
        for layer in hf.model.layers:
            a, m = layer.self_attn, layer.mlp
            blk = nn.Module()
            blk.ln1 = nn.Parameter(layer.input_layernorm.weight.detach().to(dtype), requires_grad=False)
            blk.ln2 = nn.Parameter(layer.post_attention_layernorm.weight.detach().to(dtype), requires_grad=False)
            blk.qkv = Fused([a.q_proj, a.k_proj, a.v_proj], kind, dtype)
            blk.o = Fused([a.o_proj], kind, dtype)
            blk.gate_up = Fused([m.gate_proj, m.up_proj], kind, dtype)
            blk.down = Fused([m.down_proj], kind, dtype)
            self.layers.append(blk)
        self.norm = nn.Parameter(hf.model.norm.weight.detach().to(dtype), requires_grad=False)
        self.head = Fused([hf.lm_head], head_kind, dtype)
        # rotary tables for every position, fp32 as transformers computes them
        inv = rope.inv_freq.detach().float().to(device)
        t = torch.arange(self.max_positions, device=device, dtype=torch.float32)
        freqs = torch.outer(t, inv)
        embp = torch.cat([freqs, freqs], dim=-1)
        scaling = float(getattr(rope, "attention_scaling", 1.0))
        self.register_buffer("cos", (embp.cos() * scaling).to(dtype), persistent=False)
        self.register_buffer("sin", (embp.sin() * scaling).to(dtype), persistent=False)
        self.register_buffer("k_cache", torch.zeros(0, device=device, dtype=dtype), persistent=False)
        self.register_buffer("v_cache", torch.zeros(0, device=device, dtype=dtype), persistent=False)
        self.to(device)

    @property
    def capacity(self) -> int:
        return int(self.k_cache.shape[3]) if self.k_cache.dim() == 5 else 0

    def allocate(self, capacity: int) -> None:
        # (layers, batch 1, kv heads, positions, head dim)
        shape = (self.n_layers, 1, self.n_kv, capacity, self.head_dim)
        self.k_cache = torch.zeros(shape, dtype=self.dtype, device=self.embed.device)
        self.v_cache = torch.zeros(shape, dtype=self.dtype, device=self.embed.device)

    def forward(self, ids: torch.Tensor, positions: torch.Tensor, end: int | None = None,
                all_logits: bool = False) -> torch.Tensor:
        """Append tokens to the cache and return logits.

        ids, positions: (T,) token ids and their absolute positions (consecutive).
        end: tokens in the cache after this call; None attends over the whole static cache with a
            mask instead (fixed shapes, for the compiled step).
        Returns (T, V) logits if all_logits else (V,) for the last token, in the compute dtype.
        """
        T = ids.shape[0]
        H, KV, D = self.n_heads, self.n_kv, self.head_dim
        g = H // KV
        x = F.embedding(ids, self.embed)[None]  # (1, T, hidden)
        cos, sin = self.cos[positions][None, None], self.sin[positions][None, None]  # (1, 1, T, D)
        S = self.capacity if end is None else end
        key_pos = torch.arange(S, device=ids.device)
        mask = None
        if end is None or T > 1:
            # query t sees keys at positions <= its own; GQA groups stack queries: rows = (g, T)
            mask = (key_pos[None, :] <= positions[:, None]).repeat(g, 1)  # (g*T, S)
        for i, blk in enumerate(self.layers):
            h = _rms_norm(x, blk.ln1, self.eps)
            q, k, v = blk.qkv(h)
            q = q.view(1, T, H, D).transpose(1, 2)
            k = k.view(1, T, KV, D).transpose(1, 2)
            v = v.view(1, T, KV, D).transpose(1, 2)
            q = q * cos + _rotate_half(q) * sin
            k = k * cos + _rotate_half(k) * sin
            kc, vc = self.k_cache[i], self.v_cache[i]
            kc.index_copy_(2, positions, k)
            vc.index_copy_(2, positions, v)
            if end is not None:
                kc, vc = kc[:, :, :end], vc[:, :, :end]
            # query head h uses kv head h // g: view queries as (KV, g*T) rows instead of repeating keys
            qg = q.reshape(1, KV, g * T, D)
            o = F.scaled_dot_product_attention(qg, kc, vc, attn_mask=mask)
            o = o.reshape(1, H, T, D).transpose(1, 2).reshape(1, T, H * D)
            x = x + blk.o(o)[0]
            h = _rms_norm(x, blk.ln2, self.eps)
            gate, up = blk.gate_up(h)
            x = x + blk.down(F.silu(gate) * up)[0]
        if not all_logits:
            x = x[:, -1:]
        x = _rms_norm(x, self.norm, self.eps)
        logits = self.head(x)[0][0]  # (T or 1, V)
        return logits if all_logits else logits[-1]


# --------------------------------------------------------------------------- decoder with state

class FastDecoder:
    """Stateful decoder over FastLlama: prefill, compiled single-token steps, rollback.

    Args:
        model: a causal-lm LeanModel on the torch backend (Llama family).
        dtype: "auto" (model's dtype; bf16 for packed int weights and on CUDA), "float32",
            "bfloat16" or "float16".
        weights: "auto" (as the model holds them; torchao int8 weights are adopted as is),
            "int8" or "int4" (pack float weights for PyTorch's weight-only kernels).
        compile: compile the single-token step (once per cache size).
    """

    def __init__(self, model: Any, dtype: str = "auto", weights: str = "auto", compile: bool = True):
        if weights not in WEIGHTS:
            raise UnsupportedError(f"weights must be one of {', '.join(WEIGHTS)}, got {weights!r}")
        module = model.module
        if not isinstance(module, nn.Module):
            raise UnsupportedError(f"the fast decoder needs a PyTorch model; this one runs on {model.backend}")
        self.torch_dtype = resolve_dtype(module, dtype, weights)
        with torch.no_grad():
            self.net = FastLlama(module, self.torch_dtype, weights).eval()
        self.device = self.net.embed.device
        self.compile = compile
        self.pos = 0
        self._compiled: dict[tuple, Any] = {}
        self._lengths = {1}  # token counts per forward that get a compiled graph

    def compile_length(self, tokens: int) -> None:
        """Also compile forwards of exactly `tokens` tokens (e.g. speculative verification)."""
        self._lengths.add(int(tokens))

    @property
    def max_length(self) -> int:
        return self.net.max_positions

    def reset(self, capacity: int) -> None:
        """Start a new sequence that will hold up to `capacity` tokens."""
        if capacity > self.net.max_positions:
            raise UnsupportedError(f"{capacity} tokens exceed the model's context of {self.net.max_positions}")
        if capacity > self.net.capacity:
            cap = min(self.net.max_positions, -(-capacity // CACHE_BLOCK) * CACHE_BLOCK)
            self.net.allocate(cap)
        self.pos = 0

    def rollback(self, length: int) -> None:
        """Forget cached tokens past `length` (their slots are simply overwritten later)."""
        self.pos = min(self.pos, length)

    @torch.inference_mode()
    def forward(self, ids: torch.Tensor, all_logits: bool = False) -> torch.Tensor:
        """Append `ids` (T,) and return float32 logits: (T, V) if all_logits else (V,)."""
        T = int(ids.shape[0])
        if self.pos + T > self.net.capacity:
            raise UnsupportedError(f"sequence of {self.pos + T} tokens exceeds the cache ({self.net.capacity})")
        ids = ids.to(self.device)
        positions = torch.arange(self.pos, self.pos + T, device=self.device)
        if self.compile and T in self._lengths:
            out = self._graph(T, all_logits)(ids, positions)
        else:
            out = self.net(ids, positions, end=self.pos + T, all_logits=all_logits)
        self.pos += T
        return out.float()

    def _graph(self, tokens: int, all_logits: bool) -> Any:
        key = (self.net.capacity, tokens, all_logits)
        fn = self._compiled.get(key)
        if fn is None:
            fn = self._compiled[key] = compile_step(self.net, all_logits)
        return fn


def resolve_dtype(module: nn.Module, dtype: str, weights: str = "auto") -> torch.dtype:
    if dtype != "auto":
        return getattr(torch, dtype)
    p = next(module.parameters())
    if p.device.type == "cuda" or weights in ("int8", "int4"):
        return torch.bfloat16  # bf16 activations are what the int8/int4 CPU kernels and GPUs are fast at
    return p.dtype if p.dtype.is_floating_point else torch.float32


def compile_step(net: FastLlama, all_logits: bool = False) -> Any:
    """torch.compile a forward over the whole static cache (fixed shapes: one graph per size)."""
    import torch._inductor.config as inductor_config

    def step(ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        return net(ids, positions, end=None, all_logits=all_logits)

    compiled = torch.compile(step, fullgraph=True, dynamic=False)

    def run(ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        # freezing folds the weights into the graph as constants (prepacked for oneDNN/MKL)
        with inductor_config.patch(freezing=True):
            return compiled(ids, positions)

    return run


_DECODERS: "weakref.WeakKeyDictionary[nn.Module, dict]" = weakref.WeakKeyDictionary()


def fast_decoder(model: Any, dtype: str = "auto", weights: str = "auto", compile: bool = True) -> FastDecoder:
    """The model's FastDecoder for these settings, built (and compiled) once and then reused.

    Example:
        >>> dec = fast_decoder(leanlm.load("smollm2-135m"), dtype="bfloat16")
    """
    module = model.module
    key = (dtype, weights, compile, tuple(t.get("type") for t in model.record.techniques),
           id(next(module.parameters())))
    per_model = _DECODERS.setdefault(module, {})
    if key not in per_model:
        per_model[key] = FastDecoder(model, dtype=dtype, weights=weights, compile=compile)
    return per_model[key]
