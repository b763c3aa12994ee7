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


# Where a point's number may go, in points from the marker, tried in this order (deterministic).
_LABEL_OFFSETS = [(dx * r, dy * r) for r in (1, 2, 3)
                  for dx, dy in ((6, 3), (6, -11), (-6, 3), (-6, -11), (0, 8), (0, -16), (12, -4), (-12, -4))]


def _place_labels(screen: list[tuple[float, float]], texts: list[str], px_per_pt: float) -> list[tuple[float, float]]:
    """Offsets (points) for each label so that no two labels, and no label and marker, overlap.

    Greedy, in the given order: each label takes the first free slot of `_LABEL_OFFSETS` around
    its point, else the slot with the least overlap. Same input, same layout.
    """
    boxes: list[tuple[float, float, float, float]] = [(x - 5, y - 5, x + 5, y + 5) for x, y in screen]  # markers

    def overlap(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> float:
        w = min(a[2], b[2]) - max(a[0], b[0])
        h = min(a[3], b[3]) - max(a[1], b[1])
        return w * h if w > 0 and h > 0 else 0.0

    placed = []
    for i, ((x, y), text) in enumerate(zip(screen, texts)):
        w, h = (5.2 * len(text) + 2) * px_per_pt, 9 * px_per_pt
        best, best_cost = _LABEL_OFFSETS[0], float("inf")
        for dx, dy in _LABEL_OFFSETS:
            x0 = x + dx * px_per_pt - (w if dx < 0 else (w / 2 if dx == 0 else 0))
            y0 = y + dy * px_per_pt
            box = (x0, y0, x0 + w, y0 + h)
            cost = sum(overlap(box, b) for j, b in enumerate(boxes) if j != i)
            if cost < best_cost:
                best, best_cost, best_box = (dx, dy), cost, box
            if cost == 0:
                break
        boxes.append(best_box)
        placed.append(best)
    return placed


def _quality_plot(plt: Any, result: BenchResult) -> Any:
    """Quality vs latency: points numbered on the plot, names in a key beside it.

    Names written next to the points ran into each other when models measure alike (20 rows of
    one model family often do); numbers are short and are placed so they do not overlap.
    """
    rows = result.rows
    key, label, scale, up = _quality_axis(rows)
    pts = [(r["latency_ms_p50"], r[key] * scale, r["name"]) for r in rows
           if r.get("latency_ms_p50") is not None and r.get(key) is not None]
    n = len(pts)
    fig = plt.figure(figsize=(11.5, max(4.2, 1.2 + 0.24 * n)))
    grid = fig.add_gridspec(1, 2, width_ratios=(3, 2), wspace=0.05)
    ax, side = fig.add_subplot(grid[0]), fig.add_subplot(grid[1])
    colors = plt.get_cmap("tab10").colors  # dark enough for text; numbers, not colours, identify points
    for i, (x, y, name) in enumerate(pts):
        ref = name == result.reference
        ax.scatter([x], [y], s=60 if ref else 40, zorder=3, color="#000000" if ref else colors[i % 10],
                   marker="s" if ref else "o")
    ax.set_xlabel(f"latency p50 (ms, batch {rows[0].get('latency_batch')} × {rows[0].get('seq_len')} tokens)")
    ax.set_ylabel(label)
    ax.set_xlim(0, max([x for x, _, _ in pts] or [1]) * 1.25)  # from zero: distances read as ratios
    ys = [y for _, y, _ in pts] or [0.0, 1.0]
    pad = (max(ys) - min(ys)) * 0.15 or abs(max(ys)) * 0.05 or 1.0
    ax.set_ylim(min(ys) - pad, max(ys) + pad)
    ax.set_title(f"{label.split(' (')[0]} vs latency ({'up' if up else 'down'} and left is better)", fontsize=10)
    ax.grid(alpha=0.3)
    fig.canvas.draw()  # fixes the axes transform, so label boxes can be laid out in pixels
    screen = [tuple(ax.transData.transform((x, y))) for x, y, _ in pts]
    numbers = [str(i + 1) for i in range(n)]
    for (x, y, _), text, (dx, dy) in zip(pts, numbers, _place_labels(screen, numbers, fig.dpi / 72)):
        far = abs(dx) > 12 or abs(dy) > 17
        ax.annotate(text, (x, y), textcoords="offset points", xytext=(dx, dy), fontsize=8, fontweight="bold",
                    ha="right" if dx < 0 else ("center" if dx == 0 else "left"), va="bottom",
                    arrowprops=dict(arrowstyle="-", lw=0.5, color="#888888") if far else None)
    # the key: number, name, quality, latency; one line per point, in the table's order
    side.axis("off")
    side.set_xlim(0, 1)
    side.set_ylim(0, 1)
    line = min(0.9 / max(n, 1), 0.07)
    qfmt = ".2f" if scale == 100.0 else ".4g"
    side.text(0.0, 0.98, f"{'#':>3}  {'model':<34} {label.split(' (')[0][:9]:>9} {'ms':>7}", family="monospace",
              fontsize=8, fontweight="bold", va="top")
    for i, (x, y, name) in enumerate(pts):
        ref = " (ref)" if name == result.reference else ""
        shown = name + ref if len(name + ref) <= 34 else name[: 33 - len(ref)] + "…" + ref
        side.text(0.0, 0.98 - line * (i + 1), f"{i + 1:>3}  {shown:<34} {y:>9{qfmt}} {x:>7.2f}",
                  family="monospace", fontsize=8, va="top", color="#000000" if ref else colors[i % 10])
    return fig


def plots(result: BenchResult) -> dict[str, bytes]:
    """{"quality_vs_latency.png": ..., "throughput.png": ...} rendered with matplotlib (Agg)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    rows = result.rows
    out: dict[str, bytes] = {}
    fig = _quality_plot(plt, result)
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
