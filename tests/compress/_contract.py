"""Helpers shared by the compression contract tables (sparse pruning, low-rank)."""
from __future__ import annotations

import zlib

import torch


def row_id(row) -> str:
    """A stable test id for a (config, fixture, bound) contract row."""
    cfg, fixture, _ = row
    return f"{cfg.name}-{fixture}-{zlib.crc32(cfg.to_json().encode()) % 1000:03d}"


def outputs(model, texts):
    return model(**model.encode(texts, max_length=32)).float()


def rel_error(ref: torch.Tensor, out: torch.Tensor) -> float:
    return float((out - ref).pow(2).sum() / ref.pow(2).sum())
