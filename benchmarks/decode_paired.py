"""Paired decode benchmark: our whole-model-compiled decoders and llama.cpp, interleaved round by round.

`benchmarks/decode.py` times each variant in turn; on a VM whose speed drifts by 20-40 % within
minutes, that leaves ratios between rows measured minutes apart. Here every round decodes with each
variant once, back to back, and the medians over rounds are compared, so drift hits all alike.

    python benchmarks/decode_paired.py [--rounds 6] [--new-tokens 32] [--threads N]

Needs llama-cpp-python (`make llamacpp`). Rows: our int8 / int4 fast decoders (compile_scope
"model") and llama.cpp on our own q8_0 / q4_0 GGUF exports of the same model, same prompt.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import leanlm  # noqa: E402
from decode import llama_run, ours, prompt_ids, sample  # noqa: E402
from leanlm.export.gguf import export_gguf  # noqa: E402
from leanlm.generate import GenerationConfig  # noqa: E402
from leanlm.runtime import llamacpp  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--threads", type=int, default=None, help="default: all cores")
    args = ap.parse_args()
    if not llamacpp.available():
        raise SystemExit("llama-cpp-python is not installed: run `make llamacpp` first")
    threads = args.threads or os.cpu_count() or 1
    torch.set_num_threads(threads)
    lm = leanlm.load(args.model)
    ids = prompt_ids(lm.tokenizer, 128)
    tmp = Path(tempfile.mkdtemp(prefix="leanlm-paired-"))
    runs = {
        "ours int8 (whole)": ours(lm, ids, GenerationConfig(fast=True, dtype="bfloat16", weights="int8",
                                                             compile_scope="model")),
        "ours int4 (whole)": ours(lm, ids, GenerationConfig(fast=True, dtype="bfloat16", weights="int4",
                                                             compile_scope="model")),
        "llama.cpp q8_0": llama_run(export_gguf(lm, tmp / "q8_0.gguf", "q8_0"), ids, threads),
        "llama.cpp q4_0": llama_run(export_gguf(lm, tmp / "q4_0.gguf", "q4_0"), ids, threads),
    }
    for run in runs.values():  # warm-up (and compile)
        run(8)
    ms: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(args.rounds):
        for name, run in runs.items():
            ms[name].append(sample(run, args.new_tokens + 1)["decode_ms"])
    med = {k: sorted(v)[len(v) // 2] for k, v in ms.items()}
    print(f"{args.model}, {threads} threads, {args.rounds} interleaved rounds of {args.new_tokens} tokens")
    for name, v in med.items():
        print(f"  {name:18s} {v:6.2f} ms/token   rounds: {' '.join(f'{x:.1f}' for x in sorted(ms[name]))}")
    print(f"ours int8 vs llama.cpp q8_0: {med['llama.cpp q8_0'] / med['ours int8 (whole)']:.2f}x   "
          f"ours int4 vs llama.cpp q4_0: {med['llama.cpp q4_0'] / med['ours int4 (whole)']:.2f}x  (>1 = we are faster)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
