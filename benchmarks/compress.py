"""Compression benchmark: our compressed models against float PyTorch and the fastest peer, in one run.

Rows: the float fine-tuned classifier on PyTorch eager (the baseline, `--model`), the peer
conversions of that same float model a user would pick instead (leanlm.bench.peers: OpenVINO bf16
straight from PyTorch, OpenVINO + NNCF int8 with NNCF's defaults, ONNX Runtime dynamic int8 of the
fused graph), then our rows: model directories (`--row NAME=DIR`, any backend, cascades included)
and recipe outputs (`--recipe NAME=OUT_DIR`, their final model). Every row is timed at batch 32 x
128 tokens (and batch 1 latency) AND on the real test texts in their order with per-batch padding
(what a user's traffic looks like), interleaved and rotated in one run (leanlm.bench.measure), so
every ratio compares numbers measured side by side. Accuracy deltas come with a 95 % paired-
bootstrap interval over the test examples. An embedder section compares `--embed-row` models with
MiniLM-L6 (`--embedder`): mean embedding cosine on real sentences and throughput ratios.

Roles: which row plays which target is explicit, `--role ROLE=ROW`, or a row named exactly like
the role. Roles: prune-distill, composed-int8, cascade (+ cascade-large: its large member; default
the float baseline), embedder (an --embed-row). Rows without a role are just listed. The last
line of the output is the overall verdict with the measured numbers.

Usage:
    python benchmarks/compress.py --model runs/demo/sentiment-fp32 \\
        --row 'prune+distill=runs/pd' --role prune-distill=prune+distill \\
        --recipe 'recipe int8=runs/recipe' --role 'composed-int8=recipe int8' \\
        --embed-row 'L6 pruned=runs/emb-pd' --role 'embedder=L6 pruned'
    python benchmarks/compress.py --model runs/demo/sentiment-fp32 --quick      # smoke run
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from _peers import PEER_NNCF, PEER_ORT, PEER_OV, build_peers  # benchmarks/ is on sys.path when a script runs

BASELINE = "float PyTorch eager"
PEERS = {"ov": PEER_OV, "nncf": PEER_NNCF, "ort": PEER_ORT}
STATIC_SHAPES = ((1, 128), (32, 128))  # the fixed benchmark shapes; real traffic runs the dynamic graphs
OTHER_DATASETS = ("tweets", "amazon", "nyt-editorial", "trec")  # embedder fidelity beyond movie reviews
MAX_LOSS = 1.0  # accuracy points every classifier target may lose against float
ROLES = ("prune-distill", "composed-int8", "cascade", "cascade-large", "embedder")
# option -> (default, --quick, help) of the measurement; an option given on the command line wins
PROTOCOL = {
    "repeats": (10, 2, "timed batch-1 calls per model"),
    "throughput_repeats": (5, 1, "timed batch-32 x 128 calls per model"),
    "traffic_repeats": (3, 1, "timed passes over the real test texts per model"),
    "warmup": (2, 1, "untimed calls per shape and model"),
    "eval_limit": (None, 64, "accuracy on at most N test texts"),
    "traffic_limit": (None, 64, "real traffic on at most N test texts"),
    "bootstrap": (2000, 200, "bootstrap resamples of the accuracy intervals"),
    "calibration": (300, 16, "training texts for the NNCF peer (NNCF's default subset size is 300)"),
    "other_texts": (100, 8, f"embedder fidelity: test texts of each of {', '.join(OTHER_DATASETS)}"),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="the fine-tuned float classifier directory (PyTorch), e.g. runs/demo/sentiment-fp32 "
                                   "(default: MiniLM with an untrained head: accuracy deltas meaningless)")
    p.add_argument("--data", default="movie-snippets", help="dataset: accuracy, timing and real-traffic texts (test "
                                                            "split), peer calibration (train split)")
    p.add_argument("--row", action="append", default=[], metavar="NAME=DIR", help="one of our model directories (repeatable)")
    p.add_argument("--recipe", action="append", default=[], metavar="NAME=OUT_DIR",
                   help="a recipe output directory; its final model becomes a row (repeatable)")
    p.add_argument("--role", action="append", default=[], metavar="ROLE=ROW",
                   help=f"which row plays a target role ({', '.join(ROLES)}; repeatable)")
    p.add_argument("--embedder", default="minilm-l6", help="reference embedder of the embedder section")
    p.add_argument("--embed-row", action="append", default=[], metavar="NAME=DIR",
                   help="a feature-extraction model directory compared with --embedder (repeatable)")
    p.add_argument("--peers", default="ov,nncf,ort", help=f"peers to build: comma-separated of {', '.join(PEERS)}, or 'none'")
    p.add_argument("--no-static-shapes", action="store_true",
                   help=f"do not compile static {STATIC_SHAPES} graphs for OpenVINO rows (peers included)")
    p.add_argument("--threads", type=int, default=None, help="threads for every runtime (default: all cores)")
    p.add_argument("--quick", action="store_true", help="smoke run: few repeats, small eval/traffic/calibration sets")
    for name, (default, quick, what) in PROTOCOL.items():
        p.add_argument("--" + name.replace("_", "-"), type=int, default=None, metavar="N",
                       help=f"{what} (default {'all' if default is None else default}, --quick {quick})")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory child processes (--quick does)")
    p.add_argument("--out", default="reports/compress", help="results (JSON, Markdown, HTML) go here")
    args = p.parse_args(argv)
    for name, (default, quick, _) in PROTOCOL.items():
        if getattr(args, name) is None:
            setattr(args, name, quick if args.quick else default)
    args.memory = not (args.no_memory or args.quick)
    return args


def pairs(specs: Sequence[str], flag: str) -> list[tuple[str, str]]:
    """'NAME=VALUE' strings as (name, value) pairs; names unique."""
    from leanlm.errors import ConfigError

    out = []
    for spec in specs:
        name, sep, value = spec.partition("=")
        if not sep or not name.strip() or not value.strip():
            raise ConfigError(f"{flag} takes NAME=VALUE, got {spec!r}")
        out.append((name.strip(), value.strip()))
    names = [n for n, _ in out]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ConfigError(f"{flag}: names must be unique, {dup[0]!r} appears twice")
    return out


def recipe_final(out_dir: str | os.PathLike) -> Path:
    """The final model of a recipe output: the directory itself when it is a model directory, else
    the model its recipe.json names ("final"), else its final/ folder, else its last stage folder."""
    from leanlm.errors import ArtifactError

    root = Path(out_dir).expanduser()
    if (root / "leanlm.json").exists():
        return root
    manifest = root / "recipe.json"
    if manifest.exists():
        try:
            final = json.loads(manifest.read_text()).get("final")
        except (OSError, json.JSONDecodeError, AttributeError) as e:
            raise ArtifactError(f"cannot read {manifest}: {e}") from None
        if final and (root / final / "leanlm.json").exists():
            return root / final
    if (root / "final" / "leanlm.json").exists():
        return root / "final"
    stages = sorted(d for d in root.iterdir() if (d / "leanlm.json").exists()) if root.is_dir() else []
    if not stages:
        raise ArtifactError(f"{root} is not a recipe output: no model directory in it")
    return stages[-1]


def assign_roles(role_specs: Sequence[str], rows: Sequence[str], embed_rows: Sequence[str]) -> dict[str, tuple[str, str]]:
    """role -> (row name, how it was chosen): --role flags first, then rows named like a role."""
    from leanlm.errors import ConfigError

    roles = {}
    for role, row in pairs(role_specs, "--role"):
        if role not in ROLES:
            raise ConfigError(f"unknown role {role!r}; roles: {', '.join(ROLES)}")
        pool = embed_rows if role == "embedder" else rows
        if row not in pool:
            raise ConfigError(f"--role {role}: no {'--embed-row' if role == 'embedder' else '--row/--recipe'} named {row!r}")
        roles[role] = (row, "--role")
    for role in ROLES:
        pool = embed_rows if role == "embedder" else rows
        if role not in roles and role in pool:
            roles[role] = (role, "row name")
    return roles


# ----------------------------------------------------------------------------- building the rows

def load_rows(args: argparse.Namespace, task: str, specs: list[tuple[str, str]], log: Callable) -> dict[str, Any]:
    """name -> LeanModel of a `task`; OpenVINO rows get the static benchmark shapes unless turned off."""
    import leanlm
    from leanlm.errors import ConfigError
    from leanlm.runtime.openvino import OvRunner, with_shapes

    out = {}
    for name, directory in specs:
        model = leanlm.load(directory)
        if model.task != task:
            raise ConfigError(f"row {name!r} ({directory}) is a {model.task} model; this section needs {task}")
        if not args.no_static_shapes and isinstance(model.runner, OvRunner):
            model = with_shapes(model, STATIC_SHAPES)
        out[name] = model
        log(f"  loaded {name}: {directory} ({model.backend})")
    return out


def baseline(args: argparse.Namespace, splits: Any, notes: list[str]) -> Any:
    import leanlm
    from leanlm.errors import ConfigError
    from leanlm.runtime.torch_eager import _is_plain

    if not args.model:
        notes.append("no --model: MiniLM with an UNTRAINED classification head; accuracy deltas are meaningless")
        return leanlm.load("minilm-l6", labels=splits.train.label_names)
    clf = leanlm.load(args.model)
    plain = clf.backend == "torch" and _is_plain(clf.module)
    if clf.task != "sequence-classification" or not plain:
        raise ConfigError(f"--model must be a float PyTorch sequence classifier; {args.model} is a "
                          f"{'' if plain else 'compressed '}{clf.task} model on {clf.backend}")
    return clf


def bench_config(args: argparse.Namespace, threads: int, **extra: Any) -> Any:
    from leanlm.bench.measure import BenchConfig

    return BenchConfig(repeats=args.repeats, throughput_repeats=args.throughput_repeats, warmup=args.warmup,
                       threads=threads, memory=args.memory, eval_limit=args.eval_limit,
                       traffic_repeats=max(1, args.traffic_repeats), traffic_limit=args.traffic_limit,
                       bootstrap=args.bootstrap, **extra)


def real_sentences(splits: Any, args: argparse.Namespace) -> Any:
    """The embedder's real sentences: the test texts of --data, then a few of each other bundled dataset."""
    from leanlm.data import TextDataset, load_splits

    texts = list(splits.test.texts[: args.eval_limit])
    used = [f"{splits.name} test ({len(texts)})"]
    for name in OTHER_DATASETS:
        if name != splits.name:
            other = list(load_splits(name, seed=0).test.texts[: args.other_texts])
            texts += other
            used.append(f"{name} ({len(other)})")
    return TextDataset(texts, [0] * len(texts), ["text"], "real sentences: " + ", ".join(used))


# ----------------------------------------------------------------------------- targets and verdict

@dataclass(frozen=True)
class Target:
    """A role's target: speed versus a comparator (on b32 x 128 AND on real texts) and a quality floor."""

    role: str
    what: str
    versus: str  # key of COMPARATORS
    speedup: float
    max_loss_vs: float | None = None  # accuracy points lost against the comparator row
    min_cosine: float | None = None  # embedder: mean cosine to the reference embedder


TARGETS = (
    Target("prune-distill", "structured pruning + distillation alone", "float PyTorch eager", 1.8),
    Target("composed-int8", "a composed recipe with int8", "the fastest peer", 2.0),
    Target("cascade", "a cascade", "its large member", 1.5, max_loss_vs=0.5),
    Target("embedder", "a pruned/distilled embedder", "the reference embedder", 1.8, min_cosine=0.98),
)
SPEED_KEYS = (("throughput_seq_s", "b32x128"), ("traffic_texts_s", "real texts"))


def fastest_peer(rows: Sequence[dict], key: str) -> dict | None:
    peers = [r for r in rows if r["name"].startswith("peer:") and r.get(key)]
    return max(peers, key=lambda r: r[key]) if peers else None


@dataclass
class Measured:
    """Everything a verdict looks at: the classifier rows, the embedder rows, the roles."""

    rows: list[dict]
    emb_rows: list[dict]
    roles: dict[str, tuple[str, str]]

    def row(self, role: str) -> dict | None:
        name = self.roles.get(role, (None,))[0]
        pool = self.emb_rows if role == "embedder" else self.rows
        return next((r for r in pool if r["name"] == name), None)

    def named(self, name: str) -> dict | None:
        return next((r for r in self.rows if r["name"] == name), None)


# comparator name -> (measured, speed key) -> the row a target's speed is divided by
COMPARATORS: dict[str, Callable[[Measured, str], dict | None]] = {
    "float PyTorch eager": lambda m, key: m.named(BASELINE),
    "the fastest peer": lambda m, key: fastest_peer(m.rows, key),
    "its large member": lambda m, key: m.row("cascade-large") or m.named(BASELINE),  # default: the float model
    "the reference embedder": lambda m, key: m.emb_rows[0] if m.emb_rows else None,  # the section's reference row
}


def _x(a: Any, b: Any) -> float | None:
    return a / b if a is not None and b else None


def judge(target: Target, m: Measured) -> tuple[str, str]:
    """('MET' | 'NOT MET' | 'NOT RUN', the measured numbers)."""
    row = m.row(target.role)
    if row is None:
        return "NOT RUN", "no row plays this role"
    ok, parts = True, []
    for key, label in SPEED_KEYS:
        comp = COMPARATORS[target.versus](m, key)
        ratio = _x(row.get(key), comp.get(key) if comp else None)
        ok &= ratio is not None and ratio >= target.speedup
        parts.append(f"{_fmt(ratio, '.2f')}x {comp['name'] if comp else target.versus} ({label})")
    if target.min_cosine is not None:
        cos = row.get("embedding_mean_cosine")
        ok &= cos is not None and cos >= target.min_cosine
        parts.append(f"cosine {_fmt(cos, '.4f')}")
    else:
        from leanlm.bench.stats import Interval, format_interval

        d, low, high = row.get("accuracy_delta_pts"), row.get("accuracy_delta_low"), row.get("accuracy_delta_high")
        ok &= d is not None and d >= -MAX_LOSS
        parts.append("Δacc " + (format_interval(Interval(d, low, high, 0.95, 0)) if low is not None else _fmt(d, "+.2f"))
                     + " pts vs float")
        if target.max_loss_vs is not None:
            comp = COMPARATORS[target.versus](m, "accuracy")
            dv = 100 * (row["accuracy"] - comp["accuracy"]) if comp and row.get("accuracy") is not None \
                and comp.get("accuracy") is not None else None
            ok &= dv is not None and dv >= -target.max_loss_vs
            parts.append(f"Δacc {_fmt(dv, '+.2f')} pts vs {comp['name'] if comp else target.versus}")
    return ("MET" if ok else "NOT MET"), ", ".join(parts)


def goal(target: Target) -> str:
    quality = f"mean cosine >= {target.min_cosine}" if target.min_cosine is not None else \
        f"<= {MAX_LOSS} pt accuracy loss vs float" + \
        (f" and <= {target.max_loss_vs} pt vs {target.versus}" if target.max_loss_vs is not None else "")
    return f">= {target.speedup}x {target.versus} at b32x128 and on real texts, {quality}"


def verdict_lines(m: Measured) -> list[str]:
    """One line per target, then the overall verdict (the last line)."""
    lines, summary, met = [], [], 0
    for t in TARGETS:
        status, numbers = judge(t, m)
        row = m.roles.get(t.role)
        who = f"row {row[0]!r} by {row[1]}" if row else "no row"
        lines.append(f"target {t.role} ({t.what}; {who}): {goal(t)}: {numbers} -> {status}")
        summary.append(f"{t.role} {status} ({numbers})")
        met += status == "MET"
    overall = "MET" if met == len(TARGETS) else "NOT MET"
    lines.append(f"verdict: {overall}, {met} of {len(TARGETS)} targets met: " + "; ".join(summary))
    return lines


# ----------------------------------------------------------------------------- tables

def _fmt(v: Any, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def markdown(head: Sequence[str], cells: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" if i < 3 else "---:" for i in range(len(head))) + "|"]
    return "\n".join(lines + ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in cells])


def classifier_table(m: Measured) -> str:
    from leanlm.bench.stats import Interval, format_interval

    role_of = {row: role for role, (row, _) in m.roles.items()}
    peer_tp, peer_real = fastest_peer(m.rows, "throughput_seq_s"), fastest_peer(m.rows, "traffic_texts_s")
    head = ["model", "backend", "role", "acc", "Δacc pts [95 % CI]", "seq/s b32", "×fp32", "×peer", "ms b1",
            "real texts/s", "×fp32 real", "×peer real", "MB", "peak MB"]
    cells = []
    for r in m.rows:
        ci = Interval(r["accuracy_delta_pts"], r["accuracy_delta_low"], r["accuracy_delta_high"], 0.95, 0) \
            if r.get("accuracy_delta_low") is not None else None
        cells.append([r["name"], r["backend"], role_of.get(r["name"], ""), _fmt(r["accuracy"], ".4f"),
                      format_interval(ci) if ci else _fmt(r["accuracy_delta_pts"], "+.2f"),
                      _fmt(r["throughput_seq_s"], ".1f"), _fmt(r["throughput_ratio"], ".2f"),
                      _fmt(_x(r["throughput_seq_s"], peer_tp and peer_tp["throughput_seq_s"]), ".2f"),
                      _fmt(r["latency_ms_p50"], ".1f"), _fmt(r["traffic_texts_s"], ".1f"), _fmt(r["traffic_ratio"], ".2f"),
                      _fmt(_x(r["traffic_texts_s"], peer_real and peer_real["traffic_texts_s"]), ".2f"),
                      _fmt(r["artifact_bytes"] / 1e6 if r["artifact_bytes"] else None, ".1f"), _fmt(r["peak_rss_mb"], ".0f")])
    return markdown(head, cells)


def embedder_table(m: Measured) -> str:
    role_of = {row: role for role, (row, _) in m.roles.items() if role == "embedder"}
    head = ["model", "backend", "role", "emb cos mean", "emb cos min", "seq/s b32", "×ref", "ms b1", "real texts/s",
            "×ref real", "MB", "peak MB"]
    cells = [[r["name"], r["backend"], role_of.get(r["name"], ""), _fmt(r["embedding_mean_cosine"], ".4f"),
              _fmt(r["embedding_min_cosine"], ".4f"), _fmt(r["throughput_seq_s"], ".1f"), _fmt(r["throughput_ratio"], ".2f"),
              _fmt(r["latency_ms_p50"], ".1f"), _fmt(r["traffic_texts_s"], ".1f"), _fmt(r["traffic_ratio"], ".2f"),
              _fmt(r["artifact_bytes"] / 1e6 if r["artifact_bytes"] else None, ".1f"), _fmt(r["peak_rss_mb"], ".0f")]
             for r in m.emb_rows]
    return markdown(head, cells)


def machine_line(res: Any) -> str:
    mi = res.machine
    flags = ", ".join(f for f, on in mi.get("flags", {}).items() if on)
    return (f"{mi.get('cpu')} | {mi.get('usable_cores')} cores | threads {res.config.get('threads')} | {flags} | "
            f"load avg {mi.get('loadavg_1m')} -> {mi.get('loadavg_1m_end')}")


# ----------------------------------------------------------------------------- main

def run(args: argparse.Namespace, log: Callable[[str], None]) -> list[str]:
    """Build, measure, write the reports; returns the printed lines (the verdict last)."""
    from leanlm.artifact import atomic_write_text
    from leanlm.bench.measure import benchmark
    from leanlm.bench.timing import set_threads
    from leanlm.bench.report import write_report
    from leanlm.data import load_splits
    from leanlm.errors import ConfigError

    threads = set_threads(args.threads)  # before any session is built: ORT/OpenVINO read LEANLM_THREADS
    rows = pairs(args.row, "--row")
    recipes = [(name, str(recipe_final(out))) for name, out in pairs(args.recipe, "--recipe")]
    embed_rows = pairs(args.embed_row, "--embed-row")
    ours = [n for n, _ in rows + recipes]
    if len(set(ours)) != len(ours) or BASELINE in ours or any(n.startswith("peer:") for n in ours):
        raise ConfigError(f"row names must be unique and not {BASELINE!r} or 'peer: ...': {ours}")
    roles = assign_roles(args.role, ours, [n for n, _ in embed_rows])
    wanted = [] if args.peers == "none" else [p.strip() for p in args.peers.split(",") if p.strip()]
    unknown = [p for p in wanted if p not in PEERS]
    if unknown:
        raise ConfigError(f"--peers: unknown peer {unknown[0]!r}; peers: {', '.join(PEERS)} or 'none'")

    notes: list[str] = [f"recipe {n}: final model {d}" for n, d in recipes]
    splits = load_splits(args.data, seed=0)
    clf = baseline(args, splits, notes)
    shapes = () if args.no_static_shapes else STATIC_SHAPES
    log(f"building peers of {clf.record.base_model} ...")
    peers, skipped, _ = build_peers(clf, list(splits.train.texts[: args.calibration]), shapes, log,
                                    [PEERS[p] for p in wanted])
    models = {BASELINE: clf, **peers, **load_rows(args, "sequence-classification", rows + recipes, log)}
    cfg = bench_config(args, threads)
    log(f"timing {len(models)} classifiers side by side (b1, b32 x 128, real texts) ...")
    res = benchmark(models, data=splits, config=cfg, reference=BASELINE)
    res.notes.extend(notes + [f"skipped {k}: {v}" for k, v in skipped.items()])
    if shapes:
        res.notes.append(f"OpenVINO rows (peers included) compile static {list(shapes)} graphs; real traffic runs "
                         "their dynamic graphs")

    emb_res = None
    if embed_rows:
        import leanlm

        log("embedder section ...")
        ref_name = f"{Path(args.embedder).name} PyTorch eager"
        emb = {ref_name: leanlm.load(args.embedder, task="feature-extraction"),
               **load_rows(args, "feature-extraction", embed_rows, log)}
        sentences = real_sentences(splits, args)
        emb_res = benchmark(emb, data=sentences, reference=ref_name,
                            config=bench_config(args, threads, fidelity_texts=len(sentences.texts)))
        emb_res.notes.append(f"fidelity and real traffic on {sentences.name}")

    m = Measured(res.rows, emb_res.rows if emb_res else [], roles)
    lines = [f"\nCompression benchmark: {res.rows[0]['base_model']} ({res.data['name'] if res.data else args.data}, "
             f"{res.data['evaluated'] if res.data else '?'} test examples); {machine_line(res)}",
             "×fp32 / ×peer: speed relative to float PyTorch eager / the fastest peer of that column, measured in "
             "the same run (>1 = faster); b32 = batch 32 x 128 tokens; real = the test texts in order, batches of "
             f"{cfg.traffic_batch} padded to their own longest text; Δacc vs float with a 95 % paired-bootstrap interval",
             "", classifier_table(m), ""]
    if emb_res:
        lines += [f"Embedder: {args.embedder} vs --embed-row rows (×ref: speed relative to it, same run)", "",
                  embedder_table(m), ""]
    lines += ["roles: " + (", ".join(f"{role} = {row!r} ({how})" for role, (row, how) in roles.items()) or "none")]
    lines += [f"note: {n}" for n in dict.fromkeys(res.notes + (emb_res.notes if emb_res else []))]
    lines += verdict_lines(m)

    out = Path(args.out)
    write_report(res, out / "classifier", title="leanlm compression benchmark: classifiers")
    if emb_res:
        write_report(emb_res, out / "embedder", title="leanlm compression benchmark: embedders")
    atomic_write_text(out / "summary.md", "\n".join(lines).strip() + "\n")
    atomic_write_text(out / "verdict.json", json.dumps(
        {"roles": {r: row for r, (row, _) in roles.items()},
         "targets": [{"role": t.role, "goal": goal(t), **dict(zip(("status", "measured"), judge(t, m)))} for t in TARGETS],
         "verdict": lines[-1]}, indent=2) + "\n")
    return lines


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from leanlm.errors import LeanlmError

    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    try:
        lines = run(args, log)
    except LeanlmError as e:
        import typer

        typer.secho(f"error: {e}", fg=typer.colors.RED, err=True)  # as the leanlm CLI does
        return 2
    print("\n".join(lines))
    print(f"report: {Path(args.out) / 'summary.md'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
