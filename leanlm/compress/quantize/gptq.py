"""GPTQ: int4 weights chosen with second-order error compensation (Frantar et al., 2022).

For each linear layer y = x W^T, GPTQ minimises ||X W^T - X Q^T||^2 over calibration inputs X.
With H = 2 X^T X it quantizes W one input column at a time and spreads each column's rounding
error over the not-yet-quantized columns through the inverse Hessian (Cholesky form), so later
columns absorb earlier mistakes. Group-wise (scale, zero) per `group_size` columns; with
`act_order` columns go in order of decreasing H diagonal (group params are then fixed up front
from the float weights, "static groups", so the kernel's contiguous groups still apply).

Layers are processed block by block (transformer layer by layer): each block's inputs come from
the already-quantized previous blocks, so errors do not compound unseen. Linears outside the
repeated blocks are handled afterwards in one hooked pass of the whole model.

Output: the same `Int4WeightCPU` tensors as int4-weight-only (same kernel, same speed).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from leanlm.artifact import LeanModel
from leanlm.compress.quantize import DEFAULT_SKIP, FAMILY, QuantContext
from leanlm.compress.quantize import _calib as C
from leanlm.compress.quantize._layers import INT4_GROUP_SIZES, Int4WeightCPU, int4_qparams, set_weight
from leanlm.compress.quantize.weight_only import check_divides, targets_or_raise
from leanlm.config import BaseConfig, check, register, transform
from leanlm.errors import UnsupportedError


@register(FAMILY, "gptq")
@dataclass(frozen=True)
class GPTQ(BaseConfig):
    """GPTQ int4 (calibrated, Hessian-based error compensation): int4 speed, lower error than rounding.

    Args:
        group_size: input columns per (scale, zero): 32, 64, 128 or 256.
        damp_percent: added to H's diagonal, as a fraction of its mean (numerical stability).
        act_order: quantize columns in order of decreasing activation energy (often more accurate).
        block_size: columns per lazy batch update (speed only; a multiple of group_size is used).
        calibration_size: number of calibration texts used (the first ones given).
        sequential: feed each block the outputs of the already-quantized previous blocks.
        skip: module-name parts left in float (heads and the tied lm_head by default).

    Example:
        >>> leanlm.quantize_(model, GPTQ(group_size=64), calibration=texts)
    """

    group_size: int = 32
    damp_percent: float = 0.01
    act_order: bool = False
    block_size: int = 128
    calibration_size: int = 128
    sequential: bool = True
    skip: tuple[str, ...] = DEFAULT_SKIP

    def validate(self) -> None:
        check(self.group_size in INT4_GROUP_SIZES,
              f"gptq: group_size must be one of {', '.join(map(str, INT4_GROUP_SIZES))}; got {self.group_size}")
        check(isinstance(self.damp_percent, (int, float)) and 0 < self.damp_percent <= 1,
              f"gptq: damp_percent must be in (0, 1]; got {self.damp_percent}")
        check(isinstance(self.block_size, int) and self.block_size >= 1 and self.block_size & (self.block_size - 1) == 0,
              f"gptq: block_size must be a power of two; got {self.block_size}")
        check(isinstance(self.calibration_size, int) and self.calibration_size >= 8,
              f"gptq: calibration_size must be >= 8; got {self.calibration_size}")
        for flag in ("act_order", "sequential"):
            check(isinstance(getattr(self, flag), bool), f"gptq: {flag} must be true or false")


def hessian_error(W: torch.Tensor, Wq: torch.Tensor, H: torch.Tensor) -> float:
    """tr((W - Wq) H (W - Wq)^T): the layer's output squared error on the calibration inputs (x2)."""
    E = (W - Wq).float()
    return float(((E @ H) * E).sum())


@torch.no_grad()
def gptq_quantize(W: torch.Tensor, H: torch.Tensor, group_size: int, damp_percent: float = 0.01,
                  act_order: bool = False, block_size: int = 128) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Quantize W (N, K) to int4 given H (K, K). Returns q (N, K) uint8, scale and zero (N, K/group_size)."""
    W = W.float().clone()
    H = H.float().clone()
    n, k = W.shape
    dead = torch.diag(H) == 0  # inputs never active: their weights do not matter
    H[dead, dead] = 1
    W[:, dead] = 0
    static = int4_qparams(W, group_size) if act_order else None
    perm = torch.argsort(torch.diag(H), descending=True) if act_order else torch.arange(k)
    W, H = W[:, perm], H[perm][:, perm]
    H += damp_percent * torch.mean(torch.diag(H)) * torch.eye(k)
    try:
        Hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True)
    except torch.linalg.LinAlgError:
        raise UnsupportedError("gptq: the calibration Hessian is not positive definite; raise damp_percent "
                               "or give more calibration texts") from None

    q = torch.zeros(n, k)
    groups = k // group_size
    scale = torch.zeros(n, groups) if static is None else static[0]
    zero = torch.zeros(n, groups) if static is None else static[1]
    step = max(block_size, group_size)  # a group never straddles two lazy-update blocks
    for i1 in range(0, k, step):
        i2 = min(i1 + step, k)
        W1, Hinv1 = W[:, i1:i2].clone(), Hinv[i1:i2, i1:i2]
        Err1 = torch.zeros_like(W1)
        for i in range(i2 - i1):
            col = i1 + i
            if static is None and col % group_size == 0:
                s, z = int4_qparams(W1[:, i: i + group_size], group_size)
                scale[:, col // group_size], zero[:, col // group_size] = s[:, 0], z[:, 0]
            g = int(perm[col]) // group_size
            s, z = scale[:, g], zero[:, g]
            w = W1[:, i]
            qc = torch.clamp(torch.round((w - z) / s) + 8, 0, 15)  # int4_quantize for one column
            err = (w - ((qc - 8) * s + z)) / Hinv1[i, i]
            W1[:, i:] -= torch.outer(err, Hinv1[i, i:])
            Err1[:, i] = err
            q[:, col] = qc
        W[:, i2:] -= Err1 @ Hinv[i1:i2, i2:]
    out = torch.empty(n, k, dtype=torch.uint8)
    out[:, perm] = q.to(torch.uint8)
    return out, scale, zero


@transform(GPTQ)
def _apply(model: LeanModel, config: GPTQ, ctx: QuantContext) -> dict:
    targets = targets_or_raise(config.name, model, config.skip)
    check_divides(config.name, targets, config.group_size)
    texts = ctx.require_calibration(config.name)[: config.calibration_size]
    batches = C.calibration_batches(model, texts, ctx.max_length, ctx.batch_size)
    stats = {"gptq": 0.0, "rtn": 0.0}

    def quantize_layers(hessians: C.HessianAccumulator, names: list[str]) -> None:
        # Layers reading the same input (q/k/v, gate/up) share H; GPTQ treats rows independently
        # given H, so their weights are stacked and quantized in one column sweep (same result).
        groups: list[tuple[torch.Tensor, list[str]]] = []
        for name in names:
            lin = targets[name]
            if name not in hessians.counts:  # never ran on calibration data: plain rounding
                set_weight(lin, Int4WeightCPU.from_float(lin.weight.detach(), config.group_size))
                continue
            H = hessians.pop(name)
            same = next((g for g in groups if torch.equal(g[0], H)), None)
            if same is None:
                groups.append((H, [name]))
            else:
                same[1].append(name)
        for H, members in groups:
            Ws = [targets[n].weight.detach().float() for n in members]
            q, s, z = gptq_quantize(torch.cat(Ws), H, config.group_size, config.damp_percent, config.act_order,
                                    config.block_size)
            row = 0
            for name, W in zip(members, Ws):
                rows = slice(row, row + W.shape[0])
                row += W.shape[0]
                qw = Int4WeightCPU.from_quantized(q[rows], s[rows], z[rows], targets[name].weight.dtype)
                stats["gptq"] += hessian_error(W, qw.dequantize(), H)
                stats["rtn"] += hessian_error(W, Int4WeightCPU.from_float(W, config.group_size).dequantize(), H)
                set_weight(targets[name], qw)

    sequential = C.walk_blocks(model, targets, batches, C.HessianAccumulator,
                               lambda names, hessians, run_block: quantize_layers(hessians, names), config.sequential)
    reduction = stats["gptq"] / stats["rtn"] if stats["rtn"] else None
    return {"layers": len(targets), "group_size": config.group_size, "calibration_texts": len(texts),
            "sequential_blocks": sequential,
            "hessian_error_vs_rtn": round(reduction, 4) if reduction is not None else None}
