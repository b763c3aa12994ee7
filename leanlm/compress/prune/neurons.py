"""Feed-forward neuron pruning: remove the least important intermediate neurons, physically.

A removed neuron takes its row of the up projection(s) (BERT `intermediate.dense`; Llama
`gate_proj` and `up_proj`) and its column of the down projection (`output.dense`, `down_proj`).
Kept widths are rounded to `multiple_of`, so int8 / AMX kernels keep tiling evenly.
"""
from __future__ import annotations

from dataclasses import dataclass

from leanlm.artifact import LeanModel
from leanlm.compress.prune import FAMILY, PruneContext
from leanlm.compress.prune._importance import (blocks, importance, input_grams, keep_cols, keep_rows, param_count,
                                               refit, select, validate_common)
from leanlm.config import BaseConfig, check, register, transform


@register(FAMILY, "ffn")
@dataclass(frozen=True)
class FfnPruning(BaseConfig):
    """Remove feed-forward neurons (the least important on task data).

    Args:
        ratio: fraction of FFN neurons removed (0 < ratio < 1; approximate after rounding).
        scope: "global" ranks neurons across layers; "layer" removes the same fraction per layer.
        score: "fisher" (squared mask gradients of the task loss, Kwon et al. 2022), "taylor"
            (|mask gradient|) or "magnitude" (weight norms; needs no data).
        multiple_of: kept widths are rounded to a multiple of this (and keep at least one).
        rescale: refit the down projection's kept columns by least squares on calibration
            activations, a retraining-free recovery.

    Example:
        >>> prune_(model, FfnPruning(0.5), calibration=texts, labels=labels)
    """

    ratio: float = 0.5
    scope: str = "global"
    score: str = "fisher"
    multiple_of: int = 16
    rescale: bool = False

    def validate(self) -> None:
        validate_common(self, "ffn")
        check(self.multiple_of >= 1, f"ffn: multiple_of must be >= 1, got {self.multiple_of}")


@transform(FfnPruning)
def _apply(model: LeanModel, config: FfnPruning, ctx: PruneContext) -> dict:
    bs = blocks(model.module)
    params = param_count(model.module)
    before = [b.width for b in bs]
    scores = importance(model, ctx, config.score, "ffn").ffn
    keep = select(scores, config.ratio, config.scope, config.multiple_of, config.multiple_of, what="FFN neurons")
    grams = input_grams(model, [b.ffn_out for b in bs], ctx, "ffn") if config.rescale else None
    lo = bs[0].layout
    for i, (b, kept) in enumerate(zip(bs, keep)):
        if len(kept) == b.width:
            continue
        weight = refit(b.ffn_out.weight, grams[i], kept) if grams is not None else None
        for path in lo.ffn_in:
            keep_rows(b, path, kept)
        keep_cols(b, lo.ffn_out, kept, weight)
        mlp = b.get(lo.mlp) if lo.mlp else None
        if isinstance(getattr(mlp, "intermediate_size", None), int):
            mlp.intermediate_size = len(kept)
    return {"width_before": before, "width_after": [b.width for b in bs],
            "params_before": params, "params_after": param_count(model.module)}
