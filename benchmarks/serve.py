"""Serving benchmark: `leanlm serve` under load on loopback, dynamic batching on versus off, in one run.

Two servers run the same classifier, one with dynamic batching (--max-batch 32) and one without
(--max-batch 1). For each concurrency (1, 8, 32, 128 closed-loop clients, one text per request,
real movie-snippet texts) the two are measured alternately, `--reps` times, so every on/off ratio
compares numbers taken side by side (only the server under test is busy). Then:

- offline: the same model in this process, batch 32 with per-batch padding on the same texts,
  so "served / offline" says how much of the model's throughput the HTTP path keeps;
- overload: an open-loop phase at `--overload`x the best sustained rate for `--overload-s`
  seconds against the batching server (bounded queue): counts 200s and 429s, checks that every
  request was answered exactly once (each response echoes its request's x-request-id, and the
  server's /metrics counts match the client's), samples the server's resident memory, and times
  how long after the burst a request is answered at normal latency again.

Results print as a table and go to `--out` as JSON. Nothing here runs in `make test`.

Usage:
    python benchmarks/serve.py                             # MiniLM-L6 with a 2-class head (untrained: same cost)
    python benchmarks/serve.py --model runs/demo/sentiment-fp32
    python benchmarks/serve.py --workers 2                 # two single-thread worker processes per server
    python benchmarks/serve.py --quick                     # tiny model, short phases: a smoke run
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

from leanlm.serve.metrics import percentiles  # noqa: E402
from leanlm.serve.process import ServerProcess  # noqa: E402


def start_server(model_dir: str, max_batch: int, max_queue: int, log: Path, workers: int = 1) -> ServerProcess:
    return ServerProcess([model_dir, "--max-batch", str(max_batch), "--max-queue", str(max_queue), "--no-access-log",
                          "--workers", str(workers)], log=log, ready_s=180)


def metrics(server: ServerProcess) -> dict[str, Any]:
    return httpx.get(server.url + "/metrics", params={"format": "json"}, timeout=10).json()


def classify_counts(server: ServerProcess, workers: int, tries: int = 200) -> dict[str, int]:
    """/v1/classify responses by status, summed over the server's worker processes. Each worker
    counts its own; every /metrics call is a new connection, which the kernel hands to one of
    them, so asking until every worker (pid) has answered sees them all."""
    seen: dict[int, dict[str, int]] = {}
    for _ in range(tries):
        m = metrics(server)
        seen[m.get("pid", 0)] = m["requests"].get("/v1/classify", {})
        if len(seen) >= workers:
            break
    if len(seen) < workers:
        raise RuntimeError(f"/metrics reached {len(seen)} of {workers} workers in {tries} tries")
    total: dict[str, int] = {}
    for counts in seen.values():
        for k, v in counts.items():
            total[k] = total.get(k, 0) + v
    return total


# ----------------------------------------------------------------------------- load

async def closed_loop(url: str, texts: list[str], clients: int, seconds: float, warmup_s: float) -> dict[str, Any]:
    """`clients` loops, each sending one text, waiting for the answer, sending the next.

    The client is aiohttp, not httpx: on these two cores the load generator shares the CPU with the
    server, and httpx's own cost per request grows with concurrency until, at 128 clients, it rather
    than the server sets the pace (and the p99). Every client keeps its connection alive, as real
    clients do.
    """
    import aiohttp

    latencies: list[float] = []
    errors = 0
    stop_at = time.perf_counter() + warmup_s + seconds
    measure_from = time.perf_counter() + warmup_s
    counter = iter(range(10 ** 9))

    async def one(s: aiohttp.ClientSession) -> None:
        nonlocal errors
        while (now := time.perf_counter()) < stop_at:
            text = texts[next(counter) % len(texts)]
            try:
                async with s.post("/v1/classify", json={"input": text}) as r:
                    await r.read()
                    ok = r.status == 200
            except (aiohttp.ClientError, asyncio.TimeoutError):  # counted as an error; it does not end the run
                ok = False
            done = time.perf_counter()
            if now >= measure_from:
                if ok:
                    latencies.append((done - now) * 1e3)
                else:
                    errors += 1

    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(base_url=url, connector=connector,
                                     timeout=aiohttp.ClientTimeout(total=120)) as s:
        await asyncio.gather(*(one(s) for _ in range(clients)))
    return {"clients": clients, "requests": len(latencies), "errors": errors, "rps": len(latencies) / seconds,
            **{f"{k}_ms": v for k, v in percentiles(latencies).items() if k != "count"}}


async def open_loop(server: ServerProcess, texts: list[str], rate: float, seconds: float, max_inflight: int,
                    workers: int = 1) -> dict[str, Any]:
    """Fire requests at `rate` per second for `seconds`, whatever the answers; count every outcome."""
    sent: dict[str, int] = {}
    answers: dict[str, int] = {}
    statuses: dict[str, int] = {}
    rss: list[float] = []
    inflight = asyncio.Semaphore(max_inflight)
    before = classify_counts(server, workers)

    async def one(c: httpx.AsyncClient, i: int) -> None:
        rid = uuid.uuid4().hex
        sent[rid] = i
        try:
            r = await c.post("/v1/classify", json={"input": texts[i % len(texts)]}, headers={"x-request-id": rid})
            key = str(r.status_code)
            echoed = r.headers.get("x-request-id")
            answers[echoed] = answers.get(echoed, 0) + 1
        except httpx.HTTPError as e:
            key = type(e).__name__
        finally:
            inflight.release()
        statuses[key] = statuses.get(key, 0) + 1

    async def sample_rss() -> None:
        while True:
            rss.append(server.rss_mb())
            await asyncio.sleep(0.5)

    tasks = []
    limits = httpx.Limits(max_connections=max_inflight)
    async with httpx.AsyncClient(base_url=server.url, timeout=120, limits=limits) as c:
        sampler = asyncio.create_task(sample_rss())
        t0 = time.perf_counter()
        i = 0
        while (elapsed := time.perf_counter() - t0) < seconds:
            due = int(elapsed * rate)
            while i < due:
                await inflight.acquire()  # bounded client: past max_inflight the client itself waits
                tasks.append(asyncio.create_task(one(c, i)))
                i += 1
            await asyncio.sleep(0.002)
        await asyncio.gather(*tasks)
        sampler.cancel()
    after = classify_counts(server, workers)
    server_counts = {k: after.get(k, 0) - before.get(k, 0) for k in set(after) | set(before)}
    # "Accepted" = every request the server counted with a status. Each must reach the client once,
    # with its own id; a transport error (the connection dropped before the app read the request,
    # e.g. a keep-alive race) is never counted by the server, so it is reported on its own.
    http = {k: v for k, v in statuses.items() if k.isdigit()}
    once = (all(n == 1 for n in answers.values()) and set(answers) <= set(sent)
            and sum(http.values()) == len(answers) and sum(statuses.values()) == len(sent)
            and all(server_counts.get(k, 0) == v for k, v in http.items())
            and sum(v for k, v in server_counts.items() if k.isdigit()) == sum(http.values()))
    return {"rate": rate, "seconds": seconds, "sent": len(sent), "statuses": statuses,
            "server_statuses": {k: v for k, v in server_counts.items() if v},
            "transport_errors": sum(v for k, v in statuses.items() if not k.isdigit()),
            "answered_exactly_once": once,
            "rss_mb_peak": max(rss) if rss else float("nan")}


async def recovery(url: str, normal_ms: float, limit_s: float) -> float:
    """Seconds until a lone request is answered within 3x normal latency again."""
    t0 = time.perf_counter()
    async with httpx.AsyncClient(base_url=url, timeout=60) as c:
        while time.perf_counter() - t0 < limit_s:
            s = time.perf_counter()
            r = await c.post("/v1/classify", json={"input": "is the server back?"})
            if r.status_code == 200 and (time.perf_counter() - s) * 1e3 <= 3 * normal_ms:
                return time.perf_counter() - t0
            await asyncio.sleep(0.05)
    return float("inf")


def offline_rps(model_dir: str, texts: list[str], seconds: float, batch: int = 32, rounds: int = 3,
                streams: int = 1) -> dict[str, float]:
    """The same model in this process, texts per second, alternated over `rounds` so the ratios are same-run:

    - "batch": batch `batch` (per-batch padding), one stream on every core (what `leanlm bench` runs);
    - "split": the same batches split into length-sorted parts the way the server splits them
      (`leanlm.serve.buckets`, the default call cost), so the server's own trick raises the reference too;
    - "batch1": batch 1, one stream: batch / batch1 is the most batching can gain on this model and
      machine (HTTP and queueing only add the same cost to both sides);
    - "streams" (when `streams` > 1): `streams` threads at batch `batch` (split), each on cores // streams
      intra-op threads with its own tokenizer: the offline twin of `--workers N`, so a multi-worker
      server is compared with the best this model does offline, not with a weaker configuration.
    """
    import copy
    from concurrent.futures import ThreadPoolExecutor

    import leanlm
    from leanlm.bench.timing import threads_set, usable_cores

    model = leanlm.load(model_dir)
    clones = [copy.copy(model) for _ in range(streams)]
    for c in clones:
        c.tokenizer = copy.deepcopy(model.tokenizer)  # a fast tokenizer is not shared between threads

    from leanlm.serve.config import ServeConfig
    from leanlm.serve.encoders import split_run

    items = list(zip(texts, (len(ids) for ids in model.tokenizer(texts)["input_ids"])))
    split_config, whole_config = ServeConfig(), ServeConfig(split_cost_tokens=0)

    def run(m, size: int, span: float, split: bool = False) -> float:
        config = split_config if split else whole_config
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < span:
            batch = [items[(n + k) % len(items)] for k in range(size)]
            split_run(m, batch, config, lambda part: m(**m.encode([t for t, _ in part])))  # the server's own split
            n += size
        return n / (time.perf_counter() - t0)

    span = seconds / rounds
    best = {"batch": 0.0, "split": 0.0, "batch1": 0.0} | ({"streams": 0.0} if streams > 1 else {})
    for _ in range(rounds):
        best["batch"] = max(best["batch"], run(model, batch, span))
        best["split"] = max(best["split"], run(model, batch, span, split=True))
        best["batch1"] = max(best["batch1"], run(model, 1, span))
        if streams > 1:
            with threads_set(max(1, usable_cores() // streams)), ThreadPoolExecutor(streams) as ex:
                best["streams"] = max(best["streams"], sum(ex.map(lambda m: run(m, batch, span, True), clones)))
    return best


# ----------------------------------------------------------------------------- verdicts

BATCHING_GAIN, SERVED_SHARE, AT_CLIENTS = 3.0, 0.70, 32


def verdicts(results: dict[str, Any]) -> list[str]:
    """One `target (...): numbers -> MET | NOT MET` line per serving target, from ratios measured in this run."""
    def met(ok: bool) -> str:
        return "MET" if ok else "NOT MET"

    lines = []
    row = next((r for r in results["levels"] if r["clients"] == AT_CLIENTS), None)
    target = f"target (batching >= {BATCHING_GAIN:g}x no-batching at {AT_CLIENTS} clients)"
    if row is None:
        lines.append(f"{target}: level not run -> NOT RUN")
    else:
        ceiling = results.get("batching_ceiling")
        lines.append(f"{target}: {row['ratio_on_off']:.2f}x, p99 {row['on']['p99_ms']:.0f} vs {row['off']['p99_ms']:.0f} ms"
                     + (f" (the model's own offline batch-32 / batch-1 ceiling: {ceiling:.2f}x)" if ceiling else "")
                     + f" -> {met(row['ratio_on_off'] >= BATCHING_GAIN)}")
    share = results.get("served_over_offline")
    if share is not None:
        lines.append(f"target (served >= {100 * SERVED_SHARE:.0f}% of offline batch-32 throughput on the same texts, "
                     f"the best of whole, split and {results.get('workers', 1)} streams): {100 * share:.0f}% "
                     f"-> {met(share >= SERVED_SHARE)}")
    ov = results.get("overload")
    if ov:
        shed = ov["statuses"].get("429", 0)
        ok = ov["answered_exactly_once"] and shed > 0 and ov["recovery_s"] < 5
        lines.append(f"target (overload sheds with 429, answers every accepted request once, recovers < 5 s): {shed} shed, "
                     f"exactly once: {ov['answered_exactly_once']} ({ov.get('transport_errors', 0)} dropped connections "
                     f"never reached the server), RSS peak {ov['rss_mb_peak']:.0f} MB (from {ov['rss_mb_before']:.0f}), "
                     f"recovered in {ov['recovery_s']:.2f} s -> {met(ok)}")
    return lines


# ----------------------------------------------------------------------------- main

def build_model(args: argparse.Namespace, tmp: Path) -> str:
    if args.model:
        return args.model
    if args.quick:
        from leanlm.models.tiny import tiny_encoder

        return str(tiny_encoder().save(tmp / "tiny-clf"))
    import leanlm

    return str(leanlm.load("minilm-l6", labels=["negative", "positive"]).save(tmp / "minilm-clf"))


def load_texts(n: int = 512) -> list[str]:
    from leanlm.bench.timing import bench_texts

    try:
        from leanlm.data import load_splits

        return bench_texts(load_splits("movie-snippets").test, n)
    except Exception as e:  # offline without the cached dataset: the built-in benchmark sentences
        print(f"(movie-snippets unavailable: {e}; using the built-in sentences)", file=sys.stderr)
        return bench_texts(None, n)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", help="A sequence-classification model directory (default: MiniLM-L6 + 2-class head).")
    p.add_argument("--clients", default="1,8,32,128", help="Concurrency levels, comma-separated.")
    p.add_argument("--seconds", type=float, default=10.0, help="Measured seconds per level and server.")
    p.add_argument("--reps", type=int, default=2, help="Alternating on/off repetitions per level.")
    p.add_argument("--overload", type=float, default=4.0, help="Overload rate as a multiple of the best sustained "
                   "rate.")
    p.add_argument("--overload-s", type=float, default=20.0, help="Overload phase length (seconds).")
    p.add_argument("--max-queue", type=int, default=256, help="The servers' --max-queue.")
    p.add_argument("--workers", type=int, default=1, help="Both servers' --workers (each worker on cores // N "
                   "threads); the offline reference then also runs N streams and the better one counts.")
    p.add_argument("--out", default="runs/bench/serve.json", help="Where to write the JSON results.")
    p.add_argument("--quick", action="store_true", help="Tiny model and short phases: a smoke run.")
    args = p.parse_args()
    if args.quick:
        args.clients, args.seconds, args.reps, args.overload_s = "1,8,32", 1.5, 1, 3.0
    levels = [int(x) for x in args.clients.split(",")]

    tmp = Path(tempfile.mkdtemp(prefix="leanlm-serve-bench-"))
    model_dir = build_model(args, tmp)
    texts = load_texts()
    on = start_server(model_dir, 32, args.max_queue, tmp / "on.log", args.workers)
    off = start_server(model_dir, 1, args.max_queue, tmp / "off.log", args.workers)
    results: dict[str, Any] = {"model": model_dir, "texts": len(texts), "cpus": os.cpu_count(),
                               "workers": args.workers, "levels": []}
    try:
        for clients in levels:
            runs: dict[str, list] = {"on": [], "off": []}
            for _ in range(args.reps):
                for name, server in (("on", on), ("off", off)):
                    runs[name].append(asyncio.run(closed_loop(server.url, texts, clients, args.seconds, 1.0)))
            row = {"clients": clients, **{name: max(rs, key=lambda r: r["rps"]) for name, rs in runs.items()}}
            row["ratio_on_off"] = row["on"]["rps"] / max(row["off"]["rps"], 1e-9)
            results["levels"].append(row)
            print(f"{clients:4d} clients  batching on {row['on']['rps']:8.1f} req/s p50 {row['on']['p50_ms']:7.1f} "
                  f"p99 {row['on']['p99_ms']:7.1f} ms | off {row['off']['rps']:8.1f} req/s p50 "
                  f"{row['off']['p50_ms']:7.1f} p99 {row['off']['p99_ms']:7.1f} ms | on/off {row['ratio_on_off']:.2f}x",
                  flush=True)
        off.stop()
        best = max(results["levels"], key=lambda r: r["on"]["rps"])
        offline = offline_rps(model_dir, texts, max(6.0, 2 * args.seconds), streams=args.workers)
        results["offline_rps_batch1"] = offline["batch1"]
        results["offline_rps_one_stream"] = offline["batch"]
        results["offline_rps_split"] = offline["split"]
        if "streams" in offline:
            results["offline_rps_streams"] = offline["streams"]
        # the stricter reference: the best this model does offline, with or without the server's split
        results["offline_rps"] = max(offline["batch"], offline["split"], offline.get("streams", 0.0))
        results["batching_ceiling"] = max(offline["batch"], offline["split"]) / offline["batch1"]
        results["served_over_offline"] = best["on"]["rps"] / results["offline_rps"]
        streams = (f", {args.workers} streams x batch-32: {offline['streams']:.1f} texts/s" if "streams" in offline
                   else "")
        print(f"offline batch-32: {offline['batch']:.1f} texts/s, split by length: {offline['split']:.1f}{streams}, batch 1: {offline['batch1']:.1f} texts/s "
              f"(the most batching can gain here: {results['batching_ceiling']:.2f}x); served (best) keeps "
              f"{100 * results['served_over_offline']:.0f}% of the best batch-32 figure", flush=True)
        normal = next(r for r in results["levels"] if r["clients"] == levels[0])["on"]["p50_ms"]
        rss_before = on.rss_mb()
        ov = asyncio.run(open_loop(on, texts, args.overload * best["on"]["rps"], args.overload_s, 4096, args.workers))
        ov["recovery_s"] = asyncio.run(recovery(on.url, normal, 30.0))
        ov["rss_mb_before"] = rss_before
        results["overload"] = ov
        print(f"overload {args.overload:g}x ({ov['rate']:.0f} req/s for {ov['seconds']:g} s): {ov['statuses']}; "
              f"answered exactly once: {ov['answered_exactly_once']}; RSS {rss_before:.0f} -> peak "
              f"{ov['rss_mb_peak']:.0f} MB; recovered in {ov['recovery_s']:.2f} s", flush=True)
    finally:
        on.stop()
        off.stop()
    results["verdicts"] = verdicts(results)
    for line in results["verdicts"]:
        print(line, flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
