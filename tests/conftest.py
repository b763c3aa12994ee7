"""Shared fixtures: tiny real models built from configs, and the real bundled models (cached)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

SHARED = Path(__file__).resolve().parents[2] / "shared"


@pytest.fixture(scope="session")
def tiny_clf():
    from leanlm.models.tiny import tiny_encoder

    return tiny_encoder("sequence-classification")


@pytest.fixture(scope="session")
def tiny_emb():
    from leanlm.models.tiny import tiny_encoder

    return tiny_encoder("feature-extraction")


@pytest.fixture(scope="session")
def tiny_qa():
    from leanlm.models.tiny import tiny_encoder

    return tiny_encoder("question-answering")


@pytest.fixture(scope="session")
def tiny_lm():
    from leanlm.models.tiny import tiny_decoder

    return tiny_decoder()


@pytest.fixture(scope="session")
def minilm():
    import leanlm

    return leanlm.load("minilm-l6", task="feature-extraction")


@pytest.fixture(scope="session")
def smollm2():
    import leanlm

    return leanlm.load("smollm2-135m")


@pytest.fixture(scope="session")
def squad_path():
    p = SHARED / "data" / "squad-v1.1-dev.json"
    if not p.exists():
        pytest.skip(f"SQuAD dev set not found at {p} (../shared is for developers and CI only)")
    return p


@pytest.fixture
def sentences():
    return [
        "A gorgeous, witty, seductive movie.",
        "The plot is a mess and the acting is worse.",
        "It's a charming and often affecting journey.",
        "Dull, lifeless and far too long.",
        "Stocks fell sharply after the earnings report.",
        "The customer asked how to reset a password.",
        "An utterly delightful film from start to finish.",
        "I wanted to walk out after twenty minutes.",
    ]
