"""Embedding fidelity of each quantization method on the bundled MiniLM-L6 (all-MiniLM-L6-v2).

For N real sentences (movie-snippets test split) it embeds with the float model and with each
quantized model (same run, same inputs) and prints:
  cos      mean (and min) cosine between float and quantized sentence embeddings
  sim-rho  Spearman correlation x100 between the float and quantized pairwise-similarity
           matrices (how well the quantized model preserves the ranking of similarities)
With --layers it also prints per-layer sensitivity of int8-dynamic (each linear quantized alone).

    python benchmarks/quantize_fidelity.py                       # all methods, 300 sentences
    python benchmarks/quantize_fidelity.py --only int8-dynamic,smoothquant --layers
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sentences", type=int, default=300)
    ap.add_argument("--calibration", type=int, default=128)
    ap.add_argument("--only", default="", help="comma-separated method labels")
    ap.add_argument("--layers", action="store_true", help="per-layer int8-dynamic sensitivity")
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    import leanlm
    from leanlm.compress.quantize import eligible_linears
    from leanlm.compress.quantize.gptq import GPTQ
    from leanlm.compress.quantize.half import Half
    from leanlm.compress.quantize.int8_dynamic import Int8Dynamic
    from leanlm.compress.quantize.mixed import MixedPrecision
    from leanlm.compress.quantize.smoothquant import SmoothQuant
    from leanlm.compress.quantize.weight_only import Int4WeightOnly, Int8WeightOnly
    from leanlm.data import load_splits
    from scipy.stats import spearmanr

    splits = load_splits("movie-snippets")
    texts, cal = splits.test.texts[: args.sentences], splits.train.texts[: args.calibration]
    base = leanlm.load("minilm-l6", task="feature-extraction")
    E0 = leanlm.embed(base, texts, batch_size=64)
    iu = np.triu_indices(len(texts), 1)
    S0 = (E0 @ E0.T)[iu]

    def fidelity(m) -> str:
        E = leanlm.embed(m, texts, batch_size=64)
        c = (E * E0).sum(1)
        rho = spearmanr(S0, (E @ E.T)[iu]).correlation
        return f"cos {c.mean():.5f} (min {c.min():.4f})  1-cos {1 - c.mean():.2e}  sim-rho {100 * rho:6.2f}"

    methods = {
        "int8-dynamic": Int8Dynamic(),
        "int8-dynamic skip value": Int8Dynamic(skip=Int8Dynamic().skip + ("value",)),
        "smoothquant": SmoothQuant(),
        "mixed (int8-dynamic, 1e-3)": MixedPrecision(max_divergence=1e-3),
        "mixed (smoothquant, 5e-4)": MixedPrecision(base=SmoothQuant(fold=False), max_divergence=5e-4),
        "int8-weight-only": Int8WeightOnly(),
        "int4-weight-only g32": Int4WeightOnly(group_size=32),
        "gptq g32": GPTQ(group_size=32),
        "half bf16": Half("bf16"),
    }
    only = [s.strip() for s in args.only.split(",") if s.strip()]
    for label, cfg in methods.items():
        if only and not any(o == label or o == cfg.name for o in only):
            continue
        t = time.perf_counter()
        m = leanlm.quantize(base, cfg, calibration=cal)
        extra = m.record.extra.get(cfg.name, {})
        note = f"  float layers: {extra['float_layers']}" if "float_layers" in extra else ""
        print(f"{label:28s} {fidelity(m)}  [{time.perf_counter() - t:.0f}s]{note}", flush=True)

    if args.layers:
        from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_ as ao_quantize_

        print("\nper-layer int8-dynamic sensitivity (1 - mean cos with only that layer quantized):")
        for name in eligible_linears(base.module):
            m = base.clone()
            ao_quantize_(m.module, Int8DynamicActivationInt8WeightConfig(), filter_fn=lambda mod, fqn: fqn == name)
            E = leanlm.embed(m, texts, batch_size=64)
            print(f"  {name:45s} {1 - float((E * E0).sum(1).mean()):.2e}", flush=True)


if __name__ == "__main__":
    main()
