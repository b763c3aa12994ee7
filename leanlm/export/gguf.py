"""GGUF export: write a Llama-family decoder so llama.cpp (and anything that reads GGUF) runs it.

Weights are written as F32, F16, Q8_0 or Q4_0 blocks (quantized with the `gguf` package's own
reference quantizers, so the bytes are what llama.cpp expects); the token embedding stays Q8_0 in
Q4_0 files (llama.cpp's own mixes keep it at >= 6 bits). q/k projections are permuted back into
llama.cpp's rotary layout (the inverse of what transformers does when it reads a GGUF). The
tokenizer (byte-level BPE vocabulary, merges, special ids, chat template) is embedded.
Structurally pruned models (layers with their own head counts / FFN widths) are written with
per-layer `head_count` / `head_count_kv` / `feed_forward_length` arrays under llama.cpp's "deci"
architecture; uniform ones stay "llama" with the widths read from the weights.

Example:
    >>> from leanlm.export.gguf import export_gguf, read_gguf
    >>> export_gguf(leanlm.load("smollm2-135m"), "smollm2-q8.gguf", "q8_0")
    >>> read_gguf("smollm2-q8.gguf")["tensors"]["blk.0.attn_q.weight"]
"""
from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from leanlm.errors import ArtifactError, LeanlmError, UnsupportedError, did_you_mean

TYPES = ("f32", "f16", "q8_0", "q4_0")
SUPPORTED = ("llama", "mistral")


def _gguf() -> Any:
    try:
        import gguf
    except ImportError:
        raise LeanlmError("GGUF export needs the gguf package: pip install gguf") from None
    return gguf


def permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """HF rotary layout (halves) -> llama.cpp layout (interleaved pairs), per head. w: (out, in)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _tensor(t: torch.Tensor) -> np.ndarray:
    if type(t) not in (torch.Tensor, torch.nn.Parameter) and hasattr(t, "dequantize"):
        t = t.dequantize()  # a quantized tensor subclass: write its float values, requantized below
    return t.detach().float().cpu().numpy()


def export_gguf(model: Any, path: str | os.PathLike, type: str = "q8_0", overwrite: bool = False,
                tokenizer_pre: str | None = None) -> Path:
    """Write a causal-lm LeanModel (Llama family) as a GGUF file.

    Args:
        model: a causal-lm LeanModel on the torch backend (float or torchao-quantized weights).
        path: output .gguf file.
        type: "f32", "f16", "q8_0" or "q4_0" for the 2-D weight matrices (norms stay F32).
        overwrite: replace an existing file.
        tokenizer_pre: llama.cpp pre-tokenizer name (default: "smollm" for SmolLM vocabularies,
            else "gpt2").

    Returns the path. The file is written to a temporary name and renamed when complete.

    Example:
        >>> export_gguf(lm, "model-q4_0.gguf", "q4_0")
    """
    gguf = _gguf()
    if type not in TYPES:
        raise LeanlmError(did_you_mean(type, TYPES, "GGUF type"))
    if getattr(model, "task", None) != "causal-lm" or not isinstance(getattr(model, "module", None), torch.nn.Module):
        raise UnsupportedError("GGUF export needs a causal-lm model on the torch backend")
    cfg = model.module.config
    if getattr(cfg, "model_type", None) not in SUPPORTED:
        raise UnsupportedError(f"GGUF export supports {', '.join(SUPPORTED)} models, not {cfg.model_type!r}")
    path = Path(path)
    if path.exists() and not overwrite:
        raise ArtifactError(f"{path} already exists; choose another output or pass overwrite")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        widths = layer_widths(model.module)
        # per-layer head counts / FFN widths (a structurally pruned model): llama.cpp's "deci"
        # architecture (Llama tensors, per-layer arrays, as for Nemotron-NAS) reads them; its
        # "llama" graph assumes every layer is like layer 0
        writer = gguf.GGUFWriter(tmp, "deci" if widths.varied else "llama")
        _write_metadata(gguf, writer, model, type, tokenizer_pre, widths)
        _write_tensors(gguf, writer, model.module, type)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


_FILE_TYPES = {"f32": "ALL_F32", "f16": "MOSTLY_F16", "q8_0": "MOSTLY_Q8_0", "q4_0": "MOSTLY_Q4_0"}


@dataclass(frozen=True)
class Widths:
    """Per-layer shapes read from the weights (config.json keeps the unpruned values)."""

    head_dim: int
    heads: list[int]
    kv_heads: list[int]
    ffn: list[int]

    @property
    def varied(self) -> bool:
        return any(len(set(v)) > 1 for v in (self.heads, self.kv_heads, self.ffn))

    def value(self, values: list[int]) -> int | list[int]:
        """One number when every layer agrees, else the per-layer array (GGUF allows both)."""
        return values[0] if len(set(values)) == 1 else list(values)


def layer_widths(module: torch.nn.Module) -> Widths:
    cfg = module.config
    head_dim = int(getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads)
    layers = module.model.layers
    return Widths(head_dim, [int(l.self_attn.q_proj.out_features) // head_dim for l in layers],
                  [int(l.self_attn.k_proj.out_features) // head_dim for l in layers],
                  [int(l.mlp.down_proj.in_features) for l in layers])


def _write_metadata(gguf: Any, w: Any, model: Any, type: str, pre: str | None, widths: Widths) -> None:
    cfg = model.module.config
    rope = getattr(cfg, "rope_parameters", None) or {}
    w.add_name(str(model.record.base_model))
    w.add_context_length(int(cfg.max_position_embeddings))
    w.add_embedding_length(int(cfg.hidden_size))
    w.add_block_count(len(widths.heads))
    w.add_feed_forward_length(widths.value(widths.ffn))
    w.add_head_count(widths.value(widths.heads))
    w.add_head_count_kv(widths.value(widths.kv_heads))
    if widths.varied or int(cfg.hidden_size) != widths.heads[0] * widths.head_dim:
        # llama.cpp derives the head size as hidden / heads of layer 0 unless told
        w.add_key_length(widths.head_dim)
        w.add_value_length(widths.head_dim)
    w.add_rope_dimension_count(widths.head_dim)
    w.add_rope_freq_base(float(rope.get("rope_theta", getattr(cfg, "rope_theta", 10000.0))))
    w.add_layer_norm_rms_eps(float(cfg.rms_norm_eps))
    w.add_vocab_size(int(cfg.vocab_size))
    w.add_file_type(getattr(gguf.LlamaFileType, _FILE_TYPES[type]))
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    _write_tokenizer(gguf, w, model.tokenizer, int(cfg.vocab_size), pre)


def _write_tokenizer(gguf: Any, w: Any, tok: Any, n_vocab: int, pre: str | None) -> None:
    backend = getattr(tok, "backend_tokenizer", None) or getattr(tok, "_tokenizer", None)
    if backend is None:
        raise UnsupportedError("GGUF export needs a fast (tokenizers) tokenizer")
    spec = json.loads(backend.to_str())
    bpe = spec.get("model", {})
    if bpe.get("type") != "BPE":
        raise UnsupportedError(f"GGUF export supports byte-level BPE tokenizers, not {bpe.get('type')!r}")
    vocab = tok.get_vocab()
    by_id = {i: t for t, i in vocab.items()}
    special = {i for i, t in getattr(tok, "added_tokens_decoder", {}).items() if getattr(t, "special", False)}
    tokens, types = [], []
    for i in range(n_vocab):
        if i in by_id:
            tokens.append(by_id[i])
            types.append(gguf.TokenType.CONTROL if i in special else gguf.TokenType.NORMAL)
        else:  # padded vocabulary rows
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
    merges = [m if isinstance(m, str) else " ".join(m) for m in bpe.get("merges", [])]
    if pre is None:
        pre = "smollm" if "<|im_start|>" in vocab and "<jupyter_code>" in vocab else "gpt2"
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(pre)
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    for name, adder in (("bos", w.add_bos_token_id), ("eos", w.add_eos_token_id),
                        ("unk", w.add_unk_token_id), ("pad", w.add_pad_token_id)):
        value = getattr(tok, f"{name}_token_id", None)
        if isinstance(value, int):
            adder(value)
    probe = tok("a", add_special_tokens=True).input_ids
    w.add_add_bos_token(bool(tok.bos_token_id is not None and probe and probe[0] == tok.bos_token_id))
    template = getattr(tok, "chat_template", None)
    if isinstance(template, str):
        w.add_chat_template(template)


def _write_tensors(gguf: Any, w: Any, module: torch.nn.Module, type: str) -> None:
    cfg = module.config
    widths = layer_widths(module)
    inner = module.model
    names: list[tuple[str, np.ndarray, str]] = []
    emb = _tensor(inner.embed_tokens.weight)
    names.append(("token_embd.weight", emb, "q8_0" if type == "q4_0" else type))
    for i, layer in enumerate(inner.layers):
        a, m = layer.self_attn, layer.mlp
        p = f"blk.{i}"
        n_head, n_kv = widths.heads[i], widths.kv_heads[i]
        names += [
            (f"{p}.attn_norm.weight", _tensor(layer.input_layernorm.weight), "f32"),
            (f"{p}.attn_q.weight", permute(_tensor(a.q_proj.weight), n_head), type),
            (f"{p}.attn_k.weight", permute(_tensor(a.k_proj.weight), n_kv), type),
            (f"{p}.attn_v.weight", _tensor(a.v_proj.weight), type),
            (f"{p}.attn_output.weight", _tensor(a.o_proj.weight), type),
            (f"{p}.ffn_norm.weight", _tensor(layer.post_attention_layernorm.weight), "f32"),
            (f"{p}.ffn_gate.weight", _tensor(m.gate_proj.weight), type),
            (f"{p}.ffn_up.weight", _tensor(m.up_proj.weight), type),
            (f"{p}.ffn_down.weight", _tensor(m.down_proj.weight), type),
        ]
        if any(getattr(x, "bias", None) is not None for x in (a.q_proj, a.k_proj, a.v_proj, a.o_proj)):
            raise UnsupportedError("GGUF export of attention biases is not supported")
    names.append(("output_norm.weight", _tensor(inner.norm.weight), "f32"))
    tied = getattr(cfg, "tie_word_embeddings", False) and module.lm_head.weight is inner.embed_tokens.weight
    if not tied:
        names.append(("output.weight", _tensor(module.lm_head.weight), "q8_0" if type == "q4_0" else type))
    for name, data, kind in names:
        _add(gguf, w, name, data, kind)


def _add(gguf: Any, w: Any, name: str, data: np.ndarray, kind: str) -> None:
    Q = gguf.GGMLQuantizationType
    if kind == "f32" or data.ndim == 1:
        w.add_tensor(name, data.astype(np.float32))
    elif kind == "f16":
        w.add_tensor(name, data.astype(np.float16))
    else:
        qtype = {"q8_0": Q.Q8_0, "q4_0": Q.Q4_0}[kind]
        block = gguf.GGML_QUANT_SIZES[qtype][0]
        if data.shape[-1] % block:  # rows that do not split into blocks stay F16
            w.add_tensor(name, data.astype(np.float16))
            return
        q = gguf.quants.quantize(np.ascontiguousarray(data, dtype=np.float32), qtype)
        w.add_tensor(name, q, raw_shape=q.shape, raw_dtype=qtype)


def read_gguf(path: str | os.PathLike, dequantize: bool = False) -> dict[str, Any]:
    """Metadata and tensor summary of a GGUF file (to check an export).

    Returns {"metadata": {key: value}, "tensors": {name: {"type", "shape"}}} and, with
    dequantize=True, float32 arrays under "arrays" (ggml shapes reversed to PyTorch order).
    """
    gguf = _gguf()
    path = Path(path)
    if not path.exists():
        raise ArtifactError(f"GGUF file {path} not found")
    r = gguf.GGUFReader(path)
    meta: dict[str, Any] = {}
    for key, field in r.fields.items():
        if key.startswith("GGUF."):
            continue
        if len(field.data) > 16:  # vocabularies and merges: decoding 50k strings is slow and unneeded
            meta[key] = f"<{len(field.data)} items>"
            continue
        try:
            value = field.contents()
        except Exception:  # noqa: BLE001 - an odd field should not hide the rest
            continue
        meta[key] = value if not isinstance(value, list) or len(value) <= 16 else f"<{len(value)} items>"
    tensors = {t.name: {"type": t.tensor_type.name, "shape": [int(x) for x in reversed(t.shape)]} for t in r.tensors}
    out: dict[str, Any] = {"metadata": meta, "tensors": tensors}
    if dequantize:
        out["arrays"] = {
            t.name: gguf.quants.dequantize(t.data, t.tensor_type).reshape(tensors[t.name]["shape"]).astype(np.float32)
            for t in r.tensors
        }
    return out
