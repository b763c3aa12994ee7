"""Weight-only quantization of SmolLM2-135M: quality (GPTQ vs round-to-nearest) and eager decode speed.

Same run, same inputs for every variant:
  quality  KL(float || quantized) per token, top-1 agreement and perplexity on WikiText-2 test
           (`leanlm.bench.lm.compare`); note the "float" model is SmolLM2's Q4_1 GGUF dequantized,
  speed    eager per-token decode time (HF module + DynamicCache, batch 1, after a short prompt),
           median of --steps tokens, as a ratio to float measured in this run.
GPTQ calibrates on WikiText-2 *train* paragraphs (no overlap with the test text).

    python benchmarks/quantize_decoder.py                         # float, int8/int4 RTN, GPTQ
    python benchmarks/quantize_decoder.py --only float,int4-wo --tokens 0   # speed only
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch


def decode_ms(model, prompt: str, steps: int) -> float:
    ids = model.encode([prompt])["input_ids"]
    times = []
    with torch.inference_mode():
        out = model.module(input_ids=ids, use_cache=True)
        cache, nxt = out.past_key_values, out.logits[:, -1:].argmax(-1)
        for _ in range(steps + 3):
            t = time.perf_counter()
            out = model.module(input_ids=nxt, past_key_values=cache, use_cache=True)
            times.append(time.perf_counter() - t)
            cache, nxt = out.past_key_values, out.logits[:, -1:].argmax(-1)
    return 1e3 * statistics.median(times[3:])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default="", help="comma-separated variant names")
    ap.add_argument("--tokens", type=int, default=2048, help="WikiText-2 test tokens scored (0: skip quality)")
    ap.add_argument("--calibration", type=int, default=64, help="GPTQ calibration paragraphs")
    ap.add_argument("--steps", type=int, default=32, help="decode steps timed per round")
    ap.add_argument("--rounds", type=int, default=3, help="timing rounds (interleaved; best median kept)")
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    import leanlm
    from leanlm.bench.lm import compare
    from leanlm.compress.quantize.cli import calibration_texts
    from leanlm.compress.quantize.gptq import GPTQ
    from leanlm.compress.quantize.half import Half
    from leanlm.compress.quantize.weight_only import Int4WeightOnly, Int8WeightOnly

    base = leanlm.load("smollm2-135m")
    cal = calibration_texts("wikitext-2", args.calibration)
    variants = {
        "float": None,
        "bf16": Half("bf16"),
        "int8-wo": Int8WeightOnly(),
        "int4-wo g64 (RTN)": Int4WeightOnly(group_size=64),
        "int4-wo g64 +lm_head": Int4WeightOnly(group_size=64, skip=("classifier", "score", "pooler")),
        "gptq g64": GPTQ(group_size=64, calibration_size=args.calibration),
        "gptq g64 act-order": GPTQ(group_size=64, act_order=True, calibration_size=args.calibration),
    }
    only = {s.strip() for s in args.only.split(",") if s.strip()}
    models = {}
    for name, cfg in variants.items():
        if only and name not in only and (cfg is None or cfg.name not in only):
            continue
        t = time.perf_counter()
        models[name] = base if cfg is None else leanlm.quantize(base, cfg, calibration=cal)
        note = ""
        if cfg is not None and cfg.name == "gptq":
            note = f"  hessian error vs RTN {models[name].record.extra['gptq']['hessian_error_vs_rtn']}"
        print(f"prepared {name:22s} in {time.perf_counter() - t:6.1f}s{note}", flush=True)

    if args.tokens:
        print(f"\nquality on {args.tokens} WikiText-2 test tokens (vs float):")
        for name, m in models.items():
            if m is base:
                continue
            r = compare(m, base, tokens=args.tokens, window=512, stride=256)
            print(f"  {name:22s} KLD {r['kld']:.4f}  top-1 {100 * r['top1']:.1f}%  "
                  f"ppl {r['perplexity']:.2f} (float {r['reference_perplexity']:.2f})", flush=True)

    prompt = ("The history of the city begins in the early middle ages, when a small settlement grew "
              "around the river crossing and the market that formed there")
    best = {name: float("inf") for name in models}
    for _ in range(args.rounds):  # interleaved rounds: a noisy neighbour hits every variant alike
        for name, m in models.items():
            best[name] = min(best[name], decode_ms(m, prompt, args.steps))
    ref = best.get("float")
    print(f"\neager decode, batch 1, {torch.get_num_threads()} threads (best of {args.rounds} medians):")
    for name, ms in best.items():
        ratio = f"  {ref / ms:.2f}x vs float" if ref else ""
        print(f"  {name:22s} {ms:7.1f} ms/token{ratio}")


if __name__ == "__main__":
    main()
