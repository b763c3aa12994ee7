"""One plain training loop, shared by fine-tuning, pre-training, PEFT and distillation.

Callers supply a loss function, batches, an evaluation function and (optionally) a filter for
trainable parameters and step hooks (e.g. AdaLoRA's rank reallocation). The loop does AdamW,
linear warm-up then linear decay, gradient accumulation, gradient clipping, bf16 autocast,
periodic validation, early stopping, checkpoints with exact resume, TensorBoard logging, and runs
unchanged under `torchrun` (DDP, gloo on CPU); it restores the best weights at the end (restore_best;
fine-tuning keeps the last, annealed ones instead, see `leanlm.train.finetune.finetune_loop`).

Resume is exact because the data order is a function of (seed, epoch) — callers build
`batches(epoch)` from those — and the loop skips the batches a checkpoint has already consumed
and restores the optimizer, scheduler and RNG states.

Example:
    >>> result = train_loop(model, lambda epoch: batches(seed * 1000 + epoch), n_batches,
    ...                     lambda m, b: m(**b).loss, lambda m: accuracy(m, val),
    ...                     LoopConfig(epochs=3, grad_accum=2, checkpoint_dir="runs/ckpt", log_dir="runs/logs"))
"""
from __future__ import annotations

import contextlib
import copy
import math
import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

import torch

from leanlm.config import BaseConfig, check
from leanlm.errors import UnsupportedError

Batch = dict[str, torch.Tensor]
# A hook gets (step, module) and may return scalars to log, e.g. {"adalora/rank_budget": 96}.
Hook = Callable[[int, torch.nn.Module], "dict[str, float] | None"]


@dataclass(frozen=True)
class LoopConfig(BaseConfig):
    """Optimisation settings of the training loop.

    Args:
        epochs: passes over the training batches (early stopping may end sooner).
        lr: peak learning rate of AdamW.
        weight_decay: AdamW weight decay (not applied to biases and norms).
        warmup_ratio: fraction of steps with linearly rising learning rate.
        grad_clip: max global gradient norm (0 disables).
        eval_every: validate every N optimizer steps (0 = once per epoch).
        patience: stop after this many validations without improvement (0 disables).
        restore_best: end with the weights of the best validation; False keeps the last weights.
        max_steps: hard cap on optimizer steps (0 = no cap).
        seed: seeds torch for dropout and shuffling.
        grad_accum: batches whose gradients are summed into one optimizer step (effective batch =
            grad_accum x batch); steps, eval_every and max_steps count optimizer steps.
        bf16: run forward and loss under bf16 autocast (refused on CPUs without bf16 support).
        checkpoint_dir: write a resumable checkpoint here; a re-run with the same settings
            continues from it and reaches the same final weights as an uninterrupted run.
        checkpoint_every: checkpoint every N optimizer steps (0 = at each validation).
        log_dir: TensorBoard event files and curves.png (loss, lr, validation, hook scalars).

    Example:
        >>> LoopConfig(epochs=3, lr=5e-5, grad_accum=2, bf16=True, checkpoint_dir="runs/ckpt")
    """

    epochs: int = 3
    lr: float = 5e-5
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    grad_clip: float = 1.0
    eval_every: int = 0
    patience: int = 2
    restore_best: bool = True
    max_steps: int = 0
    seed: int = 0
    grad_accum: int = 1
    bf16: bool = False
    checkpoint_dir: str | None = None
    checkpoint_every: int = 0
    log_dir: str | None = None

    def validate(self) -> None:
        check(self.epochs >= 1, f"epochs must be >= 1, got {self.epochs}")
        check(self.lr > 0, f"lr must be > 0, got {self.lr}")
        check(self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay}")
        check(0 <= self.warmup_ratio < 1, f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        check(self.grad_clip >= 0, f"grad_clip must be >= 0, got {self.grad_clip}")
        check(self.eval_every >= 0 and self.patience >= 0 and self.max_steps >= 0,
              "eval_every, patience and max_steps must be >= 0")
        check(self.grad_accum >= 1, f"grad_accum must be >= 1, got {self.grad_accum}")
        check(self.checkpoint_every >= 0, f"checkpoint_every must be >= 0, got {self.checkpoint_every}")
        check(not self.checkpoint_every or bool(self.checkpoint_dir), "checkpoint_every needs checkpoint_dir")


@dataclass
class TrainResult:
    best_score: float
    best_step: int
    steps: int
    seconds: float
    stopped_early: bool
    history: list[dict[str, float]] = field(default_factory=list)
    resumed_from: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"best_score": self.best_score, "best_step": self.best_step, "steps": self.steps,
                "seconds": round(self.seconds, 1), "stopped_early": self.stopped_early, "history": self.history,
                "resumed_from": self.resumed_from}


def total_steps(config: LoopConfig, steps_per_epoch: int) -> int:
    """Optimizer steps the schedule spans: epochs x ceil(batches / grad_accum), capped by max_steps."""
    total = config.epochs * math.ceil(steps_per_epoch / config.grad_accum)
    return min(total, config.max_steps) if config.max_steps else total


def bf16_supported() -> bool:
    return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


def _param_groups(module: torch.nn.Module, params: Sequence[tuple[str, torch.nn.Parameter]], wd: float) -> list[dict]:
    # Decay only matrices: biases and norm weights are 1-D and decaying them hurts.
    decay = [p for n, p in params if p.ndim >= 2]
    no_decay = [p for n, p in params if p.ndim < 2]
    return [{"params": decay, "weight_decay": wd}, {"params": no_decay, "weight_decay": 0.0}]


class _Distributed:
    """torchrun support: one process group from the environment, batches sharded by rank.

    Every rank sees the same global batch and takes its own rows, so a run on N processes follows
    the same trajectory as one process with the same batch size (up to float summation order).
    """

    def __init__(self) -> None:
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = 0
        if self.world > 1:
            import torch.distributed as dist

            if not dist.is_initialized():
                dist.init_process_group("gloo")  # reads MASTER_ADDR/PORT, RANK, WORLD_SIZE set by torchrun
            self.rank = dist.get_rank()

    @property
    def main(self) -> bool:
        return self.rank == 0

    def wrap(self, module: torch.nn.Module) -> torch.nn.Module:
        if self.world == 1:
            return module
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(module)

    def shard(self, batch: Batch) -> tuple[Batch, float]:
        """This rank's rows of `batch`, and the factor that makes DDP's gradient mean the global mean."""
        if self.world == 1:
            return batch, 1.0
        n = next(v.shape[0] for v in batch.values() if isinstance(v, torch.Tensor) and v.ndim)
        if n < self.world:
            raise UnsupportedError(f"a batch of {n} rows cannot be split over {self.world} processes; use a larger batch")
        lo, hi = n * self.rank // self.world, n * (self.rank + 1) // self.world
        part = {k: v[lo:hi] if isinstance(v, torch.Tensor) and v.ndim and v.shape[0] == n else v
                for k, v in batch.items()}
        return part, (hi - lo) * self.world / n

    def no_sync(self, wrapped: torch.nn.Module, sync: bool) -> contextlib.AbstractContextManager:
        # accumulate locally and all-reduce once, on the batch that ends the optimizer step
        return contextlib.nullcontext() if sync or self.world == 1 else wrapped.no_sync()

    def mean(self, value: float) -> float:
        if self.world == 1:
            return value
        import torch.distributed as dist

        t = torch.tensor([value], dtype=torch.float64)
        dist.all_reduce(t)
        return float(t) / self.world

    def from_main(self, value: Any) -> Any:
        if self.world == 1:
            return value
        import torch.distributed as dist

        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier()


@dataclass
class _Progress:
    """Where a run stands; saved in checkpoints. `batch` counts batches consumed in `epoch`."""

    step: int = 0
    epoch: int = 0
    batch: int = 0
    best: float = -math.inf
    best_step: int = 0
    bad: int = 0
    running: float = 0.0
    stopped: bool = False


def train_loop(
    module: torch.nn.Module,
    batches: Callable[[int], Iterable[Batch]],
    steps_per_epoch: int,
    loss_fn: Callable[[torch.nn.Module, Batch], torch.Tensor],
    evaluate: Callable[[torch.nn.Module], float],
    config: LoopConfig = LoopConfig(),
    trainable: Callable[[str, torch.nn.Parameter], bool] | None = None,
    hooks: Sequence[Hook] = (),
    progress: bool = True,
    grad_hooks: Sequence[Hook] = (),
) -> TrainResult:
    """Train `module` in place; end on its best validation weights (or the last, see restore_best).

    Args:
        batches: epoch -> iterable of batches; the order must depend only on (seed, epoch), so a
            resumed run sees the same data (the caller shuffles, seeded by epoch).
        steps_per_epoch: number of batches per epoch (for the schedule and progress bar).
        loss_fn: (module, batch) -> scalar loss (under DDP `module` is the DDP wrapper).
        evaluate: module -> validation score, higher is better (called in eval mode, rank 0 only).
        trainable: (name, param) -> bool; others are frozen. Default: all parameters.
        hooks: called as hook(step, module) after every optimizer step, after zero_grad.
        grad_hooks: called as hook(step - 1, module) after the optimizer step and BEFORE
            zero_grad, gradients still present (AdaLoRA's update_and_allocate takes this 0-based step).
        Hooks may return a dict of scalars; they are logged under their own tags. A hook with
        `state_dict()`/`load_state_dict()` (AdaLoRA's importance scores) is saved in checkpoints.

    Example:
        >>> train_loop(lin, lambda e: [{"x": x}], 1, lambda m, b: (m(b["x"]) ** 2).mean(), lambda m: 0.0)
    """
    from tqdm.auto import tqdm

    from leanlm.train.checkpoint import fingerprint, load_checkpoint, rng_state, save_checkpoint, set_rng_state

    if config.bf16 and not bf16_supported():
        raise UnsupportedError("bf16 autocast needs a CPU with AVX512-BF16 or AMX; run without bf16")
    dist = _Distributed()
    torch.manual_seed(config.seed)
    named = [(n, p) for n, p in module.named_parameters() if trainable is None or trainable(n, p)]
    for n, p in module.named_parameters():
        p.requires_grad_(trainable is None or trainable(n, p))
    if not named:
        raise ValueError("no trainable parameters")
    opt = torch.optim.AdamW(_param_groups(module, named, config.weight_decay), lr=config.lr)
    total = total_steps(config, steps_per_epoch)
    warmup = int(total * config.warmup_ratio)

    def lr_lambda(step: int) -> float:
        if step < warmup:
            return (step + 1) / max(1, warmup)
        return max(0.0, (total - step) / max(1, total - warmup))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda)
    eval_every = config.eval_every or math.ceil(steps_per_epoch / config.grad_accum)
    ckpt_every = config.checkpoint_every or eval_every
    state = _Progress()
    best_state: dict[str, torch.Tensor] | None = None
    history: list[dict[str, float]] = []
    curves: dict[str, list] = {}
    stateful = [h for h in (*grad_hooks, *hooks) if hasattr(h, "state_dict") and hasattr(h, "load_state_dict")]
    fp = fingerprint(module, config, steps_per_epoch) if config.checkpoint_dir else None
    saved = load_checkpoint(config.checkpoint_dir, fp) if fp is not None else None
    if saved is not None:
        module.load_state_dict(saved["model"])
        opt.load_state_dict(saved["optimizer"])
        sched.load_state_dict(saved["scheduler"])
        set_rng_state(saved["rng"])
        state = _Progress(**saved["progress"])
        best_state, history, curves = saved["best_state"], saved["history"], saved["curves"]
        for hook, hook_state in zip(stateful, saved.get("hooks", [])):
            hook.load_state_dict(hook_state)
    resumed_from = state.step
    log = None
    if config.log_dir and dist.main:
        from leanlm.train.logging import RunLogger

        log = RunLogger(config.log_dir, curves, purge_step=state.step + 1 if saved is not None else None)

    def checkpoint() -> None:
        if fp is not None and dist.main:
            save_checkpoint(config.checkpoint_dir, {
                "fingerprint": fp, "model": module.state_dict(), "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict(), "rng": rng_state(), "progress": vars(state).copy(),
                "best_state": best_state, "history": history, "curves": log.curves if log else curves,
                "hooks": [h.state_dict() for h in stateful]})
        dist.barrier()

    def validate(epoch: int) -> None:
        nonlocal best_state
        module.eval()
        score = None
        if dist.main:
            with torch.inference_mode():
                score = float(evaluate(module))
        score = dist.from_main(score)
        module.train()
        history.append({"step": state.step, "epoch": epoch, "loss": round(state.running, 4), "score": score,
                        "lr": sched.get_last_lr()[0]})
        if log:
            log.scalars(state.step, {"validation/score": score})
        if score > state.best:
            state.best, state.best_step, state.bad = score, state.step, 0
            best_state = copy.deepcopy({k: v.detach().clone() for k, v in module.state_dict().items()})
        else:
            state.bad += 1
        if config.patience and state.bad >= config.patience:
            state.stopped = True

    wrapped = dist.wrap(module)
    autocast = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if config.bf16 else contextlib.nullcontext
    params = [p for _, p in named]
    start = time.perf_counter()
    bar = tqdm(total=total, initial=state.step, desc="training", unit="step", disable=not progress or not dist.main,
               dynamic_ncols=True)
    try:
        while not state.stopped and state.step < total and state.epoch < config.epochs:
            epoch, skip = state.epoch, state.batch
            module.train()
            opt.zero_grad(set_to_none=True)  # never carry a half-accumulated step across epochs
            step_loss = 0.0
            for i, batch in enumerate(batches(epoch)):
                if i < skip:
                    continue  # consumed before the checkpoint this run resumed from
                group = min(config.grad_accum, steps_per_epoch - (i - i % config.grad_accum))
                ends_step = (i + 1) % config.grad_accum == 0 or i + 1 >= steps_per_epoch
                part, scale = dist.shard(batch)
                with dist.no_sync(wrapped, ends_step):
                    with autocast():
                        loss = loss_fn(wrapped, part) * scale
                    if not torch.isfinite(loss):
                        raise FloatingPointError(f"loss became {loss.item()} at step {state.step}; lower the learning rate")
                    (loss / max(1, group)).backward()
                step_loss += loss.item() / max(1, group)
                if not ends_step:
                    continue
                if config.grad_clip:
                    torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
                lr = sched.get_last_lr()[0]
                opt.step()
                sched.step()
                state.step += 1
                state.batch = i + 1
                scalars = {"train/loss": dist.mean(step_loss), "train/lr": lr}
                step_loss = 0.0
                for hook in grad_hooks:
                    scalars.update(hook(state.step - 1, module) or {})
                opt.zero_grad(set_to_none=True)
                for hook in hooks:
                    scalars.update(hook(state.step, module) or {})
                loss_now = scalars["train/loss"]
                state.running = 0.9 * state.running + 0.1 * loss_now if state.step > 1 else loss_now
                if log:
                    log.scalars(state.step, scalars)
                bar.update(1)
                bar.set_postfix(loss=f"{state.running:.3f}", best=f"{state.best:.4f}" if state.best > -math.inf else "-")
                if state.step % eval_every == 0 or state.step == total:
                    validate(epoch)
                if state.batch >= steps_per_epoch:
                    state.epoch, state.batch = epoch + 1, 0
                done = state.stopped or state.step >= total
                if done or state.step % ckpt_every == 0:
                    checkpoint()
                if done:
                    break
            else:
                state.epoch, state.batch = epoch + 1, 0  # the iterator ended (fewer batches than announced)
    finally:
        bar.close()
        if log:
            log.close()
        module.eval()
        for p in module.parameters():
            p.requires_grad_(False)
    if best_state is not None and config.restore_best:
        module.load_state_dict(best_state)
    return TrainResult(state.best, state.best_step, state.step, time.perf_counter() - start, state.stopped, history,
                       resumed_from)
