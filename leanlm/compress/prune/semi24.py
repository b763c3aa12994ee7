"""n:m semi-structured sparsity (2:4 by default): in every group of m consecutive input weights keep n.

The pattern is what NVIDIA's sparse tensor cores (and PyTorch's `to_sparse_semi_structured`)
accelerate: half the weights of a 2:4 layer are zero in a layout the kernel can skip. Those
kernels are CUDA-only; on a CPU a 2:4 model runs dense, so it is a model prepared for a GPU (or
a compressed format), not a faster CPU model. `magnitude.sparsity_note` says so per backend.

Which n weights of a group survive: the largest |W| ("magnitude") or the largest Wanda score
|W| * ||X|| ("wanda", needs calibration texts; usually much more accurate at 2:4).

Example:
    >>> prune_(m, SemiStructured())                                   # 2:4 by magnitude
    >>> prune_(m, SemiStructured(score="wanda"), calibration=texts)   # 2:4 by Wanda score
    >>> prune_(m, SemiStructured(n=4, m=8))
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from leanlm.artifact import LeanModel
from leanlm.compress.prune import FAMILY, PruneContext
from leanlm.compress.prune.magnitude import finish, smallest_mask, sparse_targets, zero_
from leanlm.compress.prune.wanda import prune_by_activations_
from leanlm.compress.quantize import DEFAULT_SKIP
from leanlm.config import BaseConfig, check, register, transform
from leanlm.errors import UnsupportedError

SCORES = ("magnitude", "wanda")


@register(FAMILY, "2:4")
@dataclass(frozen=True)
class SemiStructured(BaseConfig):
    """Keep n of every m consecutive input weights (2:4 by default); zero the rest.

    Args:
        n: weights kept per group (1 <= n < m).
        m: group length along the input dimension; must divide every target layer's in_features.
        score: "magnitude" (largest |W| kept) or "wanda" (largest |W| x input norm; needs calibration texts).
        samples: calibration texts used at most (score="wanda").
        skip: module-name parts left dense (heads by default).

    Example:
        >>> prune_(m, SemiStructured(n=2, m=4, score="wanda"), calibration=texts)
    """

    n: int = 2
    m: int = 4
    score: str = "magnitude"
    samples: int = 128
    skip: tuple[str, ...] = DEFAULT_SKIP

    def validate(self) -> None:
        check(isinstance(self.m, int) and self.m >= 2, f"2:4: m must be an integer >= 2, got {self.m!r}")
        check(isinstance(self.n, int) and 1 <= self.n < self.m,
              f"2:4: n must be an integer with 1 <= n < m (m={self.m}), got {self.n!r}")
        check(self.score in SCORES, f"2:4: score must be one of {SCORES}, got {self.score!r}")
        check(isinstance(self.samples, int) and self.samples >= 1, f"2:4: samples must be an integer >= 1, got {self.samples!r}")


def nm_mask(scores: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """(out, in) scores -> mask of the m - n lowest scores in every group of m consecutive inputs."""
    out, cols = scores.shape
    groups = scores.reshape(out, cols // m, m)
    return smallest_mask(groups, m - n).reshape(out, cols)


def is_nm(weight: torch.Tensor, n: int, m: int) -> bool:
    """True if every group of m consecutive input weights has at most n non-zeros."""
    nonzero = (weight.reshape(weight.shape[0], -1, m) != 0).sum(-1)
    return bool((nonzero <= n).all())


@transform(SemiStructured)
def _apply(model: LeanModel, config: SemiStructured, ctx: PruneContext) -> dict:
    linears = sparse_targets(model, config.skip, "2:4")
    bad = [f"{name} ({layer.in_features})" for name, layer in linears.items() if layer.in_features % config.m]
    if bad:
        raise UnsupportedError(f"2:4: m={config.m} does not divide in_features of {', '.join(bad[:3])}; "
                               "choose another m or skip those layers")
    mask = lambda s: nm_mask(s, config.n, config.m)  # noqa: E731
    if config.score == "wanda":
        prune_by_activations_(model, linears, ctx, config.samples, "2:4 score=wanda", mask)
    else:
        for layer in linears.values():
            zero_(layer, mask(layer.weight.detach().abs()))
    return finish(model, linears, pattern=f"{config.n}:{config.m}")
