"""Child process for honest peak-memory figures: load one model directory, run one batch, report.

Run by `leanlm.bench.measure.peak_memory` as
    python -m leanlm.bench._child DIR --seq-len 128 --batch 32 --threads 2 [--compile MODE]
and prints one JSON line (MB): resident memory once the libraries are imported (baseline), the
peak after loading and the peak after the run (Linux: VmHWM, reset after imports so import-time
spikes do not hide a small model; elsewhere ru_maxrss), and model_rss_mb = peak - baseline.
A fresh process per model keeps one model's allocations out of another's.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
from typing import Any


def peak_memory(directory: str | os.PathLike, config: Any, compile_mode: str | None = None,
                timeout: float = 900) -> dict[str, Any]:
    """Peak RSS of a fresh process that loads `directory` and runs the throughput shape once.

    Returns {"peak_rss_mb", "model_rss_mb" (peak minus the process after imports)} or {"error"}.
    """
    from leanlm.bench.timing import usable_cores

    cmd = [sys.executable, "-m", "leanlm.bench._child", str(directory), "--seq-len", str(config.seq_len),
           "--batch", str(config.throughput_batch), "--threads", str(config.threads or usable_cores())]
    if compile_mode:
        cmd += ["--compile", compile_mode]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"memory child timed out after {timeout:.0f} s"}
    lines = [l for l in proc.stdout.splitlines() if l.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return {"error": f"memory child failed: {tail[:200]}"}
    return json.loads(lines[-1])


def _maxrss_mb() -> float:
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb / 2**20 if sys.platform == "darwin" else kb / 1024  # macOS reports bytes, Linux KiB


def _status_mb(key: str) -> float | None:
    """VmRSS / VmHWM of this process from /proc (Linux), in MB."""
    try:
        for line in open("/proc/self/status"):
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def _reset_peak() -> bool:
    """Reset the kernel's peak-RSS mark (Linux >= 4.0), so import-time spikes are not counted."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _preimport(directory: str, record: object) -> None:
    """Import the runtime library, tokenizer and model code first: they are not the model's memory."""
    from leanlm.runtime import get_backend

    get_backend(record.backend)
    try:
        from transformers import AutoConfig, AutoTokenizer

        from leanlm.models.loading import auto_class, quiet_transformers

        with quiet_transformers():
            AutoTokenizer.from_pretrained(directory)
            cfg = AutoConfig.from_pretrained(directory)
            auto_class(record.task)._model_mapping[type(cfg)]  # imports the modeling module
    except Exception:  # best effort: without it the imports just count towards the model
        pass


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m leanlm.bench._child")
    ap.add_argument("directory")
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--compile", default=None, help="torch.compile mode (compiled runtime variant)")
    args = ap.parse_args(argv)

    import transformers  # noqa: F401  (libraries count in the baseline: every model pays for them)

    from leanlm.artifact import load_dir, read_record
    from leanlm.bench.timing import fixed_batch, set_threads
    from leanlm.runtime.sentences import SENTENCES
    set_threads(args.threads)
    _preimport(args.directory, read_record(args.directory, verify=False))
    # Baseline: resident memory with every library imported; the peak is measured from here on.
    baseline = _status_mb("VmRSS")
    reset = baseline is not None and _reset_peak()
    if not reset:
        baseline = _maxrss_mb()
    peak_now = (lambda: _status_mb("VmHWM")) if reset else _maxrss_mb
    model = load_dir(args.directory, verify=False)
    loaded = peak_now()
    if args.compile:
        from leanlm.runtime.torch_compile import compile_model

        model = compile_model(model, mode=args.compile, shapes=[(args.batch, args.seq_len)])
    model(**fixed_batch(model, list(SENTENCES), args.batch, args.seq_len))
    peak = peak_now()
    print(json.dumps({"baseline_rss_mb": round(baseline, 1), "loaded_rss_mb": round(loaded, 1),
                      "peak_rss_mb": round(peak, 1), "model_rss_mb": round(peak - baseline, 1),
                      "method": "VmHWM after reset" if reset else "ru_maxrss"}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
