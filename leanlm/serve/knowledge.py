"""Answers from a knowledge base: `leanlm serve QA_MODEL --knowledge-base FILE_OR_DIR [--embedder NAME]`.

At startup the passages are loaded (a .txt file, one passage per paragraph; JSONL with a
`text`/`context`/`passage` field and an optional `id`; SQuAD JSON, whose paragraph contexts are
the passages; a directory of such files; or a directory saved by `VectorIndex.save`) and indexed
with the embedder (`leanlm.index`, faiss inner product on the vectors /v1/embeddings serves).
POST /v1/answer with a question and no context then embeds the question through the embedder's
batcher, retrieves the `top_k` nearest passages, runs the QA model over all of them in one
batched request and answers with the best span and the passage it came from. Without a QA model
the answer is the best passage itself (retrieval only).

Example:
    >>> # leanlm serve runs/qa --knowledge-base examples/data/support_faq.txt --embedder minilm-l6
    >>> httpx.post(url + "/v1/answer", json={"question": "How long do refunds take?"}).json()
    {'object': 'answer', 'answer': 'five to seven business days', 'score': 0.62,
     'source': {'id': 'support_faq:4', 'text': 'Refunds ...', 'score': 0.71}, 'sources': [...], ...}
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from leanlm.errors import DataError
from leanlm.serve.registry import ModelRegistry, ServedModel
from leanlm.serve.schemas import ApiError

PASSAGE_FIELDS = ("text", "context", "passage", "content")
SUFFIXES = (".txt", ".jsonl", ".ndjson", ".json")
DEFAULT_EMBEDDER = "minilm-l6"


# ----------------------------------------------------------------------------- passages

def _txt(path: Path) -> list[tuple[str, str]]:
    raw = path.read_text(encoding="utf-8", errors="replace")
    # paragraphs are separated by blank lines; a file without any holds one passage per line
    blocks = [b for b in (" ".join(p.split()) for p in raw.split("\n\n")) if b]
    if len(blocks) == 1 and raw.strip().count("\n"):
        blocks = [line.strip() for line in raw.splitlines() if line.strip()]
    return [(f"{path.stem}:{n}", b) for n, b in enumerate(blocks)]


def _record_text(row: Any, where: str) -> str:
    if isinstance(row, str):
        return row
    if isinstance(row, dict):
        for key in PASSAGE_FIELDS:
            if isinstance(row.get(key), str):
                return row[key]
    raise DataError(f"{where}: a passage needs one of the fields {', '.join(PASSAGE_FIELDS)}")


def _jsonl(path: Path) -> list[tuple[str, str]]:
    out = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines()):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as e:
            raise DataError(f"{path}:{n + 1}: not JSON ({e})") from None
        rid = row.get("id") if isinstance(row, dict) else None
        out.append((str(rid) if rid is not None else f"{path.stem}:{n}", _record_text(row, f"{path}:{n + 1}")))
    return out


def _json(path: Path) -> list[tuple[str, str]]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as e:
        raise DataError(f"{path}: not JSON ({e})") from None
    if isinstance(data, dict) and isinstance(data.get("data"), list):  # SQuAD: articles -> paragraphs -> context
        out, seen = [], set()
        for a, article in enumerate(data["data"]):
            title = str(article.get("title", a))
            for p, para in enumerate(article.get("paragraphs", [])):
                ctx = para.get("context", "")
                if ctx.strip() and ctx not in seen:  # several questions share a paragraph: index it once
                    seen.add(ctx)
                    out.append((f"{title}:{p}", ctx))
        return out
    if isinstance(data, list):
        return [(str(r["id"]) if isinstance(r, dict) and "id" in r else f"{path.stem}:{n}",
                 _record_text(r, f"{path}[{n}]")) for n, r in enumerate(data)]
    raise DataError(f"{path}: expected SQuAD JSON ({{'data': [...]}}) or a list of passages")


READERS = {".txt": _txt, ".jsonl": _jsonl, ".ndjson": _jsonl, ".json": _json}


def load_passages(path: str | Path) -> tuple[list[str], list[str]]:
    """(ids, texts) of the passages in a file or a directory of files (sorted by name).

    Example:
        >>> ids, texts = load_passages("examples/data/support_faq.txt")
    """
    p = Path(path).expanduser()
    if not p.exists():
        raise DataError(f"knowledge base {p} does not exist")
    files = sorted(f for f in p.rglob("*") if f.suffix.lower() in SUFFIXES) if p.is_dir() else [p]
    if p.is_file() and p.suffix.lower() not in READERS:
        raise DataError(f"knowledge base {p}: expected {', '.join(SUFFIXES)} (or a directory of them)")
    pairs = [pair for f in files for pair in READERS[f.suffix.lower()](f)]
    if not pairs:
        raise DataError(f"knowledge base {p} holds no passages")
    ids = [i for i, _ in pairs]
    if len(set(ids)) != len(ids):
        dupe = next(i for i in ids if ids.count(i) > 1)
        raise DataError(f"knowledge base {p}: passage id {dupe!r} appears twice")
    return ids, [t for _, t in pairs]


# ----------------------------------------------------------------------------- the served knowledge base

class KnowledgeBase:
    """Passages, the served model that embeds them, and (after `build`) their vector index."""

    def __init__(self, source: str, embedder: ServedModel):
        from leanlm.index import is_index_dir, require_faiss

        require_faiss()
        self.source, self.embedder, self.index = source, embedder, None
        self._saved = is_index_dir(source)
        self.ids, self.texts = ([], []) if self._saved else load_passages(source)  # bad files fail before serving

    def build(self) -> None:
        """Embed and index the passages (blocking; runs before the server reports ready)."""
        from leanlm.index import VectorIndex

        if self._saved:
            self.index = VectorIndex.load(self.source)
            self.ids, self.texts = self.index.ids, self.index.texts
        else:
            self.index = VectorIndex.from_texts(self.embedder.model, self.texts, self.ids)
        from leanlm.models.embed import embed

        dim = embed(self.embedder.model, ["dimension check"]).shape[1]
        if self.index.dim != dim:  # a saved index made by another embedder would answer nonsense
            raise DataError(f"the index at {self.source} holds {self.index.dim}-d vectors; the embedder "
                            f"{self.embedder.name!r} makes {dim}-d ones")

    def info(self) -> dict[str, Any]:
        return {"source": self.source, "passages": len(self.ids), "embedder": self.embedder.name}


def attach(registry: ModelRegistry) -> KnowledgeBase | None:
    """The knowledge base ServeConfig names, with its embedder: a served model of that name, else the
    model `--embedder` loads (added to the served models), else the only served embedding model,
    else the bundled MiniLM-L6."""
    config = registry.config
    if not config.knowledge_base:
        return None
    name = config.embedder
    served = registry.models.get(name) if name else None
    if served is None and name is None:
        able = [m for m in registry.models.values() if m.model.task == "feature-extraction"]
        served = able[0] if len(able) == 1 else None
        name = DEFAULT_EMBEDDER
    if served is None:
        from leanlm.models.loading import load
        from leanlm.serve.registry import model_name

        served = ServedModel(model_name(name), load(name, task="feature-extraction"), config)
        registry.models.setdefault(served.name, served)
    if not served.can("embed"):
        raise DataError(f"--embedder {served.name!r} is a {served.model.task} model and cannot embed")
    return KnowledgeBase(config.knowledge_base, served)


async def answer(request: Any, req: Any) -> dict[str, Any]:
    """/v1/answer without a context: retrieve the top_k passages, extract the best span from them."""
    from leanlm.serve.encoders import encoder_items, token_limit
    from leanlm.serve.qa import windows

    reg: ModelRegistry = request.app.state.registry
    kb: KnowledgeBase | None = getattr(request.app.state, "knowledge", None)
    if kb is None or kb.index is None:
        raise ApiError(400, "context is required: this server has no --knowledge-base to search", param="context",
                       code="missing_context")
    items = encoder_items(kb.embedder, [req.question], reg.config)
    (query,) = await reg.dispatch(kb.embedder, "embed", items)
    ids, scores = kb.index.search(np.asarray(query)[None, :], req.top_k)  # (1, k): flat scan, microseconds
    hits = [{"id": i, "text": kb.index.text(i), "score": float(s)} for i, s in zip(ids[0], scores[0])]
    qa = _qa_model(reg, req.model)
    usage = sum(n for _, n in items)
    if qa is None:  # retrieval only: the nearest passage is the answer
        best = hits[0]
        return {"object": "answer", "model": kb.embedder.name, "answer": best["text"], "score": best["score"],
                "start": 0, "end": len(best["text"]), "source": best, "sources": hits, "mode": "retrieval",
                "usage": {"prompt_tokens": usage, "total_tokens": usage}}
    limit = token_limit(qa.model, reg.config)
    spans = [windows(qa.tokenizer, req.question, h["text"], limit, req.max_answer_tokens,
                     max_windows=reg.config.max_texts) for h in hits]
    results = await reg.dispatch(qa, "answer", spans)  # every passage's windows batch together
    # span scores are p(start)p(end) within a passage; rank by them, retrieval breaking ties
    k = max(range(len(hits)), key=lambda n: (results[n]["score"], hits[n]["score"]))
    tokens = usage + sum(s.tokens for s in spans)
    return {"object": "answer", "model": qa.name, **results[k], "source": hits[k],
            "sources": [{**h, "answer": r["answer"], "answer_score": r["score"]} for h, r in zip(hits, results)],
            "mode": "extractive", "windows": sum(len(s.offsets) for s in spans),
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}


def _qa_model(reg: ModelRegistry, name: str | None) -> ServedModel | None:
    if name is not None:
        return reg.get(name, "answer")
    able = [m for m in reg.models.values() if m.can("answer")]
    return reg.get(None, "answer") if able else None
