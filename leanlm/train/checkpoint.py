"""Training checkpoints: everything the one loop needs to continue a run exactly where it stopped.

A checkpoint is one file, `checkpoint.pt` in the run's checkpoint directory, replaced atomically
(written to a temp file, then renamed), so a kill mid-write leaves the previous checkpoint intact.
It holds the model, optimizer and scheduler states, the RNG states, the position in the data
(epoch, batches consumed), the best weights and score so far, the history and the logged curves,
plus a fingerprint of the run (loop settings that change the result, batches per epoch, parameter
shapes). Resuming with a different fingerprint is refused: it would silently mix two runs.

Example:
    >>> save_checkpoint("runs/ckpt", {"fingerprint": fp, "step": 10, ...})
    >>> payload = load_checkpoint("runs/ckpt", fp)     # None when there is none yet
"""
from __future__ import annotations

import io
import os
import random
from pathlib import Path
from typing import Any

import torch

from leanlm.artifact import atomic_write_bytes
from leanlm.errors import ArtifactError, ConfigError

CHECKPOINT_FILE = "checkpoint.pt"
# LoopConfig fields that may change between an interrupted run and its resume: they decide where
# files go and how often they are written, never the trained weights.
# settings that change neither the trajectory nor its checkpoints (restore_best only picks the final weights)
NOT_FINGERPRINTED = ("checkpoint_dir", "checkpoint_every", "log_dir", "restore_best")


def fingerprint(module: torch.nn.Module, config: Any, steps_per_epoch: int) -> dict[str, Any]:
    """What must match for a checkpoint to belong to this run."""
    loop = {k: v for k, v in config.to_dict().items() if k not in NOT_FINGERPRINTED}
    shapes = {k: list(v.shape) for k, v in module.state_dict().items()}
    return {"loop": loop, "steps_per_epoch": int(steps_per_epoch), "shapes": shapes}


def _difference(found: dict[str, Any], expected: dict[str, Any]) -> str:
    if found.get("shapes") != expected.get("shapes"):
        a, b = found.get("shapes", {}), expected.get("shapes", {})
        names = sorted(set(a) ^ set(b)) or sorted(k for k in a if a[k] != b.get(k))
        return f"other model shapes (e.g. {names[0]})" if names else "other model shapes"
    if found.get("steps_per_epoch") != expected.get("steps_per_epoch"):
        return f"{found.get('steps_per_epoch')} batches per epoch, this run has {expected.get('steps_per_epoch')}"
    a, b = found.get("loop", {}), expected.get("loop", {})
    keys = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
    return ", ".join(f"{k}={a.get(k)!r} (now {b.get(k)!r})" for k in keys[:3]) or "other settings"


def rng_state() -> dict[str, Any]:
    return {"torch": torch.get_rng_state(), "python": random.getstate()}


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])


def save_checkpoint(directory: str | os.PathLike, payload: dict[str, Any]) -> Path:
    """Write `payload` as the directory's checkpoint, atomically. Returns the file's path."""
    path = Path(directory) / CHECKPOINT_FILE
    buf = io.BytesIO()
    torch.save(payload, buf)
    atomic_write_bytes(path, buf.getvalue())
    return path


def load_checkpoint(directory: str | os.PathLike, expected: dict[str, Any]) -> dict[str, Any] | None:
    """The checkpoint in `directory`, or None if there is none; refuses a corrupt or foreign one."""
    path = Path(directory) / CHECKPOINT_FILE
    if not path.exists():
        return None
    try:
        payload = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # a truncated or foreign file: say which, on one line
        raise ArtifactError(f"checkpoint {path} is unreadable ({type(e).__name__}); delete it to start over") from None
    if not isinstance(payload, dict) or "fingerprint" not in payload:
        raise ArtifactError(f"{path} is not a leanlm training checkpoint; delete it or use another checkpoint_dir")
    if payload["fingerprint"] != expected:
        raise ConfigError(f"checkpoint {path} belongs to another run: {_difference(payload['fingerprint'], expected)}; "
                          "use another checkpoint_dir or delete it")
    return payload
