"""OpenVINO decoder: a causal LM converted to a stateful OpenVINO IR and run by leanlm's own loop.

Conversion needs no optimum-intel. The model's own weights go into a small Llama forward built
from the fast decoder's fused blocks (q|k|v and gate|up as one matmul each, per-layer widths, so
pruned and layer-dropped models convert too) that takes the KV cache as explicit tensors.
OpenVINO's PyTorch frontend converts it; a `beam_idx` input plus OpenVINO's stateful
transformation move the cache inside the infer request (the CPU plugin then fuses cache concat
and attention into one ScaledDotProductAttentionWithKVCache node); NNCF compresses the weights
(int8 per channel, int4 groupwise). Inputs and outputs carry optimum-intel's names (input_ids,
attention_mask, position_ids, beam_idx -> logits), so `openvino_genai.LLMPipeline` runs the very
same directory: that is the peer path (`leanlm.generate.openvino_genai`). The graph itself is
built in `leanlm.generate.openvino_graph`; this module holds its config, runner and conversion.

Our loop compiles the IR with one extra input, `logits_to_keep` (a Slice before the output head),
so prefill computes one row of logits instead of one per prompt token and speculative
verification gets all k+1 rows; tokens are picked by leanlm's sampler, one infer call per token.

Rollback (speculative decoding) leaves the state alone: rejected tokens stay in the cache but
their slots get 0 in attention_mask, which the graph ANDs into its causal mask. The causal mask
is over physical cache slots (slot s is visible from slot t if s <= t) while RoPE uses the
logical position_ids, so holes are exact. A rollback costs nothing; each verify step leaves at
most draft_tokens dead slots behind (a few % more attention work, no state copies).

Example:
    >>> ov = to_openvino(leanlm.load("smollm2-135m"), OpenVinoDecoder(weights="int4", group_size=128))
    >>> ov.save("runs/smollm2-ov-int4")                       # leanlm.json: backend openvino
    >>> dec = ov_decoder("runs/smollm2-ov-int4", threads=2)
    >>> dec.generate("The capital of France is", max_new_tokens=16).text
"""
from __future__ import annotations

import copy
import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from leanlm.artifact import LeanModel, Record
from leanlm.config import BaseConfig, check, register, transform
from leanlm.errors import ArtifactError, UnsupportedError
from leanlm.generate.openvino_graph import compress, convert_graph, with_logits_to_keep

IR_FILE = "openvino_model.xml"  # the name openvino_genai.LLMPipeline looks for
TOKENIZER_FILES = ("openvino_tokenizer", "openvino_detokenizer")
WEIGHTS = ("none", "int8", "int4")
MODES = ("auto", "sym", "asym")
FALLBACKS = ("adjust", "ignore", "error")
PRECISIONS = {"auto": None, "fp32": "f32", "bf16": "bf16"}
KV_PRECISIONS = {"auto": None, "u8": "u8", "f16": "f16", "bf16": "bf16", "f32": "f32"}
_NNCF_MODE = {("int8", "sym"): "INT8_SYM", ("int8", "asym"): "INT8_ASYM",
              ("int4", "sym"): "INT4_SYM", ("int4", "asym"): "INT4_ASYM"}
_DEFAULT_MODE = {"int8": "asym", "int4": "sym"}


@register("export", "openvino-decoder")
@dataclass(frozen=True)
class OpenVinoDecoder(BaseConfig):
    """Convert a Llama-family causal LM to a stateful OpenVINO IR with compressed weights.

    Args:
        weights: "none" (float), "int8" (per output channel) or "int4" (groupwise), by NNCF.
        mode: "auto" (int8 asymmetric, int4 symmetric), "sym" or "asym".
        group_size: int4 group along the input dimension (32, 64, 128; -1 = per channel).
        group_fallback: a layer whose input width group_size does not divide (SmolLM2's 576 with
            128): "adjust" (NNCF uses a smaller group that divides it), "ignore" (that layer
            stays int8) or "error".
        ratio: int4 only: fraction of the layers in int4 (NNCF picks the rest for int8).
        all_layers: int4 only: also the embedding and output head in int4 (NNCF keeps them int8).
        precision: activations: "auto" (fp32 for float weights, else OpenVINO's CPU default, bf16
            where the CPU has it), "fp32" or "bf16".
        kv_cache: KV cache precision: "auto" (f32 with fp32 activations, else the plugin's u8),
            "u8", "f16", "bf16" or "f32".
        dq_group_size: DYNAMIC_QUANTIZATION_GROUP_SIZE for compressed weights (None = plugin
            default, 0 = off: activations stay float in the weight matmuls).
        tokenizer: also write the OpenVINO tokenizer/detokenizer (openvino_tokenizers), which
            openvino_genai needs; skipped with a note when the package is missing.

    Example:
        >>> to_openvino(lm, OpenVinoDecoder(weights="int4", group_size=128, ratio=0.8))
    """

    weights: str = "int8"
    mode: str = "auto"
    group_size: int = 128
    group_fallback: str = "adjust"
    ratio: float = 1.0
    all_layers: bool = False
    precision: str = "auto"
    kv_cache: str = "auto"
    dq_group_size: int | None = None
    tokenizer: bool = True

    def validate(self) -> None:
        check(self.weights in WEIGHTS, f"weights must be one of {', '.join(WEIGHTS)}, got {self.weights!r}")
        check(self.mode in MODES, f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        check(isinstance(self.group_size, int) and (self.group_size == -1 or self.group_size >= 8),
              f"group_size must be -1 (per channel) or an integer >= 8, got {self.group_size!r}")
        check(self.group_fallback in FALLBACKS,
              f"group_fallback must be one of {', '.join(FALLBACKS)}, got {self.group_fallback!r}")
        check(isinstance(self.ratio, (int, float)) and 0 < self.ratio <= 1, f"ratio must be in (0, 1], got {self.ratio!r}")
        check(self.precision in PRECISIONS, f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        check(self.kv_cache in KV_PRECISIONS, f"kv_cache must be one of {', '.join(KV_PRECISIONS)}, got {self.kv_cache!r}")
        check(self.dq_group_size is None or (isinstance(self.dq_group_size, int) and self.dq_group_size >= 0),
              f"dq_group_size must be None or an integer >= 0, got {self.dq_group_size!r}")

    @property
    def nncf_mode(self) -> str | None:
        if self.weights == "none":
            return None
        return _NNCF_MODE[(self.weights, _DEFAULT_MODE[self.weights] if self.mode == "auto" else self.mode)]

    def compile_props(self, threads: int | None = None) -> dict[str, Any]:
        """CPU plugin properties for this model (latency hint: one stream over all threads)."""
        from leanlm.runtime.onnxruntime import thread_count

        precision = PRECISIONS[self.precision] or ("f32" if self.weights == "none" else None)
        kv = KV_PRECISIONS[self.kv_cache] or ("f32" if precision == "f32" else None)
        props: dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": threads or thread_count()}
        if precision:
            props["INFERENCE_PRECISION_HINT"] = precision
        if kv:
            props["KV_CACHE_PRECISION"] = kv
        if self.dq_group_size is not None:
            props["DYNAMIC_QUANTIZATION_GROUP_SIZE"] = self.dq_group_size
        return props


# --------------------------------------------------------------------------- the runner

class OvCausalLM:
    """The IR of a causal LM (in memory or in a model directory) plus how to compile it.

    `decoder(threads)` gives the stateful decoder our loop drives (compiled once per setting);
    calling the runner scores whole sequences: `runner(input_ids=(B, T), attention_mask=(B, T))`
    -> logits (B, T, V), each call a fresh state.
    """

    def __init__(self, source: Any, config: Any, settings: OpenVinoDecoder, files: dict[str, bytes] | None = None,
                 generation_config: Any = None):
        self.source, self.config, self.settings = source, config, settings
        self.files = dict(files or {})  # extra IR files to save beside the model (tokenizer)
        self.generation_config = generation_config
        self._decoders: dict[tuple, OvDecoder] = {}

    def read(self) -> Any:
        from leanlm.runtime.openvino import IrSource, core

        src = self.source
        if isinstance(src, IrSource):
            return core().read_model(src.xml, src.weights)
        return core().read_model(str(src))

    def compile(self, threads: int | None = None, **overrides: Any) -> Any:
        from leanlm.runtime.openvino import core

        settings = dataclasses.replace(self.settings, **overrides) if overrides else self.settings
        try:
            return core().compile_model(with_logits_to_keep(self.read()), "CPU", settings.compile_props(threads))
        except RuntimeError as e:
            raise ArtifactError(f"OpenVINO cannot compile the decoder: {str(e).splitlines()[0]}") from e

    def decoder(self, threads: int | None = None, **overrides: Any) -> "OvDecoder":
        """The stateful decoder for these settings (threads, precision, kv_cache, dq_group_size)."""
        key = (threads, tuple(sorted(overrides.items())))
        if key not in self._decoders:
            self._decoders[key] = OvDecoder(self.compile(threads, **overrides), self.max_length)
        return self._decoders[key]

    @property
    def max_length(self) -> int:
        return int(getattr(self.config, "max_position_embeddings", None) or 2048)

    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **_: Any) -> torch.Tensor:
        B, T = input_ids.shape
        mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
        positions = (mask.long().cumsum(-1) - 1).clamp(min=0)
        request = self.decoder().compiled.create_infer_request()
        out = request.infer({"input_ids": input_ids.cpu().numpy(), "attention_mask": mask.cpu().numpy(),
                             "position_ids": positions.cpu().numpy(), "beam_idx": np.arange(B, dtype=np.int32),
                             "logits_to_keep": np.array([T], np.int64)})
        return torch.from_numpy(np.array(out["logits"]))

    def save(self, directory: Path) -> str:
        from leanlm.runtime.openvino import IrSource

        src = self.source
        xml = directory / IR_FILE
        if isinstance(src, IrSource):
            xml.write_bytes(src.xml)
            xml.with_suffix(".bin").write_bytes(src.weights)
        else:
            import shutil

            shutil.copyfile(src, xml)
            shutil.copyfile(Path(src).with_suffix(".bin"), xml.with_suffix(".bin"))
        for name, data in self.files.items():
            (directory / name).write_bytes(data)
        if self.config is not None:
            self.config.save_pretrained(directory)
        if self.generation_config is not None:
            self.generation_config.save_pretrained(directory)  # GenAI reads eos ids from it
        return IR_FILE

    def __deepcopy__(self, memo: dict) -> "OvCausalLM":
        return OvCausalLM(self.source, copy.deepcopy(self.config, memo), self.settings, self.files,
                          copy.deepcopy(self.generation_config, memo))


class OvDecoder:
    """Our decode loop's view of a compiled stateful IR: reset / forward / rollback, like FastDecoder.

    Example:
        >>> dec = ov_decoder(lm, weights="int8", threads=2)
        >>> dec.reset(256)
        >>> logits = dec.prefill(prompt_ids)        # (V,) float32, one infer call
        >>> logits = dec.step(next_id)              # one token, one infer call
    """

    def __init__(self, compiled: Any, max_length: int):
        self.compiled = compiled
        self.request = compiled.create_infer_request()
        self.max_length = max_length
        self.pos = 0  # logical tokens in the cache
        self.slots = 0  # physical cache slots (includes rolled-back ones, masked out)
        self.mask = np.ones((1, 0), np.int64)
        self.slot_of = np.zeros(0, np.int64)  # logical position -> physical slot
        self._beam = np.zeros(1, np.int32)
        self._keep = np.ones(1, np.int64)
        self.model: LeanModel | None = None  # the LeanModel it runs (tokenizer, eos ids) for generate

    def reset(self, capacity: int) -> None:
        """Start a new sequence (room for `capacity` tokens; grows on demand)."""
        if capacity > self.max_length:
            raise UnsupportedError(f"{capacity} tokens exceed the model's context of {self.max_length}")
        self.request.reset_state()
        self.pos = self.slots = 0
        room = capacity + 64  # slack for the dead slots speculative rollbacks leave
        self.mask = np.ones((1, room), np.int64)
        self.slot_of = np.zeros(room, np.int64)

    def _grow(self, n: int) -> None:
        if self.slots + n > self.mask.shape[1]:
            room = 2 * (self.slots + n)
            self.mask = np.concatenate([self.mask, np.ones((1, room - self.mask.shape[1]), np.int64)], axis=1)
        if self.pos + n > self.slot_of.shape[0]:
            self.slot_of = np.concatenate([self.slot_of, np.zeros(self.pos + n, np.int64)])

    def forward(self, ids: torch.Tensor, all_logits: bool = False) -> torch.Tensor:
        """Append `ids` (T,) and return float32 logits: (T, V) if all_logits else (V,)."""
        T = int(ids.shape[0])
        if self.pos + T > self.max_length:
            raise UnsupportedError(f"sequence of {self.pos + T} tokens exceeds the model's context ({self.max_length})")
        self._grow(T)
        self.mask[0, self.slots : self.slots + T] = 1
        self.slot_of[self.pos : self.pos + T] = np.arange(self.slots, self.slots + T)
        self._keep[0] = T if all_logits else 1
        feed = {"input_ids": ids.reshape(1, T).numpy().astype(np.int64, copy=False),
                "attention_mask": self.mask[:, : self.slots + T],
                "position_ids": np.arange(self.pos, self.pos + T, dtype=np.int64)[None],
                "beam_idx": self._beam, "logits_to_keep": self._keep}
        self.request.infer(feed, share_inputs=True)
        logits = torch.from_numpy(self.request.get_tensor("logits").data[0].copy())  # (keep, V)
        self.pos += T
        self.slots += T
        return logits if all_logits else logits[-1]

    def rollback(self, length: int) -> None:
        """Forget tokens past `length`: their cache slots are masked out from now on."""
        if length < self.pos:
            self.mask[0, self.slot_of[length : self.pos]] = 0
            self.pos = length

    def prefill(self, ids: torch.Tensor | Sequence[int]) -> torch.Tensor:
        """Reset, run the prompt in one call, return the last position's logits (V,)."""
        ids = torch.as_tensor(ids, dtype=torch.long).reshape(-1)
        self.reset(int(ids.numel()) + 1)
        return self.forward(ids)

    def step(self, token: int) -> torch.Tensor:
        """One decode step: append `token`, return the next logits (V,)."""
        return self.forward(torch.tensor([int(token)]))

    def generate(self, prompt: Any, config: Any = None, *, draft: Any = None, **options: Any) -> Any:
        """Generate with leanlm's loop on this decoder (prompt text, chat messages or token ids).

        Takes a GenerationConfig and/or its fields as options; returns a GenerationResult (text,
        token ids, prefill_s, decode_s, draft acceptance).
        """
        from leanlm.generate import _prepare
        from leanlm.generate.loop import GenerationResult, run

        if self.model is None:
            raise UnsupportedError("this decoder has no model attached (get it from ov_decoder)")
        model, cfg = _prepare(self.model, config, options)
        result = GenerationResult("", [], 0, "length")
        for _ in run(model, prompt, cfg, draft=draft, result=result, decoder=self):
            pass
        return result


# --------------------------------------------------------------------------- conversion, loading

@transform(OpenVinoDecoder)
def to_openvino(model: LeanModel, config: OpenVinoDecoder | None = None) -> LeanModel:
    """A copy of a float PyTorch causal LM that runs as a stateful OpenVINO IR (backend "openvino").

    Args:
        model: a float causal-lm LeanModel (Llama family: llama, mistral, qwen2), e.g. pruned or
            layer-dropped ones too.
        config: how to convert and compress (default: int8 weights).

    Example:
        >>> ov = to_openvino(leanlm.load("smollm2-135m"), OpenVinoDecoder(weights="int4"))
        >>> leanlm.generate(ov, "Hello", max_new_tokens=8)
    """
    from leanlm.runtime.openvino import IrSource

    config = config or OpenVinoDecoder()
    _check_group_size(model, config)
    graph = convert_graph(model)
    _check_float_graph(model, graph)
    graph = compress(graph, config)
    source = IrSource.from_model(graph)
    files, notes = _tokenizer_files(model.tokenizer) if config.tokenizer else ({}, [])
    hf = model.module
    runner = OvCausalLM(source, copy.deepcopy(hf.config), config, files, copy.deepcopy(getattr(hf, "generation_config", None)))
    record = copy.deepcopy(model.record)
    record.backend, record.weights = "openvino", IR_FILE
    record.extra["runtime"] = {"backend": "openvino", "kind": "decoder", **config.to_dict(),
                               "weight_format": config.nncf_mode or "float32"}
    record.notes = list(record.notes) + notes
    return LeanModel(None, model.tokenizer, record, runner=runner)


def _check_group_size(model: LeanModel, config: OpenVinoDecoder) -> None:
    # before converting (seconds) rather than when NNCF meets the first layer it cannot split
    if config.weights != "int4" or config.group_size == -1 or config.group_fallback != "error" \
            or not isinstance(model.module, nn.Module):
        return
    widths = {m.in_features for m in model.module.modules() if isinstance(m, nn.Linear)}
    if any(w % config.group_size for w in widths):
        raise UnsupportedError(f"int4 group_size {config.group_size} does not divide every layer's input width "
                               f"({', '.join(map(str, sorted(widths)))}); choose a smaller group_size, -1 (per channel) "
                               "or group_fallback adjust")


def _check_float_graph(model: LeanModel, graph: Any) -> None:
    """The float IR must reproduce PyTorch's logits on a short prompt (before any compression)."""
    from leanlm.runtime.openvino import core

    ids = torch.tensor([[1, 2, 3, 4, 5, 6, 7, 8]]) % int(model.module.config.vocab_size)
    compiled = core().compile_model(graph, "CPU", {"INFERENCE_PRECISION_HINT": "f32", "KV_CACHE_PRECISION": "f32"})
    out = compiled.create_infer_request().infer({"input_ids": ids.numpy(), "attention_mask": np.ones((1, 8), np.int64),
                                                 "position_ids": np.arange(8)[None], "beam_idx": np.zeros(1, np.int32)})
    with torch.no_grad():
        ref = model.module(input_ids=ids.to(model.device)).logits.float().cpu()
    got = torch.from_numpy(np.array(out["logits"]))
    err = float((got - ref).abs().max() / ref.abs().max().clamp(min=1e-6))
    if not err < 1e-3:
        raise ArtifactError(f"the OpenVINO decoder graph disagrees with PyTorch (relative error {err:.2e})")


def _tokenizer_files(tokenizer: Any) -> tuple[dict[str, bytes], list[str]]:
    """openvino_tokenizer/detokenizer .xml/.bin bytes for GenAI, or a note saying why not."""
    import tempfile

    try:
        import openvino as ov
        from openvino_tokenizers import convert_tokenizer
    except ImportError:
        return {}, ["openvino-decoder: no OpenVINO tokenizer written (pip install openvino-tokenizers for openvino_genai)"]
    try:
        models = convert_tokenizer(tokenizer, with_detokenizer=True)
    except Exception as e:  # the converter raises many types for tokenizers it does not know
        return {}, [f"openvino-decoder: tokenizer not converted ({type(e).__name__}: {str(e).splitlines()[0][:120]})"]
    files: dict[str, bytes] = {}
    with tempfile.TemporaryDirectory(prefix="leanlm-ovtok-") as tmp:
        for name, m in zip(TOKENIZER_FILES, models):
            xml = Path(tmp) / f"{name}.xml"
            ov.save_model(m, str(xml))
            files[xml.name] = xml.read_bytes()
            files[xml.with_suffix(".bin").name] = xml.with_suffix(".bin").read_bytes()
    return files, []


def save_decoder(model: LeanModel, directory: Path) -> str:
    """Write the IR, tokenizer IRs and configs (the openvino backend's save for causal LMs)."""
    if not isinstance(model.runner, OvCausalLM):
        raise ArtifactError(f"cannot save an OpenVINO decoder whose runner is {type(model.runner).__name__}")
    return model.runner.save(directory)


def load_decoder(directory: Path, record: Record, device: str | None = None) -> LeanModel:
    """A LeanModel for a directory written by `to_openvino(...).save(...)`."""
    from leanlm.runtime.onnxruntime import load_parts

    tokenizer, config = load_parts(directory, record, device)
    xml = directory / record.weights
    if not xml.with_suffix(".bin").exists():
        raise ArtifactError(f"{directory} is incomplete: {xml.with_suffix('.bin').name} is missing")
    rt = {k: v for k, v in record.extra.get("runtime", {}).items() if k not in ("backend", "kind", "weight_format")}
    settings = OpenVinoDecoder.from_dict(rt)
    gen = None
    if (directory / "generation_config.json").exists():
        from transformers import GenerationConfig as HfGenerationConfig

        gen = HfGenerationConfig.from_pretrained(directory)
    runner = OvCausalLM(xml, config, settings, generation_config=gen)
    return LeanModel(None, tokenizer, record, runner=runner)


def ov_decoder(model: LeanModel | str | os.PathLike, weights: str = "int8", group_size: int = 128,
               threads: int | None = None, **settings: Any) -> OvDecoder:
    """An OpenVINO decoder (reset/forward/rollback/prefill/step/generate) for a model or directory.

    A torch model is converted in memory with `weights` / `group_size` / other OpenVinoDecoder
    fields (cached on the model, so a second call reuses it); a directory already written for the
    openvino backend is compiled as it is (compile-time settings may still be overridden:
    precision, kv_cache, dq_group_size). The decoder's `.model` is the LeanModel it runs.

    Example:
        >>> dec = ov_decoder(leanlm.load("smollm2-135m"), weights="int4", group_size=128, threads=2)
        >>> r = dec.generate("Once upon a time", max_new_tokens=32)
        >>> draft = ov_decoder(layer_dropped(lm, keep_every=3), weights="int4")   # a self-draft
    """
    from leanlm.models.loading import load

    lm = load(model, task="causal-lm") if isinstance(model, (str, os.PathLike)) else model
    compile_only = {k: settings.pop(k) for k in ("precision", "kv_cache", "dq_group_size") if k in settings}
    if not isinstance(lm.runner, OvCausalLM):
        key = ("ov", weights, group_size, tuple(sorted(settings.items())), tuple(sorted(compile_only.items())))
        cache = lm.__dict__.setdefault("_ov_converted", {})
        if key not in cache:
            cache[key] = to_openvino(lm, OpenVinoDecoder(weights=weights, group_size=group_size, **settings,
                                                         **compile_only))
        lm, compile_only = cache[key], {}
    dec = lm.runner.decoder(threads, **compile_only)
    dec.model = lm
    return dec
