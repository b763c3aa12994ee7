"""Full fine-tuning vs LoRA vs AdaLoRA of MiniLM-L6 on movie-snippets: parameters, accuracy, time.

Each row fine-tunes `minilm-l6` on the same split, seed, epochs, batch and length with leanlm's one
training loop (`leanlm.finetune`, which merges the adapters into the base at the end), then scores
the test split. Every method gets the same small grid of its own usual settings and keeps the one
with the best VALIDATION accuracy (the test split is scored for every run but chooses nothing):
learning rates {1x, 4x} of its usual one (full 5e-5, adapters 5e-4: adapters train at a ~10x
higher rate, as PEFT's and the LoRA paper's examples do) and, for AdaLoRA, its orthogonality
regulariser at PEFT's default 0.5 and the AdaLoRA paper's GLUE value 0.1. All runs are in the JSON
and in the report's second table.

Speed comes two ways: the wall time of each whole run (sequential runs, so it drifts with the
machine), and a same-run ratio of the cost of one training step, timed interleaved on the same
batches in rotated rounds (forward + backward + optimizer step; AdaLoRA's rank allocation included).

    python benchmarks/finetune_peft.py [--epochs 2] [--threads 2]

Writes reports/peft/peft.{json,md}. Run alone on a quiet machine.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's leanlm, not an installed one


def step_times(splits, configs: dict, lrs: dict, rounds: int, steps: int, max_length: int) -> dict[str, float]:
    """Median seconds per training step of each method, interleaved and rotated on the same batches."""
    import leanlm
    from leanlm.train.peft import adapt_

    labels = splits.label_names
    batches = []
    for i in range(steps):
        idx = range(i * 32, (i + 1) * 32)
        texts = [splits.train.texts[j] for j in idx]
        batches.append((texts, torch.tensor([splits.train.labels[j] for j in idx])))
    runners = {}
    for name, cfg in configs.items():
        torch.manual_seed(0)
        m = leanlm.load("minilm-l6", task="sequence-classification", labels=labels)
        adapter = adapt_(m, cfg, total_steps=rounds * steps * 4) if cfg else None
        module = m.module.train()
        params = [p for n, p in module.named_parameters() if adapter is None or n in adapter.trainable_names]
        opt = torch.optim.AdamW(params, lr=lrs[name])
        encoded = [dict(m.encode(t, max_length=max_length), labels=y) for t, y in batches]
        hooks = adapter.grad_hooks if adapter else []
        runners[name] = (module, opt, encoded, hooks)
    counter = {name: 0 for name in configs}

    def run(name: str) -> float:
        module, opt, encoded, hooks = runners[name]
        t = time.perf_counter()
        for batch in encoded:
            loss = module(**batch).loss
            loss.backward()
            for hook in hooks:
                hook(counter[name], module)
            opt.step()
            opt.zero_grad(set_to_none=True)
            counter[name] += 1
        return (time.perf_counter() - t) / len(encoded)

    names = list(configs)
    for name in names:  # warm-up round, not recorded
        run(name)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:  # rotate: no row always follows another
            times[name].append(run(name))
    return {n: statistics.median(v) for n, v in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds of the step-time measurement")
    ap.add_argument("--steps", type=int, default=8, help="training steps per method per round")
    ap.add_argument("--train-size", type=int, default=0, help="0 = the whole train split (smoke runs: small)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    import leanlm
    from leanlm.bench.stats import format_interval, paired_bootstrap
    from leanlm.data import load_splits
    from leanlm.train.finetune import FinetuneConfig, predict
    from leanlm.train.loop import LoopConfig, total_steps
    from leanlm.train.peft import AdaLora, Lora

    splits = load_splits("movie-snippets", seed=0)
    n_train = args.train_size or len(splits.train)
    total = total_steps(LoopConfig(epochs=args.epochs), (n_train + 31) // 32)
    # AdaLoRA: full rank for the first 10 % of steps, budgeting, ranks frozen for the last 20 % (its defaults)
    grids: dict[str, list[tuple[float, object]]] = {
        "full": [(5e-5, None), (2e-4, None)],
        "lora r=8": [(lr, Lora(r=8, alpha=16)) for lr in (5e-4, 2e-3)],
        "adalora 12->4": [(lr, AdaLora(init_r=12, target_r=4, orth_reg_weight=w)) for lr in (5e-4, 2e-3)
                          for w in (0.5, 0.1)],
    }
    test_labels = np.asarray(splits.test.labels)
    results: dict = {"settings": vars(args) | {"grids": {k: [[lr, c.to_dict() if c else None] for lr, c in v]
                                                         for k, v in grids.items()},
                                               "optimizer_steps": total, "test_n": len(test_labels)},
                     "rows": {}, "runs": {}}
    per_example, configs, lrs = {}, {}, {}
    for name, grid in grids.items():
        runs = []
        for lr, cfg in grid:
            label = f"lr {lr:g}" + (f", orth {cfg.orth_reg_weight:g}" if isinstance(cfg, AdaLora) else "")
            print(f"== {name} ({label})", flush=True)
            ft = FinetuneConfig(loop=LoopConfig(epochs=args.epochs, lr=lr, patience=0, seed=0),
                                max_length=args.max_length, train_size=args.train_size, threads=args.threads, peft=cfg)
            t = time.perf_counter()
            model = leanlm.finetune("minilm-l6", splits, ft, progress=False)
            seconds = time.perf_counter() - t
            correct = (predict(model, splits.test, max_length=args.max_length) == test_labels).astype(int)
            peft_info = (model.record.training or {}).get("peft", {})
            base = sum(p.numel() for p in model.module.parameters())
            row = {"lr": lr, "setting": label, "trainable_params": peft_info.get("trainable_params", base),
                   "base_params": base, "test_accuracy": float(correct.mean()), "wall_seconds": round(seconds, 1),
                   "validation_accuracy": model.record.metrics["validation"]["accuracy"]}
            if "final_ranks" in peft_info:
                init, final = peft_info["initial_ranks"], peft_info["final_ranks"]
                row |= {"ranks_initial_total": sum(init.values()), "ranks_final_total": sum(final.values()),
                        "ranks_final_min": min(final.values()), "ranks_final_max": max(final.values()),
                        "ranks_changed": sum(init[k] != final[k] for k in init)}
            print(json.dumps(row), flush=True)
            runs.append((row, correct, cfg))
        results["runs"][name] = [r for r, _, _ in runs]
        best, per_example[name], configs[name] = max(runs, key=lambda r: r[0]["validation_accuracy"])
        results["rows"][name] = dict(best)
        lrs[name] = best["lr"]
    for name in configs:
        if name != "full":
            d = paired_bootstrap(per_example["full"], per_example[name])
            results["rows"][name]["delta_vs_full"] = format_interval(d)
    print("== step time, interleaved", flush=True)
    st = step_times(splits, configs, lrs, args.rounds, args.steps, args.max_length)
    for name in configs:
        results["rows"][name]["step_seconds"] = round(st[name], 4)
        results["rows"][name]["step_speed_vs_full"] = round(st["full"] / st[name], 2)

    out = ROOT / "reports" / "peft"
    out.mkdir(parents=True, exist_ok=True)
    (out / "peft.json").write_text(json.dumps(results, indent=2))
    lines = [f"# PEFT vs full fine-tuning (minilm-l6, movie-snippets, {args.epochs} epochs, {args.threads} threads)", "",
             "Chosen on validation (one run each, seed 0):", "",
             "| method | setting | trainable params | % of base | test acc | Δ vs full pts [95 % CI] | wall s | "
             "step s (interleaved) | step speed × full |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, r in results["rows"].items():
        lines.append(f"| {name} | {r['setting']} | {r['trainable_params']:,} | {100 * r['trainable_params'] / r['base_params']:.2f} "
                     f"| {r['test_accuracy']:.4f} | {r.get('delta_vs_full', '-')} | {r['wall_seconds']} "
                     f"| {r['step_seconds']} | {r['step_speed_vs_full']} |")
    ada = results["rows"]["adalora 12->4"]
    lines += ["", f"AdaLoRA ranks: {ada['ranks_initial_total']} -> {ada['ranks_final_total']} in total, "
                  f"per layer {ada['ranks_final_min']}..{ada['ranks_final_max']}, {ada['ranks_changed']} layers changed."]
    lines += ["", "Every run (the chosen one per method is the best validation accuracy):", "",
              "| method | setting | validation acc | test acc | wall s |", "|---|---|---:|---:|---:|"]
    for name, runs in results["runs"].items():
        lines += [f"| {name} | {r['setting']} | {r['validation_accuracy']:.4f} | {r['test_accuracy']:.4f} | "
                  f"{r['wall_seconds']} |" for r in runs]
    (out / "peft.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
