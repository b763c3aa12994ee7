"""Float vs int8 dynamic (torchao) on the fine-tuned sentiment model, measured side by side in one run.

    python benchmarks/int8.py [--model runs/demo/sentiment-fp32] [--repeats 20] [--threads N]

Without --model it uses the demo's fine-tuned model (run `make demo` first). Prints accuracy on the
movie-snippets test split and throughput/latency ratios versus the float model; writes a report.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import leanlm
from leanlm.bench.measure import BenchConfig, benchmark
from leanlm.bench.timing import set_threads
from leanlm.bench.report import write_report
from leanlm.compress.quantize.int8_dynamic import Int8Dynamic
from leanlm.runtime.torch_compile import compile_model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="runs/demo/sentiment-fp32", help="fine-tuned classifier directory")
    ap.add_argument("--dataset", default="movie-snippets")
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile row")
    ap.add_argument("--out", default="reports/int8")
    args = ap.parse_args()
    if not Path(args.model).exists():
        raise SystemExit(f"{args.model} not found: run `make demo` (or leanlm finetune) first")
    if args.threads:
        set_threads(args.threads)
    fp32 = leanlm.load(args.model)
    int8 = leanlm.quantize(fp32, Int8Dynamic())
    models = {"fp32 eager": fp32, "int8-dynamic eager": int8}
    if not args.no_compile:
        models["fp32 compiled"] = compile_model(fp32)
        models["int8-dynamic compiled"] = compile_model(int8)
    res = benchmark(models, data=args.dataset, config=BenchConfig(repeats=args.repeats, threads=args.threads),
                    reference="fp32 eager")
    res.print()
    for name in models:
        r = res.row(name)
        print(f"{name:24s} throughput x{r['throughput_ratio']:.2f}  latency x{r['latency_ratio']:.2f}  "
              f"accuracy {r['accuracy']:.4f} ({r['accuracy_delta_pts']:+.2f} pt)")
    paths = write_report(res, args.out, title="float vs int8 dynamic (torchao), MiniLM-L6 sentiment")
    print("report:", paths.get("html"))


if __name__ == "__main__":
    main()
