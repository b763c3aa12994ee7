"""The vector index: faiss search equals brute-force cosine, HNSW finds the same neighbours, save/load."""
from __future__ import annotations

import json

import numpy as np
import pytest

import leanlm
from leanlm.errors import ArtifactError, ConfigError, DataError
from leanlm.index import IndexConfig, VectorIndex
from leanlm.models.tiny import tiny_encoder

TEXTS = ["a cat sat on the mat", "the stock market fell sharply", "a dog ran in the park", "rain is expected today",
         "my order arrived broken", "how do I reset my password", "the film was a delight", "kittens play with yarn"]


@pytest.fixture(scope="module")
def embedder():
    return tiny_encoder("feature-extraction")


@pytest.mark.parametrize("kind", ["flat", "hnsw"])
def test_search_matches_brute_force_cosine(embedder, kind):
    idx = VectorIndex.from_texts(embedder, TEXTS, config=IndexConfig(kind=kind, ef_search=32))
    E = leanlm.embed(embedder, TEXTS)
    queries = ["a small cat", "markets dropped"]
    Q = leanlm.embed(embedder, queries)
    ids, scores = idx.search(queries, k=3)
    brute = np.argsort(-(Q @ E.T), axis=1)[:, :3]
    assert ids == [[str(j) for j in row] for row in brute]
    assert scores.shape == (2, 3) and np.allclose(scores, np.take_along_axis(Q @ E.T, brute, 1), atol=1e-5)
    assert np.all(np.diff(scores, axis=1) <= 1e-6)  # best first


def test_save_load_round_trip_and_exclude(embedder, tmp_path):
    ids = [f"item-{i}" for i in range(len(TEXTS))]
    idx = VectorIndex.from_texts(embedder, TEXTS, ids=ids)
    path = idx.save(tmp_path / "idx")
    assert json.loads((path / "index.json").read_text())["ids"] == ids
    back = VectorIndex.load(path, embedder=embedder)
    assert back.search(["kittens"], 4)[0] == idx.search(["kittens"], 4)[0]
    own = back.vector("item-0")
    got, _ = back.search(own[None, :], 3, exclude=["item-0"])  # "more like this" leaves the item out
    assert "item-0" not in got[0] and len(got[0]) == 3
    assert back.text("item-5") == TEXTS[5]
    with pytest.raises(ArtifactError):
        idx.save(tmp_path / "idx")  # never overwrites silently
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # nothing half-written left behind


def test_errors_are_leanlm_errors(embedder, tmp_path):
    idx = VectorIndex.from_vectors(np.eye(3), ["a", "b", "c"])
    with pytest.raises(ConfigError):
        idx.search(["text without an embedder"], 1)
    with pytest.raises(DataError):
        idx.search(np.ones((1, 5)), 1)
    with pytest.raises(ConfigError):
        IndexConfig(kind="ivf")
    with pytest.raises(ArtifactError):
        VectorIndex.load(tmp_path)
    ids, scores = idx.search(np.eye(3)[:1], k=10)  # k beyond the size: every item once
    assert ids[0][0] == "0" and sorted(ids[0]) == ["0", "1", "2"] and scores[0, 0] == pytest.approx(1.0)
