"""`torch.compile` runtime: the same PyTorch model, run through inductor with weight freezing.

Inductor's freezing pass treats weights as constants, which lets it fold torchao's int8 weight
handling into fused int8 GEMMs on the CPU; that, not eager mode, is where torchao int8 is fast.
Compilation happens here, before any timing, for a fixed set of input shapes ("buckets").
Later inputs are padded up to the nearest bucket (pad tokens with attention_mask 0, extra batch
rows copied from the last row) and the outputs sliced back, so evaluation with ragged batches
reuses the compiled graphs instead of recompiling for every new shape.

Call `leanlm.bench.timing.set_threads(n)` before compiling: inductor's CPU kernels are generated
for the thread count current at compile time.

Example:
    >>> q = leanlm.quantize(leanlm.load("minilm-l6"), Int8Dynamic())
    >>> fast = compile_model(q)                   # ~20 s to ~2 min on 2 cores
    >>> fast.runner.compile_s, fast(**fast.encode(["a test"])).shape
"""
from __future__ import annotations

import copy
import time
from typing import Any, Sequence

import torch

from leanlm.artifact import LeanModel, primary_output
from leanlm.errors import ConfigError, UnsupportedError
from leanlm.runtime.sentences import SENTENCES

MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
DEFAULT_SHAPES = ((1, 128), (32, 128))


class CompiledRunner:
    """Callable that runs a compiled HF module on bucketed input shapes; returns the primary tensor."""

    fixed_shapes = True

    def __init__(self, module: torch.nn.Module, mode: str, freezing: bool, shapes: Sequence[tuple[int, int]],
                 pad_token_id: int):
        self.module = module  # shared with the eager LeanModel (for saving); do not modify in place
        self.mode = mode
        self.freezing = freezing
        self.shapes = tuple(sorted({(int(b), int(t)) for b, t in shapes}))
        self.pad_token_id = pad_token_id
        self.compile_s = 0.0
        self.threads = torch.get_num_threads()
        _raise_recompile_limit(len(self.shapes))
        self.compiled = torch.compile(module, mode=mode, dynamic=False)

    @property
    def config(self) -> Any:  # LeanModel.max_length looks here when the module has no config
        return getattr(self.module, "config", None)

    def _bucket(self, b: int, t: int) -> tuple[int, int]:
        seqs = sorted({s for _, s in self.shapes if s >= t})
        tb = seqs[0] if seqs else t
        batches = sorted({bb for bb, s in self.shapes if s == tb and bb >= b})
        return (batches[0] if batches else b), tb

    def _pad(self, batch: dict[str, torch.Tensor], b2: int, t2: int) -> dict[str, torch.Tensor]:
        out = {}
        for k, v in batch.items():
            if not isinstance(v, torch.Tensor) or v.dim() != 2:
                out[k] = v
                continue
            b, t = v.shape
            fill = self.pad_token_id if k == "input_ids" else 0
            if t2 > t:  # pad positions: masked out, so real positions are unaffected
                v = torch.cat([v, v.new_full((b, t2 - t), fill)], dim=1)
            if b2 > b:  # extra rows copy the last real row (a fully masked row would be degenerate)
                v = torch.cat([v, v[-1:].expand(b2 - b, -1)], dim=0)
            out[k] = v
        return out

    def __call__(self, **batch: torch.Tensor) -> torch.Tensor:
        ids = batch.get("input_ids")
        b = t = None
        if isinstance(ids, torch.Tensor) and ids.dim() == 2:
            b, t = ids.shape
            b2, t2 = self._bucket(b, t)
            if (b2, t2) != (b, t):
                batch = self._pad(batch, b2, t2)
        import torch._dynamo.config as dynamo_config
        import torch._inductor.config as inductor_config

        # fail_on_recompile_limit_hit: a new graph past the limit raises instead of silently
        # running eagerly, so a "compiled" row in a benchmark is never an eager one in disguise
        with inductor_config.patch(freezing=self.freezing), dynamo_config.patch(fail_on_recompile_limit_hit=True):
            out = primary_output(self.compiled(**batch))
        if b is not None and (out.shape[0] != b or (out.dim() == 3 and out.shape[1] != t)):
            out = out[:b, :t] if out.dim() == 3 else out[:b]
        return out


def _raise_recompile_limit(shapes: int) -> None:
    """Make room for this model's graphs in dynamo's per-function recompile limit.

    Dynamo counts graphs per *code object*, and every compiled Hugging Face model of one class
    shares its forward's code. With the default limit (8), the fifth two-bucket model compiled in
    one process silently falls back to eager, which would make a side-by-side benchmark lie.
    """
    import torch._dynamo.config as dynamo_config

    global _GRAPHS
    _GRAPHS += shapes
    dynamo_config.recompile_limit = max(dynamo_config.recompile_limit, 2 * _GRAPHS + 16)
    dynamo_config.accumulated_recompile_limit = max(dynamo_config.accumulated_recompile_limit, 4 * _GRAPHS + 256)


_GRAPHS = 0


def compile_model(
    model: LeanModel,
    mode: str = "default",
    freezing: bool = True,
    shapes: Sequence[tuple[int, int]] = DEFAULT_SHAPES,
    warm: bool = True,
) -> LeanModel:
    """A LeanModel that runs `model`'s module through `torch.compile` (inductor).

    The module is shared, not copied (compiled graphs hold frozen weights; do not modify the
    module in place afterwards). Saving the result saves the ordinary PyTorch model: compiling
    is a way of running a model directory, not a property of it.

    Args:
        model: a PyTorch-backend LeanModel (float or torchao-quantized).
        mode: torch.compile mode ("default", "max-autotune", ...).
        freezing: inductor weight freezing (inference only; needed for fast torchao int8).
        shapes: (batch, seq_len) buckets to compile; inputs are padded up to the nearest one.
        warm: compile every bucket now (timed into `runner.compile_s` and the record).

    Example:
        >>> fast = compile_model(leanlm.load("runs/sentiment-int8"))
        >>> fast.predict(["great film"])
    """
    if model.backend != "torch" or not isinstance(model.module, torch.nn.Module):
        raise UnsupportedError(f"torch.compile needs a PyTorch-backend model; this one runs on {model.backend}")
    if isinstance(model.runner, CompiledRunner):
        raise UnsupportedError("model is already compiled")
    if mode not in MODES:
        raise ConfigError(f"compile mode must be one of {', '.join(MODES)}; got {mode!r}")
    shapes = [tuple(s) for s in shapes]
    if not shapes or any(len(s) != 2 or min(s) < 1 for s in shapes):
        raise ConfigError(f"compile shapes must be (batch, seq_len) pairs >= 1; got {shapes}")
    if max(t for _, t in shapes) > model.max_length:
        raise ConfigError(f"compile shapes exceed the model's maximum length {model.max_length}")
    tok = model.tokenizer
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
    runner = CompiledRunner(model.module, mode, freezing, shapes, int(pad_id))
    record = copy.deepcopy(model.record)
    compiled = LeanModel(model.module, model.tokenizer, record, runner)
    compiled.path = model.path
    if warm:
        t0 = time.perf_counter()
        for b, t in runner.shapes:
            texts = [SENTENCES[i % len(SENTENCES)] for i in range(b)]
            compiled(**compiled.encode(texts, max_length=t, padding="max_length"))
        runner.compile_s = time.perf_counter() - t0
    record.extra["runtime"] = {"name": "torch.compile", "mode": mode, "freezing": freezing,
                               "shapes": [list(s) for s in runner.shapes], "threads": runner.threads,
                               "compile_s": round(runner.compile_s, 2)}
    return compiled


def is_compiled(model: LeanModel) -> bool:
    return isinstance(model.runner, CompiledRunner)
