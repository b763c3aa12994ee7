"""Wanda (Sun et al. 2023, "A Simple and Effective Pruning Approach for Large Language Models").

Score every weight by |W_ij| * ||X_j||_2, where ||X_j|| is the L2 norm of input feature j over
the calibration tokens, and zero the lowest-scored weights of each output row. Weights on inputs
that carry large activations survive even when they are small, which is what magnitude pruning
gets wrong on transformers (a few input channels carry outsized activations). No weight update,
no gradients: one hooked forward pass per transformer block.

Blocks are pruned in order and each block's inputs come from the already-pruned blocks before it
(the reference implementation does the same), via the calibration walk GPTQ uses.

Like every unstructured method the matrices keep their size: see `magnitude.sparsity_note`.

Example:
    >>> prune_(m, Wanda(sparsity=0.5), calibration=load_splits("movie-snippets").train.texts[:128])
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from leanlm.artifact import LeanModel
from leanlm.compress.prune import FAMILY, PruneContext
from leanlm.compress.prune.magnitude import check_sparsity, finish, smallest_mask, sparse_targets, zero_
from leanlm.compress.quantize import DEFAULT_SKIP
from leanlm.config import BaseConfig, check, register, transform


@register(FAMILY, "wanda")
@dataclass(frozen=True)
class Wanda(BaseConfig):
    """Zero the weights with the lowest |weight| x input-activation norm per output row (needs calibration texts).

    Args:
        sparsity: fraction of each row's weights set to zero, in (0, 1).
        samples: calibration texts used at most.
        skip: module-name parts left dense (heads by default).

    Example:
        >>> prune_(m, Wanda(0.5, samples=64), calibration=texts)
    """

    sparsity: float = 0.5
    samples: int = 128
    skip: tuple[str, ...] = DEFAULT_SKIP

    def validate(self) -> None:
        check_sparsity("wanda", self.sparsity)
        check(isinstance(self.samples, int) and self.samples >= 1, f"wanda: samples must be an integer >= 1, got {self.samples!r}")


class NormAccumulator:
    """Sum over calibration tokens of x_j^2 per input feature j, per layer."""

    def __init__(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}

    def __call__(self, name: str, x: torch.Tensor) -> None:  # x: (tokens, in)
        s = x.double().pow(2).sum(0)
        self.sums[name] = self.sums[name] + s if name in self.sums else s

    def norm(self, name: str) -> torch.Tensor:
        return self.sums.pop(name).sqrt().float()  # (in,)


def wanda_scores(layer: torch.nn.Linear, norm: torch.Tensor) -> torch.Tensor:
    return layer.weight.detach().abs().float() * norm.to(layer.weight.device)[None, :]  # (out, in)


def prune_by_activations_(model: LeanModel, linears: dict[str, torch.nn.Linear], ctx: PruneContext, samples: int,
                          method: str, mask_fn: Callable[[torch.Tensor], torch.Tensor]) -> None:
    """Zero `mask_fn(wanda scores)` of every layer, block by block on the calibration texts."""
    from leanlm.compress.quantize._calib import calibration_batches, walk_blocks

    texts = ctx.require_texts(method, minimum=1)[:samples]
    batches = calibration_batches(model, texts, ctx.max_length, ctx.batch_size)

    def process(names: list[str], acc: NormAccumulator, run_block: object) -> None:
        for name in names:
            layer = linears[name]
            zero_(layer, mask_fn(wanda_scores(layer, acc.norm(name))))

    walk_blocks(model, linears, batches, NormAccumulator, process)


@transform(Wanda)
def _apply(model: LeanModel, config: Wanda, ctx: PruneContext) -> dict:
    linears = sparse_targets(model, config.skip, "wanda")
    prune_by_activations_(model, linears, ctx, config.samples, "wanda",
                          lambda s: smallest_mask(s, int(s.shape[1] * config.sparsity)))
    return {**finish(model, linears), "calibration_texts": min(config.samples, len(ctx.calibration or ()))}
