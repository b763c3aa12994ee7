"""Sentiment monitor: score a stream of news snippets with a served classifier, keep a rolling sentiment
index and flag sharp drops.

The stream is the `nyt-editorial` dataset (NYT editorial snippets, Hutto et al. ICWSM 2014) in its
original order. Each snippet's sentiment is p(positive) - p(negative), in [-1, 1]. The index is an
exponentially weighted moving average of it (`--alpha`). A *sharp drop* is flagged at step t when the
index falls more than `--z` standard deviations below its mean over the previous `--window` steps
(z_t = (index_t - mean) / std < -z); one flag per episode, the next only after the index has come back
above that mean. Outputs in --out: `stream.csv` (step, score, index, z, flag, text), `flags.json`
and `sentiment.png` (the scores, the index and the flags).

Usage:
    python examples/sentiment_monitor.py                     # starts a server on a cached fine-tuned MiniLM
    python examples/sentiment_monitor.py --url http://127.0.0.1:8000 --model sentiment --limit 1000
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _client import RUNS, Client, add_server_args, progress, sentiment_model, server  # noqa: E402


def polarity(result: dict) -> float:
    """p(positive) - p(negative) from one /v1/classify result (labels matched by name, case-insensitive)."""
    probs = {k.lower(): v for k, v in result["probabilities"].items()}
    if "positive" in probs and "negative" in probs:
        return probs["positive"] - probs["negative"]
    values = list(result["probabilities"].values())  # unnamed binary head: label 1 is the positive one
    return values[-1] - values[0]


def rolling_index(scores: np.ndarray, alpha: float) -> np.ndarray:
    """EWMA: index_t = alpha * score_t + (1 - alpha) * index_{t-1}, index_0 = score_0."""
    out = np.empty_like(scores)
    level = scores[0]
    for t, s in enumerate(scores):  # one pass over a stream: the recurrence is the point
        level = alpha * s + (1 - alpha) * level
        out[t] = level
    return out


def drops(index: np.ndarray, window: int, z: float) -> tuple[np.ndarray, list[int]]:
    """z-scores of the index against its previous `window` steps, and the steps where a drop starts."""
    zs = np.zeros_like(index)
    flags, in_drop = [], False
    for t in range(window, len(index)):
        past = index[t - window:t]
        std = past.std()
        zs[t] = (index[t] - past.mean()) / std if std > 1e-9 else 0.0
        if zs[t] < -z and not in_drop:
            flags.append(t)
            in_drop = True
        elif index[t] >= past.mean():
            in_drop = False
    return zs, flags


def plot(path: Path, scores: np.ndarray, index: np.ndarray, flags: list[int]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(11, 4))
    ax.plot(scores, ".", ms=2, alpha=0.3, color="grey", label="snippet sentiment")
    ax.plot(index, color="tab:blue", lw=1.5, label="rolling index (EWMA)")
    if flags:
        ax.scatter(flags, index[flags], color="tab:red", zorder=3, label="sharp drop")
    ax.axhline(0, color="black", lw=0.5)
    ax.set(xlabel="snippet (stream order)", ylabel="sentiment  p(pos) - p(neg)", ylim=(-1.05, 1.05),
           title="NYT editorial snippets: sentiment over the stream")
    ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_server_args(p, "The served classifier's name (default: the server's only classifier).")
    p.add_argument("--dataset", default="nyt-editorial", help="A leanlm dataset name or a local file (the stream).")
    p.add_argument("--limit", type=int, default=0, help="Score only the first N snippets (0 = all).")
    p.add_argument("--batch", type=int, default=32, help="Snippets per request.")
    p.add_argument("--alpha", type=float, default=0.05, help="EWMA weight of the newest snippet.")
    p.add_argument("--window", type=int, default=100, help="Steps of history a drop is measured against.")
    p.add_argument("--z", type=float, default=2.5, help="Flag a drop below mean - z * std of that history.")
    p.add_argument("--out", default=str(RUNS / "sentiment-monitor"), help="Output folder.")
    args = p.parse_args(argv)
    from leanlm.data.registry import load_dataset

    texts = load_dataset(args.dataset)[0].texts  # file order = stream order (no shuffling)
    texts = texts[:args.limit] if args.limit else texts
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    serve_args = [] if args.url else [str(sentiment_model()), "--no-access-log"]
    scores: list[float] = []
    with server(args.url, serve_args, out / "server.log") as url:
        client = Client(url, args.api_key)
        for lo in range(0, len(texts), args.batch):
            body = {"input": texts[lo:lo + args.batch], **({"model": args.model} if args.model else {})}
            scores.extend(polarity(d) for d in client.post("/v1/classify", body)["data"])
            progress(len(scores), len(texts), "scoring")
        client.close()
    s = np.array(scores, dtype=np.float64)
    index = rolling_index(s, args.alpha)
    zs, flags = drops(index, args.window, args.z)
    with open(out / "stream.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["step", "score", "index", "z", "flag", "text"])
        for t, text in enumerate(texts):
            w.writerow([t, f"{s[t]:.4f}", f"{index[t]:.4f}", f"{zs[t]:.3f}", int(t in flags), text])
    report = {"dataset": args.dataset, "snippets": len(texts), "alpha": args.alpha, "window": args.window, "z": args.z,
              "mean_sentiment": float(s.mean()), "flags": [{"step": t, "index": float(index[t]), "z": float(zs[t]),
                                                            "text": texts[t]} for t in flags]}
    (out / "flags.json").write_text(json.dumps(report, indent=2))
    plot(out / "sentiment.png", s, index, flags)
    print(f"{len(texts)} snippets, mean sentiment {s.mean():+.3f}, {len(flags)} sharp drops -> {out}")
    for f in report["flags"][:10]:
        print(f"  step {f['step']:5d}  index {f['index']:+.3f}  z {f['z']:+.2f}  {f['text'][:80]}")
    return report


if __name__ == "__main__":
    main()
