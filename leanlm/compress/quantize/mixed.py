"""Mixed precision: quantize with a base method, keep the most sensitive linears in float.

1. Apply the base method (int8-dynamic by default) to a copy of the model: every eligible
   linear now has a quantized weight.
2. Sensitivity: swap each quantized weight alone into the float model and measure the loss:
   the drop of `ctx.evaluate(model)` (the task metric, if given) or the output divergence on
   calibration texts (1 - mean cosine of sentence embeddings for encoders, mean KL of the
   next-token / class distributions for logits).
3. Start from everything quantized and return layers to float, most sensitive first, until the
   loss is within budget or `max_float_layers` are float. The float layers are recorded.

The base method must act on linear weights only (int8-dynamic, int8/int4-weight-only, gptq,
smoothquant with fold=False); one that changes other tensors (folds, casts) is refused.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Callable

import torch

from leanlm.artifact import LeanModel
from leanlm.compress.quantize import DEFAULT_SKIP, FAMILY, QuantContext, eligible_linears
from leanlm.compress.quantize import _calib as C
from leanlm.config import BaseConfig, check, lookup, register, transform, transform_for
from leanlm.errors import ConfigError, UnsupportedError


def _default_base() -> BaseConfig:
    return lookup(FAMILY, "int8-dynamic")()


@register(FAMILY, "mixed-precision")
@dataclass(frozen=True)
class MixedPrecision(BaseConfig):
    """Sensitivity-aware mixed precision: the base method everywhere except the layers that hurt most.

    Args:
        base: the quantization config applied to the other layers (or its method name, defaults).
        max_drop: allowed drop of `evaluate(model)` (same units, higher is better) when an
            evaluate probe is given.
        max_divergence: allowed output divergence vs float otherwise (1 - mean cosine of
            embeddings, or mean KL in nats for logits).
        max_float_layers: at most this many linears stay float (the budget may then be missed;
            `budget_met` in the record says so).
        calibration_size: calibration texts for the divergence and calibrated base methods.

    Example:
        >>> leanlm.quantize_(model, MixedPrecision(max_divergence=1e-3), calibration=texts)
    """

    base: BaseConfig = field(default_factory=_default_base)
    max_drop: float = 0.5
    max_divergence: float = 1e-3
    max_float_layers: int = 8
    calibration_size: int = 64

    def validate(self) -> None:
        if isinstance(self.base, str):  # CLI / JSON shorthand: a method name with its defaults
            object.__setattr__(self, "base", lookup(FAMILY, self.base)())
        check(isinstance(self.base, BaseConfig) and self.base.family == FAMILY,
              f"mixed-precision: base must be a quantization config; got {self.base!r}")
        check(self.base.name not in ("mixed-precision", "half"),
              f"mixed-precision: base cannot be {self.base.name}")
        check(getattr(self.base, "backend", "torch") == "torch",
              "mixed-precision: the base method must run on the torch backend (backend='torch')")
        check(isinstance(self.max_drop, (int, float)) and self.max_drop >= 0, "mixed-precision: max_drop must be >= 0")
        check(isinstance(self.max_divergence, (int, float)) and self.max_divergence >= 0,
              "mixed-precision: max_divergence must be >= 0")
        check(isinstance(self.max_float_layers, int) and self.max_float_layers >= 0,
              f"mixed-precision: max_float_layers must be >= 0; got {self.max_float_layers}")
        check(isinstance(self.calibration_size, int) and self.calibration_size >= 1,
              "mixed-precision: calibration_size must be >= 1")


def _divergence_probe(model: LeanModel, batches: list[dict[str, torch.Tensor]]) -> Callable[[LeanModel], float]:
    """loss(model) = divergence of its outputs from `model`'s current (float) outputs."""
    if model.task == "feature-extraction":
        from leanlm.models.embed import mean_pool

        def emb(m: LeanModel) -> list[torch.Tensor]:
            return [torch.nn.functional.normalize(mean_pool(m(**b).float(), b["attention_mask"]), dim=1)
                    for b in batches]

        ref = emb(model)
        return lambda m: 1.0 - float(torch.cat([(a * r).sum(1) for a, r in zip(emb(m), ref)]).mean())

    def logp(m: LeanModel) -> list[torch.Tensor]:  # (rows, classes) log-probs at real tokens
        out = []
        for b in batches:
            y = m(**b).float()
            y = C.rows(y, b.get("attention_mask")) if y.dim() == 3 else y
            out.append(torch.log_softmax(y, -1).to(torch.bfloat16))  # bf16: vocab-sized rows add up
        return out

    ref = logp(model)

    def kl(m: LeanModel) -> float:
        tot = n = 0.0
        for p, q in zip(ref, logp(m)):
            p32 = p.float()
            tot += float((p32.exp() * (p32 - q.float())).sum())
            n += p.shape[0]
        return tot / max(n, 1)

    return kl


@transform(MixedPrecision)
def _apply(model: LeanModel, config: MixedPrecision, ctx: QuantContext) -> dict:
    base = config.base
    skip = getattr(base, "skip", DEFAULT_SKIP)
    layers = eligible_linears(model.module, skip)
    if not layers:
        raise UnsupportedError(f"mixed-precision: the model has no eligible linear layers (skip={list(skip)})")
    calibration = list(ctx.calibration or [])[: config.calibration_size]
    if ctx.evaluate is None and not calibration:
        raise ConfigError("mixed-precision needs calibration texts (or an evaluate probe); pass calibration=...")

    # 1. base method on a copy: the quantized weight of every layer
    quant = model.clone()
    before = {k: v.clone() for k, v in quant.module.state_dict().items() if not any(k == f"{n}.weight" for n in layers)}
    transform_for(base)(quant, base, dataclasses.replace(ctx, calibration=calibration or ctx.calibration))
    after = quant.module.state_dict()
    changed = [k for k, v in before.items() if k not in after or type(after[k]) is not type(v) or not torch.equal(after[k], v)]
    if changed:
        raise UnsupportedError(f"mixed-precision: base {base.name} changes more than linear weights "
                               f"(e.g. {changed[0]}); use a weight-only base or smoothquant with fold=False")
    qlayers = {n: m for n, m in eligible_linears(quant.module, ()).items()}  # still-float layers of the copy
    qweights = {n: quant.module.get_submodule(n).weight for n in layers if n not in qlayers}
    if not qweights:
        raise UnsupportedError(f"mixed-precision: base {base.name} quantized no layer")

    # 2. the loss probe and each layer's sensitivity
    if ctx.evaluate is not None:
        ref_score = float(ctx.evaluate(model))
        loss = lambda m: ref_score - float(ctx.evaluate(m))  # noqa: E731
        budget, unit = config.max_drop, "metric drop"
    else:
        batches = C.calibration_batches(model, calibration, ctx.max_length, ctx.batch_size)
        loss = _divergence_probe(model, batches)
        budget, unit = config.max_divergence, "divergence"
    floats = {n: layers[n].weight for n in qweights}

    def use(names_quantized: set[str]) -> None:
        for n in qweights:
            layers[n].weight = qweights[n] if n in names_quantized else floats[n]

    sensitivity: dict[str, float] = {}
    with torch.no_grad():
        for n in qweights:
            use({n})
            sensitivity[n] = loss(model)
        order = sorted(qweights, key=lambda n: -sensitivity[n])
        keep_float: list[str] = []
        use(set(qweights))
        current = loss(model)
        all_quantized = current
        while current > budget and len(keep_float) < min(config.max_float_layers, len(order)):
            keep_float.append(order[len(keep_float)])
            use(set(qweights) - set(keep_float))
            current = loss(model)
    top = {n: round(sensitivity[n], 6) for n in order[:10]}
    return {"layers": len(qweights) - len(keep_float), "float_layers": keep_float, "budget": budget, "unit": unit,
            "loss_all_quantized": round(all_quantized, 6), "loss": round(current, 6),
            "budget_met": current <= budget, "most_sensitive": top}
