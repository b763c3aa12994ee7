"""The end of a search: the Pareto frontier, one same-run timing with the peers, the test split once.

Selection uses validation numbers only. The frontier (accepted trials not dominated on
(validation accuracy delta, speed-up) or (delta, size)) is then timed in ONE interleaved
benchmark run beside the float baseline and the peer conversions (`leanlm.bench.peers`), which
also scores the test split, once, for these models only; the headline ratios come from that run.
The recommendation is the frontier model fastest in that run (ties within the measured noise go
to the smaller one); it is saved as `OUT/recommended` with the recipe, the search and its
measurements in `record.extra["optimize"]`.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Sequence

from leanlm.artifact import atomic_write_text

BASELINE = "baseline: float PyTorch eager"
RECOMMENDED = "recommended"
_PEERS = {"ov": "PEER_OV", "nncf": "PEER_NNCF", "ort": "PEER_ORT"}


def pareto(rows: Sequence[dict], target: str) -> list[dict]:
    """Rows not dominated on (delta_pts up, speed-up up) or, for size, (delta_pts up, size_ratio down)."""
    def point(r: dict) -> tuple[float, float]:
        return (r["delta_pts"], -r["size_ratio"] if target == "size" else r["speedup"])

    pts = [(point(r), r) for r in rows]
    out = []
    for p, r in pts:
        if not any(q[0] >= p[0] and q[1] >= p[1] and q != p for q, _ in pts):
            out.append(r)
    return sorted(out, key=lambda r: -point(r)[1])


def _name(r: dict) -> str:
    return f"trial {r['number']}: {r['label']}"


def closest(rows: Sequence[dict], max_drop: float) -> str:
    """The candidates nearest an impossible constraint, with their numbers."""
    timed = [r for r in rows if "speedup" in r and not r.get("duplicate_of")]
    fast = [r for r in timed if r.get("fast")]
    accurate = [r for r in timed if r.get("accurate")]
    parts = []
    if fast:
        r = max(fast, key=lambda r: r["delta_pts"])
        parts.append(f"most accurate of the fast ones: {_name(r)} at {r['delta_pts']:+.2f} pts, x{r['speedup']:.2f}")
    if accurate:
        r = max(accurate, key=lambda r: r["speedup"])
        parts.append(f"fastest within -{max_drop:g} pts: {_name(r)} x{r['speedup']:.2f} at {r['delta_pts']:+.2f} pts "
                     f"({r['reason']})")
    if not parts and timed:
        r = max(timed, key=lambda r: (r["delta_pts"], r["speedup"]))
        parts.append(f"best timed candidate: {_name(r)} x{r['speedup']:.2f} at {r['delta_pts']:+.2f} pts")
    if not parts:
        reasons = sorted({r.get("reason", "") for r in rows if r.get("reason")})[:3]
        parts.append(f"no candidate was built and timed ({'; '.join(reasons) or 'no trials ran'})")
    return "; ".join(parts)


def _final_run(base: Any, frontier: Sequence[dict], splits: Any, config: Any, say: Callable[[str], None]) -> Any:
    from leanlm.bench import peers as peer_mod
    from leanlm.bench.measure import BenchConfig, benchmark
    from leanlm.bench.timing import usable_cores
    from leanlm.models.loading import load

    b, s = config.batch_seq()
    models: dict[str, Any] = {BASELINE: base}
    for r in frontier:
        models[_name(r)] = load(r["dir"])
    if config.peers:
        static = any(r["candidate"].get("static") for r in frontier)
        say(f"optimize: building peers ({', '.join(config.peers)}) of the float model")
        peers, skipped, _ = peer_mod.build_peers(base, list(splits.train.texts[: peer_mod.NNCF_SUBSET]),
                                                 [(1, s), (b, s)] if static else (), say,
                                                 which=[getattr(peer_mod, _PEERS[p]) for p in config.peers])
        models.update(peers)
    test = splits.test.head(config.test_limit) if config.test_limit else splits.test
    bench = BenchConfig(seq_len=s, throughput_batch=b, warmup=config.warmup, repeats=config.repeats,
                        throughput_repeats=config.final_repeats, traffic_repeats=config.traffic_repeats,
                        traffic_limit=config.test_limit, eval_limit=config.test_limit, memory=False,
                        bootstrap=config.bootstrap, threads=max(config.threads or (usable_cores(),)))
    say(f"optimize: final same-run timing of {len(models)} models; test split scored once ({len(test)} texts)")
    return benchmark(models, data=test, config=bench, reference=BASELINE, progress=False)


def _speed_key(target: str) -> tuple[str, bool]:
    return {"throughput": ("throughput_seq_s", True), "latency": ("latency_ms_p50", False),
            "size": ("artifact_bytes", False)}[target]


def recommend(frontier: Sequence[dict], final: Any, target: str, noise: float) -> dict:
    """The frontier trial fastest in the final run; within the noise of it, the smallest."""
    key, up = _speed_key(target)
    rows = {r["name"]: r for r in final.rows}

    def speed(r: dict) -> float:
        v = rows[_name(r)][key]
        return v if up else -v

    best = max(frontier, key=speed)
    close = [r for r in frontier if abs(speed(r) - speed(best)) <= noise * abs(speed(best))]
    return min(close, key=lambda r: (rows[_name(r)]["artifact_bytes"] or 0, -speed(r)))


def _save_recommended(pick: dict, final: Any, out: Path, key: str, config: Any, noise: float) -> Path:
    from leanlm.bench.measure import record_metrics
    from leanlm.models.loading import load

    m = load(pick["dir"])
    row = final.row(_name(pick))
    recipe_src = Path(pick["dir"])
    recipe = None
    for p in [recipe_src, *recipe_src.parents][:3]:
        if (p / "leanlm.json").exists():
            recipe = (json.loads((p / "leanlm.json").read_text()).get("extra", {}).get("recipe") or {}).get("recipe")
            if recipe:
                break
    record_metrics(m, row, final.machine)
    m.record.extra["optimize"] = {
        "study": key, "trial": pick["number"], "search": config.to_dict(), "candidate": pick["candidate"],
        "recipe": recipe or {"steps": pick["candidate"]["steps"]}, "noise": noise,
        "validation": {k: pick.get(k) for k in ("accuracy", "delta_pts", "delta_low", "delta_high", "speedup", "size_ratio")},
        "test": {k: row.get(k) for k in ("accuracy", "accuracy_delta_pts", "accuracy_delta_low", "accuracy_delta_high")},
        "final_run": {k: row.get(k) for k in ("throughput_seq_s", "throughput_ratio", "latency_ms_p50", "latency_ratio",
                                              "traffic_texts_s", "traffic_ratio", "artifact_bytes", "size_ratio")},
    }
    return m.save(out / RECOMMENDED, overwrite=True)


def verdict_line(final: Any, pick_name: str, config: Any) -> str:
    """'verdict: ...' with the recommended model's same-run ratios against the baseline and the fastest peer."""
    r = final.row(pick_name)
    peers = [x for x in final.rows if x["name"].startswith("peer:") and x.get("throughput_seq_s")]
    acc = r.get("accuracy_delta_pts")
    ci = (f" [{r['accuracy_delta_low']:+.2f}, {r['accuracy_delta_high']:+.2f}]"
          if r.get("accuracy_delta_low") is not None else "")
    ok_acc = acc is not None and acc >= -config.max_accuracy_drop
    text = (f"x{r['throughput_ratio']:.2f} float PyTorch at batch {config.batch_seq()[0]}, test {acc:+.2f} pts{ci}"
            if acc is not None else f"x{r['throughput_ratio']:.2f} float PyTorch")
    if peers:
        fp = max(peers, key=lambda x: x["throughput_seq_s"])
        text += f", x{r['throughput_seq_s'] / fp['throughput_seq_s']:.2f} the fastest peer ({fp['name'][6:]})"
        if r.get("traffic_texts_s") and fp.get("traffic_texts_s"):
            text += f", real traffic x{r['traffic_texts_s'] / fp['traffic_texts_s']:.2f} it"
    budget = "within" if ok_acc else "MISSES"
    return f"verdict: {pick_name.split(':')[0]} {text}; test accuracy {budget} the -{config.max_accuracy_drop:g} pts budget"


def conclude(study: Any, key: str, base: Any, model_dir: Path, out: Path, splits: Any, config: Any, noise: float,
             started: float, say: Callable[[str], None]) -> Any:
    from leanlm.optimize.report import write_report
    from leanlm.optimize.search import OptimizeResult, trial_rows

    rows = trial_rows(study)
    accepted = [r for r in rows if r.get("status") == "accepted" and not r.get("duplicate_of")]
    res = OptimizeResult(key=key, trials=rows, noise=noise)
    if not accepted:
        res.impossible = True
        res.message = (f"no candidate met both the -{config.max_accuracy_drop:g} pts validation budget and the speed gate "
                       f"(x{max(1 + noise, config.min_speedup):.2f}) in {len(rows)} trials; closest: "
                       + closest(rows, config.max_accuracy_drop))
        say("optimize: " + res.message)
    else:
        front = pareto(accepted, config.target)[: config.final_models]
        res.frontier = [r["number"] for r in front]
        res.final = _final_run(base, front, splits, config, say)
        pick = recommend(front, res.final, config.target, noise)
        res.recommended = _save_recommended(pick, res.final, out, key, config, noise)
        res.recommended_trial = pick["number"]
        res.verdict = verdict_line(res.final, _name(pick), config)
        res.message = f"recommended: {_name(pick)} -> {res.recommended}; serve it: leanlm serve {res.recommended} --port 8000"
        say("optimize: " + res.message)
    res.report = write_report(res, out, config)
    atomic_write_text(out / "optimize.json", json.dumps({
        "study": key, "config": config.to_dict(), "noise": noise, "frontier": res.frontier, "trials": rows,
        "final": res.final.to_dict() if res.final is not None else None, "message": res.message,
        "verdict": res.verdict, "recommended": str(res.recommended) if res.recommended else None,
        "impossible": res.impossible}, indent=2, default=str) + "\n")
    return res
