"""Local data files: CSV/TSV and JSONL with a text column and a label column."""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from leanlm.data.dataset import TextDataset
from leanlm.errors import DataError

TEXT_COLUMNS = ("text", "sentence", "review", "question", "content", "document")
LABEL_COLUMNS = ("label", "labels", "sentiment", "class", "target", "intent")


def _pick(columns: list[str], wanted: str | None, candidates: tuple[str, ...], what: str, path: Path) -> str:
    if wanted is not None:
        if wanted not in columns:
            raise DataError(f"{path.name}: no {what} column {wanted!r}; columns are {columns}")
        return wanted
    for c in candidates:
        if c in columns:
            return c
    raise DataError(f"{path.name}: cannot find a {what} column (tried {list(candidates)}); columns are {columns}; "
                    f"name it with --{what}-column")


def _rows(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        raise DataError(f"data file {path} does not exist")
    if path.is_dir():
        raise DataError(f"{path} is a directory, not a data file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise DataError(f"{path.name} is not UTF-8 text") from None
    if not text.strip():
        raise DataError(f"data file {path} is empty")
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json", ".ndjson"):
        rows = []
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path.name} line {n} is not valid JSON: {e.msg}") from None
            if not isinstance(row, dict):
                raise DataError(f"{path.name} line {n} is not a JSON object")
            rows.append(row)
        return rows
    if suffix in (".csv", ".tsv", ".txt"):
        delim = "\t" if suffix in (".tsv", ".txt") else ","
        try:
            reader = csv.DictReader(io.StringIO(text), delimiter=delim, strict=True)
            rows = list(reader)
        except csv.Error as e:
            raise DataError(f"{path.name} is not valid {'TSV' if delim == chr(9) else 'CSV'}: {e}") from None
        if reader.fieldnames is None or len(reader.fieldnames) < 2:
            raise DataError(f"{path.name}: expected a header row with at least a text and a label column")
        for n, row in enumerate(rows, 2):
            if None in row or any(v is None for v in row.values()):
                raise DataError(f"{path.name} line {n} has the wrong number of fields")
        return rows
    raise DataError(f"{path.name}: unsupported file type {suffix!r} (use .csv, .tsv, .jsonl)")


def load_file(path: str | Path, text_column: str | None = None, label_column: str | None = None) -> TextDataset:
    """Read a local CSV/TSV/JSONL classification file.

    Labels may be strings or integers; string labels are numbered in sorted order.
    """
    path = Path(path)
    rows = _rows(path)
    if not rows:
        raise DataError(f"data file {path} has a header but no rows")
    columns = list(rows[0].keys())
    tcol = _pick(columns, text_column, TEXT_COLUMNS, "text", path)
    lcol = _pick(columns, label_column, LABEL_COLUMNS, "label", path)
    texts, raw = [], []
    for n, row in enumerate(rows, 1):
        t, l = row.get(tcol), row.get(lcol)
        if t is None or l is None or (isinstance(t, str) and not t.strip()) or str(l).strip() == "":
            raise DataError(f"{path.name} row {n}: empty {tcol!r} or {lcol!r}")
        texts.append(str(t))
        raw.append(str(l).strip())
    names = sorted(set(raw), key=lambda s: (not s.lstrip("-").isdigit(), int(s) if s.lstrip("-").isdigit() else 0, s))
    if len(names) < 2:
        raise DataError(f"{path.name}: label column {lcol!r} has a single value {names}; need at least two classes")
    index = {n: i for i, n in enumerate(names)}
    return TextDataset(texts, [index[r] for r in raw], names, path.stem)
