"""PEFT contract (one row per method): few trainable parameters, adapters saved/loaded, merge exact;
AdaLoRA's ranks really move; LoRA on a quantized base merges only the safe way; the error cases."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import leanlm
from leanlm.errors import ConfigError, LeanlmError, UnsupportedError
from leanlm.train.finetune import FinetuneConfig, _batches, accuracy, finetune
from leanlm.train.loop import LoopConfig, train_loop
from leanlm.train.peft import (ADAPTER_DIR, AdaLora, Lora, Targets, adalora_ranks, adapt_, load_adapter, merge_,
                               merge_adapter_, save_with_adapter)

from test_finetune import _toy_splits

ROOT = Path(__file__).resolve().parents[2]
TEXTS = ["great fun", "awful mess", "a delight of a film", "terrible acting, really bad"]
METHODS = [
    pytest.param(Lora(r=4, alpha=8), id="lora"),
    pytest.param(AdaLora(init_r=6, target_r=2, tinit=2, tfinal=2), id="adalora"),
]
LOOP = LoopConfig(epochs=4, lr=5e-3, warmup_ratio=0.0, patience=0, eval_every=1000)


def _logits(model):
    with torch.inference_mode():
        return model.module(**model.encode(TEXTS)).logits


@pytest.mark.parametrize("config", METHODS)
def test_peft_contract(config, tiny_clf, tmp_path):
    model, splits = tiny_clf.clone(), _toy_splits()
    steps_per_epoch = (len(splits.train) + 7) // 8
    adapter = adapt_(model, config, LOOP.epochs * steps_per_epoch)
    info = adapter.info
    assert 0 < info["trainable_params"] < 0.01 * info["base_params"]
    frozen = model.module.base_model.model.bert.embeddings.word_embeddings.weight.clone()
    res = train_loop(model.module, lambda e: _batches(model, splits.train, 8, 32, e, True), steps_per_epoch,
                     lambda m, b: m(**b).loss, lambda m: accuracy(model, splits.validation, max_length=32),
                     LoopConfig(**{**LOOP.to_dict(), "log_dir": str(tmp_path / "logs")}),
                     trainable=adapter.trainable, grad_hooks=adapter.grad_hooks, progress=False)
    assert res.steps == LOOP.epochs * steps_per_epoch
    assert torch.equal(frozen, model.module.base_model.model.bert.embeddings.word_embeddings.weight)
    unmerged = _logits(model)
    merge_(model, adapter)
    assert type(model.module).__name__ == "BertForSequenceClassification"  # a plain model again
    assert torch.allclose(_logits(model), unmerged, atol=1e-5)
    save_with_adapter(model, adapter, tmp_path / "ft")
    assert (tmp_path / "ft" / ADAPTER_DIR / "adapter_config.json").exists()
    back = leanlm.load(tmp_path / "ft")
    assert torch.allclose(_logits(back), unmerged, atol=1e-5)
    again = load_adapter(tmp_path / "ft")  # the adapter taken back out of the merged weights
    assert type(again.module).__name__.startswith("PeftModel")
    assert torch.allclose(_logits(again), unmerged, atol=1e-5)


def test_adalora_ranks_change_and_budget_is_logged(tiny_clf, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = FinetuneConfig(loop=LoopConfig(**{**LOOP.to_dict(), "log_dir": str(tmp_path / "logs")}), batch_size=8,
                         peft=AdaLora(init_r=6, target_r=2, tinit=2, tfinal=2))
    out = finetune(tiny_clf.clone(), _toy_splits(), cfg, output=tmp_path / "ft", progress=False)
    info = out.record.training["peft"]
    first, last = info["initial_ranks"], info["final_ranks"]
    assert set(first) == set(last) and all(r == 6 for r in first.values())
    assert first != last, "AdaLoRA's ranks never changed: update_and_allocate is not being called"
    assert sum(last.values()) == 2 * len(last)  # the target budget, reallocated between layers
    acc = EventAccumulator(str(tmp_path / "logs"))
    acc.Reload()
    budget = [e.value for e in acc.Scalars("adalora/rank_budget")]
    assert budget[0] == 6 * len(first) and budget[-1] == 2 * len(first) and len(set(budget)) > 2
    rec = json.loads((tmp_path / "ft" / "leanlm.json").read_text())
    assert rec["training"]["config"]["peft"]["type"] == "adalora"
    assert FinetuneConfig.from_dict(rec["training"]["config"]) == cfg  # the config round-trips


def test_adalora_without_budgeting_phase_is_refused(tiny_clf, tmp_path):
    cfg = FinetuneConfig(loop=LOOP, batch_size=8, peft=AdaLora(tinit=10, tfinal=10))  # 16 steps in all
    with pytest.raises(ConfigError, match="no budgeting phase") as e:
        finetune(tiny_clf.clone(), _toy_splits(), cfg, output=tmp_path / "ft", progress=False)
    assert "\n" not in str(e.value) and not (tmp_path / "ft").exists()
    with pytest.raises(ConfigError):
        AdaLora(init_r=2, target_r=4)
    with pytest.raises(UnsupportedError, match="no layers named"):
        adapt_(tiny_clf.clone(), Lora(targets=Targets(modules=("nonexistent",))), 10)


QUANTIZERS = [pytest.param("Int8WeightOnly", id="int8-weight-only"), pytest.param("Int8Dynamic", id="int8-dynamic"),
              pytest.param("Int4WeightOnly", id="int4-weight-only")]


@pytest.mark.parametrize("method", QUANTIZERS)
def test_lora_on_a_quantized_base_merges_dequantize_merge_requantize(method, tiny_clf, tmp_path):
    import leanlm.compress.quantize as Q

    base = tiny_clf.clone()
    Q.quantize_(base, getattr(Q, method)())
    kind = type(base.module.bert.encoder.layer[0].attention.self.query.weight)
    cfg = FinetuneConfig(loop=LOOP, batch_size=8, peft=Lora(r=4, alpha=8))
    out = finetune(base, _toy_splits(), cfg, output=tmp_path / "ft", progress=False)
    merge = out.record.training["peft"]["merge"]
    assert merge["layers_requantized"] == 12 and merge["relative_error"] < 0.05
    assert type(out.module.bert.encoder.layer[0].attention.self.query.weight) is kind  # still quantized
    back = leanlm.load(tmp_path / "ft")
    assert torch.allclose(_logits(back), _logits(out), atol=1e-5)
    # a merge that would drift past the bound is refused and leaves the model as it was
    q = tiny_clf.clone()
    Q.quantize_(q, getattr(Q, method)())
    before = _logits(q)
    with pytest.raises(UnsupportedError, match="drifts too far"):
        merge_adapter_(q, tmp_path / "ft" / ADAPTER_DIR, TEXTS, max_error=1e-9)
    assert torch.equal(_logits(q), before) and not hasattr(q.module, "peft_config")
    info = merge_adapter_(q, tmp_path / "ft" / ADAPTER_DIR, TEXTS)
    assert info["relative_error"] < 0.05 and type(q.module.bert.encoder.layer[0].attention.self.query.weight) is kind


def test_finetune_refuses_compressed_base_without_peft(tiny_clf, tmp_path):
    import leanlm.compress.quantize as Q

    q = tiny_clf.clone()
    Q.quantize_(q, Q.Int8WeightOnly())
    q.save(tmp_path / "q")
    with pytest.raises(LeanlmError, match="only --peft"):
        finetune(str(tmp_path / "q"), _toy_splits(), FinetuneConfig(loop=LOOP), progress=False)


def _cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "leanlm.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "HOME": str(Path.home())},
                          timeout=300)


def test_cli_finetune_lora_and_errors(tiny_emb, tmp_path):
    tiny_emb.module.save_pretrained(tmp_path / "base")
    tiny_emb.tokenizer.save_pretrained(tmp_path / "base")
    splits = _toy_splits()
    rows = ["text,label"] + [f"{t},{splits.label_names[l]}" for t, l in zip(splits.train.texts + splits.validation.texts
                             + splits.test.texts, splits.train.labels + splits.validation.labels + splits.test.labels)]
    (tmp_path / "toy.csv").write_text("\n".join(rows) + "\n")
    common = ["--model", tmp_path / "base", "--dataset", tmp_path / "toy.csv", "--epochs", 2, "--batch-size", 8]
    ok = _cli("finetune", tmp_path / "ft", *common, "--peft", "lora", "--peft-opt", "r=2",
              "--peft-targets", "query,key,value", "--grad-accum", 2, "--log-dir", tmp_path / "logs", cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr[-1500:]
    assert "parameters trained (lora)" in ok.stdout and (tmp_path / "logs" / "curves.png").exists()
    rec = json.loads((tmp_path / "ft" / "leanlm.json").read_text())
    assert rec["training"]["peft"]["target_modules"] == ["query", "key", "value"]
    assert rec["training"]["config"]["peft"]["r"] == 2 and rec["training"]["config"]["loop"]["grad_accum"] == 2
    for bad, needle in ((["--peft", "adalora", "--peft-opt", "tinit=50"], "no budgeting phase"),
                        (["--peft", "lorax"], "unknown peft method"),
                        (["--peft", "lora", "--peft-opt", "rank=3"], "unknown option")):
        r = _cli("finetune", tmp_path / "bad", *common, *bad, cwd=tmp_path)
        assert r.returncode == 2 and needle in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr[-800:]
        assert not (tmp_path / "bad").exists()


def test_adalora_resume_is_exact(tiny_clf, tmp_path):
    # the checkpoint carries AdaLoRA's importance scores and rank pattern, not only the weights.
    # The adapter's initial weights are random: each run seeds them, as leanlm.finetune does (without
    # the seed the three runs started from three different adapters, which once looked like a resume bug)
    splits = _toy_splits()
    steps_per_epoch = (len(splits.train) + 7) // 8

    def run(checkpoint_dir=None, kill_at=None):
        model = tiny_clf.clone()
        torch.manual_seed(0)
        adapter = adapt_(model, AdaLora(init_r=6, target_r=2, tinit=2, tfinal=2), LOOP.epochs * steps_per_epoch)

        def kill(step, module):
            if step == kill_at:
                raise KeyboardInterrupt

        cfg = LoopConfig(**{**LOOP.to_dict(), "checkpoint_dir": checkpoint_dir, "checkpoint_every": 3 if checkpoint_dir else 0})
        train_loop(model.module, lambda e: _batches(model, splits.train, 8, 32, e, True), steps_per_epoch,
                   lambda m, b: m(**b).loss, lambda m: 0.0, cfg, trainable=adapter.trainable,
                   grad_hooks=adapter.grad_hooks, hooks=[kill], progress=False)
        return model

    straight = run()
    with pytest.raises(KeyboardInterrupt):
        run(str(tmp_path / "ckpt"), kill_at=7)
    resumed = run(str(tmp_path / "ckpt"))
    assert adalora_ranks(resumed.module) == adalora_ranks(straight.module)
    for (name, a), b in zip(straight.module.state_dict().items(), resumed.module.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-6), (name, float((a - b).abs().max()))


@pytest.mark.integration
def test_real_minilm_lora_small_subset(tmp_path):
    cfg = FinetuneConfig(loop=LoopConfig(epochs=1, lr=1e-3), train_size=64, eval_size=32, batch_size=32,
                         max_length=64, peft=Lora(r=8))
    m = finetune("minilm-l6", "movie-snippets", cfg, output=tmp_path / "ft", progress=False)
    info = m.record.training["peft"]
    assert info["trainable_params"] < 0.005 * info["base_params"]  # 74k of 22.7M
    back = leanlm.load(tmp_path / "ft")
    texts = ["a warm, funny and moving film", "a dull, pointless waste of time"]
    assert back.predict(texts) == m.predict(texts)


def test_adalora_default_schedule_leaves_half_the_run_for_budgeting(tiny_clf):
    # tinit = tfinal = 0 cut ranks from the first step; the defaults are fractions of the run
    model = tiny_clf.clone()
    adapter = adapt_(model, AdaLora(init_r=6, target_r=2), total_steps=100)
    assert adapter.info["budget_schedule"] == {"tinit": 10, "tfinal": 20, "total_step": 100}
    assert AdaLora.from_dict(AdaLora().to_dict()) == AdaLora()
