"""Choosing the next token from logits: repetition penalty, temperature, top-k, top-p, seed.

The rules follow Hugging Face's logits processors, so a given seed and settings mean the same
thing here as there; the code is a handful of tensor ops per token instead of a processor list.
"""
from __future__ import annotations

import torch

from leanlm.generate.config import GenerationConfig


class Sampler:
    """Picks tokens for one generation; holds the seeded random generator.

    Args:
        config: the generation settings (temperature 0 = greedy argmax).
        device: where logits live (the generator must be on the same device).

    Example:
        >>> s = Sampler(GenerationConfig(temperature=0.8, top_k=50, seed=0))
        >>> token = s.pick(logits, context_ids)      # logits: (V,), context_ids: (T,)
    """

    def __init__(self, config: GenerationConfig, device: torch.device | str = "cpu"):
        self.config = config
        self.generator: torch.Generator | None = None
        if not config.greedy:
            self.generator = torch.Generator(device=device)
            if config.seed is not None:
                self.generator.manual_seed(config.seed)
            else:
                self.generator.seed()

    def process(self, logits: torch.Tensor, context: torch.Tensor | None) -> torch.Tensor:
        """Logits (V,) after repetition penalty, temperature, top-k and top-p (float32)."""
        cfg = self.config
        logits = logits.float()
        if cfg.repetition_penalty != 1.0 and context is not None and context.numel():
            logits = logits.clone()
            seen = context.reshape(-1).to(logits.device)
            picked = logits.gather(0, seen)
            picked = torch.where(picked > 0, picked / cfg.repetition_penalty, picked * cfg.repetition_penalty)
            logits.scatter_(0, seen, picked)
        if cfg.greedy:
            return logits
        logits = logits / cfg.temperature
        if cfg.top_k and cfg.top_k < logits.numel():
            kth = torch.topk(logits, cfg.top_k).values[-1]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        if cfg.top_p < 1.0:
            sorted_logits, order = torch.sort(logits, descending=False)
            cum = sorted_logits.softmax(-1).cumsum(-1)
            # drop the low tail whose total mass is <= 1 - top_p; always keep the best token
            drop = cum <= (1 - cfg.top_p)
            drop[-1] = False
            logits = logits.masked_fill(drop.scatter(0, order, drop), float("-inf"))
        return logits

    def pick(self, logits: torch.Tensor, context: torch.Tensor | None = None) -> int:
        """The next token id for logits (V,) given the ids seen so far (for the penalty)."""
        logits = self.process(logits, context)
        if self.config.greedy:
            return int(logits.argmax())
        probs = logits.softmax(-1)
        return int(torch.multinomial(probs, 1, generator=self.generator))
