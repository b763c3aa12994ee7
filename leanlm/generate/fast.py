"""The fast decoder: a lean Llama forward over a pre-allocated KV cache, compiled once.

Hugging Face's eager forward spends much of a batch-1 decode step in Python and dispatch (tens of
small ops per layer, mask and cache bookkeeping). This module rebuilds the same computation from
the model's own weights with fewer, bigger ops (q/k/v and gate/up fused into one matmul each),
a static KV cache written in place, and rotary tables precomputed once. The decoder layer is
compiled with `torch.compile` (fullgraph, fixed shapes) once and reused for every layer
("regional" compilation: seconds instead of minutes, as all layers share shapes), and guard checks
are skipped once a graph is warm. Weights stay float (fp32/bf16) or are packed for PyTorch's
native weight-only int8 / int4 CPU kernels (`_weight_int8pack_mm`, `_weight_int4pack_mm_for_cpu`).

Numerics follow transformers' Llama (RMSNorm in fp32, rotary tables in fp32), so the fp32 fast
path reproduces the eager model's greedy tokens.

Example:
    >>> dec = fast_decoder(model, dtype="bfloat16", weights="int8")
    >>> dec.reset(256)
    >>> logits = dec.forward(torch.tensor(prompt_ids))          # prefill -> (V,)
    >>> logits = dec.forward(torch.tensor([next_id]))           # one compiled decode step
"""
from __future__ import annotations

import itertools
import weakref
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from leanlm.errors import UnsupportedError

SUPPORTED = ("llama", "mistral", "qwen2")
WEIGHTS = ("auto", "int8", "int4")
SCOPES = ("layer", "model")
CACHE_BLOCK = 256  # cache capacities are rounded up to this, so few distinct compiled graphs exist
INT4_GROUP = 32
SMALL_T = 16  # up to this many new tokens per forward, attention is computed with plain matmuls


# --------------------------------------------------------------------------- packed linear layers

def quantize_int8(w: torch.Tensor, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-output-channel int8: w ~= q * scale[:, None]. w: (N, K).

    The scale is rounded to `dtype` (what the kernel multiplies by) before rounding q, so the
    kernel computes exactly the quantized weight rather than one with a per-row gain error.
    """
    w = w.float()
    scale = (w.abs().amax(dim=1) / 127).clamp(min=1e-12).to(dtype).float()
    q = torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8)
    return q, scale


def quantize_int4(w: torch.Tensor, group: int = INT4_GROUP, dtype: torch.dtype = torch.float32
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Asymmetric groupwise int4 in tinygemm's convention: w ~= (q - 8) * scale + zero.

    Returns q (N, K) int32 in [0, 15], scale and zero (N, K // group), both already rounded to
    `dtype` (the kernel's) so q is chosen against the values the kernel will use.
    """
    n, k = w.shape
    g = w.float().reshape(n, k // group, group)
    lo, hi = g.amin(-1), g.amax(-1)
    scale = ((hi - lo) / 15).clamp(min=1e-12).to(dtype).float()
    zero = (lo + 8 * scale).to(dtype).float()
    q = torch.round((g - zero[..., None]) / scale[..., None] + 8).clamp(0, 15).to(torch.int32).reshape(n, k)
    return q, scale, zero


class PackedLinear(nn.Module):
    """y = x @ W.T (+ b) with W stored as float, int8 (per channel) or int4 (groupwise)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, kind: str, dtype: torch.dtype):
        super().__init__()
        self.kind = kind
        self.out_features = weight.shape[0]
        if kind != "float" and weight.device.type != "cpu":
            kind = self.kind = "float"  # the packed kernels below are CPU kernels; GPUs run bf16
        self.group = INT4_GROUP
        if kind == "float":
            self.weight = nn.Parameter(weight.detach().to(dtype).contiguous(), requires_grad=False)
        elif kind == "int8":
            q, s = quantize_int8(weight, dtype)
            self.weight = nn.Parameter(q, requires_grad=False)
            self.scale = nn.Parameter(s.to(dtype), requires_grad=False)
        elif kind == "int4":
            k = weight.shape[1]
            if k % INT4_GROUP:
                raise UnsupportedError(f"int4 weights need in_features divisible by {INT4_GROUP}, got {k}")
            self._pack_int4(*quantize_int4(weight, INT4_GROUP, dtype), INT4_GROUP, dtype)
        else:
            raise ValueError(kind)
        self.bias = None if bias is None else nn.Parameter(bias.detach().to(dtype), requires_grad=False)

    @classmethod
    def from_int8(cls, qdata: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None,
                  dtype: torch.dtype) -> "PackedLinear":
        """Adopt an already-quantized int8 weight (qdata (N, K), per-row scale) without requantizing."""
        self = cls.__new__(cls)
        nn.Module.__init__(self)
        self.kind, self.out_features, self.group = "int8", qdata.shape[0], INT4_GROUP
        self.weight = nn.Parameter(qdata.contiguous(), requires_grad=False)
        self.scale = nn.Parameter(scale.reshape(-1).to(dtype), requires_grad=False)
        self.bias = None if bias is None else nn.Parameter(bias.detach().to(dtype), requires_grad=False)
        return self

    @classmethod
    def from_int4(cls, q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, group: int,
                  bias: torch.Tensor | None, dtype: torch.dtype) -> "PackedLinear":
        """Adopt int4 values q (N, K) in [0, 15] with (N, K/group) scales/zeros (w = (q - 8) s + z)."""
        self = cls.__new__(cls)
        nn.Module.__init__(self)
        self.kind, self.out_features = "int4", q.shape[0]
        self._pack_int4(q, scale, zero, group, dtype)
        self.bias = None if bias is None else nn.Parameter(bias.detach().to(dtype), requires_grad=False)
        return self

    def _pack_int4(self, q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, group: int,
                   dtype: torch.dtype) -> None:
        # the kernel's layout: packed (N, K/2) and scales_and_zeros (K/group, N, 2)
        self.group = int(group)
        pad = (-q.shape[0]) % 16  # the CPU packing wants N % 16 == 0; padded rows are sliced off
        if pad:
            q = F.pad(q, (0, 0, 0, pad), value=8)
            scale, zero = F.pad(scale, (0, 0, 0, pad)), F.pad(zero, (0, 0, 0, pad))
        packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q.to(torch.int32).contiguous(), 1)
        self.weight = nn.Parameter(packed, requires_grad=False)
        sz = torch.stack([scale.float().t(), zero.float().t()], dim=-1).contiguous()
        self.scale = nn.Parameter(sz.to(dtype), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (..., K) -> (..., N)
        if self.kind == "float":
            return F.linear(x, self.weight, self.bias)
        shape = x.shape
        x2 = x.reshape(-1, shape[-1]).contiguous()  # the packed kernels ignore strides
        if self.kind == "int8" and x2.shape[0] > SMALL_T and x2.dtype in (torch.bfloat16, torch.float32):
            # prefill: the int8 kernel is a GEMV at heart (~4x slower than bf16 GEMM at 128 rows
            # here), so dequantize once and use the float GEMM (AMX/AVX-512 bf16); same weights
            y = F.linear(x2, self.weight.to(x2.dtype) * self.scale.to(x2.dtype)[:, None])
        elif self.kind == "int8":
            y = torch.ops.aten._weight_int8pack_mm(x2, self.weight, self.scale)
        else:
            y = torch.ops.aten._weight_int4pack_mm_for_cpu(x2, self.weight, self.group, self.scale)
            y = y[:, : self.out_features]
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
    if weight.device.type != "cpu" or q is None or s is None or q.dtype != torch.int8 or q.dim() != 2 or s.numel() != q.shape[0]:
        return None
    if getattr(weight, "act_quant_kwargs", None) is not None:  # dynamic activation quant: not weight-only
        return None
    z = getattr(weight, "zero_point", None)
    if z is not None and bool((z != 0).any()):
        return None
    return q, s


def _int4_parts(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int] | None:
    """(q (N, K), scale, zero, group) of leanlm's Int4WeightCPU (tinygemm layout, nibble-packed)."""
    if getattr(weight, "kind", None) != "int4" or not hasattr(weight, "zero") or weight.device.type != "cpu":
        return None
    group = int(getattr(weight, "group_size", 0))
    if group not in (32, 64, 128, 256):
        return None
    p = weight.qdata
    q = torch.stack([p & 0xF, p >> 4], dim=-1).reshape(p.shape[0], -1)  # low nibble = even column
    return q, weight.scale, weight.zero, group


class Fused(nn.Module):
    """Several linears on the same input as one matmul (q|k|v, gate|up); outputs split back."""

    def __init__(self, linears: Sequence[nn.Linear], kind: str, dtype: torch.dtype):
        super().__init__()
        self.sizes = [int(l.out_features) for l in linears]
        weights = [l.weight for l in linears]
        biases = [l.bias for l in linears]
        plain = all(type(w) in (torch.Tensor, nn.Parameter) for w in weights)
        int8 = [_int8_parts(w) for w in weights] if not plain else []
        int4 = [_int4_parts(w) for w in weights] if not plain else []
        self.parts = nn.ModuleList()
        bias = None if any(b is None for b in biases) else torch.cat([b.detach().float() for b in biases])
        if plain:
            # a single float weight in the model's dtype is shared, not copied
            w = weights[0].detach() if len(weights) == 1 else torch.cat([w.detach().float() for w in weights])
            self.parts.append(PackedLinear(w, bias, kind, dtype))
        elif int8 and all(p is not None for p in int8):
            q = torch.cat([p[0] for p in int8])
            s = torch.cat([p[1].reshape(-1).float() for p in int8])
            self.parts.append(PackedLinear.from_int8(q, s, bias, dtype))
        elif int4 and all(p is not None for p in int4) and len({p[3] for p in int4}) == 1:
            q, sc, z = (torch.cat([p[i] for p in int4]) for i in range(3))
            self.parts.append(PackedLinear.from_int4(q, sc, z, int4[0][3], bias, dtype))
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


class Block(nn.Module):
    """One decoder layer's weights (fused, packed); the computation is `layer_forward`.

    Head counts and FFN width are the layer's own (read from its weight shapes), so structurally
    pruned models, whose layers differ, run too.
    """

    def __init__(self, layer: nn.Module, kind: str, dtype: torch.dtype, head_dim: int):
        super().__init__()
        a, m = layer.self_attn, layer.mlp
        self.n_heads = a.q_proj.out_features // head_dim
        self.n_kv = a.k_proj.out_features // head_dim
        # layers with equal signatures share one compiled graph
        self.signature = (self.n_heads, self.n_kv, m.down_proj.in_features)
        self.ln1 = nn.Parameter(layer.input_layernorm.weight.detach().to(dtype), requires_grad=False)
        self.ln2 = nn.Parameter(layer.post_attention_layernorm.weight.detach().to(dtype), requires_grad=False)
        self.qkv = Fused([a.q_proj, a.k_proj, a.v_proj], kind, dtype)
        self.o = Fused([a.o_proj], kind, dtype)
        self.gate_up = Fused([m.gate_proj, m.up_proj], kind, dtype)
        self.down = Fused([m.down_proj], kind, dtype)


def layer_forward(blk: Block, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, mask: torch.Tensor | None,
                  positions: torch.Tensor, kc: torch.Tensor, vc: torch.Tensor, end: int | None,
                  shape: tuple[int, int, int, float, torch.dtype]) -> torch.Tensor:
    """One decoder layer: x (1, T, hidden) -> (1, T, hidden); writes this layer's K/V at `positions`.

    Every layer has the same shapes, so one compiled version of this function serves all of them
    (compile time of one layer, not thirty).
    """
    H, KV, D, eps, attn_dtype = shape
    T = x.shape[1]
    g = H // KV
    h = _rms_norm(x, blk.ln1, eps)
    q, k, v = (t.to(attn_dtype) for t in blk.qkv(h))
    q = q.view(1, T, H, D).transpose(1, 2)
    k = k.view(1, T, KV, D).transpose(1, 2)
    v = v.view(1, T, KV, D).transpose(1, 2)
    q = q * cos + _rotate_half(q) * sin
    k = k * cos + _rotate_half(k) * sin
    # index_put_ is what inductor re-inplaces on a mutated input (no copy of the cache)
    kc[:, :, positions] = k
    vc[:, :, positions] = v
    if end is not None:
        kc, vc = kc[:, :, :end], vc[:, :, :end]
    # query head h uses kv head h // g: view queries as (KV, g*T) rows instead of repeating keys
    qg = q.reshape(1, KV, g * T, D)
    if T <= SMALL_T:
        # decode / verify: plain matmuls + softmax beat the flash kernel's fixed cost per call
        s = (qg @ kc.transpose(-1, -2)) * (D ** -0.5)  # (1, KV, g*T, S)
        if mask is not None:
            s = s.masked_fill(~mask, float("-inf"))
        o = s.float().softmax(-1).to(vc.dtype) @ vc
    else:
        o = F.scaled_dot_product_attention(qg, kc, vc, attn_mask=mask)
    o = o.reshape(1, H, T, D).transpose(1, 2).reshape(1, T, H * D).to(x.dtype)
    x = x + blk.o(o)[0]
    h = _rms_norm(x, blk.ln2, eps)
    gate, up = blk.gate_up(h)
    return x + blk.down(F.silu(gate) * up)[0]


def check_supported(hf: nn.Module) -> nn.Module:
    """The model's rotary embedding module, if its family and rope type are ones we rebuild (else raise)."""
    cfg = hf.config
    if getattr(cfg, "model_type", None) not in SUPPORTED:
        raise UnsupportedError(f"the fast decoder supports {', '.join(SUPPORTED)} models, not "
                               f"{getattr(cfg, 'model_type', type(hf).__name__)!r}; use fast=False")
    rope = getattr(hf.model, "rotary_emb", None)
    rope_type = (getattr(cfg, "rope_parameters", None) or {}).get("rope_type", "default")
    if rope is None or rope_type not in ("default", "linear", "llama3"):
        raise UnsupportedError(f"the fast decoder does not support rope type {rope_type!r}; use fast=False")
    return rope


class FastLlama(nn.Module):
    """Llama-family forward over a static KV cache, built from a Hugging Face CausalLM module."""

    def __init__(self, hf: nn.Module, dtype: torch.dtype, weights: str = "auto"):
        super().__init__()
        cfg = hf.config
        rope = check_supported(hf)
        device = next(hf.parameters()).device
        self.dtype = dtype
        self.n_layers = len(hf.model.layers)
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        self.eps = float(cfg.rms_norm_eps)
        self.max_positions = int(cfg.max_position_embeddings)
        kind = "float" if weights == "auto" else weights
        self.embed = nn.Parameter(hf.model.embed_tokens.weight.detach().to(dtype), requires_grad=False)
        self.layers = nn.ModuleList(Block(layer, kind, dtype, self.head_dim) for layer in hf.model.layers)
        self.norm = nn.Parameter(hf.model.norm.weight.detach().to(dtype), requires_grad=False)
        # The output head is the largest matrix (vocab x hidden). int4 there costs real accuracy
        # (KLD vs fp32 0.06 instead of 0.002 on SmolLM2), so int4 models keep an int8 head.
        self.head = Fused([hf.lm_head], "int8" if kind == "int4" else kind, dtype)
        # On CPUs attention (and the KV cache) stay fp32: small bf16 matmuls cost far more per call
        # there than the few KB of cache they save, and fp32 keeps rotary/softmax exact.
        self.attn_dtype = dtype if device.type == "cuda" else torch.float32
        # rotary tables for every position, computed as transformers does (fp32)
        inv = rope.inv_freq.detach().float().to(device)
        t = torch.arange(self.max_positions, device=device, dtype=torch.float32)
        freqs = torch.outer(t, inv)
        embp = torch.cat([freqs, freqs], dim=-1)
        scaling = float(getattr(rope, "attention_scaling", 1.0))
        self.register_buffer("cos", (embp.cos() * scaling).to(self.attn_dtype), persistent=False)
        self.register_buffer("sin", (embp.sin() * scaling).to(self.attn_dtype), persistent=False)
        self.k_cache: list[torch.Tensor] = []
        self.v_cache: list[torch.Tensor] = []
        self.to(device)

    @property
    def capacity(self) -> int:
        return int(self.k_cache[0].shape[2]) if self.k_cache else 0

    def allocate(self, capacity: int) -> None:
        # one (batch 1, the layer's kv heads, positions, head dim) tensor per layer, for K and for V
        dev = self.embed.device
        shapes = [(1, blk.n_kv, capacity, self.head_dim) for blk in self.layers]
        self.k_cache = [torch.zeros(s, dtype=self.attn_dtype, device=dev) for s in shapes]
        self.v_cache = [torch.zeros(s, dtype=self.attn_dtype, device=dev) for s in shapes]

    def forward(self, ids: torch.Tensor, positions: torch.Tensor, end: int | None = None,
                all_logits: bool = False, layer_fn: Any = None) -> torch.Tensor:
        """Append tokens to the cache and return logits.

        ids, positions: (T,) token ids and their absolute positions (consecutive).
        end: tokens in the cache after this call; None attends over the whole static cache with a
            mask instead (fixed shapes, for the compiled layers).
        layer_fn: the per-layer function (default: eager `layer_forward`; the compiled one).
        Returns (T, V) logits if all_logits else (V,) for the last token, in the compute dtype.
        """
        T = ids.shape[0]
        x = F.embedding(ids, self.embed)[None]  # (1, T, hidden)
        cos, sin = self.cos[positions][None, None], self.sin[positions][None, None]  # (1, 1, T, D)
        S = self.capacity if end is None else end
        masks: dict[int, torch.Tensor | None] = {}
        fn = layer_fn or layer_forward
        for i, blk in enumerate(self.layers):
            g = blk.n_heads // blk.n_kv
            if g not in masks:
                masks[g] = None
                if end is None or T > 1:
                    # query t sees keys at positions <= its own; GQA groups stack queries: rows = (g, T)
                    key_pos = torch.arange(S, device=ids.device)
                    masks[g] = (key_pos[None, :] <= positions[:, None]).repeat(g, 1)  # (g*T, S)
            shape = (blk.n_heads, blk.n_kv, self.head_dim, self.eps, self.attn_dtype)
            x = fn(blk, x, cos, sin, masks[g], positions, self.k_cache[i], self.v_cache[i], end, shape)
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
        scope: "layer" (one compiled layer reused by every layer: compiles in seconds) or
            "model" (the whole forward as one graph: ~1 min to compile, less overhead per token).
    """

    def __init__(self, model: Any, dtype: str = "auto", weights: str = "auto", compile: bool = True,
                 scope: str = "layer"):
        if weights not in WEIGHTS:
            raise UnsupportedError(f"weights must be one of {', '.join(WEIGHTS)}, got {weights!r}")
        if scope not in SCOPES:
            raise UnsupportedError(f"compile scope must be one of {', '.join(SCOPES)}, got {scope!r}")
        module = model.module
        if not isinstance(module, nn.Module):
            raise UnsupportedError(f"the fast decoder needs a PyTorch model; this one runs on {model.backend}")
        self.torch_dtype = resolve_dtype(module, dtype, weights)
        with torch.no_grad():
            self.net = FastLlama(module, self.torch_dtype, weights).eval()
        self.device = self.net.embed.device
        self.compile = compile
        self.scope = scope
        self.pos = 0
        self._run: Any = None  # (ids, positions, all_logits) -> logits through the compiled graph(s)
        self._warm: set[tuple] = set()  # (cache size, tokens, all_logits) already compiled
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
            # fixed shapes: attend over the whole static cache with a mask, layers compiled
            key = (self.net.capacity, T, all_logits)
            run = self._compiled_step()
            if key in self._warm:
                # this graph exists: skip re-checking guards on every call (shapes are fixed)
                with torch.compiler.set_stance("default", skip_guard_eval_unsafe=True):
                    out = run(ids, positions, all_logits)
            else:
                out = run(ids, positions, all_logits)
                self._warm.add(key)
        else:
            out = self.net(ids, positions, end=self.pos + T, all_logits=all_logits)
        self.pos += T
        return out.float()

    def _compiled_step(self) -> Any:
        """(ids, positions, all_logits) -> logits through the compiled graph(s) of this scope (built once)."""
        if self._run is None:
            net = self.net
            if self.scope == "model":
                step = compile_step()
                self._run = lambda ids, positions, all_logits: step(net, ids, positions, all_logits)
            else:
                # one compiled function per distinct layer signature (pruned layers differ), so
                # no function recompiles for every layer shape and hits dynamo's recompile limit
                compiled: dict[tuple, Any] = {}

                def layer_fn(blk: Block, *args: Any) -> torch.Tensor:
                    if blk.signature not in compiled:
                        compiled[blk.signature] = compile_layer()
                    return compiled[blk.signature](blk, *args)
                self._run = lambda ids, positions, all_logits: net(ids, positions, end=None, all_logits=all_logits,
                                                                   layer_fn=layer_fn)
        return self._run


def resolve_dtype(module: nn.Module, dtype: str, weights: str = "auto") -> torch.dtype:
    if dtype != "auto":
        return getattr(torch, dtype)
    p = next(module.parameters())
    packed = any(getattr(m.weight, "kind", None) in ("int8", "int4") or _int8_parts(m.weight) is not None
                 for m in module.modules() if isinstance(m, nn.Linear) and type(m.weight) is not nn.Parameter)
    if p.device.type == "cuda" or weights in ("int8", "int4") or packed:
        return torch.bfloat16  # bf16 activations are what the int8/int4 CPU kernels and GPUs are fast at
    return p.dtype if p.dtype.is_floating_point else torch.float32


def compile_layer() -> Any:
    """A compiled `layer_forward` with its own compile cache.

    All layers of a model share one compiled graph (regional compilation: same shapes, weights
    passed in). Each decoder gets a fresh copy of the function's code object so that its graphs
    (one per token count and cache size) do not count against other decoders' recompile limit.
    """
    import types

    code = layer_forward.__code__.replace(co_name=f"layer_forward_{next(_COUNTER)}")
    fn = types.FunctionType(code, layer_forward.__globals__, code.co_name)
    return torch.compile(fn, fullgraph=True, dynamic=False)


def _whole_step(net: "FastLlama", ids: torch.Tensor, positions: torch.Tensor, all_logits: bool) -> torch.Tensor:
    return net(ids, positions, end=None, all_logits=all_logits, layer_fn=layer_forward)


def compile_step() -> Any:
    """A compiled forward of the whole model (every layer and the head in one graph).

    Compared with one compiled layer called thirty times, this removes the per-call cost of
    entering a compiled region (guards, wrappers: ~0.1 ms a call on this CPU), which is a large
    share of a 15 ms int4 decode step; it costs a longer first compile (about a minute for
    SmolLM2 on 2 cores instead of seconds). Same per-decoder code-object trick as `compile_layer`.
    """
    import types

    code = _whole_step.__code__.replace(co_name=f"decode_step_{next(_COUNTER)}")
    fn = types.FunctionType(code, _whole_step.__globals__, code.co_name)
    return torch.compile(fn, fullgraph=True, dynamic=False)


_COUNTER = itertools.count()
_DECODERS: "weakref.WeakKeyDictionary[nn.Module, dict]" = weakref.WeakKeyDictionary()


def fast_decoder(model: Any, dtype: str = "auto", weights: str = "auto", compile: bool = True,
                 scope: str = "layer") -> FastDecoder:
    """The model's FastDecoder for these settings, built (and compiled) once and then reused.

    scope: what one compiled graph covers: "layer" (one layer, reused by all; compiles in
    seconds) or "model" (the whole forward; compiles in about a minute, decodes faster).

    Example:
        >>> dec = fast_decoder(leanlm.load("smollm2-135m"), dtype="bfloat16")
    """
    module = model.module
    key = (dtype, weights, compile, scope, tuple(t.get("type") for t in model.record.techniques),
           id(next(module.parameters())))
    per_model = _DECODERS.setdefault(module, {})
    if key not in per_model:
        per_model[key] = FastDecoder(model, dtype=dtype, weights=weights, compile=compile, scope=scope)
    return per_model[key]
