"""Optimize benchmark: `leanlm.optimize` on the fine-tuned MiniLM sentiment model, then the same-run verdict.

Runs the search (1-point validation accuracy budget, throughput target at batch 32 x 128, at most
60 minutes on 2 cores by default), which ends with ONE interleaved timing run of the frontier
models, the float baseline and the peer conversions of the same float model (OpenVINO bf16 from
PyTorch, OpenVINO + NNCF int8 at NNCF's defaults, ONNX Runtime dynamic int8; static shapes where
our OpenVINO rows use them), at batch 32 x 128 and on the real test texts in their order with
per-batch padding; the test split is scored there, once. It prints the frontier and those ratios;
the last line is the verdict with the numbers:

    target: the recommended model >= 2x the batch-32 throughput of the fastest peer (today
    OpenVINO + NNCF int8) at <= 1 point test-accuracy loss, and >= 2x it on the real traffic too.

Re-running the same command resumes the search (its journal is in OUT/search-<key>/).

Usage:
    python benchmarks/optimize.py --model runs/demo/sentiment-fp32 --out runs/optimize
    python benchmarks/optimize.py --tiny --budget-minutes 2 --out /tmp/opt-smoke      # smoke run, no numbers
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

TARGET_X = 2.0  # times the fastest peer's throughput
MAX_LOSS = 1.0  # test accuracy points


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="the fine-tuned float classifier directory, e.g. runs/demo/sentiment-fp32")
    p.add_argument("--tiny", action="store_true", help="smoke run on a tiny random classifier (no meaningful numbers)")
    p.add_argument("--data", default="movie-snippets")
    p.add_argument("--out", default="runs/optimize")
    p.add_argument("--budget-minutes", type=float, default=60.0)
    p.add_argument("--max-accuracy-drop", type=float, default=MAX_LOSS)
    p.add_argument("--shape", default="32x128")
    p.add_argument("--threads", type=int, default=None, help="threads (default: all cores)")
    p.add_argument("--ray", default=None, help="'local' or a Ray address: build candidates as Ray tasks")
    p.add_argument("--trials", type=int, default=0)
    p.add_argument("--unlabeled", default="imdb,amazon,tweets",
                   help="datasets whose texts distillation may add (the teacher labels them); 'none' for none")
    p.add_argument("--distill-epochs", type=int, default=2)
    args = p.parse_args(argv)
    if not args.model and not args.tiny:
        p.error("give --model DIR (the fine-tuned classifier) or --tiny for a smoke run")
    return args


def ratios(final: Any, name: str) -> dict[str, Any]:
    """The recommended row's same-run ratios against the baseline and the fastest peer."""
    r = final.row(name)
    peers = [x for x in final.rows if x["name"].startswith("peer:") and x.get("throughput_seq_s")]
    fp = max(peers, key=lambda x: x["throughput_seq_s"]) if peers else None
    out = {"row": r, "peer": fp, "x_peer": None, "x_peer_traffic": None}
    if fp:
        out["x_peer"] = r["throughput_seq_s"] / fp["throughput_seq_s"]
        if r.get("traffic_texts_s") and fp.get("traffic_texts_s"):
            out["x_peer_traffic"] = r["traffic_texts_s"] / fp["traffic_texts_s"]
    return out


def verdict(res: Any, max_loss: float) -> str:
    if res.recommended is None:
        return f"verdict: NOT MET, no recommended model: {res.message}"
    name = next(r["name"] for r in res.final.rows if r["name"].startswith(f"trial {res.recommended_trial}:"))
    x = ratios(res.final, name)
    r, acc = x["row"], x["row"].get("accuracy_delta_pts")
    acc_ok = acc is not None and acc >= -max_loss
    speed_ok = x["x_peer"] is not None and x["x_peer"] >= TARGET_X
    traffic_ok = x["x_peer_traffic"] is not None and x["x_peer_traffic"] >= TARGET_X
    met = acc_ok and speed_ok and traffic_ok
    peer = x["peer"]["name"][6:] if x["peer"] else "no peer"
    fmt = lambda v: "n/a" if v is None else f"x{v:.2f}"  # noqa: E731
    ci = (f" [{r['accuracy_delta_low']:+.2f}, {r['accuracy_delta_high']:+.2f}]" if r.get("accuracy_delta_low") is not None else "")
    return (f"verdict: {'MET' if met else 'NOT MET'}: {name.split(':')[0]} is {fmt(x['x_peer'])} the batch-32 throughput of "
            f"the fastest peer ({peer}; target x{TARGET_X:g}), {fmt(x['x_peer_traffic'])} it on the real test texts, "
            f"{fmt(r.get('throughput_ratio'))} float PyTorch, test accuracy "
            f"{'n/a' if acc is None else f'{acc:+.2f}'} pts{ci} (budget -{max_loss:g})")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import leanlm
    from leanlm.errors import LeanlmError
    from leanlm.optimize.search import OptimizeConfig

    out = Path(args.out)
    model = args.model
    extra: dict[str, Any] = {}
    if args.tiny:
        from leanlm.models.tiny import tiny_encoder

        model = out / "tiny-clf"
        if not (model / "leanlm.json").exists():
            tiny_encoder("sequence-classification").save(model)
        extra = dict(methods=("int8-dynamic", "heads", "layers"), eval_limit=64, test_limit=64, repeats=2,
                     throughput_repeats=1, final_repeats=1, calibration_size=32, bootstrap=200)
    config = OptimizeConfig(data=args.data, max_accuracy_drop=args.max_accuracy_drop, target="throughput",
                            shape=args.shape, budget_minutes=args.budget_minutes, ray=args.ray, trials=args.trials,
                            threads=(args.threads,) if args.threads else (), distill_epochs=args.distill_epochs,
                            unlabeled=() if args.tiny or args.unlabeled == "none" else
                            tuple(u for u in args.unlabeled.split(",") if u), **extra)
    try:
        res = leanlm.optimize(model, out, config)
    except LeanlmError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    lines = [f"frontier (validation-selected): trials {res.frontier}"]
    if res.final is not None:
        lines += ["same-run measurement (test split, one interleaved run):", res.final.markdown()]
    lines += [res.message, f"report: {res.report.get('html')}", verdict(res, args.max_accuracy_drop)]
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
