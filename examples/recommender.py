""""More like this": nearest neighbours over a catalogue of texts, by sentence embedding.

The catalogue is the `amazon` product-review snippets (Hutto et al. ICWSM 2014; any leanlm dataset
name or local file works). Every item is embedded once through the server's /v1/embeddings (mean
pooling, normalised) and held in a faiss index (`leanlm.index.VectorIndex`, exact inner product =
cosine), saved under --out and reused while the catalogue and embedder stay the same. Then, for an
item (`--item ID`, its own id left out) or a free text (`--text`), the `--k` most similar items are
printed and saved as JSON.

Usage:
    python examples/recommender.py --text "the battery died after a week"     # starts a server on minilm-l6
    python examples/recommender.py --url http://127.0.0.1:8000 --model minilm-l6 --item 42 --k 5
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _client import RUNS, Client, add_server_args, progress, server  # noqa: E402

from leanlm.index import IndexConfig, VectorIndex, is_index_dir  # noqa: E402


def embed_remote(client: Client, texts: list[str], model: str | None, batch: int) -> np.ndarray:
    """(len(texts), dim) float32 vectors from /v1/embeddings, `batch` texts per request."""
    rows: list[list[float]] = []
    for lo in range(0, len(texts), batch):
        body = {"input": texts[lo:lo + batch], **({"model": model} if model else {})}
        rows.extend(d["embedding"] for d in sorted(client.post("/v1/embeddings", body)["data"], key=lambda d: d["index"]))
        progress(len(rows), len(texts), "embedding catalogue")
    return np.asarray(rows, dtype=np.float32)


def catalogue_index(client: Client, texts: list[str], args: argparse.Namespace, out: Path) -> VectorIndex:
    """The catalogue's index: loaded from --out when built from the same texts and embedder, else built."""
    key = hashlib.sha256(json.dumps([args.model, args.kind, texts]).encode()).hexdigest()[:16]
    path = out / f"index-{key}"
    if is_index_dir(path):
        return VectorIndex.load(path)
    vectors = embed_remote(client, texts, args.model, args.batch)
    idx = VectorIndex.from_vectors(vectors, texts, config=IndexConfig(kind=args.kind),
                                   meta={"embedder": args.model or "served default", "dataset": args.dataset})
    idx.save(path, overwrite=True)
    return idx


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_server_args(p, "The served embedding model's name (default: the server's only one).")
    p.add_argument("--dataset", default="amazon", help="The catalogue: a leanlm dataset name or a local file.")
    p.add_argument("--limit", type=int, default=0, help="Use only the first N items (0 = all).")
    p.add_argument("--item", help="Recommend items like this catalogue id (its position, '0', '1', ...).")
    p.add_argument("--text", help="Recommend items like this free text.")
    p.add_argument("--k", type=int, default=5, help="Neighbours to show.")
    p.add_argument("--kind", default="flat", choices=["flat", "hnsw"], help="faiss index kind.")
    p.add_argument("--batch", type=int, default=64, help="Texts per embeddings request.")
    p.add_argument("--out", default=str(RUNS / "recommender"), help="Output folder (index cache, results).")
    args = p.parse_args(argv)
    if not args.item and not args.text:
        args.item = "0"
    from leanlm.data.registry import load_dataset

    texts = load_dataset(args.dataset)[0].texts
    texts = texts[:args.limit] if args.limit else texts
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    serve_args = [] if args.url else ["minilm-l6", "--no-access-log"]
    with server(args.url, serve_args, out / "server.log") as url:
        client = Client(url, args.api_key)
        idx = catalogue_index(client, texts, args, out)
        if args.text:
            query, label = embed_remote(client, [args.text], args.model, 1), args.text
            ids, scores = idx.search(query, args.k)
        else:
            label = idx.text(args.item)
            ids, scores = idx.search(idx.vector(args.item)[None, :], args.k, exclude=[args.item])
        client.close()
    result = {"query": {"item": args.item, "text": label} if not args.text else {"text": label},
              "catalogue": {"dataset": args.dataset, "items": len(idx)},
              "neighbours": [{"id": i, "score": float(s), "text": idx.text(i)} for i, s in zip(ids[0], scores[0])]}
    (out / "recommendations.json").write_text(json.dumps(result, indent=2))
    print(f"more like: {label[:100]}")
    for n in result["neighbours"]:
        print(f"  [{n['id']:>5}] {n['score']:.3f}  {n['text'][:100]}")
    print(f"saved to {out / 'recommendations.json'}")
    return result


if __name__ == "__main__":
    main()
