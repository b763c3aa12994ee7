"""Calibration plumbing shared by GPTQ, SmoothQuant and mixed precision.

Runs calibration texts through a model, records what each linear layer sees (Hessians, per-channel
maxima) with forward hooks, and walks repeated blocks (decoder/encoder layers) one at a time.
Padding positions are excluded: their activations are not what the model sees at run time.
"""
from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator

import torch

from leanlm.artifact import LeanModel


class _Stop(Exception):
    """Raised by a pre-hook to end a forward pass early (inputs captured)."""


def calibration_batches(model: LeanModel, texts: list[str], max_length: int, batch_size: int) -> list[dict[str, torch.Tensor]]:
    return [model.encode(texts[i: i + batch_size], max_length=max_length) for i in range(0, len(texts), batch_size)]


def forward_kwargs(model: LeanModel) -> dict[str, Any]:
    return {"use_cache": False} if model.task == "causal-lm" else {}


def rows(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """(B, T, K) activations -> (n, K) rows at real (non-padding) positions."""
    if mask is not None and x.dim() == 3 and x.shape[:2] == mask.shape:
        return x[mask.bool()]
    return x.reshape(-1, x.shape[-1])


class MaskState:
    """The attention mask of the batch being run, for hooks that must skip padding."""

    def __init__(self) -> None:
        self.mask: torch.Tensor | None = None


@contextlib.contextmanager
def input_hooks(layers: dict[str, torch.nn.Module], fn: Callable[[str, torch.Tensor], None],
                state: MaskState) -> Iterator[None]:
    """Call fn(name, rows) with each layer's input rows (padding removed) during the block."""
    handles = []
    last: list[Any] = [None, None]  # (input tensor, its rows): q/k/v and gate/up share one input

    for name, layer in layers.items():
        def hook(mod: torch.nn.Module, inp: tuple, name: str = name) -> None:
            if last[0] is not inp[0]:
                last[0], last[1] = inp[0], rows(inp[0].detach().float(), state.mask)
            fn(name, last[1])
        handles.append(layer.register_forward_pre_hook(hook))
    try:
        yield
    finally:
        last[0] = last[1] = None
        for h in handles:
            h.remove()


class HessianAccumulator:
    """H = 2/n * sum x x^T over input rows x, per layer (what GPTQ minimises against)."""

    def __init__(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.counts: dict[str, int] = {}
        self._last: tuple[Any, Any] = (None, None)

    def __call__(self, name: str, x: torch.Tensor) -> None:
        if self._last[0] is x:  # same rows as the previous layer: reuse the product
            s = self._last[1]
        else:
            s = (x.T @ x).double()  # fp32 GEMM per batch (fast), summed across batches in fp64
            self._last = (x, s)
        if name in self.sums:
            self.sums[name] = self.sums[name] + s  # not in place: `s` may be shared
            self.counts[name] += x.shape[0]
        else:
            self.sums[name], self.counts[name] = s, x.shape[0]

    def pop(self, name: str) -> torch.Tensor:
        self._last = (None, None)
        n = max(self.counts.pop(name), 1)
        return (2.0 / n * self.sums.pop(name)).float()


def find_blocks(module: torch.nn.Module, targets: dict[str, torch.nn.Module]) -> tuple[str, torch.nn.ModuleList] | None:
    """The ModuleList (transformer layers) holding the most target linears, or None."""
    best, best_count = None, 0
    for name, m in module.named_modules():
        if isinstance(m, torch.nn.ModuleList) and len(m) > 0:
            prefix = f"{name}." if name else ""
            count = sum(1 for t in targets if t.startswith(prefix))
            if count > best_count:
                best, best_count = (name, m), count
    return best


@torch.no_grad()
def capture_block_inputs(model: LeanModel, block: torch.nn.Module, batches: list[dict[str, torch.Tensor]]
                         ) -> list[tuple[tuple, dict]]:
    """(args, kwargs) each batch passes to `block` (the first transformer layer)."""
    captured: list[tuple[tuple, dict]] = []

    def pre_hook(mod: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        captured.append((args, dict(kwargs)))
        raise _Stop

    handle = block.register_forward_pre_hook(pre_hook, with_kwargs=True)
    try:
        for batch in batches:
            try:
                model.module(**batch, **forward_kwargs(model))
            except _Stop:
                pass
    finally:
        handle.remove()
    return captured


def block_hidden(args: tuple, kwargs: dict) -> torch.Tensor:
    return args[0] if args else kwargs["hidden_states"]


def with_hidden(args: tuple, kwargs: dict, hidden: torch.Tensor) -> tuple[tuple, dict]:
    if args:
        return (hidden, *args[1:]), kwargs
    return args, {**kwargs, "hidden_states": hidden}


def first_output(out: Any) -> torch.Tensor:
    return out[0] if isinstance(out, (tuple, list)) else out


@torch.no_grad()
def run_full(model: LeanModel, batches: list[dict[str, torch.Tensor]], state: MaskState) -> None:
    for batch in batches:
        state.mask = batch.get("attention_mask")
        model.module(**batch, **forward_kwargs(model))
    state.mask = None


@torch.no_grad()
def outputs(model: LeanModel, batches: list[dict[str, torch.Tensor]]) -> list[torch.Tensor]:
    """The model's primary outputs (float32) per batch, for output-error measurements."""
    return [model(**b).float() for b in batches]


def output_error(ref: list[torch.Tensor], out: list[torch.Tensor], batches: list[dict[str, torch.Tensor]]) -> float:
    """Relative squared error sum|y - y_ref|^2 / sum|y_ref|^2 over real tokens (lower is better)."""
    num = den = 0.0
    for r, o, b in zip(ref, out, batches):
        m = b.get("attention_mask")
        r, o = rows(r, m), rows(o, m)
        num += float((o - r).pow(2).sum())
        den += float(r.pow(2).sum())
    return num / max(den, 1e-30)


@torch.no_grad()
def walk_blocks(model: LeanModel, targets: dict[str, torch.nn.Module], batches: list[dict[str, torch.Tensor]],
                collector: Callable[[], Callable[[str, torch.Tensor], None]],
                process: Callable[[list[str], Any, Callable[[], torch.Tensor] | None], None],
                sequential: bool = True) -> bool:
    """Calibrate and transform `targets` transformer block by transformer block.

    For each block: run it on its inputs with hooks feeding a fresh `collector()` with each
    target's input rows, call `process(names, collector, run_block)` (which quantizes those
    layers in place; `run_block()` returns the block's current output on the first batch, for
    checks), then run the transformed block to produce the next block's inputs, so later blocks
    calibrate on what the quantized model really computes. Targets outside the blocks are
    processed last from one hooked pass of the whole model (run_block is then None).
    Returns True if a block structure was found and walked.
    """
    state = MaskState()
    done: set[str] = set()
    found = find_blocks(model.module, targets) if sequential else None
    if found is not None:
        name, blocks = found
        prefix = f"{name}." if name else ""
        inputs = capture_block_inputs(model, blocks[0], batches)
        for i, block in enumerate(blocks):
            names = [n for n in targets if n.startswith(f"{prefix}{i}.")]
            if names:
                coll = collector()
                with input_hooks({n: targets[n] for n in names}, coll, state):
                    for (args, kwargs), batch in zip(inputs, batches):
                        state.mask = batch.get("attention_mask")
                        block(*args, **kwargs)
                state.mask = None

                def run_block(block: torch.nn.Module = block, first: tuple = inputs[0]) -> torch.Tensor:
                    return first_output(block(*first[0], **first[1]))

                process(names, coll, run_block)
                done.update(names)
            inputs = [with_hidden(a, k, first_output(block(*a, **k))) for a, k in inputs]
    rest = [n for n in targets if n not in done]
    if rest:
        coll = collector()
        with input_hooks({n: targets[n] for n in rest}, coll, state):
            run_full(model, batches, state)
        process(rest, coll, None)
    return found is not None
