"""Quantization benchmark: every registered method against float PyTorch and the peers a user would pick.

One run, one table. Rows: float PyTorch eager (the baseline), the peers (ONNX Runtime dynamic
int8 via `onnxruntime.quantization` on the fused graph with ORT's defaults, and OpenVINO bf16),
then every registered quantization method with its default options (the registry is iterated,
so new methods appear automatically) plus a few backend variants. Columns: accuracy delta on
the classifier's test split, mean cosine of MiniLM sentence embeddings vs float, throughput
(batch 32 x 128 tokens) and latency (batch 1 x 128) as ratios vs float PyTorch and vs the
fastest peer, artifact size and peak memory. All speed figures come from one interleaved timing
run (leanlm.bench.measure.benchmark), so load drift on a shared machine hits every row alike.

Usage:
    python benchmarks/quantize.py --model runs/sentiment              # a fine-tuned classifier
    python benchmarks/quantize.py --methods int8-static,half --no-memory --repeats 5
    python benchmarks/quantize.py --variant 'int8-static:{"range_method": "entropy"}' --out reports/quant

Without --model the bundled MiniLM gets an untrained classification head: speed and fidelity
are meaningful, accuracy deltas are not.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

from _peers import PEER_ORT, ort_dynamic_peer  # benchmarks/ is on sys.path when a script runs

PEER_OV = "peer: OpenVINO bf16"  # via ONNX (convert); compress.py's OpenVINO peer converts straight from PyTorch
BASELINE = "float PyTorch eager"
# Backend variants worth a row besides each method's defaults (the registry gives one row per method).
VARIANTS = [
    ("int8-dynamic", {"backend": "onnxruntime"}),
    ("int8-static", {"backend": "onnxruntime"}),
    ("int8-static", {"attention_products": True}),
]
TARGET_SPEEDUP, TARGET_ACC_LOSS = 4.0, 0.5


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="fine-tuned sequence-classification model directory (default: untrained head)")
    p.add_argument("--data", default="movie-snippets", help="dataset for accuracy, calibration and timing texts")
    p.add_argument("--methods", default="all", help="comma-separated registered methods, or 'all' / 'none'")
    p.add_argument("--variant", action="append", default=[], metavar="NAME:JSON",
                   help="extra config, e.g. 'int8-static:{\"calibration\": \"entropy\"}' (repeatable)")
    p.add_argument("--no-variants", action="store_true", help="skip the built-in backend variants")
    p.add_argument("--no-peers", action="store_true", help="skip the ONNX Runtime / OpenVINO peers")
    p.add_argument("--compile", action="store_true", help="also time torch-backend results under torch.compile")
    p.add_argument("--ov-static", action="store_true",
                   help="also time every OpenVINO row with static shapes (b1 and b32 x 128), peer included")
    p.add_argument("--no-embedding", action="store_true", help="skip the MiniLM embedding-fidelity pass")
    p.add_argument("--calibration", type=int, default=256, help="calibration texts from the training split")
    p.add_argument("--eval-limit", type=int, default=None, help="evaluate accuracy on at most N test texts")
    p.add_argument("--fidelity-texts", type=int, default=256)
    p.add_argument("--repeats", type=int, default=10, help="timed batch-1 calls per model")
    p.add_argument("--throughput-repeats", type=int, default=5, help="timed batch-32 calls per model")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=None, help="threads for every runtime (default: all cores)")
    p.add_argument("--no-memory", action="store_true", help="skip peak-memory child processes")
    p.add_argument("--out", help="write results.json + report.md/html here (leanlm.bench.report)")
    return p.parse_args(argv)


def configs(args: argparse.Namespace) -> list[tuple[str, Any]]:
    """(row name, config) for every selected registered method (defaults) and variant."""
    from leanlm.compress.quantize import config_class, method_names

    names = method_names() if args.methods == "all" else [] if args.methods == "none" else \
        [m.strip() for m in args.methods.split(",") if m.strip()]
    out = [(n, config_class(n)()) for n in names]
    extra = [] if args.no_variants else [v for v in VARIANTS if args.methods == "all" or v[0] in names]
    for spec in args.variant:
        name, _, js = spec.partition(":")
        extra.append((name.strip(), json.loads(js or "{}")))
    for name, opts in extra:
        cfg = config_class(name).from_dict(dict(opts))
        label = name + " (" + ", ".join(f"{k}={v}" for k, v in opts.items()) + ")"
        out.append((label, cfg))
    return out


def build(base: Any, items: list[tuple[str, Any]], calibration: list[str], peers: bool, compile_: bool,
          log: Any, ov_static: bool = False) -> tuple[dict[str, Any], dict[str, str], dict[str, float]]:
    """Quantize `base` with every config; returns (name -> model, name -> skip reason, name -> build s)."""
    from leanlm.compress.quantize import QuantContext, quantize
    from leanlm.errors import LeanlmError
    from leanlm.runtime.convert import convert

    models: dict[str, Any] = {BASELINE: base}
    skipped: dict[str, str] = {}
    seconds: dict[str, float] = {}
    makers: list[tuple[str, Any]] = []
    if peers:
        makers += [(PEER_ORT, lambda: ort_dynamic_peer(base)), (PEER_OV, lambda: convert(base, "openvino", "bf16"))]
    for name, cfg in items:
        makers.append((name, lambda cfg=cfg: quantize(base, cfg, QuantContext(calibration=calibration))))
    for name, make in makers:
        t0 = time.perf_counter()
        try:
            models[name] = make()
        except LeanlmError as e:
            skipped[name] = str(e)
            log(f"  skip {name}: {e}")
            continue
        seconds[name] = time.perf_counter() - t0
        log(f"  built {name} in {seconds[name]:.0f} s")
        if ov_static and models[name].backend == "openvino":
            from leanlm.runtime.openvino import with_shapes

            models[name + " + static shapes"] = with_shapes(models[name], [(1, 128), (32, 128)])
        if compile_ and models[name].backend == "torch" and name != BASELINE:
            from leanlm.runtime.torch_compile import compile_model

            try:
                models[name + " + compile"] = compile_model(models[name])
            except LeanlmError as e:
                skipped[name + " + compile"] = str(e)
    return models, skipped, seconds


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import leanlm
    from leanlm.bench.evaluate import embedding_fidelity
    from leanlm.bench.measure import BenchConfig, benchmark
    from leanlm.bench.timing import set_threads
    from leanlm.data import load_splits

    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    threads = set_threads(args.threads)  # before any session is built: ORT/OpenVINO read LEANLM_THREADS
    splits = load_splits(args.data, seed=0)
    calibration = list(splits.train.texts[: args.calibration])
    items = configs(args)
    notes = []
    if args.model:
        clf = leanlm.load(args.model)
    else:
        clf = leanlm.load("minilm-l6", labels=splits.train.label_names)
        notes.append("no --model: MiniLM with an UNTRAINED classification head; accuracy deltas are meaningless")
    log(f"building {len(items)} quantized models (+ peers) of {clf.record.base_model} ...")
    models, skipped, seconds = build(clf, items, calibration, not args.no_peers, args.compile, log, args.ov_static)

    bench = BenchConfig(repeats=args.repeats, throughput_repeats=args.throughput_repeats, warmup=args.warmup,
                        threads=threads, memory=not args.no_memory, eval_limit=args.eval_limit)
    log(f"timing {len(models)} models side by side ...")
    res = benchmark(models, data=splits, config=bench, reference=BASELINE)

    fidelity: dict[str, float] = {}
    if not args.no_embedding:
        log("embedding fidelity on the bundled MiniLM ...")
        emb = leanlm.load("minilm-l6", task="feature-extraction")
        texts = list(splits.test.texts[: args.fidelity_texts])
        emb_models, emb_skipped, _ = build(emb, items, calibration, not args.no_peers, False, lambda m: None)
        for name, m in emb_models.items():
            if name != BASELINE:
                fidelity[name] = embedding_fidelity(emb, m, texts)["mean_cosine"]
        fidelity[BASELINE] = 1.0
        for row in res.rows:
            base_name = row["name"].removesuffix(" + compile").removesuffix(" + static shapes")
            if base_name in fidelity:
                row["embedding_mean_cosine"] = fidelity[base_name]

    report(res, skipped, seconds, notes)
    if args.out:
        from leanlm.bench.report import write_report

        res.notes.extend(notes + [f"skipped {k}: {v}" for k, v in skipped.items()])
        paths = write_report(res, args.out, title="leanlm quantization benchmark")
        print(f"report: {paths['markdown']}")
    return 0


def _fmt(v: Any, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def report(res: Any, skipped: dict[str, str], seconds: dict[str, float], notes: list[str]) -> None:
    """Print the table: ratios vs float PyTorch and vs the fastest peer, then the target verdict."""
    rows = res.rows
    peers = [r for r in rows if r["name"].startswith("peer:") and r["throughput_seq_s"]]
    best_tp = max(peers, key=lambda r: r["throughput_seq_s"]) if peers else None
    best_lat = min(peers, key=lambda r: r["latency_ms_p50"]) if peers else None
    head = ["model", "backend", "acc", "Δacc pts", "emb cos", "seq/s b32", "×fp32", "×peer", "ms b1", "×fp32",
            "×peer", "MB", "peak MB", "build s"]
    table = []
    for r in rows:
        tp_peer = r["throughput_seq_s"] / best_tp["throughput_seq_s"] if best_tp and r["throughput_seq_s"] else None
        lat_peer = best_lat["latency_ms_p50"] / r["latency_ms_p50"] if best_lat and r["latency_ms_p50"] else None
        lat_x = 1 / r["latency_ratio"] if r["latency_ratio"] else None  # > 1 = faster
        table.append([r["name"], r["backend"], _fmt(r["accuracy"], ".4f"), _fmt(r["accuracy_delta_pts"], "+.2f"),
                      _fmt(r["embedding_mean_cosine"], ".4f"), _fmt(r["throughput_seq_s"], ".1f"),
                      _fmt(r["throughput_ratio"], ".2f"), _fmt(tp_peer, ".2f"), _fmt(r["latency_ms_p50"], ".1f"),
                      _fmt(lat_x, ".2f"), _fmt(lat_peer, ".2f"),
                      _fmt(r["artifact_bytes"] / 1e6 if r["artifact_bytes"] else None, ".1f"),
                      _fmt(r["peak_rss_mb"], ".0f"), _fmt(seconds.get(r["name"]), ".0f")])
    widths = [max(len(str(x)) for x in col) for col in zip(head, *table)]
    line = lambda cells: "  ".join(str(c).ljust(w) if i < 2 else str(c).rjust(w)  # noqa: E731
                                   for i, (c, w) in enumerate(zip(cells, widths)))
    m = res.machine
    print(f"\nQuantization benchmark: {rows[0]['base_model']}  threads={res.config.get('threads')}  "
          f"load avg {m.get('loadavg_1m')} -> {m.get('loadavg_1m_end')}  ({m.get('cpu', '?')})")
    print("×fp32 / ×peer: speed relative to float PyTorch eager / the fastest peer, same run (>1 = faster);"
          " latency at batch 1, throughput at batch 32, 128 tokens")
    print(line(head))
    print(line(["-" * w for w in widths]))
    for t in table:
        print(line(t))
    for k, v in skipped.items():
        print(f"skipped {k}: {v}")
    for n in notes + list(res.notes):
        print(f"note: {n}")
    # Target: the best quantized configuration within the accuracy budget
    ok = [r for r in rows if r["name"] != BASELINE and not r["name"].startswith("peer:") and r["throughput_ratio"]
          and (r["accuracy_delta_pts"] is None or r["accuracy_delta_pts"] >= -TARGET_ACC_LOSS)]
    if ok:
        best = max(ok, key=lambda r: r["throughput_ratio"])
        vs_peer = best["throughput_seq_s"] / best_tp["throughput_seq_s"] if best_tp else None
        verdict = best["throughput_ratio"] >= TARGET_SPEEDUP and (vs_peer is None or vs_peer >= 1.0)
        print(f"target (>= {TARGET_SPEEDUP}x float PyTorch at b32, >= fastest peer, <= {TARGET_ACC_LOSS} pt accuracy "
              f"loss): best = {best['name']}: {best['throughput_ratio']:.2f}x fp32, "
              f"{_fmt(vs_peer, '.2f')}x {best_tp['name'] if best_tp else 'peer'}, "
              f"Δacc {_fmt(best['accuracy_delta_pts'], '+.2f')} pts -> {'MET' if verdict else 'NOT MET'}")


if __name__ == "__main__":
    sys.exit(main())
