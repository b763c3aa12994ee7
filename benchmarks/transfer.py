"""Does fine-tuning transfer? Train MiniLM-L6 on movie-snippets, score on other real sentiment text.

Every row fine-tunes `minilm-l6` on the movie-snippets train split (split seed 0; its validation split
drives leanlm's checkpoint selection), then scores accuracy on
  (a) the movie-snippets test split,
  (b) a seeded, balanced sample of IMDB reviews, truncated at --imdb-length tokens (long reviews),
  (c) a seeded sample of the hutto amazon product-review snippets (another domain),
each with a bootstrap 95 % interval (resampling the scored examples), so a difference inside the
intervals is read as noise. Rows: leanlm's fine-tuning with the settings it had before this study
(pinned below, so they do not move with the defaults), a plain loop written here (uniform shuffle,
6 % warm-up then linear decay, AdamW on all parameters, the last weights), one-factor ablations of
leanlm's loop, today's defaults, and the demo's schedule. One thread: accuracy only, no speed claims
(the seconds recorded are wall time on a shared machine).

Rows are run one by one and merged into reports/transfer/transfer.{json,md} by name, so a study can
be run in stages (`--rows`) without re-running the finished rows.

    python benchmarks/transfer.py --train-size 2000 --imdb 1000 --amazon 1000 --rows old-3ep,plain-3ep,old-1ep
    python benchmarks/transfer.py --rows demo-before,demo-400      # the demo rows train on the full split
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's leanlm, not an installed one

from leanlm.data import TextDataset, load_dataset, load_splits  # noqa: E402
from leanlm.train.finetune import FinetuneConfig, finetune, finetune_loop, predict  # noqa: E402
from leanlm.train.loop import LoopConfig, total_steps  # noqa: E402

MODEL = "minilm-l6"
# leanlm's fine-tuning settings before this study (issue 13, item 7): length-bucketed batches,
# 10 % warm-up, decay groups, best validation weights restored, patience 2.
OLD = FinetuneConfig(loop=LoopConfig(epochs=3, lr=5e-5, weight_decay=0.01, warmup_ratio=0.1, patience=2,
                                     restore_best=True), bucket_window=50)


def balanced_sample(data: TextDataset, n: int, seed: int) -> TextDataset:
    """n examples, half per label when n allows, drawn with a fixed seed."""
    rng = np.random.default_rng(seed)
    labels = np.asarray(data.labels)
    per = n // 2
    idx = np.concatenate([rng.choice(np.flatnonzero(labels == c), min(per, int((labels == c).sum())), replace=False)
                          for c in (0, 1)])
    return data.subset(sorted(idx.tolist()), name=f"{data.name}[{len(idx)}]")


def bootstrap(correct: np.ndarray, rounds: int = 2000, seed: int = 0) -> tuple[float, float]:
    rng = np.random.default_rng(seed)
    means = correct[rng.integers(0, len(correct), (rounds, len(correct)))].mean(1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def plain_loop(train: TextDataset, labels: list[str], epochs: int, lr: float, seed: int = 0, batch_size: int = 32,
               max_length: int = 128, warmup_ratio: float = 0.06, weight_decay: float = 0.01):
    """The reference: what a person writes with no framework (HF Trainer's defaults, grad clip 1.0)."""
    from leanlm.models.loading import load

    torch.manual_seed(seed)
    clf = load(MODEL, task="sequence-classification", labels=labels)
    m = clf.module
    m.train()
    opt = torch.optim.AdamW(m.parameters(), lr=lr, weight_decay=weight_decay)  # one group: all parameters
    total = epochs * math.ceil(len(train) / batch_size)
    warm = int(total * warmup_ratio)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / max(1, warm) if s < warm else max(0.0, (total - s) / max(1, total - warm)))
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        order = torch.randperm(len(train), generator=gen).tolist()
        for i in range(0, len(order), batch_size):
            idx = order[i : i + batch_size]
            batch = clf.encode([train.texts[j] for j in idx], max_length=max_length)
            batch["labels"] = torch.tensor([train.labels[j] for j in idx])
            m(**batch).loss.backward()
            torch.nn.utils.clip_grad_norm_(m.parameters(), 1.0)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
    m.eval()
    for p in m.parameters():
        p.requires_grad_(False)
    clf.record.training = {"result": {"steps": total, "best_step": total}}
    clf.record.data = {"train_used": len(train)}
    return clf


def leanlm_rows(cfg: FinetuneConfig, train_size: int, keep_last: bool) -> Callable:
    """A row runner: leanlm.finetune with `cfg`; with keep_last, also the last weights of the same run."""

    def run(splits, labels):
        cfg_n = replace(cfg, train_size=train_size, threads=1)
        steps_per_epoch = math.ceil((train_size or len(splits.train)) / cfg_n.batch_size)
        total = total_steps(cfg_n.loop, steps_per_epoch)
        last: dict = {}

        def snapshot(step: int, module: torch.nn.Module) -> None:
            if step == total:  # after the last optimizer step, before any best-weights restore
                last["state"] = copy.deepcopy(module.state_dict())

        model = finetune(MODEL, splits, cfg_n, progress=False, hooks=(snapshot,) if keep_last else ())
        out = [("", "", model)]
        if keep_last and "state" in last:
            twin = copy.deepcopy(model)
            twin.module.load_state_dict(last["state"])
            twin.record.training["result"]["best_step"] = total
            out.append(("-last", " / last weights", twin))
        return out

    return run


def rows(train_size: int) -> dict[str, tuple[str, Callable]]:
    from leanlm.demo import demo_config

    ts = train_size
    old = lambda **loop: replace(OLD, loop=replace(OLD.loop, **loop))  # noqa: E731
    return {
        "old-1ep": ("leanlm before: 1 epoch", leanlm_rows(old(epochs=1), ts, keep_last=False)),
        "old-3ep": ("leanlm before: 3 epochs (best validation)", leanlm_rows(old(epochs=3), ts, keep_last=True)),
        "plain-3ep": ("plain loop: 3 epochs",
                      lambda s, lab: [("", "", plain_loop(s.train.head(ts) if ts else s.train, lab, 3, 5e-5))]),
        "old-3ep-uniform": ("leanlm before, uniform batch order: 3 epochs (best validation)",
                            leanlm_rows(replace(old(epochs=3), bucket_window=0), ts, keep_last=True)),
        "new-1ep": ("leanlm now (defaults): 1 epoch", leanlm_rows(FinetuneConfig(loop=finetune_loop(epochs=1)), ts, False)),
        "new-3ep": ("leanlm now (defaults): 3 epochs", leanlm_rows(FinetuneConfig(), ts, keep_last=False)),
        "demo-before": ("leanlm demo schedule before: 1 epoch, lr 6e-5, best of 3 validations",
                        leanlm_rows(old(epochs=1, lr=6e-5, eval_every=89, patience=3), 0, keep_last=False)),
        # the demo now keeps the last weights of that same trajectory: "demo-before" scores it whenever its
        # selected step is the last one
        "demo-400": ("1.5x longer demo schedule: 400 steps, lr 6e-5, last weights",
                     leanlm_rows(replace(demo_config(), loop=replace(demo_config().loop, epochs=2, max_steps=400)), 0,
                                 keep_last=False)),
    }


def score(model, sets: dict[str, TextDataset], max_lengths: dict[str, int]) -> dict[str, dict]:
    out = {}
    for name, data in sets.items():
        correct = predict(model, data, max_length=max_lengths[name]) == np.asarray(data.labels)
        lo, hi = bootstrap(correct)
        out[name] = {"accuracy": round(float(correct.mean()), 4), "ci95": [round(lo, 4), round(hi, 4)], "n": len(data)}
    return out


def write(results: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "transfer.json").write_text(json.dumps(results, indent=1))
    meta = results["meta"]
    sets = list(meta["sets"])
    lines = [f"# Transfer: fine-tune {MODEL} on movie-snippets, score elsewhere", "",
             "Train: movie-snippets train split (split seed 0; its first `train` examples); selection on its "
             f"validation split "
             f"({meta['validation']}). Accuracy with bootstrap 95 % interval. One thread, seeds 0. {meta['sets_note']}", "",
             "| row | " + " | ".join(sets) + " | train | steps | selected step |", "|---" * (len(sets) + 4) + "|"]
    for name, r in results["rows"].items():
        cells = [f"{r['scores'][s]['accuracy']:.3f} [{r['scores'][s]['ci95'][0]:.3f}, {r['scores'][s]['ci95'][1]:.3f}]"
                 for s in sets]
        train = r.get("train", meta["train_used"])
        lines.append(f"| {r['label']} | " + " | ".join(cells) + f" | {train} | {r['steps']} | {r['best_step']} |")
    lines += ["", "Reproduce: `" + meta["command"] + "`", ""]
    if results.get("findings"):  # the reading of the table, written by whoever ran it
        lines += ["## Findings", "", *results["findings"], ""]
    (out / "transfer.md").write_text("\n".join(lines))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train-size", type=int, default=0, help="movie-snippets training examples used (0 = all 8,454)")
    ap.add_argument("--imdb", type=int, default=2000, help="IMDB reviews scored (balanced, seed 0)")
    ap.add_argument("--imdb-length", type=int, default=128, help="IMDB reviews are truncated at this many tokens")
    ap.add_argument("--amazon", type=int, default=2000, help="amazon snippets scored (seed 0; 0 = all 3,708)")
    ap.add_argument("--rows", default="old-3ep,plain-3ep,old-1ep,demo-400,demo-before")
    ap.add_argument("--out", type=Path, default=ROOT / "reports" / "transfer")
    ap.add_argument("--render", action="store_true", help="only rewrite transfer.md from transfer.json")
    args = ap.parse_args()
    if args.render:
        write(json.loads((args.out / "transfer.json").read_text()), args.out)
        return
    torch.set_num_threads(1)  # another engineer trains on the other core

    splits = load_splits("movie-snippets", seed=0)
    imdb = balanced_sample(load_dataset("imdb")[0], args.imdb, seed=0)
    amazon_all = load_dataset("amazon")[0]
    amazon = amazon_all if not args.amazon else amazon_all.subset(
        sorted(np.random.default_rng(0).choice(len(amazon_all), min(args.amazon, len(amazon_all)), replace=False).tolist()))
    sets = {"movie-snippets test": splits.test, "imdb": imdb, "amazon": amazon}
    max_lengths = {"movie-snippets test": 128, "imdb": args.imdb_length, "amazon": 128}
    path = args.out / "transfer.json"
    results = json.loads(path.read_text()) if path.exists() else {"rows": {}}
    results["meta"] = {
        "model": MODEL, "train_used": args.train_size or len(splits.train), "validation": len(splits.validation),
        "sets": {k: len(v) for k, v in sets.items()},
        "sets_note": f"IMDB: {len(imdb)} reviews, balanced, seed 0, truncated at {args.imdb_length} tokens; amazon: "
                     f"{len(amazon)} of {len(amazon_all)} hutto amazon snippets, seed 0.",
        "command": "python benchmarks/transfer.py " + " ".join(sys.argv[1:])}
    table = rows(args.train_size)
    for key in [r.strip() for r in args.rows.split(",") if r.strip()]:
        label, run = table[key]
        t0 = time.perf_counter()
        print(f"== {key}: {label}", flush=True)
        for key_suffix, label_suffix, model in run(splits, splits.label_names):
            res = (model.record.training or {}).get("result", {})
            results["rows"][key + key_suffix] = {
                "label": label + label_suffix, "scores": score(model, sets, max_lengths), "steps": res.get("steps"),
                "train": (model.record.data or {}).get("train_used"),
                "best_step": res.get("best_step"), "seconds": round(time.perf_counter() - t0, 1)}
            print(json.dumps(results["rows"][key + key_suffix]), flush=True)
            write(results, args.out)


if __name__ == "__main__":
    main()
