"""Benchmark reports: results.json (the schema), report.md and a self-contained report.html.

The HTML embeds its plots (quality versus latency, throughput per model) as base64 PNGs, so the
one file can be mailed or attached to CI; the PNGs are also written next to it.

Example:
    >>> res = benchmark({...}, data="movie-snippets")
    >>> write_report(res, "reports/bench", title="MiniLM int8")["html"]
    PosixPath('reports/bench/report.html')
"""
from __future__ import annotations

import base64
import html
import os
from pathlib import Path
from typing import Any

from leanlm.artifact import atomic_write_bytes, atomic_write_text
from leanlm.bench.measure import BenchResult


# (header, row key, format)
_COLUMNS = (
    ("model", "name", "s"), ("runtime", "runtime", "s"),
    ("latency p50 ms", "latency_ms_p50", ".2f"), ("p99 ms", "latency_ms_p99", ".2f"),
    ("throughput seq/s", "throughput_seq_s", ".1f"), ("thr ×ref", "throughput_ratio", ".2f"),
    ("lat ×ref", "latency_ratio", ".2f"), ("weights MB", "artifact_bytes", "MB"), ("size ×ref", "size_ratio", ".2f"),
    ("peak RSS MB", "peak_rss_mb", ".0f"), ("compile s", "compile_s", ".1f"),
    ("accuracy %", "accuracy", "pct"), ("Δacc pts", "accuracy_delta_pts", "+.2f"), ("agree %", "agreement", "pct"),
    ("emb cos mean", "embedding_mean_cosine", ".4f"), ("emb cos min", "embedding_min_cosine", ".4f"),
    ("perplexity", "perplexity", ".3f"), ("KL nats/tok", "kl_divergence", ".4f"),
)


def _fmt(row: dict, key: str, spec: str, is_ref: bool) -> str:
    v = row.get(key)
    if v is None:
        return "–"
    if spec == "s":
        return f"{v} (ref)" if key == "name" and is_ref else str(v)
    if spec == "MB":
        return f"{v / 1e6:.1f}"
    if spec == "pct":
        return f"{100 * v:.2f}"
    return format(v, spec)


def table(result: BenchResult) -> tuple[list[str], list[list[str]]]:
    """Column headers and formatted cells; columns with no values in any row are left out."""
    cols = [c for c in _COLUMNS if any(r.get(c[1]) is not None for r in result.rows)]
    cells = [[_fmt(r, key, spec, r["name"] == result.reference) for _, key, spec in cols] for r in result.rows]
    return [c[0] for c in cols], cells


def _quality_axis(rows: list[dict]) -> tuple[str, str, float, bool]:
    """(row key, axis label, scale, higher is better) of the first quality measure the rows have."""
    for key, label, scale, up in (("accuracy", "accuracy (%)", 100.0, True),
                                  ("embedding_mean_cosine", "embedding cosine vs reference", 1.0, True),
                                  ("perplexity", "perplexity", 1.0, False),
                                  ("agreement", "agreement with reference (%)", 100.0, True)):
        if any(r.get(key) is not None for r in rows):
            return key, label, scale, up
    return "artifact_bytes", "weights (MB)", 1e-6, False


def _png(fig: Any) -> bytes:
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return buf.getvalue()


def plots(result: BenchResult) -> dict[str, bytes]:
    """{"quality_vs_latency.png": ..., "throughput.png": ...} rendered with matplotlib (Agg)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    rows = result.rows
    out: dict[str, bytes] = {}
    key, label, scale, up = _quality_axis(rows)
    pts = [(r["latency_ms_p50"], r[key] * scale, r["name"]) for r in rows
           if r.get("latency_ms_p50") is not None and r.get(key) is not None]
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for x, y, name in pts:
        ax.scatter([x], [y], s=60, zorder=3)
        ax.annotate(name, (x, y), textcoords="offset points", xytext=(6, 4), fontsize=8)
    ax.set_xlabel(f"latency p50 (ms, batch {rows[0].get('latency_batch')} × {rows[0].get('seq_len')} tokens)")
    ax.set_ylabel(label)
    ax.set_xlim(0, max([x for x, _, _ in pts] or [1]) * 1.25)  # from zero: distances read as ratios
    ax.set_title(f"{label.split(' (')[0]} vs latency ({'up' if up else 'down'} and left is better)")
    ax.grid(alpha=0.3)
    out["quality_vs_latency.png"] = _png(fig)
    plt.close(fig)

    bars = [(r["name"], r["throughput_seq_s"], r.get("throughput_ratio")) for r in rows
            if r.get("throughput_seq_s") is not None]
    fig, ax = plt.subplots(figsize=(6.4, 0.5 + 0.45 * max(1, len(bars))))
    names = [b[0] for b in bars][::-1]
    vals = [b[1] for b in bars][::-1]
    ratios = [b[2] for b in bars][::-1]
    colors = ["#888888" if n == result.reference else "#2a7ab9" for n in names]
    ax.barh(names, vals, color=colors)
    for i, (v, r) in enumerate(zip(vals, ratios)):
        ax.text(v, i, f" {v:.1f}" + (f"  (×{r:.2f})" if r is not None else ""), va="center", fontsize=8)
    ax.set_xlabel(f"throughput (sequences/s, batch {rows[0].get('throughput_batch')} × {rows[0].get('seq_len')} tokens)")
    ax.set_xlim(0, max(vals or [1]) * 1.35)
    ax.set_title(f"throughput (ratio vs {result.reference})")
    ax.grid(axis="x", alpha=0.3)
    out["throughput.png"] = _png(fig)
    plt.close(fig)
    return out


def _machine_lines(result: BenchResult) -> list[tuple[str, str]]:
    m = result.machine
    flags = ", ".join(f for f, on in (m.get("flags") or {}).items() if on) or "–"
    versions = ", ".join(f"{k} {v}" for k, v in (m.get("versions") or {}).items())
    cfg = result.config
    return [
        ("CPU", f"{m.get('cpu')} ({m.get('usable_cores')} usable of {m.get('cores')} cores, {m.get('memory_gb')} GB)"),
        ("ISA flags", flags),
        ("threads", str(cfg.get("threads"))),
        ("load average (1 min) start / end", f"{m.get('loadavg_1m')} / {m.get('loadavg_1m_end')}"),
        ("software", f"Python {m.get('python')}, {versions}"),
        ("protocol", f"latency batch {cfg.get('latency_batch')} × {cfg.get('seq_len')} tokens, "
                     f"{cfg.get('repeats')} repeats (p50/p99); throughput batch {cfg.get('throughput_batch')} × "
                     f"{cfg.get('seq_len')}, {cfg.get('throughput_repeats')} repeats (median); warm-up "
                     f"{cfg.get('warmup')}; models interleaved per round"),
        ("data", "none (built-in sentences)" if not result.data else
         f"{result.data.get('name')}: {result.data.get('evaluated')} of {result.data.get('n')} test examples"),
        ("created", result.created),
    ]


def _row_notes(result: BenchResult) -> list[str]:
    notes = list(result.notes)
    for r in result.rows:
        notes += [f"{r['name']}: {n}" for n in r.get("notes") or []]
    return notes


def markdown_report(result: BenchResult, title: str, images: dict[str, str] | None = None) -> str:
    lines = [f"# {title}", "", f"Reference: **{result.reference}**. Ratios are model ÷ reference, measured in the "
             "same run (throughput ×ref > 1 and latency ×ref < 1 mean faster).", "", result.markdown(), ""]
    lines += ["## Machine and protocol", ""] + [f"- **{k}**: {v}" for k, v in _machine_lines(result)] + [""]
    notes = _row_notes(result)
    if notes:
        lines += ["## Notes", ""] + [f"- {n}" for n in notes] + [""]
    for name in images or {}:
        lines += [f"![{name}]({name})", ""]
    return "\n".join(lines)


_CSS = """body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;max-width:1200px;
color:#222;padding:0 1em}table{border-collapse:collapse;font-size:13px;margin:1em 0}
th,td{border:1px solid #ddd;padding:4px 8px;text-align:right}th{background:#f3f3f3}
td:first-child,th:first-child,td:nth-child(2){text-align:left}tr.ref{background:#f7f7e8}
dl{display:grid;grid-template-columns:max-content auto;gap:2px 14px;font-size:13px}dt{font-weight:600}
.plots img{max-width:48%;margin-right:1%;vertical-align:top}p.small{font-size:12px;color:#555}"""


def html_report(result: BenchResult, title: str, images: dict[str, bytes]) -> str:
    esc = html.escape
    head, cells = result.table()
    rows_html = []
    for r, row in zip(result.rows, cells):
        cls = ' class="ref"' if r["name"] == result.reference else ""
        rows_html.append(f"<tr{cls}>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>")
    table = ("<table><thead><tr>" + "".join(f"<th>{esc(h)}</th>" for h in head) + "</tr></thead><tbody>"
             + "".join(rows_html) + "</tbody></table>")
    machine = "<dl>" + "".join(f"<dt>{esc(k)}</dt><dd>{esc(v)}</dd>" for k, v in _machine_lines(result)) + "</dl>"
    imgs = "".join(f'<img alt="{esc(n)}" src="data:image/png;base64,{base64.b64encode(b).decode()}">'
                   for n, b in images.items())
    notes = _row_notes(result)
    notes_html = ("<h2>Notes</h2><ul>" + "".join(f"<li>{esc(n)}</li>" for n in notes) + "</ul>") if notes else ""
    return (f"<!doctype html><html><head><meta charset=\"utf-8\"><title>{esc(title)}</title><style>{_CSS}</style>"
            f"</head><body><h1>{esc(title)}</h1><p>Reference: <b>{esc(result.reference)}</b>. Ratios are model ÷ "
            "reference, measured in the same run (throughput ×ref &gt; 1 and latency ×ref &lt; 1 mean faster).</p>"
            f"{table}<div class=\"plots\">{imgs}</div><h2>Machine and protocol</h2>{machine}{notes_html}"
            "<p class=\"small\">Generated by leanlm; raw numbers in results.json.</p></body></html>\n")


def write_report(result: BenchResult, out_dir: str | os.PathLike, title: str = "leanlm benchmark") -> dict[str, Path]:
    """Write results.json, report.md, report.html and the plot PNGs into `out_dir`.

    Each file is written atomically; other files in `out_dir` are left alone.

    Args:
        result: a BenchResult (from `benchmark` or `BenchResult.from_json`).
        out_dir: output directory (created if missing).
        title: heading of the Markdown and HTML reports.

    Returns:
        {"json", "markdown", "html", "quality_vs_latency.png", "throughput.png"} -> paths.

    Example:
        >>> paths = write_report(res, "reports/bench")
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {"json": result.to_json(out / "results.json")}
    images = plots(result)
    for name, data in images.items():
        atomic_write_bytes(out / name, data)
        paths[name] = out / name
    atomic_write_text(out / "report.md", markdown_report(result, title, {n: n for n in images}) + "\n")
    paths["markdown"] = out / "report.md"
    atomic_write_text(out / "report.html", html_report(result, title, images))
    paths["html"] = out / "report.html"
    return paths
