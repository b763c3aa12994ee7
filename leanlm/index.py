"""A vector index over texts: faiss inner product on L2-normalised sentence embeddings (= cosine).

Vectors come from `leanlm.embed` (mean pooling, normalised), the same vectors /v1/embeddings
serves, so an index built offline answers queries embedded by the server and the other way round.
`IndexConfig(kind="flat")` (exact, `IndexFlatIP`) is the default; `kind="hnsw"` (approximate,
`IndexHNSWFlat` on the inner product) is for catalogues large enough that a flat scan is the cost.
A saved index is a directory, written atomically: `index.faiss` plus `index.json` (ids, texts,
config, embedding model name and dimension).

Example:
    >>> idx = VectorIndex.from_texts("minilm-l6", ["a cat sat", "stocks fell", "a dog ran"])
    >>> ids, scores = idx.search(["a kitten"], k=2)      # ids: [["0", "2"]], scores: (1, 2) float32
    >>> idx.save("runs/index/pets"); VectorIndex.load("runs/index/pets", embedder="minilm-l6")
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from leanlm.config import BaseConfig, check
from leanlm.errors import ArtifactError, ConfigError, DataError, UnsupportedError

INDEX_FILE, META_FILE = "index.faiss", "index.json"


def require_faiss() -> Any:
    """faiss (the `serve` extra), or a one-line message saying what to install."""
    try:
        import faiss
    except ImportError:
        raise UnsupportedError("the vector index needs faiss: pip install faiss-cpu (or 'leanlm[serve]')") from None
    return faiss


@dataclass(frozen=True)
class IndexConfig(BaseConfig):
    """Which faiss index holds the vectors.

    Args:
        kind: "flat" (exact inner product; best up to ~10^5 texts) or "hnsw" (approximate graph search).
        hnsw_m: HNSW neighbours per node (more = better recall, more memory).
        ef_construction: HNSW candidate list while building.
        ef_search: HNSW candidate list per query (more = better recall, slower).

    Example:
        >>> VectorIndex.from_texts("minilm-l6", texts, config=IndexConfig(kind="hnsw", ef_search=128))
    """

    kind: str = "flat"
    hnsw_m: int = 32
    ef_construction: int = 80
    ef_search: int = 64

    def validate(self) -> None:
        check(self.kind in ("flat", "hnsw"), f"kind must be 'flat' or 'hnsw', got {self.kind!r}")
        for name in ("hnsw_m", "ef_construction", "ef_search"):
            value = getattr(self, name)
            check(isinstance(value, int) and value >= 2, f"{name} must be an integer >= 2, got {value!r}")

    def make(self, dim: int) -> Any:
        faiss = require_faiss()
        if self.kind == "flat":
            return faiss.IndexFlatIP(dim)
        index = faiss.IndexHNSWFlat(dim, self.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = self.ef_construction
        index.hnsw.efSearch = self.ef_search
        return index


def _matrix(vectors: Any) -> np.ndarray:
    v = np.ascontiguousarray(np.asarray(vectors, dtype=np.float32))
    if v.ndim != 2 or v.shape[0] == 0:
        raise DataError(f"the index needs a (n, dim) matrix of vectors, got shape {v.shape}")
    # inner product is cosine only on unit vectors; normalise whatever the caller passed
    norms = np.linalg.norm(v, axis=1, keepdims=True)
    return np.ascontiguousarray(v / np.maximum(norms, 1e-12))


class VectorIndex:
    """Texts with ids and their embeddings in a faiss index.

    Args:
        index: a faiss index holding one normalised vector per text, in order.
        ids: one string id per vector.
        texts: the texts (what `search` callers show), same order.
        config: the IndexConfig it was built with.
        embedder: a LeanModel (or a name `leanlm.load` takes) that embeds query texts; optional
            when queries come as vectors.
        meta: free-form provenance written into index.json (e.g. the embedding model's name).
    """

    def __init__(self, index: Any, ids: Sequence[str], texts: Sequence[str], config: IndexConfig | None = None,
                 embedder: Any = None, meta: dict[str, Any] | None = None):
        if index.ntotal != len(ids) or len(ids) != len(texts):
            raise DataError(f"the index holds {index.ntotal} vectors for {len(ids)} ids and {len(texts)} texts")
        if len(set(ids)) != len(ids):
            raise DataError("index ids must be unique")
        self.index, self.ids, self.texts = index, [str(i) for i in ids], list(texts)
        self.config = config or IndexConfig()
        self.embedder = embedder
        self.meta = dict(meta or {})
        self._pos = {i: n for n, i in enumerate(self.ids)}

    @classmethod
    def from_vectors(cls, vectors: Any, texts: Sequence[str], ids: Sequence[str] | None = None,
                     config: IndexConfig | None = None, **kwargs: Any) -> "VectorIndex":
        """An index over precomputed embeddings (e.g. from /v1/embeddings)."""
        config = config or IndexConfig()
        v = _matrix(vectors)
        if len(texts) != v.shape[0]:
            raise DataError(f"{v.shape[0]} vectors for {len(texts)} texts")
        index = config.make(v.shape[1])
        index.add(v)
        return cls(index, ids if ids is not None else [str(i) for i in range(len(texts))], texts, config, **kwargs)

    @classmethod
    def from_texts(cls, embedder: Any, texts: Sequence[str], ids: Sequence[str] | None = None,
                   config: IndexConfig | None = None, batch_size: int = 32, progress: Any = None) -> "VectorIndex":
        """Embed `texts` with an encoder (LeanModel or name) and index them.

        Args:
            embedder: any leanlm encoder (feature-extraction, or a torch classifier's body).
            texts: the catalogue.
            ids: one id per text (default "0", "1", ...).
            config: IndexConfig (flat by default).
            batch_size: texts per forward pass.
            progress: optional callable(done, total) after each batch (a progress bar).
        """
        from leanlm.models.embed import embed
        from leanlm.models.loading import load

        if not texts:
            raise DataError("the index needs at least one text")
        model = embedder if not isinstance(embedder, (str, Path)) else load(embedder, task="feature-extraction")
        parts = []
        for lo in range(0, len(texts), batch_size):
            parts.append(embed(model, list(texts[lo:lo + batch_size]), batch_size=batch_size))
            if progress is not None:
                progress(min(lo + batch_size, len(texts)), len(texts))
        meta = {"embedder": str(embedder) if isinstance(embedder, (str, Path)) else model.record.base_model}
        return cls.from_vectors(np.concatenate(parts), texts, ids, config, embedder=model, meta=meta)

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def dim(self) -> int:
        return int(self.index.d)

    def vectors_of(self, queries: Any) -> np.ndarray:
        """Query texts embedded with the index's embedder, or query vectors normalised: (Q, dim)."""
        if isinstance(queries, str):
            queries = [queries]
        if isinstance(queries, np.ndarray) or (len(queries) and not isinstance(queries[0], str)):
            v = _matrix(queries)
        else:
            if self.embedder is None:
                raise ConfigError("this index has no embedder for text queries: pass vectors or load it with embedder=")
            from leanlm.models.embed import embed

            v = _matrix(embed(self.embedder, list(queries)))
        if v.shape[1] != self.dim:
            raise DataError(f"query vectors have dimension {v.shape[1]}; the index holds {self.dim}")
        return v

    def search(self, queries: Any, k: int = 5, exclude: Sequence[str] | None = None) -> tuple[list[list[str]], np.ndarray]:
        """The `k` nearest texts per query: (ids per query, scores (Q, k) float32, cosine, best first).

        Args:
            queries: texts (embedded with the embedder) or a (Q, dim) array of vectors.
            k: neighbours per query (capped by the index size).
            exclude: ids to leave out of every answer (an item's own id for "more like this").
        """
        if k < 1:
            raise ConfigError(f"k must be >= 1, got {k}")
        v = self.vectors_of(queries)
        drop = set(exclude or ())
        want = min(len(self), k + len(drop))
        scores, pos = self.index.search(v, want)  # (Q, want) each; -1 marks "no more results"
        out_ids, out_scores = [], np.full((v.shape[0], min(k, len(self))), -np.inf, dtype=np.float32)
        for q, (row_p, row_s) in enumerate(zip(pos, scores)):
            keep = [(self.ids[p], s) for p, s in zip(row_p, row_s) if p >= 0 and self.ids[p] not in drop][:k]
            out_ids.append([i for i, _ in keep])
            out_scores[q, :len(keep)] = [s for _, s in keep]
        return out_ids, out_scores

    def text(self, id: str) -> str:
        return self.texts[self.position(id)]

    def position(self, id: str) -> int:
        if id not in self._pos:
            raise DataError(f"no item {id!r} in the index ({len(self)} items)")
        return self._pos[id]

    def vector(self, id: str) -> np.ndarray:
        """The stored (normalised) vector of one item: (dim,)."""
        return self.index.reconstruct(self.position(id))

    def save(self, path: str | Path, overwrite: bool = False) -> Path:
        """Write `path/index.faiss` and `path/index.json` atomically (nothing half-written on failure)."""
        from leanlm.artifact import atomic_dir

        faiss = require_faiss()
        with atomic_dir(path, overwrite=overwrite) as tmp:
            faiss.write_index(self.index, str(tmp / INDEX_FILE))
            meta = {"format": "leanlm-index/1", "config": self.config.to_dict(), "dim": self.dim,
                    "ids": self.ids, "texts": self.texts, "meta": self.meta}
            (tmp / META_FILE).write_text(json.dumps(meta, ensure_ascii=False))
        return Path(path)

    @classmethod
    def load(cls, path: str | Path, embedder: Any = None) -> "VectorIndex":
        """A saved index; `embedder` (LeanModel or name) embeds text queries."""
        from leanlm.models.loading import load

        faiss = require_faiss()
        p = Path(path)
        if not is_index_dir(p):
            raise ArtifactError(f"{p} is not a saved index (needs {INDEX_FILE} and {META_FILE})")
        meta = json.loads((p / META_FILE).read_text())
        config = IndexConfig(**{k: v for k, v in meta["config"].items() if k != "type"})
        if isinstance(embedder, (str, Path)):
            embedder = load(embedder, task="feature-extraction")
        return cls(faiss.read_index(str(p / INDEX_FILE)), meta["ids"], meta["texts"], config, embedder,
                   meta.get("meta"))


def is_index_dir(path: str | Path) -> bool:
    p = Path(path)
    return (p / INDEX_FILE).is_file() and (p / META_FILE).is_file()
