"""A FLOAT decoder reference: pre-train a small Llama on WikiText-2, then measure int8/int4 against it.

Why: the bundled SmolLM2-135M is dequantized from a Q4_1 GGUF, so its "float" weights already
sit on a 4-bit grid and int4 (group 32) lands back on it: KL / top-1 vs that "float" flatter
our quantizers (issue 12). No registry package ships float weights of a small Llama/GPT decoder
(searched: none found), so leanlm pre-trains its own float reference here.

What it does (one run, 1 thread so the machine stays usable for others):
  1. pre-trains a Llama (default 4 layers x 384, GQA 6/2 heads, SwiGLU 1152, tied embeddings,
     SmolLM2's tokenizer, fp32 weights, bf16 autocast) on WikiText-2 train articles with
     `leanlm.train.causal_lm` (held-out: the first WikiText-2 valid articles), saved to
     runs/float-decoder/ (a normal model directory: use it as `--reference DIR`);
  2. quantizes it with leanlm's decoder weight-only methods (int8 per channel, int4 group 32 and
     64; lm_head / tied embedding stays float, the methods' default) and reports KL(float || q),
     top-1 agreement and perplexity on WikiText-2 test (`leanlm.bench.lm.compare`);
  3. for contrast, the same methods on SmolLM2-135M against its own dequantized-Q4_1 "float";
  4. writes reports/float-decoder/results.json and report.md; every table names its reference.

    python benchmarks/float_decoder.py                 # train (~20 min on 1 thread) + tables
    python benchmarks/float_decoder.py --reuse         # tables only, from runs/float-decoder/
"""
from __future__ import annotations

import argparse
import json
import re
import time
from pathlib import Path

import torch

REFERENCE_NAME = "leanlm-pretrained float Llama (WikiText-2)"
SMOL_REFERENCE = "SmolLM2-135M dequantized from its Q4_1 GGUF (not a float model)"


def articles(text: str) -> list[str]:
    """WikiText-2 raw text split into articles at their ' = Title = ' heading lines."""
    docs, cur = [], []
    for line in text.splitlines():
        if re.match(r"^ = [^=].* = $", line) and cur:
            docs.append("\n".join(cur).strip())
            cur = []
        cur.append(line)
    if cur:
        docs.append("\n".join(cur).strip())
    return [d for d in docs if d]


def variants():
    from leanlm.compress.quantize.weight_only import Int4WeightOnly, Int8WeightOnly

    return {"int8-wo (per channel)": Int8WeightOnly(), "int4-wo g32": Int4WeightOnly(group_size=32),
            "int4-wo g64": Int4WeightOnly(group_size=64)}


def quality(base, tokens: int, window: int, stride: int) -> list[dict]:
    import leanlm
    from leanlm.bench.lm import compare

    rows = []
    for name, cfg in variants().items():
        q = leanlm.quantize(base, cfg)
        r = compare(q, base, tokens=tokens, window=window, stride=stride)
        rows.append({"variant": name, "config": cfg.to_dict(), **r})
        print(f"  {name:22s} KLD {r['kld']:.4f}  top-1 {100 * r['top1']:.1f}%  ppl {r['perplexity']:.2f} "
              f"(float {r['reference_perplexity']:.2f})", flush=True)
    return rows


def table(rows: list[dict], reference: str) -> str:
    lines = [f"reference = {reference}", "",
             "| variant | KL(ref ‖ q) nats/token [95% CI] | top-1 agreement [95% CI] | perplexity | reference perplexity |",
             "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['variant']} | {r['kld']:.4f} [{r['kld_ci'][0]:.4f}, {r['kld_ci'][1]:.4f}] | "
                     f"{100 * r['top1']:.1f}% [{100 * r['top1_ci'][0]:.1f}, {100 * r['top1_ci'][1]:.1f}] | "
                     f"{r['perplexity']:.2f} | {r['reference_perplexity']:.2f} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out-model", default="runs/float-decoder")
    ap.add_argument("--out", default="reports/float-decoder")
    ap.add_argument("--reuse", action="store_true", help="skip training; use the model already in --out-model")
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--hidden", type=int, default=384)
    ap.add_argument("--heads", type=int, default=6)
    ap.add_argument("--kv-heads", type=int, default=2)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--steps", type=int, default=200, help="optimizer steps (~20 min at 1 thread on a busy 2-core box)")
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--heldout-articles", type=int, default=2, help="WikiText-2 valid articles for held-out loss")
    ap.add_argument("--tokens", type=int, default=4096, help="WikiText-2 test tokens scored per comparison")
    ap.add_argument("--no-smollm2", action="store_true", help="skip the SmolLM2 contrast table")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    import leanlm
    from leanlm.data.registry import load_text
    from leanlm.models.registry import BUNDLED
    from leanlm.train.causal_lm import CausalLm
    from leanlm.train.pretrain import pretrain
    from leanlm.train.loop import LoopConfig, bf16_supported

    results: dict = {"reference": REFERENCE_NAME, "threads": args.threads}
    if not args.reuse:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(BUNDLED["smollm2-135m"].resolve())
        train = articles(load_text("wikitext-2", "train"))
        heldout = articles(load_text("wikitext-2", "valid"))[: args.heldout_articles]
        cfg = CausalLm(layers=args.layers, hidden=args.hidden, heads=args.heads, kv_heads=args.kv_heads,
                       max_position=1024, seq_len=args.seq_len, batch_size=args.batch_size)
        loop = LoopConfig(epochs=1, lr=args.lr, warmup_ratio=0.05, max_steps=args.steps, patience=0,
                          eval_every=max(1, args.steps // 4), bf16=bf16_supported(), seed=0,
                          checkpoint_dir=f"{args.out_model}.ckpt", log_dir=f"{args.out_model}.logs")
        print(f"pre-training {cfg.to_dict()} for {args.steps} steps on {len(train)} WikiText-2 articles", flush=True)
        t = time.perf_counter()
        trained = pretrain(cfg, train, args.out_model, tokenizer=tok, loop=loop, overwrite=True, heldout=heldout)
        metrics = dict(trained.record.metrics["pretrain"])
        metrics["wall_seconds"] = round(time.perf_counter() - t, 1)
        print(f"held-out perplexity {metrics['heldout_perplexity_start']:.0f} -> {metrics['heldout_perplexity']:.1f} "
              f"in {metrics['wall_seconds']:.0f} s", flush=True)
        results["pretraining"] = {"config": cfg.to_dict(), "loop": loop.to_dict(), "metrics": metrics,
                                  "tokenizer": "SmolLM2-135M (byte-level BPE, 49152)",
                                  "data": "WikiText-2 raw train articles; held-out = first valid articles"}
    base = leanlm.load(args.out_model)
    results["model"] = {"path": args.out_model, "parameters": sum(p.numel() for p in base.module.parameters()),
                        "heldout": base.record.metrics.get("heldout")}
    window = min(256, base.module.config.max_position_embeddings)
    print(f"\nquality on {args.tokens} WikiText-2 test tokens; reference = {REFERENCE_NAME}", flush=True)
    results["float_reference"] = quality(base, args.tokens, window, window // 2)
    if not args.no_smollm2:
        print(f"\nquality on the same text; reference = {SMOL_REFERENCE}", flush=True)
        results["smollm2"] = quality(leanlm.load("smollm2-135m"), args.tokens, window, window // 2)
        results["smollm2_reference"] = SMOL_REFERENCE

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2))
    pre = results.get("pretraining", {}).get("metrics", {})
    md = [f"# Decoder quantization quality against a float reference", "",
          f"WikiText-2 test, {args.tokens} tokens, sliding window {window} / stride {window // 2}, "
          f"{args.threads} thread(s). Weight-only methods leave lm_head (tied embedding) in float.", "",
          f"## reference = {REFERENCE_NAME}", "",
          f"`{args.out_model}`: {results['model']['parameters'] / 1e6:.1f}M parameters, fp32 weights, "
          f"SmolLM2 tokenizer" + (f"; {int(pre['steps'])} steps x {args.batch_size} x {args.seq_len} = "
                                  f"{int(pre['steps']) * args.batch_size * args.seq_len} tokens seen (of "
                                  f"{int(pre['train_tokens'])} packed), {pre['wall_seconds']:.0f} s, held-out perplexity {pre['heldout_perplexity_start']:.0f} -> "
                                  f"{pre['heldout_perplexity']:.1f}" if pre else "") + ".", "",
          table(results["float_reference"], REFERENCE_NAME), ""]
    if "smollm2" in results:
        md += ["## contrast: reference = " + SMOL_REFERENCE, "",
               "int4 group 32 matches the Q4_1 block grid the weights came from, so these numbers flatter int4.", "",
               table(results["smollm2"], SMOL_REFERENCE), ""]
    (out / "report.md").write_text("\n".join(md))
    print(f"\nwrote {out / 'results.json'} and {out / 'report.md'}")


if __name__ == "__main__":
    main()
