"""Split one gathered batch into length-sorted sub-batches, so short texts stop paying for long ones.

A batch of 32 independent requests is padded to its longest text; on real traffic (movie
snippets: mean 26 tokens, longest 64) over half of the padded tokens are padding. Sorting the
batch by length and cutting it where the padding saved outweighs the cost of one more forward
call recovers most of that work. The cut points come from a small dynamic programme over the
sorted lengths: minimise  sum over sub-batches of (call_cost + size x longest), in tokens, where
`call_cost` is a forward call's fixed overhead expressed as padded tokens.
"""
from __future__ import annotations

from typing import Sequence


def partition(lengths: Sequence[int], call_cost: float) -> list[list[int]]:
    """Indices of `lengths` grouped into sub-batches (each sorted by length, shortest group first).

    call_cost: a forward call's fixed cost in padded tokens; 0 would give one call per distinct
    length, a huge value one call for everything (no split).
    """
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    n = len(order)
    if n <= 1:
        return [order]
    best = [0.0] + [float("inf")] * n  # best[j]: cheapest cost of the first j sorted items
    cut = [0] * (n + 1)
    for j in range(1, n + 1):
        longest = lengths[order[j - 1]]
        for i in range(j):  # last group = sorted items i..j-1, padded to the longest (item j-1)
            cost = best[i] + call_cost + (j - i) * longest
            if cost < best[j]:
                best[j], cut[j] = cost, i
    groups, j = [], n
    while j > 0:
        groups.append(order[cut[j]:j])
        j = cut[j]
    return groups[::-1]
