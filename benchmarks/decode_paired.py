"""Paired decode benchmark: leanlm's decoders, the transformers baselines and the same-bits peers, interleaved.

The only source of the README's decoder ratios. On a VM whose speed drifts by 20-40 % within minutes,
every round decodes once with every row, back to back and in a rotated order, and medians over rounds
are compared, so drift hits all rows alike. Rows (batch 1, greedy, EOS ignored, same prompt ids):

  transformers fp32 generate        plain `generate` (stock)
  transformers static+compile       `cache_implementation="static"` + `model.forward = torch.compile(
                                    model.forward, fullgraph=True)` per HF's docs: THE baseline of the ratios
  leanlm int8 / int4                our fast decoder, whole forward compiled (compile_scope="model")
  leanlm OpenVINO int8 / int4       our OpenVINO decoder (branch dec-ov; skipped where absent)
  llama.cpp q8_0/q4_0/q4_1/Q4_K_M   our F32 GGUF quantized by llama.cpp's own quantizer (`make llamacpp`)
  OpenVINO GenAI int8 / int4        LLMPipeline on a stateful IR with NNCF weight compression

Per row: decode ms/token (median and p90 over rounds), tokens/s, prefill ms = time to first token on
the prompt (default 128 tokens), KL divergence and top-1 agreement vs the float reference on
WikiText-2, the ratio vs the static+compile baseline and vs the fastest peer with the same weight
bits. The last line printed is the verdict on the four targets. A peer whose package is missing is
skipped with its reason in the table, never a crash. JSON + Markdown go to reports/decode-paired/.

    python benchmarks/decode_paired.py [--rounds 6] [--tokens 64] [--threads N]
    python benchmarks/decode_paired.py --reference runs/float-decoder   # every row a conversion of it
    python benchmarks/decode_paired.py --tiny --tokens 8 --rounds 1 --no-compile   # smoke run
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _decode_peers as peers  # noqa: E402
import leanlm  # noqa: E402
from compress import markdown  # noqa: E402
from decode import _kld, hf_generate, llama_run, ours, prompt_ids, sample  # noqa: E402
from leanlm.errors import LeanlmError  # noqa: E402
from leanlm.generate import GenerationConfig  # noqa: E402
from leanlm.generate.fast import fast_decoder  # noqa: E402

BASELINE = "transformers static+compile"
LLAMACPP_TYPES = {"q8_0": 8, "q4_0": 4, "q4_1": 4, "Q4_K_M": 4}
TARGETS = {"speed_vs_peer": 1.2, "speed_vs_baseline": 2.0, "kld": {8: 0.01, 4: 0.05}}


@dataclass(frozen=True)
class Settings:
    """How one paired run is done (all rows share it).

    Args:
        prompt_tokens: prompt length (prefill / time to first token is measured on it).
        tokens: new tokens per timed run.
        rounds: interleaved rounds (medians and p90 over them).
        threads: CPU threads for every runtime.
        compile: torch.compile the transformers baseline and leanlm rows (False: a smoke run).
        hf_compile_mode: torch.compile mode of the transformers baseline.
        kld_tokens: WikiText-2 tokens scored for KL / top-1 (0 = skip).
        window: llama.cpp context for scoring (benchmarks/decode.py's KL windows are 512 tokens).

    Example:
        >>> Settings(tokens=8, rounds=1, compile=False, kld_tokens=64)
    """

    prompt_tokens: int = 128
    tokens: int = 64
    rounds: int = 6
    threads: int = 2
    compile: bool = True
    hf_compile_mode: str = "max-autotune-no-cudagraphs"
    kld_tokens: int = 2048
    window: int = 512


@dataclass
class Row:
    name: str
    kind: str  # "baseline" | "leanlm" | "peer"
    bits: int | None  # weight bits (None = float)
    run: Callable[[int], list[int]]  # n -> n greedy token ids after the prompt
    scorer: Callable[[], Any] | None = None  # builds what KL is computed on; None = the reference itself
    info: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)  # per-round extras (GenAI's own TTFT / TPOT)


def hf_static_compile(lm: Any, ids: torch.Tensor, s: Settings) -> Callable[[int], list[int]]:
    """transformers `generate` with a static cache and, if s.compile, its forward torch.compiled (HF's docs).

    One StaticCache sized for the longest run and reset before each: every run then has the same two
    shapes (prompt prefill, 1-token decode), so nothing recompiles after warm-up. On a copy of the
    module: the compiled forward must not leak into the plain `generate` row.
    """
    from transformers import StaticCache

    module = copy.deepcopy(lm.module)
    if s.compile:
        module.forward = torch.compile(module.forward, mode=s.hf_compile_mode, fullgraph=True)
    cache = StaticCache(config=module.config, max_cache_len=ids.numel() + s.tokens + 1)
    x = ids[None].to(lm.device)

    @torch.inference_mode()
    def run(n: int) -> list[int]:
        cache.reset()
        out = module.generate(x, cache=cache, max_new_tokens=n, min_new_tokens=n, do_sample=False,
                              pad_token_id=lm.tokenizer.eos_token_id)
        return out[0, ids.numel():].tolist()

    return run


def _fast_rows(lm: Any, ids: torch.Tensor, s: Settings) -> dict[str, Callable[[], Row]]:
    def make(weights: str, bits: int) -> Callable[[], Row]:
        cfg = GenerationConfig(fast=True, dtype="bfloat16", weights=weights, compile=s.compile, compile_scope="model")
        return lambda: Row(f"leanlm {weights}", "leanlm", bits, ours(lm, ids, cfg),
                           lambda: fast_decoder(lm, dtype="bfloat16", weights=weights, compile=False),
                           {"how": "fast decoder, bf16 compute, whole forward compiled"})

    return {f"leanlm {w}": make(w, b) for w, b in (("int8", 8), ("int4", 4))}


def _leanlm_ov_rows(lm: Any, ids: torch.Tensor, s: Settings) -> dict[str, Callable[[], Row]]:
    def make(weights: str, bits: int) -> Callable[[], Row]:
        def build() -> Row:
            dec = peers.leanlm_ov_decoder()(lm, weights=weights, threads=s.threads)
            cfg = GenerationConfig(stop_on_eos=False)

            def run(n: int) -> list[int]:  # our loop on the one compiled decoder (no per-call compile)
                return dec.generate(ids, cfg.replace(max_new_tokens=n)).token_ids

            return Row(f"leanlm OpenVINO {weights}", "leanlm", bits, run, lambda: peers.ov_ir_logits(dec.model, s.threads),
                       {"how": "leanlm OpenVINO decoder, our loop"})

        return build

    return {f"leanlm OpenVINO {w}": make(w, b) for w, b in (("int8", 8), ("int4", 4))}


def _llamacpp_rows(lm: Any, ids: torch.Tensor, s: Settings, work: Path) -> dict[str, Callable[[], Row]]:
    from leanlm.runtime import llamacpp

    def make(typ: str, bits: int) -> Callable[[], Row]:
        def build() -> Row:
            path = peers.llamacpp_gguf(lm, work, typ, s.threads)
            def scorer() -> Any:
                return llamacpp.LlamaCpp(path, n_ctx=s.window, threads=s.threads, logits_all=True).logits

            return Row(f"llama.cpp {typ}", "peer", bits, llama_run(path, ids, s.threads), scorer,
                       {"how": "F32 GGUF export + llama_model_quantize", "gguf": path.name,
                        "mb": round(path.stat().st_size / 2**20, 1)})

        return build

    return {f"llama.cpp {t}": make(t, b) for t, b in LLAMACPP_TYPES.items()}


def _genai_rows(lm: Any, ids: torch.Tensor, s: Settings, work: Path) -> dict[str, Callable[[], Row]]:
    def make(weights: str, bits: int) -> Callable[[], Row]:
        def build() -> Row:
            ir = peers.genai_ir(lm, work / f"genai-{weights}", weights)
            row = Row(f"OpenVINO GenAI {weights}", "peer", bits, lambda n: [], None,
                      {"how": f"LLMPipeline, NNCF {peers.OV_WEIGHTS[weights]}",
                       "converter": "leanlm.generate.openvino.to_openvino"})
            row.run = peers.genai_run(peers.genai_pipeline(ir, s.threads), ids, row.metrics)
            row.scorer = lambda: peers.ov_ir_logits(ir, s.threads)
            return row

        return build

    return {f"OpenVINO GenAI {w}": make(w, b) for w, b in (("int8", 8), ("int4", 4))}


def row_builders(lm: Any, ids: torch.Tensor, s: Settings, work: Path) -> dict[str, Callable[[], Row]]:
    """Every row of the run, by name, as a builder (built one by one; a failing one is skipped)."""
    builders: dict[str, Callable[[], Row]] = {
        "transformers fp32 generate": lambda: Row("transformers fp32 generate", "baseline", None,
                                                  hf_generate(lm, ids, False), None, {"how": "plain generate"}),
        BASELINE: lambda: Row(BASELINE, "baseline", None, hf_static_compile(lm, ids, s), None,
                              {"how": f"static cache + torch.compile({s.hf_compile_mode}, fullgraph)"
                                      if s.compile else "static cache, compile off"}),
    }
    for group in (_fast_rows(lm, ids, s), _leanlm_ov_rows(lm, ids, s), _llamacpp_rows(lm, ids, s, work),
                  _genai_rows(lm, ids, s, work)):
        builders.update(group)
    return builders


def _reason(e: BaseException) -> str:
    msg = str(e).splitlines()[0] if str(e) else ""
    return msg if isinstance(e, LeanlmError) else f"{type(e).__name__}: {msg}"


def build_rows(builders: dict[str, Callable[[], Row]], s: Settings, only: set[str] = frozenset(),
               log: Callable[[str], None] = print) -> tuple[dict[str, Row], dict[str, str]]:
    """(name -> built and warmed-up row, name -> skip reason). Warm-up (compiles) is timed, not measured."""
    rows: dict[str, Row] = {}
    skipped: dict[str, str] = {}
    for name, build in builders.items():
        if only and name not in only:
            continue
        t0 = time.perf_counter()
        try:
            row = build()
            row.info["build_s"] = round(time.perf_counter() - t0, 1)
            t1 = time.perf_counter()
            sample(row.run, s.tokens)  # compiles / allocates for both lengths timed below
            row.info["warmup_s"] = round(time.perf_counter() - t1, 1)
            row.metrics.clear()
        except Exception as e:  # noqa: BLE001 - a missing or failing peer is a table entry, not a crash
            skipped[name] = _reason(e)
            log(f"  skip {name}: {skipped[name]}")
            continue
        rows[name] = row
        log(f"  built {name} in {row.info['build_s']} s, warm-up {row.info['warmup_s']} s")
    return rows, skipped


def interleave(rows: dict[str, Row], s: Settings) -> dict[str, dict[str, list[float]]]:
    """Round by round, each row once (order rotated each round): per row, per-round prefill / decode ms."""
    names = list(rows)
    out: dict[str, dict[str, list[float]]] = {n: {"prefill_ms": [], "decode_ms": []} for n in names}
    for r in range(s.rounds):
        k = r % len(names) if names else 0
        for name in names[k:] + names[:k]:
            m = sample(rows[name].run, s.tokens)
            out[name]["prefill_ms"].append(m["prefill_ms"])
            out[name]["decode_ms"].append(m["decode_ms"])
            out[name].setdefault("tokens", m["tokens"])
    return out


def quality(rows: dict[str, Row], lm: Any, s: Settings) -> dict[str, dict]:
    """KL / top-1 of each row vs the float reference (the Hugging Face module in fp32) on WikiText-2."""
    out: dict[str, dict] = {}
    for name, row in rows.items() if s.kld_tokens else ():
        if row.scorer is None:
            out[name] = {"kld": 0.0, "top1": 1.0, "reference": True}
            continue
        try:
            out[name] = _kld(row.scorer(), lm, lm, s.kld_tokens)  # same windows as benchmarks/decode.py
        except Exception as e:  # noqa: BLE001 - a peer that cannot score keeps its timings
            out[name] = {"error": _reason(e)}
    return out


def summarize(rows: dict[str, Row], timings: dict, qual: dict) -> list[dict]:
    """One result dict per row with medians, p90, tokens/s and both ratios (>1 = faster than the other)."""
    res = []
    for name, row in rows.items():
        t = timings[name]
        dec = float(np.median(t["decode_ms"]))
        r = {"name": name, "kind": row.kind, "bits": row.bits, **row.info,
             "decode_ms": dec, "decode_p90_ms": float(np.percentile(t["decode_ms"], 90)),
             "tokens_per_s": 1e3 / dec, "prefill_ms": float(np.median(t["prefill_ms"])),
             "rounds_decode_ms": t["decode_ms"], "quality": qual.get(name, {})}
        for key, values in row.metrics.items():  # GenAI's own perf_metrics, median over runs
            r[key] = float(np.median(values))
        res.append(r)
    by = {r["name"]: r for r in res}
    plain = timings.get("transformers fp32 generate", {}).get("tokens")
    for r in res:  # leading greedy tokens identical to plain transformers (float rows: all of them)
        mine = timings[r["name"]].get("tokens")
        if plain and mine:
            r["same_tokens_as_plain"] = next((i for i, (a, b) in enumerate(zip(mine, plain)) if a != b), len(plain))
    base = by.get(BASELINE)
    for r in res:
        if base:
            r["x_baseline"] = base["decode_ms"] / r["decode_ms"]
        peer = fastest_peer(res, r["bits"])
        if peer and r["kind"] != "peer":
            r["fastest_peer"] = peer["name"]
            r["x_peer"] = peer["decode_ms"] / r["decode_ms"]
            same = [p for p in res if p["kind"] == "peer" and p["bits"] == r["bits"]]
            first = min(same, key=lambda p: p["prefill_ms"])  # time to first token: its own fastest peer
            r["x_peer_prefill"], r["fastest_prefill_peer"] = first["prefill_ms"] / r["prefill_ms"], first["name"]
    return res


def fastest_peer(res: list[dict], bits: int | None) -> dict | None:
    same = [r for r in res if r["kind"] == "peer" and bits is not None and r["bits"] == bits]
    return min(same, key=lambda r: r["decode_ms"]) if same else None


def best_leanlm(res: list[dict], bits: int) -> dict | None:
    """leanlm's fastest decoder at `bits` among those within the KL bound (else its fastest at all)."""
    ours_ = [r for r in res if r["kind"] == "leanlm" and r["bits"] == bits]
    good = [r for r in ours_ if r["quality"].get("kld") is not None and r["quality"]["kld"] <= TARGETS["kld"][bits]]
    return min(good or ours_, key=lambda r: r["decode_ms"]) if ours_ else None


def verdict(res: list[dict], skipped: dict[str, str]) -> str:
    """One line: each of the four targets met / MISSED / n/a (not measured), from this run only."""
    parts, met = [], 0

    def check(label: str, ok: bool | None, detail: str) -> None:
        nonlocal met
        met += bool(ok)
        parts.append(f"{label} {'ok' if ok else 'MISSED' if ok is not None else 'n/a'} ({detail})")

    best = {bits: best_leanlm(res, bits) for bits in (8, 4)}
    for bits, b in best.items():
        label, limit = f"{bits}-bit >= {TARGETS['speed_vs_peer']}x peer", TARGETS["kld"][bits]
        if b is None or "x_peer" not in b:
            check(label, None, f"no leanlm {bits}-bit row or no {bits}-bit peer")
            continue
        kld = b["quality"].get("kld")
        check(label, b["x_peer"] >= TARGETS["speed_vs_peer"] and kld is not None and kld <= limit,
              f"{b['name']} {b['x_peer']:.2f}x {b['fastest_peer']}, KL {_f(kld, '.4f')} <= {limit}")
    ttft = [b for b in best.values() if b and "x_peer_prefill" in b]
    check("TTFT <= fastest peer", all(b["x_peer_prefill"] >= 1 for b in ttft) if ttft else None,
          ", ".join(f"{b['name']} {b['x_peer_prefill']:.2f}x {b['fastest_prefill_peer']}" for b in ttft) or "no rows")
    fast = [b for b in best.values() if b and "x_baseline" in b]
    check(f">= {TARGETS['speed_vs_baseline']}x {BASELINE}",
          all(b["x_baseline"] >= TARGETS["speed_vs_baseline"] for b in fast) if fast else None,
          ", ".join(f"{b['name']} {b['x_baseline']:.2f}x" for b in fast) or "no baseline row")
    tail = f"; {len(skipped)} rows skipped" if skipped else ""
    return f"VERDICT: {met}/4 targets met - " + "; ".join(parts) + tail


def _f(v: Any, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def table(res: list[dict], skipped: dict[str, str]) -> str:
    head = ["row", "bits", "ms/token", "p90", "tok/s", "prefill ms", "KL", "top-1", f"x {BASELINE}",
            "x fastest same-bits peer", "prefill x peer", "note"]
    cells = []
    for r in res:
        q = r["quality"]
        note = "reference" if q.get("reference") else q.get("error", "")
        if "genai_ttft_ms" in r:
            note = f"GenAI TTFT {r['genai_ttft_ms']:.1f} ms, TPOT {_f(r.get('genai_tpot_ms'), '.2f')} ms"
        cells.append([r["name"], str(r["bits"] or "fp32"), _f(r["decode_ms"], ".2f"), _f(r["decode_p90_ms"], ".2f"),
                      _f(r["tokens_per_s"], ".1f"), _f(r["prefill_ms"], ".1f"), _f(q.get("kld"), ".4f"),
                      _f(q.get("top1"), ".3f"), _f(r.get("x_baseline"), ".2f"),
                      f"{r['x_peer']:.2f} ({r['fastest_peer']})" if "x_peer" in r else "-",
                      _f(r.get("x_peer_prefill"), ".2f"), note])
    cells += [[name, "", "", "", "", "", "", "", "", "", "", f"skipped: {why}"] for name, why in skipped.items()]
    return markdown(head, cells)


def load_reference(name: str) -> tuple[Any, str]:
    """(the float model under test, its label): every row is a conversion of this one model."""
    if name == "tiny":
        from leanlm.models.tiny import tiny_decoder

        return tiny_decoder(), "tiny random Llama (smoke run)"
    label = "dequantized Q4_1 (bundled SmolLM2-135M)" if name == "smollm2-135m" else f"float {name}"
    return leanlm.load(name), label


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reference", default="smollm2-135m",
                    help="float model under test and KL reference (bundled name or model directory)")
    ap.add_argument("--tiny", action="store_true", help="a tiny random Llama instead (smoke run)")
    ap.add_argument("--prompt-tokens", type=int, default=Settings.prompt_tokens)
    ap.add_argument("--tokens", type=int, default=Settings.tokens, help="new tokens per timed run")
    ap.add_argument("--rounds", type=int, default=Settings.rounds)
    ap.add_argument("--threads", type=int, default=None, help="default: all cores")
    ap.add_argument("--no-compile", action="store_true", help="skip torch.compile (smoke run; not comparable)")
    ap.add_argument("--hf-compile-mode", default=Settings.hf_compile_mode)
    ap.add_argument("--kld-tokens", type=int, default=Settings.kld_tokens, help="WikiText-2 tokens for KL (0 = skip)")
    ap.add_argument("--only", default="", help="comma-separated row names")
    ap.add_argument("--out", default="reports/decode-paired")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    threads = args.threads or os.cpu_count() or 1
    torch.set_num_threads(threads)
    s = Settings(prompt_tokens=args.prompt_tokens, tokens=args.tokens, rounds=args.rounds, threads=threads,
                 compile=not args.no_compile, hf_compile_mode=args.hf_compile_mode, kld_tokens=args.kld_tokens)
    lm, label = load_reference("tiny" if args.tiny else args.reference)
    ids = prompt_ids(lm.tokenizer, s.prompt_tokens)
    print(f"reference = {label}; {threads} threads, prompt {ids.numel()} tokens, {s.tokens} new, "
          f"{s.rounds} interleaved rounds", flush=True)
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="leanlm-paired-") as work:
        rows, skipped = build_rows(row_builders(lm, ids, s, Path(work)), s, {n for n in args.only.split(",") if n},
                                   log=lambda m: print(m, flush=True))
        timings = interleave(rows, s)
        res = summarize(rows, timings, quality(rows, lm, s))
    text = table(res, skipped)
    line = verdict(res, skipped)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    doc = {"benchmark": "decode-paired", "reference": label, "settings": asdict(s), "torch": torch.__version__,
           "python": platform.python_version(), "cpu": platform.processor(),
           "load_average": {"before": load_before, "after": os.getloadavg()},  # judge ratios, not absolutes
           "rows": res, "skipped": skipped, "verdict": line}
    (out / "decode-paired.json").write_text(json.dumps(doc, indent=2))
    (out / "decode-paired.md").write_text(f"# Paired decode benchmark\n\nreference = {label}; {threads} threads, "
                                          f"prompt {ids.numel()} tokens, {s.tokens} new tokens, {s.rounds} "
                                          f"interleaved rounds\n\n{text}\n\n{line}\n")
    print(f"\n{text}\n\nwrote {out}/decode-paired.json and .md\n{line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
