"""Can two models work together? The checks distillation pairs and composite members share.

Each function returns None when the two models agree and otherwise a short reason, so every
caller raises its own error class with its own wording around the same comparison.

Example:
    >>> reason = vocab_mismatch(teacher, student)
    >>> if reason: raise UnsupportedError(f"teacher and student use different tokenizers ({reason})")
"""
from __future__ import annotations

from typing import Any


def vocab_mismatch(a: Any, b: Any) -> str | None:
    """Why the tokenizers of LeanModels a and b differ, or None when they map text to the same ids."""
    if a.tokenizer is b.tokenizer:
        return None
    va, vb = a.tokenizer.get_vocab(), b.tokenizer.get_vocab()
    if va == vb:
        return None
    return f"vocabularies of {len(va)} and {len(vb)} tokens differ"


def labels_mismatch(a: Any, b: Any) -> str | None:
    """Why the label lists (names and order) of a and b differ, or None when they are the same."""
    la, lb = list(a.labels or []), list(b.labels or [])
    return None if la == lb else f"{la} vs {lb}"
