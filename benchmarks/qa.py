"""Extractive QA numbers: fine-tune MiniLM-L6 on the squad train articles, then EM/F1 on the test
articles for float PyTorch, int8 on OpenVINO (int8-nncf) and ONNX Runtime dynamic int8.

Reads ../shared/data/squad-v1.1-dev.json when present (the same file the `squad` dataset fetches),
else the registry's `squad`. One thread (other people share this machine): accuracy only, no speed
claims. Writes reports/qa/results.json and reports/qa/report.md; the model to runs/qa/minilm-squad.

    python benchmarks/qa.py --train-size 2400 --max-length 192
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("LEANLM_THREADS", "1")  # ONNX Runtime and OpenVINO sessions: one thread too

import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's leanlm, not an installed one
SHARED = ROOT.parent / "shared" / "data" / "squad-v1.1-dev.json"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="minilm-l6")
    ap.add_argument("--train-size", type=int, default=2400, help="training questions used (0 = all train articles)")
    ap.add_argument("--eval-size", type=int, default=200, help="validation questions per validation")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--max-length", type=int, default=192)
    ap.add_argument("--stride", type=int, default=64)
    ap.add_argument("--test-size", type=int, default=0, help="test questions scored (0 = all test articles; for smoke runs)")
    ap.add_argument("--calibration", type=int, default=256, help="int8-nncf calibration texts (train split)")
    ap.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=True, help="bf16 autocast training")
    ap.add_argument("--out", type=Path, default=ROOT / "reports" / "qa")
    ap.add_argument("--model-out", type=Path, default=ROOT / "runs" / "qa" / "minilm-squad")
    args = ap.parse_args()
    torch.set_num_threads(1)

    import leanlm
    from leanlm.compress.quantize import QuantContext
    from leanlm.compress.quantize.int8_dynamic import Int8Dynamic
    from leanlm.compress.quantize.nncf_static import Int8Nncf
    from leanlm.data import load_splits
    from leanlm.data.qa import evaluate_answers
    from leanlm.train.loop import LoopConfig
    from leanlm.train.qa import QAFinetuneConfig

    data = str(SHARED) if SHARED.exists() else "squad"
    splits = load_splits(data, seed=0)
    print(f"data: {data} -> {splits.describe()}", file=sys.stderr)
    cfg = QAFinetuneConfig(loop=LoopConfig(epochs=args.epochs, lr=args.lr, bf16=args.bf16, patience=0),
                           batch_size=args.batch_size, max_length=args.max_length, stride=args.stride,
                           train_size=args.train_size, eval_size=args.eval_size)
    t0 = time.perf_counter()
    if args.model_out.exists():  # a re-run measures the same fine-tuned model
        model = leanlm.load(args.model_out)
    else:
        model = leanlm.finetune(args.model, splits, cfg, output=args.model_out)
    train_s = time.perf_counter() - t0
    decode = dict(max_length=args.max_length, stride=args.stride, batch_size=32)
    calibration = splits.train.texts[: args.calibration]
    test = splits.test.head(args.test_size) if args.test_size else splits.test
    rows = []

    def row(name: str, m, seconds_build: float) -> None:
        t = time.perf_counter()
        res = evaluate_answers(m, test.examples, **decode)
        rows.append({"name": name, "backend": m.backend, "exact_match": round(res["exact_match"], 2),
                     "f1": round(res["f1"], 2), "n": res["n"], "build_s": round(seconds_build, 1),
                     "eval_s": round(time.perf_counter() - t, 1), "examples": res["examples"][:3]})
        print(f"{name}: EM {res['exact_match']:.2f} F1 {res['f1']:.2f} (n={res['n']})", file=sys.stderr)

    row("float (PyTorch fp32)", model, 0.0)
    t = time.perf_counter()
    nncf = leanlm.quantize(model, Int8Nncf(), QuantContext(calibration=calibration, max_length=args.max_length))
    row("int8-nncf (OpenVINO)", nncf, time.perf_counter() - t)
    t = time.perf_counter()
    ort = leanlm.quantize(model, Int8Dynamic(backend="onnxruntime"))
    row("int8-dynamic (ONNX Runtime)", ort, time.perf_counter() - t)
    base = rows[0]["f1"]
    for r in rows:
        r["delta_f1"] = round(r["f1"] - base, 2)
    gap = rows[1]["delta_f1"]
    verdict = f"int8 OpenVINO within 1 F1 of float: {'MET' if abs(gap) <= 1.0 else 'NOT MET'} ({gap:+.2f} F1)"
    result = {"model": args.model, "data": data, "split": splits.describe(), "config": cfg.to_dict(),
              "training": (model.record.training or {}).get("result", {}), "train_s": round(train_s, 1),
              "validation_f1": model.record.metrics.get("validation", {}).get("f1"), "threads": 1,
              "rows": rows, "verdict": verdict}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(result, indent=2))
    lines = [f"# Extractive QA: {args.model} fine-tuned on squad train articles", "",
             f"Data: {Path(data).name}, split by article (seed 0): {splits.describe()['train_articles']} train / "
             f"{splits.describe()['validation_articles']} validation / {splits.describe()['test_articles']} test articles; "
             f"trained on {args.train_size or len(splits.train)} questions, {args.epochs} epoch(s), max_length "
             f"{args.max_length}, stride {args.stride}, bf16={args.bf16}, 1 thread. Accuracy only (no timing claims).", "",
             "| model | backend | EM | F1 | ΔF1 vs float | n |", "|---|---|---:|---:|---:|---:|"]
    lines += [f"| {r['name']} | {r['backend']} | {r['exact_match']:.2f} | {r['f1']:.2f} | {r['delta_f1']:+.2f} | {r['n']} |"
              for r in rows]
    lines += ["", f"**{verdict}**", ""]
    (args.out / "report.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
