"""Sentence embeddings: mean pooling over the attention mask, L2-normalised.

This is what sentence-transformers does for all-MiniLM-L6-v2, so vectors match that library's.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from leanlm.artifact import LeanModel
from leanlm.errors import LeanlmError


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    # hidden: (B, T, H), mask: (B, T) -> (B, H)
    m = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)


@torch.inference_mode()
def embed(
    model: LeanModel | str,
    texts: Sequence[str] | str,
    batch_size: int = 32,
    max_length: int | None = None,
    normalize: bool = True,
) -> np.ndarray:
    """Embed texts into a (len(texts), hidden) float32 matrix.

    Args:
        model: a LeanModel or anything `leanlm.load` takes (an encoder).
        texts: one string or a list of strings.
        batch_size: texts per forward pass.
        max_length: truncate to this many tokens (default and cap: the model's maximum).
        normalize: L2-normalise each row (cosine similarity = dot product).

    Example:
        >>> E = leanlm.embed("minilm-l6", ["a cat", "a dog"])
        >>> float(E[0] @ E[1])
    """
    from leanlm.models.loading import load

    if not isinstance(model, LeanModel):
        model = load(model, task="feature-extraction")
    if model.task == "causal-lm":
        raise LeanlmError("embed needs an encoder model; this one is a causal-lm")
    if isinstance(texts, str):
        texts = [texts]
    if not texts:
        raise LeanlmError("embed needs at least one text")
    if batch_size < 1:
        raise LeanlmError("batch_size must be >= 1")
    # A classification model still embeds: run its encoder body when we hold the torch module.
    body = None
    if model.task == "sequence-classification":
        if model.backend != "torch":
            raise LeanlmError("embed on a classification model needs the torch backend")
        body = model.module.base_model
    out = []
    for i in range(0, len(texts), batch_size):
        batch = model.encode(list(texts[i : i + batch_size]), max_length=max_length)
        if body is not None:
            hidden = body(**batch).last_hidden_state
        else:
            hidden = model(**batch)
        v = mean_pool(hidden.float(), batch["attention_mask"])
        if normalize:
            v = torch.nn.functional.normalize(v, p=2, dim=1)
        out.append(v.cpu().numpy().astype(np.float32))
    return np.concatenate(out, axis=0)
