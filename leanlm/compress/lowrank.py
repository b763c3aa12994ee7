"""Low-rank factorization: replace a linear layer W (out x in) by two thin ones, B (out x r) @ A (r x in).

A rank-r factorization stores and multiplies r * (in + out) numbers instead of in * out, so it
is smaller and faster on every backend (two dense GEMMs, no special kernels), but only when
r < in * out / (in + out): a 384 x 1536 FFN projection must drop below rank 307 to gain anything,
a square 384 x 384 projection below 192. `only_if_smaller` leaves the layers where it would not.

Plain SVD keeps the directions of W with the largest singular values. With `whiten=True` the
factorization minimises the error of the layer's *outputs* on calibration activations instead
(SVD-LLM, Wang et al. 2024): with the input second moment X^T X = S S^T, the SVD of W S is
truncated and mapped back by S^-1, so directions the inputs rarely excite are dropped first.

The new `FactorizedLinear` module is registered with `leanlm.shapes`, so a factorized model
saves and loads with no other code, and exports to ONNX / OpenVINO like any other model. Accuracy
usually needs recovery training afterwards (a distill step in a recipe).

Example:
    >>> factorize_(m, LowRank(energy=0.9))                       # rank per layer from its spectrum
    >>> factorize_(m, LowRank(rank=64, targets=("intermediate.dense", "output.dense")))
    >>> factorize_(m, LowRank(size_ratio=0.5, whiten=True), calibration=texts)
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Sequence

import torch

from leanlm.artifact import LeanModel
from leanlm.compress._verb import Verb
from leanlm.compress.quantize import DEFAULT_SKIP, QuantContext, eligible_linears
from leanlm.config import BaseConfig, check, register, transform
from leanlm.errors import UnsupportedError
from leanlm.shapes import register_kind

FAMILY = "lowrank"
DEFAULT_ENERGY = 0.9


@register(FAMILY, "svd")
@dataclass(frozen=True)
class LowRank(BaseConfig):
    """Factorize linear layers into two thin ones by truncated SVD (rank by spectral energy, fixed rank or size).

    Give at most one of `energy`, `rank`, `size_ratio`; with none, energy=0.9.

    Args:
        energy: keep the smallest rank whose singular values hold this fraction of the layer's
            squared spectrum (sum of sigma^2), in (0, 1].
        rank: the same rank for every target layer (capped at min(in, out)).
        size_ratio: rank giving each factorized layer about this fraction of its parameters, in (0, 1).
        targets: which linears (qualified names, trailing names such as "intermediate.dense",
            or name parts such as "query"); empty = every eligible linear.
        skip: module-name parts never factorized (heads by default).
        only_if_smaller: leave a layer as it is where r * (in + out) >= in * out (factorizing it
            would make it bigger and slower).
        whiten: activation-aware truncation (SVD-LLM): needs calibration texts.
        samples: calibration texts used at most (whiten=True).
        damp: eigenvalue floor of the whitening, as a fraction of the mean eigenvalue (keeps
            S^-1 finite when calibration tokens do not span every input direction).

    Example:
        >>> LowRank(energy=0.95, targets=("intermediate.dense",))
        >>> factorize_(m, LowRank(rank=32, whiten=True), calibration=texts)
    """

    energy: Optional[float] = None
    rank: Optional[int] = None
    size_ratio: Optional[float] = None
    targets: tuple[str, ...] = ()
    skip: tuple[str, ...] = DEFAULT_SKIP
    only_if_smaller: bool = True
    whiten: bool = False
    samples: int = 128
    damp: float = 0.01

    def validate(self) -> None:
        given = [n for n in ("energy", "rank", "size_ratio") if getattr(self, n) is not None]
        check(len(given) <= 1, f"svd: give one of energy, rank, size_ratio, not {' and '.join(given)}")
        if not given:
            # one default criterion that --rank / --size-ratio replace without having to unset it
            object.__setattr__(self, "energy", DEFAULT_ENERGY)
        check(self.energy is None or (_number(self.energy) and 0.0 < self.energy <= 1.0),
              f"svd: energy must be in (0, 1], got {self.energy!r}")
        check(self.rank is None or (isinstance(self.rank, int) and not isinstance(self.rank, bool) and self.rank >= 1),
              f"svd: rank must be an integer >= 1, got {self.rank!r}")
        check(self.size_ratio is None or (_number(self.size_ratio) and 0.0 < self.size_ratio < 1.0),
              f"svd: size_ratio must be in (0, 1), got {self.size_ratio!r}")
        check(all(isinstance(t, str) and t for t in self.targets), "svd: targets must be module names")
        check(isinstance(self.samples, int) and self.samples >= 1, f"svd: samples must be an integer >= 1, got {self.samples!r}")
        check(_number(self.damp) and self.damp > 0, f"svd: damp must be > 0, got {self.damp!r}")


def _number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


class FactorizedLinear(torch.nn.Module):
    """y = second(first(x)): Linear(in, r, bias=False) then Linear(r, out, bias); a rank-r linear."""

    def __init__(self, in_features: int, out_features: int, rank: int, bias: bool = True):
        super().__init__()
        self.in_features, self.out_features, self.rank = in_features, out_features, rank
        self.first = torch.nn.Linear(in_features, rank, bias=False)
        self.second = torch.nn.Linear(rank, out_features, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.second(self.first(x))

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, rank={self.rank}"


register_kind(
    "factorized", FactorizedLinear,
    lambda m: {"in": m.in_features, "out": m.out_features, "rank": m.rank, "bias": m.second.bias is not None},
    lambda s: FactorizedLinear(s["in"], s["out"], s["rank"], s["bias"]),
)


def targets_of(module: torch.nn.Module, config: LowRank) -> dict[str, torch.nn.Linear]:
    linears = eligible_linears(module, config.skip)
    if config.targets:
        linears = {n: m for n, m in linears.items()
                   if any(n == t or n.endswith("." + t) or t in n.split(".") for t in config.targets)}
    if not linears:
        what = f"matching targets {list(config.targets)}" if config.targets else "eligible"
        raise UnsupportedError(f"svd: the model has no {what} linear layers")
    return linears


def choose_rank(sigma: torch.Tensor, in_f: int, out_f: int, config: LowRank) -> int:
    """The rank `config` asks for, given the singular values (descending) of the (whitened) weight."""
    full = sigma.numel()
    if config.rank is not None:
        return min(config.rank, full)
    if config.size_ratio is not None:
        return max(1, min(full, int(config.size_ratio * in_f * out_f / (in_f + out_f))))
    energy = sigma.double().pow(2).cumsum(0)
    energy = energy / energy[-1].clamp_min(1e-30)
    return min(full, int((energy < config.energy - 1e-9).sum()) + 1)  # smallest r with energy[r-1] >= target


def _whitening(hessian: torch.Tensor, damp: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(S, S^-1) with S S^T = X^T X (up to scale), from its eigendecomposition; eigenvalues floored."""
    evals, evecs = torch.linalg.eigh(hessian.double())
    evals = evals.clamp_min(0) + damp * evals.clamp_min(0).mean().clamp_min(1e-12)
    root = evals.sqrt()
    return evecs * root, (evecs / root).T  # S = Q diag(sqrt l),  S^-1 = diag(1/sqrt l) Q^T


@torch.no_grad()
def factorize_layer(layer: torch.nn.Linear, config: LowRank, hessian: torch.Tensor | None = None
                    ) -> tuple[FactorizedLinear | None, dict[str, Any]]:
    """The factorized replacement of `layer` (None if `only_if_smaller` keeps it) and what was decided."""
    w = layer.weight.detach().double()  # (out, in)
    out_f, in_f = w.shape
    s = s_inv = None
    if hessian is not None:
        s, s_inv = _whitening(hessian, config.damp)
        w = w @ s
    u, sigma, vh = torch.linalg.svd(w, full_matrices=False)
    r = choose_rank(sigma, in_f, out_f, config)
    kept = float(sigma[:r].pow(2).sum() / sigma.pow(2).sum().clamp_min(1e-30))
    info = {"rank": r, "in": in_f, "out": out_f, "energy": round(kept, 4),
            "params_before": in_f * out_f, "params_after": r * (in_f + out_f)}
    if config.only_if_smaller and r * (in_f + out_f) >= in_f * out_f:
        return None, {**info, "kept_dense": True, "params_after": in_f * out_f}
    root = sigma[:r].sqrt()
    first = root[:, None] * vh[:r]  # (r, in): balanced split of sigma between the two factors
    if s_inv is not None:
        first = first @ s_inv
    second = u[:, :r] * root[None, :]  # (out, r)
    new = FactorizedLinear(in_f, out_f, r, bias=layer.bias is not None).to(layer.weight.device)
    dtype = layer.weight.dtype
    new.first.weight.copy_(first.to(dtype))
    new.second.weight.copy_(second.to(dtype))
    if layer.bias is not None:
        new.second.bias.copy_(layer.bias.detach())
    return new, info


def _replace(root: torch.nn.Module, name: str, new: torch.nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent_name) if parent_name else root, child, new)


def _params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@transform(LowRank)
def _apply(model: LeanModel, config: LowRank, ctx: QuantContext) -> dict:
    linears = targets_of(model.module, config)
    before = _params(model.module)
    layers: dict[str, dict[str, Any]] = {}

    def process(names: list[str], hessians: Any, run_block: object) -> None:
        for name in names:
            new, layers[name] = factorize_layer(linears[name], config, hessians.pop(name) if hessians else None)
            if new is not None:
                _replace(model.module, name, new)

    if config.whiten:
        from leanlm.compress.quantize._calib import HessianAccumulator, calibration_batches, walk_blocks

        texts = ctx.require_calibration("svd whiten=True", minimum=1)[: config.samples]
        # block by block: each block's statistics come from the already-factorized blocks before it
        walk_blocks(model, linears, calibration_batches(model, texts, ctx.max_length, ctx.batch_size),
                    HessianAccumulator, process)
    else:
        process(list(linears), None, None)
    after = _params(model.module)
    done = sum(1 for info in layers.values() if not info.get("kept_dense"))
    return {"layers": layers, "factorized": done, "kept_dense": len(layers) - done,
            "params_before": before, "params_after": after,
            **({"calibration_texts": min(config.samples, len(ctx.calibration or ()))} if config.whiten else {})}


_VERB = Verb(FAMILY, "low-rank", "factorize", "a PyTorch model",
             "factorize the float model, then quantize it (this one is already quantized)", QuantContext)


def factorize_(model: LeanModel, config: BaseConfig, context: QuantContext | None = None, **kwargs: Any) -> LeanModel:
    """Factorize `model`'s linear layers in place with `config`; returns the same model.

    Args:
        model: a LeanModel from `leanlm.load` (torch backend, float weights, not yet quantized).
        config: a low-rank config, e.g. `LowRank(energy=0.9)`.
        context: calibration texts for whiten=True (a QuantContext), or pass them as keyword
            arguments: calibration=[...], max_length=128.

    Raises UnsupportedError for a quantized model, one not running on PyTorch, or one with no
    target layers.

    Example:
        >>> factorize_(m, LowRank(size_ratio=0.5))
        >>> m.record.extra["svd"]["params_after"]
    """
    return _VERB.apply_(model, config, context, kwargs)


def factorize(model: LeanModel, config: BaseConfig, context: QuantContext | None = None, **kwargs: Any) -> LeanModel:
    """Like `factorize_`, but returns a factorized copy and leaves `model` untouched."""
    return factorize_(model.clone(), config, context, **kwargs)


def recipe_step(model: LeanModel, config: BaseConfig, *, teacher: LeanModel | None = None, splits: Any = None,
                calibration: Sequence[str] | None = None, labels: Sequence[int] | None = None) -> LeanModel:
    """Recipe hook: factorize `model` in place with `config` (calibration texts feed whiten=True).

    Recovery training is the recipe's separate distill step, so `teacher`, `splits` and `labels`
    are accepted for the common step signature and not used here.
    """
    return factorize_(model, config, QuantContext(calibration=list(calibration) if calibration else None))
