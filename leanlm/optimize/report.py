"""The search report: report.html (scatter plots + every trial) and report.md, in OUT.

Every number says where it comes from: trials are validation-split accuracy and a speed-up timed
beside the baseline in that trial's gate run; the frontier, the baseline and the peers are test-
split accuracy and ratios from the one final interleaved run.
"""
from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Any

from leanlm.artifact import atomic_write_bytes, atomic_write_text

_COLS = ("trial", "recipe / runtime", "status", "val Δacc pts [95 % CI]", "speed-up (gate run)", "size ×base",
         "build s", "reason")


def _cells(r: dict) -> list[str]:
    ci = (f"{r['delta_pts']:+.2f} [{r['delta_low']:+.2f}, {r['delta_high']:+.2f}]" + (" (within noise)" if r.get("within_noise") else "")
          if r.get("delta_pts") is not None else "–")
    status = r.get("status", "?") + (f" (= trial {r['duplicate_of']})" if r.get("duplicate_of") is not None else "")
    return [str(r["number"]), r.get("label", "?"), status, ci,
            f"×{r['speedup']:.2f}" if r.get("speedup") else "–",
            f"{r['size_ratio']:.2f}" if r.get("size_ratio") else "–",
            f"{r['build_s']:.1f}" if r.get("build_s") else "–", r.get("reason") or ""]


def _plot(res: Any, budget: float, x_key: str, x_label: str, final_key: str) -> bytes | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ModuleNotFoundError:
        return None
    import io

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for status, color in (("accepted", "tab:blue"), ("rejected", "tab:gray")):
        pts = [(r[x_key], r["delta_pts"]) for r in res.trials
               if r.get("status") == status and r.get(x_key) is not None and not r.get("duplicate_of")]
        if pts:
            ax.scatter(*zip(*pts), c=color, s=18, alpha=0.7, label=f"trials, {status} (validation, gate run)")
    if res.final is not None:
        for kind, marker, color in (("trial", "*", "tab:red"), ("peer:", "^", "tab:green")):
            rows = [r for r in res.final.rows if r["name"].startswith(kind) and r.get(final_key) is not None
                    and r.get("accuracy_delta_pts") is not None]
            if rows:
                ax.scatter([r[final_key] for r in rows], [r["accuracy_delta_pts"] for r in rows], marker=marker, s=90,
                           c=color, label=("frontier" if kind == "trial" else "peers") + " (test, final run)")
                for i, r in enumerate(rows):  # staggered: equal accuracies would print the names over each other
                    ax.annotate(r["name"].split(":")[0] if kind == "trial" else r["name"][6:], (r[final_key], r["accuracy_delta_pts"]),
                                fontsize=7, xytext=(4, 3 - 10 * (i % 3)), textcoords="offset points")
    ax.axhline(-budget, color="tab:red", lw=0.8, ls="--", label="accuracy budget")
    ax.axvline(1.0, color="black", lw=0.6)
    ax.set_xlabel(x_label)
    ax.set_ylabel("accuracy Δ vs float (points)")
    ax.legend(fontsize=7, loc="best")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def write_report(res: Any, out: Path, config: Any) -> dict[str, Path]:
    """Write report.html, report.md and the plots' PNGs into `out`; returns their paths."""
    out.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    imgs = []
    for name, x_key, label, final_key in (("accuracy-throughput", "speedup", f"{config.target} speed-up vs float PyTorch", "throughput_ratio"),
                                          ("accuracy-size", "size_ratio", "size vs float model", "size_ratio")):
        png = _plot(res, config.max_accuracy_drop, x_key, label, final_key)
        if png:
            paths[name] = atomic_write_bytes(out / f"{name}.png", png) or out / f"{name}.png"
            imgs.append(f'<img alt="{name}" src="data:image/png;base64,{base64.b64encode(png).decode()}">')
    head = ("<h1>leanlm optimize</h1>"
            f"<p>study {html.escape(res.key)}; budget -{config.max_accuracy_drop:g} pts (validation); target {config.target} "
            f"at {config.shape}; run-to-run noise {100 * (res.noise or 0):.1f} % (baseline timed against itself).</p>")
    lines = ["# leanlm optimize", "", f"study {res.key}; budget -{config.max_accuracy_drop:g} pts on the validation split; "
             f"target {config.target} at {config.shape}; run-to-run noise {100 * (res.noise or 0):.1f} %", ""]
    body = [f"<p><b>{html.escape(res.message)}</b></p>"]
    lines += [f"**{res.message}**", ""]
    if res.recommended:
        cmd = f"leanlm serve {res.recommended} --port 8000"
        body.append(f"<p>Serve it: <code>{html.escape(cmd)}</code></p><p>{html.escape(res.verdict)}</p>")
        lines += [f"Serve it: `{cmd}`", "", res.verdict, ""]
    if res.final is not None:
        fh, fc = res.final.table()
        body.append("<h2>Final same-run measurement (test split, one interleaved run)</h2>" + _html_table(fh, fc))
        lines += ["## Final same-run measurement (test split, one interleaved run)", "", res.final.markdown(), ""]
    cells = [_cells(r) for r in sorted(res.trials, key=lambda r: r["number"])]
    body.append("<h2>Every trial (validation split; speed-up from the trial's own gate run)</h2>" + _html_table(list(_COLS), cells))
    lines += ["## Every trial (validation split; speed-up from the trial's own gate run)", "",
              "| " + " | ".join(_COLS) + " |", "|" + "---|" * len(_COLS)]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in cells]
    doc = (f"<!doctype html><meta charset='utf-8'><title>leanlm optimize {html.escape(res.key)}</title>"
           "<style>body{font-family:sans-serif;margin:2em}td,th{padding:2px 8px;border-bottom:1px solid #ddd;font-size:13px}"
           "img{max-width:48%}</style>" + head + "".join(imgs) + "".join(body))
    paths["html"] = atomic_write_text(out / "report.html", doc) or out / "report.html"
    paths["md"] = atomic_write_text(out / "report.md", "\n".join(lines) + "\n") or out / "report.md"
    return {k: Path(v) for k, v in paths.items()}


def _html_table(head: list[str], cells: list[list[str]]) -> str:
    h = "".join(f"<th>{html.escape(c)}</th>" for c in head)
    rows = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in cells)
    return f"<table><tr>{h}</tr>{rows}</table>"
