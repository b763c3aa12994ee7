"""Tiny real models built from configs, for unit tests and examples (seconds, not minutes).

They use the bundled tokenizers, so they tokenize real text exactly like the full models.
"""
from __future__ import annotations

from typing import Sequence

import torch

from leanlm.artifact import LeanModel, Record
from leanlm.models.registry import BUNDLED


def tiny_encoder(task: str = "sequence-classification", labels: Sequence[str] = ("negative", "positive"),
                 hidden: int = 64, layers: int = 2, heads: int = 4, seed: int = 0) -> LeanModel:
    """A 2-layer BERT with the MiniLM tokenizer (random weights, deterministic per seed)."""
    from transformers import AutoTokenizer, BertConfig

    from leanlm.models.loading import auto_class, quiet_transformers

    with quiet_transformers():
        tok = AutoTokenizer.from_pretrained(BUNDLED["minilm-l6"].resolve())
        cfg = BertConfig(vocab_size=tok.vocab_size, hidden_size=hidden, num_hidden_layers=layers,
                         num_attention_heads=heads, intermediate_size=hidden * 4, max_position_embeddings=512)
        if task == "sequence-classification":
            cfg.num_labels = len(labels)
            cfg.id2label = dict(enumerate(labels))
            cfg.label2id = {l: i for i, l in enumerate(labels)}
        torch.manual_seed(seed)
        module = auto_class(task).from_config(cfg).eval()
    rec = Record(task=task, base_model="tiny-bert", labels=list(labels) if task == "sequence-classification" else None)
    return LeanModel(module, tok, rec)


def tiny_decoder(hidden: int = 64, layers: int = 2, heads: int = 4, kv_heads: int = 2, seed: int = 0) -> LeanModel:
    """A 2-layer Llama with the SmolLM2 tokenizer and chat template (random weights)."""
    from transformers import AutoTokenizer, LlamaConfig

    from leanlm.models.loading import auto_class, quiet_transformers

    with quiet_transformers():
        tok = AutoTokenizer.from_pretrained(BUNDLED["smollm2-135m"].resolve())
        cfg = LlamaConfig(vocab_size=len(tok), hidden_size=hidden, num_hidden_layers=layers,
                          num_attention_heads=heads, num_key_value_heads=kv_heads, intermediate_size=hidden * 3,
                          max_position_embeddings=2048, tie_word_embeddings=True,
                          bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
        torch.manual_seed(seed)
        module = auto_class("causal-lm").from_config(cfg).eval()
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return LeanModel(module, tok, Record(task="causal-lm", base_model="tiny-llama"))
