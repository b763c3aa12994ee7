"""The one training loop: resume, gradient accumulation, bf16, TensorBoard, DDP, and its errors."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from leanlm.errors import ConfigError, UnsupportedError
from leanlm.train import loop as loop_mod
from leanlm.train.checkpoint import CHECKPOINT_FILE
from leanlm.train.finetune import _batches, accuracy
from leanlm.train.loop import LoopConfig, total_steps, train_loop

from test_finetune import _toy_splits

ROOT = Path(__file__).resolve().parents[2]


class _Killed(Exception):
    pass


def _run_tiny(model, cfg: LoopConfig, hooks=()):
    """The finetune recipe on the toy data, through train_loop directly (so a hook can 'kill' it)."""
    splits = _toy_splits()
    train = splits.train
    return train_loop(model.module, lambda e: _batches(model, train, 8, 32, cfg.seed * 1000 + e, shuffle=True),
                      (len(train) + 7) // 8, lambda m, b: m(**b).loss,
                      lambda m: accuracy(model, splits.validation, max_length=32), cfg, hooks=hooks, progress=False)


def test_resume_after_interruption_reaches_the_same_weights(tiny_clf, tmp_path):
    # one validation, at the end: the restored "best" weights are the final ones, so a broken
    # resume cannot hide behind an early best checkpoint
    cfg = LoopConfig(epochs=3, lr=3e-3, patience=0, eval_every=1000, checkpoint_every=2, seed=3,
                     checkpoint_dir=str(tmp_path / "ckpt"))
    straight = tiny_clf.clone()
    _run_tiny(straight, LoopConfig(**{**cfg.to_dict(), "checkpoint_dir": None, "checkpoint_every": 0}))

    def kill(step, module):
        if step == 5:  # after the step-4 checkpoint, mid-epoch, dropout RNG advanced
            raise _Killed()

    interrupted = tiny_clf.clone()
    with pytest.raises(_Killed):
        _run_tiny(interrupted, cfg, hooks=[kill])
    assert (tmp_path / "ckpt" / CHECKPOINT_FILE).exists()
    resumed = tiny_clf.clone()  # a fresh process would start from the untrained model again
    res = _run_tiny(resumed, cfg)
    assert res.resumed_from == 4 and res.steps == total_steps(cfg, 4) == 12 and res.best_step == 12
    for (name, a), b in zip(straight.module.state_dict().items(), resumed.module.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-6), name
    # a finished checkpoint makes a re-run a no-op with the same result
    again = tiny_clf.clone()
    assert _run_tiny(again, cfg).resumed_from == res.steps
    assert torch.equal(next(iter(again.module.state_dict().values())), next(iter(resumed.module.state_dict().values())))


def test_incompatible_checkpoint_is_refused_in_one_line(tiny_clf, tmp_path):
    cfg = LoopConfig(epochs=1, lr=1e-3, patience=0, checkpoint_dir=str(tmp_path / "ckpt"))
    _run_tiny(tiny_clf.clone(), cfg)
    with pytest.raises(ConfigError, match="belongs to another run: lr=") as e:
        _run_tiny(tiny_clf.clone(), LoopConfig(**{**cfg.to_dict(), "lr": 2e-3}))
    assert "\n" not in str(e.value)
    from leanlm.models.tiny import tiny_encoder

    with pytest.raises(ConfigError, match="other model shapes"):
        _run_tiny(tiny_encoder(hidden=32), cfg)
    (tmp_path / "ckpt" / CHECKPOINT_FILE).write_bytes(b"not a checkpoint")
    with pytest.raises(Exception, match="unreadable"):
        _run_tiny(tiny_clf.clone(), cfg)


def _linear_run(batch: int, accum: int):
    torch.manual_seed(0)
    x, w_true = torch.randn(128, 4), torch.tensor([[1.0, -2.0, 0.5, 3.0]])
    y = x @ w_true.T
    lin = torch.nn.Linear(4, 1)
    chunks = [{"x": x[i : i + batch], "y": y[i : i + batch]} for i in range(0, 128, batch)]
    losses = []
    res = train_loop(lin, lambda e: chunks, len(chunks), lambda m, b: ((m(b["x"]) - b["y"]) ** 2).mean(),
                     lambda m: -float(((m(x) - y) ** 2).mean()),
                     LoopConfig(epochs=5, lr=0.5, warmup_ratio=0.0, patience=0, grad_clip=0.0, grad_accum=accum),
                     hooks=[lambda s, m: losses.append(float(((m(x) - y) ** 2).mean().detach()))], progress=False)
    return lin, res, losses


def test_grad_accumulation_2x16_matches_1x32():
    big, res_big, loss_big = _linear_run(32, 1)
    small, res_small, loss_small = _linear_run(16, 2)
    assert res_big.steps == res_small.steps == 20
    assert loss_small == pytest.approx(loss_big, rel=1e-4)
    assert torch.allclose(big.weight, small.weight, atol=1e-5)
    assert loss_big[-1] < 0.5 * loss_big[0]


def test_bf16_autocast_trains(tiny_clf):
    if not loop_mod.bf16_supported():
        pytest.skip("this CPU has no bf16 support")
    model = tiny_clf.clone()
    before = model.module.classifier.weight.clone()
    res = _run_tiny(model, LoopConfig(epochs=2, lr=3e-3, patience=0, warmup_ratio=0.0, bf16=True))
    assert res.steps == 8 and all(torch.isfinite(torch.tensor(h["loss"])) for h in res.history)
    assert not torch.equal(before, model.module.classifier.weight)
    assert model.module.classifier.weight.dtype == torch.float32  # autocast, not a bf16 model


def test_bf16_refused_where_unsupported(tiny_clf, monkeypatch):
    monkeypatch.setattr(loop_mod, "bf16_supported", lambda: False)
    with pytest.raises(UnsupportedError, match="bf16"):
        _run_tiny(tiny_clf.clone(), LoopConfig(epochs=1, bf16=True))


def test_tensorboard_events_and_curves(tiny_clf, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    def budget(step, module):
        return {"custom/hook_scalar": float(step * 2)}

    _run_tiny(tiny_clf.clone(), LoopConfig(epochs=2, lr=1e-3, patience=0, eval_every=2, log_dir=str(tmp_path / "logs")),
              hooks=[budget])
    acc = EventAccumulator(str(tmp_path / "logs"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"train/loss", "train/lr", "validation/score", "custom/hook_scalar"} <= tags
    assert [e.step for e in acc.Scalars("train/loss")] == list(range(1, 9))
    assert [e.value for e in acc.Scalars("custom/hook_scalar")] == [2.0 * s for s in range(1, 9)]
    assert len(acc.Scalars("validation/score")) == 4
    png = tmp_path / "logs" / "curves.png"
    assert png.exists() and png.read_bytes()[:4] == b"\x89PNG"


def test_loop_config_errors():
    for bad in ({"grad_accum": 0}, {"checkpoint_every": -1}, {"checkpoint_every": 5}):
        with pytest.raises(ConfigError):
            LoopConfig(**bad)


def test_ddp_two_processes_match_one(tmp_path):
    # torchrun with 2 gloo processes vs one plain process, same global batch: same metrics and weights
    script = Path(__file__).with_name("ddp_run.py")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    env.pop("WORLD_SIZE", None)
    subprocess.run([sys.executable, str(script), str(tmp_path / "one.json")], check=True, env=env, cwd=ROOT,
                   capture_output=True, timeout=120)
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          str(script), str(tmp_path / "two.json"), str(tmp_path / "model")],
                         env=env, cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert run.returncode == 0, run.stderr[-2000:]
    one, two = (json.loads((tmp_path / f).read_text()) for f in ("one.json", "two.json"))
    assert two["world"] == 2 and (tmp_path / "model" / "leanlm.json").exists()
    assert [h["step"] for h in one["history"]] == [h["step"] for h in two["history"]]
    for a, b in zip(one["history"], two["history"]):
        assert b["loss"] == pytest.approx(a["loss"], abs=1e-3) and b["score"] == pytest.approx(a["score"])
    for k, v in one["weights"].items():
        assert two["weights"][k] == pytest.approx(v, rel=1e-4, abs=1e-4), k
