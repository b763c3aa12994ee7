"""Training curves: TensorBoard event files plus the same curves drawn as a PNG.

The loop logs every scalar it knows (loss, learning rate, validation score) and any scalar a hook
returns (e.g. AdaLoRA's rank budget) under one tag each. `tensorboard --logdir LOG_DIR` shows them
live; `curves.png` in the same directory shows them without TensorBoard. Only rank 0 logs.

Example:
    >>> log = RunLogger("runs/sentiment-logs")
    >>> log.scalars(1, {"train/loss": 0.69, "train/lr": 5e-5})
    >>> log.close()                      # flushes events, draws runs/sentiment-logs/curves.png
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

CURVES_FILE = "curves.png"


class RunLogger:
    """Scalars -> TensorBoard (`torch.utils.tensorboard.SummaryWriter`) and a PNG of all curves.

    Args:
        log_dir: directory for the event files and `curves.png` (created if missing).
        curves: curves logged before a resume (tag -> [[step, value], ...]), so the PNG is whole.
        purge_step: on resume, TensorBoard drops events at or after this step from earlier files.
    """

    def __init__(self, log_dir: str | os.PathLike, curves: dict[str, list] | None = None, purge_step: int | None = None):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # pragma: no cover - tensorboard is a dependency
            from leanlm.errors import UnsupportedError

            raise UnsupportedError("TensorBoard logging needs tensorboard: pip install 'tensorboard>=2.15'") from None
        self.dir = Path(log_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.writer = SummaryWriter(str(self.dir), purge_step=purge_step)
        self.curves: dict[str, list[list[float]]] = {k: [list(p) for p in v if p[0] < (purge_step or math.inf)]
                                                     for k, v in (curves or {}).items()}

    def scalars(self, step: int, values: dict[str, Any]) -> None:
        for tag, value in values.items():
            value = float(value)
            self.writer.add_scalar(tag, value, step)
            self.curves.setdefault(tag, []).append([step, value])

    def close(self) -> Path:
        self.writer.flush()
        self.writer.close()
        return plot_curves(self.curves, self.dir / CURVES_FILE)


def plot_curves(curves: dict[str, list], path: str | os.PathLike) -> Path:
    """One small panel per tag (step on x), written to `path` as PNG."""
    import matplotlib

    matplotlib.use("Agg")  # no display on servers and in tests
    import matplotlib.pyplot as plt

    tags = sorted(curves) or ["(nothing logged)"]
    cols = min(3, len(tags))
    rows = math.ceil(len(tags) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 2.8 * rows), squeeze=False)
    for ax, tag in zip(axes.flat, tags):
        points = curves.get(tag, [])
        if points:
            xs, ys = zip(*points)
            ax.plot(xs, ys, marker="." if len(points) < 30 else None, linewidth=1.2)
        ax.set_title(tag, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(tags):]:
        ax.axis("off")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
