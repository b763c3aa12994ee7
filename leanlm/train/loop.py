"""One plain training loop, shared by fine-tuning, pre-training, PEFT and distillation.

Callers supply a loss function, batches, an evaluation function and (optionally) a filter for
trainable parameters and step hooks (e.g. AdaLoRA's rank reallocation). The loop does AdamW,
linear warm-up then linear decay, gradient clipping, periodic validation, early stopping and
restores the best weights at the end.
"""
from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

import torch

from leanlm.config import BaseConfig, check

Batch = dict[str, torch.Tensor]


@dataclass(frozen=True)
class LoopConfig(BaseConfig):
    """Optimisation settings of the training loop.

    Args:
        epochs: passes over the training batches (early stopping may end sooner).
        lr: peak learning rate of AdamW.
        weight_decay: AdamW weight decay (not applied to biases and norms).
        warmup_ratio: fraction of steps with linearly rising learning rate.
        grad_clip: max global gradient norm (0 disables).
        eval_every: validate every N steps (0 = once per epoch).
        patience: stop after this many validations without improvement (0 disables).
        max_steps: hard cap on optimizer steps (0 = no cap).
        seed: seeds torch for dropout and shuffling.
    """

    epochs: int = 3
    lr: float = 5e-5
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    grad_clip: float = 1.0
    eval_every: int = 0
    patience: int = 2
    max_steps: int = 0
    seed: int = 0

    def validate(self) -> None:
        check(self.epochs >= 1, f"epochs must be >= 1, got {self.epochs}")
        check(self.lr > 0, f"lr must be > 0, got {self.lr}")
        check(self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay}")
        check(0 <= self.warmup_ratio < 1, f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        check(self.grad_clip >= 0, f"grad_clip must be >= 0, got {self.grad_clip}")
        check(self.eval_every >= 0 and self.patience >= 0 and self.max_steps >= 0,
              "eval_every, patience and max_steps must be >= 0")


@dataclass
class TrainResult:
    best_score: float
    best_step: int
    steps: int
    seconds: float
    stopped_early: bool
    history: list[dict[str, float]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"best_score": self.best_score, "best_step": self.best_step, "steps": self.steps,
                "seconds": round(self.seconds, 1), "stopped_early": self.stopped_early, "history": self.history}


def _param_groups(module: torch.nn.Module, params: Sequence[tuple[str, torch.nn.Parameter]], wd: float) -> list[dict]:
    # Decay only matrices: biases and norm weights are 1-D and decaying them hurts.
    decay = [p for n, p in params if p.ndim >= 2]
    no_decay = [p for n, p in params if p.ndim < 2]
    return [{"params": decay, "weight_decay": wd}, {"params": no_decay, "weight_decay": 0.0}]


def train_loop(
    module: torch.nn.Module,
    batches: Callable[[int], Iterable[Batch]],
    steps_per_epoch: int,
    loss_fn: Callable[[torch.nn.Module, Batch], torch.Tensor],
    evaluate: Callable[[torch.nn.Module], float],
    config: LoopConfig = LoopConfig(),
    trainable: Callable[[str, torch.nn.Parameter], bool] | None = None,
    hooks: Sequence[Callable[[int, torch.nn.Module], None]] = (),
    progress: bool = True,
) -> TrainResult:
    """Train `module` in place and restore its best validation weights.

    Args:
        batches: epoch -> iterable of batches (the caller shuffles, seeded by epoch).
        steps_per_epoch: number of batches per epoch (for the schedule and progress bar).
        loss_fn: (module, batch) -> scalar loss.
        evaluate: module -> validation score, higher is better (called in eval mode).
        trainable: (name, param) -> bool; others are frozen. Default: all parameters.
        hooks: called as hook(step, module) after every optimizer step.
    """
    from tqdm.auto import tqdm

    torch.manual_seed(config.seed)
    named = [(n, p) for n, p in module.named_parameters() if trainable is None or trainable(n, p)]
    for n, p in module.named_parameters():
        p.requires_grad_(trainable is None or trainable(n, p))
    if not named:
        raise ValueError("no trainable parameters")
    opt = torch.optim.AdamW(_param_groups(module, named, config.weight_decay), lr=config.lr)
    total = config.epochs * steps_per_epoch
    if config.max_steps:
        total = min(total, config.max_steps)
    warmup = int(total * config.warmup_ratio)

    def lr_lambda(step: int) -> float:
        if step < warmup:
            return (step + 1) / max(1, warmup)
        return max(0.0, (total - step) / max(1, total - warmup))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda)
    eval_every = config.eval_every or steps_per_epoch
    best, best_step, bad, step = -math.inf, 0, 0, 0
    best_state: dict[str, torch.Tensor] | None = None
    history: list[dict[str, float]] = []
    start = time.perf_counter()
    stopped = False
    bar = tqdm(total=total, desc="training", unit="step", disable=not progress, dynamic_ncols=True)
    running = 0.0
    try:
        for epoch in range(config.epochs):
            module.train()
            for batch in batches(epoch):
                loss = loss_fn(module, batch)
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"loss became {loss.item()} at step {step}; lower the learning rate")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if config.grad_clip:
                    torch.nn.utils.clip_grad_norm_([p for _, p in named], config.grad_clip)
                opt.step()
                sched.step()
                step += 1
                for hook in hooks:
                    hook(step, module)
                running = 0.9 * running + 0.1 * loss.item() if step > 1 else loss.item()
                bar.update(1)
                bar.set_postfix(loss=f"{running:.3f}", best=f"{best:.4f}" if best > -math.inf else "-")
                if step % eval_every == 0 or step == total:
                    module.eval()
                    with torch.inference_mode():
                        score = float(evaluate(module))
                    module.train()
                    history.append({"step": step, "epoch": epoch, "loss": round(running, 4), "score": score})
                    if score > best:
                        best, best_step, bad = score, step, 0
                        best_state = copy.deepcopy({k: v.detach().clone() for k, v in module.state_dict().items()})
                    else:
                        bad += 1
                    if config.patience and bad >= config.patience:
                        stopped = True
                        break
                if step >= total:
                    break
            if stopped or step >= total:
                break
    finally:
        bar.close()
        module.eval()
        for p in module.parameters():
            p.requires_grad_(False)
    if best_state is not None:
        module.load_state_dict(best_state)
    return TrainResult(best, best_step, step, time.perf_counter() - start, stopped, history)
