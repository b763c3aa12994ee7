"""The decoder peers a user would pick instead of leanlm, each built the way its own tool builds it.

Shared by benchmarks/decode_paired.py. Every peer decodes the same prompt ids greedily and can
score the same token windows (logits), so speed and KL divergence are measured on equal terms:

- llama.cpp: our F32 GGUF export of the model (`leanlm.export.gguf`), quantized by llama.cpp's own
  quantizer (`llama_model_quantize`, what its `llama-quantize` tool calls; llama-cpp-python ships it,
  not the tool) to q8_0 / q4_0 / q4_1 / Q4_K_M, so each file has llama.cpp's own tensor mix.
- OpenVINO GenAI: a stateful OpenVINO IR (KV cache held as model state, `beam_idx` input, as
  GenAI's LLMPipeline expects) with NNCF weight compression (`nncf.compress_weights`, int8 per
  channel / int4 groups of 64), the tokenizer from `openvino_tokenizers.convert_tokenizer`, run by
  `openvino_genai.LLMPipeline(dir, "CPU", INFERENCE_NUM_THREADS=threads)` with a greedy
  `GenerationConfig`; prefill and per-token times also come from GenAI's own `perf_metrics`.

`ov_stateful_ir` below is a MINIMAL converter kept only so the GenAI peer can be built and tested
on this branch: at merge it is replaced by the shared leanlm converter (branch dec-ov,
`leanlm.runtime.openvino_decoder` / `leanlm.generate.openvino`), which `shared_converter` prefers.
"""
from __future__ import annotations

import contextlib
import importlib
import shutil
import sys
import tempfile
import warnings
import weakref
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from leanlm.errors import UnsupportedError

GENAI_INSTALL = "pip install openvino-genai==2026.4.* openvino-tokenizers==2026.4.* (matching openvino)"
# nncf.compress_weights settings per weight format; int4 groups of 64 divide SmolLM2's 576 / 1536
# widths (NNCF's usual 128 does not); what NNCF keeps at 8 bits (embeddings) is its own default
OV_WEIGHTS = {"int8": {"mode": "INT8_ASYM"}, "int4": {"mode": "INT4_ASYM", "group_size": 64}}
# where the shared OpenVINO decoder (branch dec-ov) may live; the first importable one wins
SHARED_OV_MODULES = ("leanlm.runtime.openvino_decoder", "leanlm.generate.openvino")


# --------------------------------------------------------------------------- llama.cpp

def llamacpp_gguf(lm: Any, workdir: Path, type: str, threads: int) -> Path:
    """A GGUF of `lm` in llama.cpp's file type `type`, via our F32 export and llama.cpp's quantizer."""
    from leanlm.export.gguf import export_gguf
    from leanlm.runtime import llamacpp

    reason = llamacpp.unavailable_reason()
    if reason:
        raise UnsupportedError(reason)
    src = workdir / "model-f32.gguf"
    if not src.exists():  # one float export feeds every file type
        export_gguf(lm, src, "f32")
    return llamacpp.quantize_gguf(src, workdir / f"model-{type}.gguf", type, threads)


# --------------------------------------------------------------------------- OpenVINO GenAI

def _genai() -> Any:
    try:
        import openvino_genai
        import openvino_tokenizers  # noqa: F401 - registers the tokenizer ops GenAI's IR needs
    except ImportError as e:
        raise UnsupportedError(f"OpenVINO GenAI peer needs {e.name or 'openvino-genai'}: {GENAI_INSTALL}") from None
    return openvino_genai


def shared_converter() -> Callable[..., Path] | None:
    """The shared leanlm decoder -> stateful OpenVINO IR converter, if this checkout has it."""
    for name in SHARED_OV_MODULES:
        try:
            mod = importlib.import_module(name)
        except ImportError:
            continue
        for fn in ("export_genai", "export_ir", "to_openvino_ir"):
            if hasattr(mod, fn):
                return getattr(mod, fn)
    return None


class _KVWrapper(torch.nn.Module):
    """forward(input_ids, attention_mask, position_ids, *past (k, v per layer)) -> (logits, *present)."""

    def __init__(self, module: torch.nn.Module):
        super().__init__()
        self.module = module

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor,
                *past: torch.Tensor) -> tuple[torch.Tensor, ...]:
        from transformers import DynamicCache

        cache = DynamicCache(config=self.module.config)
        for i, layer in enumerate(cache.layers):
            # set the tensors directly: DynamicLayer.update concatenates onto a 0-d placeholder,
            # which OpenVINO's frontend cannot convert
            layer.lazy_initialization(past[2 * i], past[2 * i + 1])
            layer.keys, layer.values = past[2 * i], past[2 * i + 1]
        out = self.module(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                          cache=cache, use_cache=True, return_dict=True)
        present = [t for layer in out.cache.layers for t in (layer.keys, layer.values)]
        return (out.logits, *present)


def _make_stateful(ovm: Any, layers: int) -> None:
    """Name the IR's ports as GenAI expects, add `beam_idx`, and move the KV cache into model state."""
    import openvino as ov
    import openvino.opset13 as ops
    from openvino._offline_transformations import apply_make_stateful_transformation

    for port, name in zip(ovm.inputs[:3], ("input_ids", "attention_mask", "position_ids")):
        port.get_tensor().set_names({name})
    ovm.outputs[0].get_tensor().set_names({"logits"})
    pairs = {}
    for i in range(layers):
        for j, kind in enumerate(("key", "value")):
            ovm.inputs[3 + 2 * i + j].get_tensor().set_names({f"past_key_values.{i}.{kind}"})
            ovm.outputs[1 + 2 * i + j].get_tensor().set_names({f"present.{i}.{kind}"})
            pairs[f"past_key_values.{i}.{kind}"] = f"present.{i}.{kind}"
    beam = ops.parameter([-1], ov.Type.i32, name="beam_idx")
    beam.output(0).get_tensor().set_names({"beam_idx"})
    for param in ovm.get_parameters()[3:]:  # reorder the cache by beam (identity for greedy)
        users = list(param.output(0).get_target_inputs())
        gathered = ops.gather(param, beam, ops.constant(0))
        for user in users:
            user.replace_source_output(gathered.output(0))
    ovm.add_parameters([beam])
    ovm.validate_nodes_and_infer_types()
    apply_make_stateful_transformation(ovm, pairs)
    # each state starts as zeros of shape (batch, kv heads, 0, head dim)
    batch = ops.gather(ops.shape_of(ovm.input("input_ids"), output_type="i64"), ops.constant([0]), ops.constant(0))
    for op in ovm.get_ops():
        if op.get_type_name() == "ReadValue":
            dims = [d.get_min_length() for d in op.get_output_partial_shape(0)]
            shape = ops.concat([batch] + [ops.constant(np.array([d], dtype=np.int64)) for d in dims[1:]], axis=0)
            op.set_arguments([ops.broadcast(ops.constant(0.0, dtype=op.get_output_element_type(0)), shape)])
    ovm.validate_nodes_and_infer_types()


# module -> its float stateful ov.Model: converted once, compressed once per weight format
_FLOAT_IR: "weakref.WeakKeyDictionary[torch.nn.Module, Any]" = weakref.WeakKeyDictionary()


def _stateful_float(lm: Any) -> Any:
    import openvino as ov

    if lm.module in _FLOAT_IR:
        return _FLOAT_IR[lm.module]
    cfg = lm.module.config
    heads, kv = cfg.num_attention_heads, cfg.num_key_value_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    past_len, new = 3, 4  # any example lengths: every dimension but heads / head_dim is dynamic
    example = (torch.ones(1, new, dtype=torch.long), torch.ones(1, past_len + new, dtype=torch.long),
               torch.arange(past_len, past_len + new)[None],
               *[torch.zeros(1, kv, past_len, head_dim) for _ in range(2 * cfg.num_hidden_layers)])
    # tracing warnings (python control flow on shapes) are noise here
    with torch.no_grad(), contextlib.redirect_stdout(sys.stderr), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ovm = ov.convert_model(_KVWrapper(lm.module).eval(), example_input=example)
    _make_stateful(ovm, cfg.num_hidden_layers)
    _FLOAT_IR[lm.module] = ovm
    return ovm


def ov_stateful_ir(lm: Any, out: Path, weights: str) -> Path:
    """MINIMAL converter (replaced by the shared one at merge): `lm` -> GenAI model folder `out`.

    Args:
        lm: a causal-lm LeanModel (Hugging Face Llama-family module).
        out: folder to write (openvino_model.xml, tokenizer/detokenizer IRs, config.json).
        weights: "int8" or "int4" (NNCF weight compression, see OV_WEIGHTS).
    """
    _genai()
    shared = shared_converter()
    if shared is not None:
        return Path(shared(lm, out, weights=weights))
    import nncf
    import openvino as ov
    from openvino_tokenizers import convert_tokenizer

    opts = OV_WEIGHTS[weights]
    with contextlib.redirect_stdout(sys.stderr):  # NNCF's progress tables: keep stdout for the results
        ovm = nncf.compress_weights(_stateful_float(lm).clone(), mode=getattr(nncf.CompressWeightsMode, opts["mode"]),
                                    **{k: v for k, v in opts.items() if k != "mode"})
    tmp = Path(tempfile.mkdtemp(prefix=".ov-", dir=out.parent))
    ov.save_model(ovm, tmp / "openvino_model.xml")
    tok, detok = convert_tokenizer(lm.tokenizer, with_detokenizer=True)
    cfg = lm.module.config
    ov.save_model(tok, tmp / "openvino_tokenizer.xml")
    ov.save_model(detok, tmp / "openvino_detokenizer.xml")
    cfg.save_pretrained(tmp)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


def genai_pipeline(ir_dir: str | Path, threads: int) -> Any:
    """`openvino_genai.LLMPipeline` on the CPU for a GenAI model folder, with `threads` threads."""
    return _genai().LLMPipeline(str(ir_dir), "CPU", INFERENCE_NUM_THREADS=threads)


def genai_run(pipe: Any, ids: torch.Tensor, metrics: dict) -> Callable[[int], list[int]]:
    """run(n) -> n greedy token ids after `ids` (EOS ignored); GenAI's own TTFT / TPOT into `metrics`."""
    import openvino as ov

    g = _genai()
    x = ids[None].numpy().astype(np.int64)
    inputs = g.TokenizedInputs(ov.Tensor(x), ov.Tensor(np.ones_like(x)))

    def run(n: int) -> list[int]:
        cfg = g.GenerationConfig(max_new_tokens=n, do_sample=False)
        cfg.min_new_tokens, cfg.ignore_eos = n, True  # benchmarks always produce n tokens
        r = pipe.generate(inputs, cfg)
        pm = r.perf_metrics
        metrics.setdefault("genai_ttft_ms", []).append(float(pm.get_ttft().mean))
        if n > 1:
            metrics.setdefault("genai_tpot_ms", []).append(float(pm.get_tpot().mean))
        return [int(t) for t in r.tokens[0]]

    return run


def ov_ir_logits(ir_dir: str | Path, threads: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """ids (T,) -> logits (T, V) of the same IR GenAI runs, in one fresh-state OpenVINO request.

    OpenVINO's CPU defaults (bf16 inference where the CPU has it) as in GenAI; GenAI's own KV-cache
    precision does not enter, since the whole window is one forward.
    """
    import openvino as ov

    compiled = ov.Core().compile_model(str(Path(ir_dir) / "openvino_model.xml"), "CPU",
                                       {"INFERENCE_NUM_THREADS": threads})
    req = compiled.create_infer_request()

    def logits(ids: torch.Tensor) -> torch.Tensor:
        x = ids[None].numpy().astype(np.int64)
        req.reset_state()
        req.infer({"input_ids": x, "attention_mask": np.ones_like(x), "position_ids": np.arange(x.shape[1])[None],
                   "beam_idx": np.zeros(1, dtype=np.int32)})
        return torch.from_numpy(np.array(req.get_tensor("logits").data[0], dtype=np.float32))

    return logits


# --------------------------------------------------------------------------- leanlm's own OpenVINO decoder

def leanlm_ov_decoder() -> Callable[..., Any]:
    """`ov_decoder` from the shared leanlm OpenVINO decoder module (branch dec-ov), or UnsupportedError."""
    for name in SHARED_OV_MODULES:
        try:
            mod = importlib.import_module(name)
        except ImportError:
            continue
        if hasattr(mod, "ov_decoder"):
            return mod.ov_decoder
    raise UnsupportedError(f"leanlm OpenVINO decoder not in this checkout (none of {', '.join(SHARED_OV_MODULES)} "
                           "has ov_decoder; branch dec-ov)")
