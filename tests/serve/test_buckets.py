"""Length-sorted splitting of a gathered batch: the partition is optimal and results keep their order."""
from __future__ import annotations

import itertools
import random

import numpy as np
import pytest
import torch

from leanlm.serve.buckets import partition
from leanlm.serve.config import ServeConfig
from leanlm.serve.encoders import classify_fn, embed_fn


def cost(groups, lengths, call_cost):
    return sum(call_cost + len(g) * max(lengths[i] for i in g) for g in groups)


def brute_force(lengths, call_cost):
    """Cheapest split of the sorted lengths into contiguous groups, by trying every cut set."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    best = float("inf")
    for k in range(len(order)):
        for cuts in itertools.combinations(range(1, len(order)), k):
            bounds = (0, *cuts, len(order))
            groups = [order[a:b] for a, b in zip(bounds, bounds[1:])]
            best = min(best, cost(groups, lengths, call_cost))
    return best


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("call_cost", [0, 8, 40, 1000])
def test_partition_covers_every_item_once_and_is_optimal(seed, call_cost):
    rng = random.Random(seed)
    lengths = [rng.randint(3, 60) for _ in range(rng.randint(1, 9))]
    groups = partition(lengths, call_cost)
    assert sorted(i for g in groups for i in g) == list(range(len(lengths)))
    flat = [lengths[i] for g in groups for i in g]
    assert flat == sorted(flat)  # groups are contiguous runs of the sorted order
    assert cost(groups, lengths, call_cost) == pytest.approx(brute_force(lengths, call_cost))


def test_partition_edges():
    assert partition([], 128) == [[]]
    assert partition([7], 128) == [[0]]
    assert len(partition([5, 60] * 16, 10**9)) == 1  # a call dearer than any padding: never split
    assert partition([5, 60, 5, 60], 0) == [[0, 2], [1, 3]]  # free calls: one per distinct length


def _items(model, texts):
    return [(t, len(ids)) for t, ids in zip(texts, model.tokenizer(texts)["input_ids"])]


TEXTS = ["ok", "a much longer text that goes on and on about the film and its many long scenes", "fine",
         "bad", "not what I hoped for at all, though the actors tried", "great", "meh", "a b c d e f g h i j k"]


def test_split_batches_give_the_same_answers_in_the_same_order():
    from leanlm.models.tiny import tiny_encoder

    clf, emb = tiny_encoder("sequence-classification"), tiny_encoder("feature-extraction")
    split, whole = ServeConfig(split_cost_tokens=1), ServeConfig(split_cost_tokens=0)
    assert len(partition([n for _, n in _items(clf, TEXTS)], 1)) > 1  # the split really happens
    with torch.inference_mode():
        a, b = classify_fn(clf, split)(_items(clf, TEXTS)), classify_fn(clf, whole)(_items(clf, TEXTS))
        assert [r["label"] for r in a] == [r["label"] for r in b]
        for ra, rb in zip(a, b):
            assert ra["probabilities"] == pytest.approx(rb["probabilities"], abs=1e-5)
        va, vb = embed_fn(emb, split)(_items(emb, TEXTS)), embed_fn(emb, whole)(_items(emb, TEXTS))
        np.testing.assert_allclose(np.stack(va), np.stack(vb), atol=1e-5)


def test_split_cost_is_validated():
    from leanlm.errors import ConfigError

    with pytest.raises(ConfigError, match="split_cost_tokens"):
        ServeConfig(split_cost_tokens=-1)
