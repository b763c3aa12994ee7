"""CLI: `leanlm generate` (text generation) and `leanlm eval-lm` (perplexity, KLD vs a reference)."""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import List, Optional

import typer


BACKENDS = ("auto", "torch", "openvino", "openvino-genai")


def register(app: typer.Typer) -> None:
    app.command("generate")(generate_cmd)
    app.command("eval-lm")(eval_lm_cmd)
    app.command("export", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})(export_cmd)


def _load(model: str, device: str):
    from leanlm.models.loading import load
    from leanlm.runtime.device import pick_device, to_device

    pick_device(device)  # fail fast on a bad --device, before loading weights
    return to_device(load(model, task="causal-lm"), device)


def generate_cmd(
    model: str = typer.Argument(..., help="Bundled decoder (smollm2-135m) or model directory."),
    prompt: str = typer.Argument(..., help="Text to continue (or the user message with --chat)."),
    max_new_tokens: int = typer.Option(128, help="Stop after this many new tokens."),
    temperature: float = typer.Option(0.0, help="0 = greedy; > 0 samples."),
    top_k: int = typer.Option(0, help="Sample only from the k most likely tokens (0 = off)."),
    top_p: float = typer.Option(1.0, help="Nucleus sampling mass (1.0 = off)."),
    repetition_penalty: float = typer.Option(1.0, help="> 1 discourages repeats (1.0 = off)."),
    seed: Optional[int] = typer.Option(None, help="Seed for sampling."),
    stop: Optional[List[str]] = typer.Option(None, "--stop", help="Stop string (repeatable)."),
    chat: bool = typer.Option(False, "--chat/--no-chat", help="Wrap the prompt in the model's chat template."),
    system: Optional[str] = typer.Option(None, help="System message (with --chat)."),
    fast: bool = typer.Option(False, "--fast/--no-fast", help="Fast decoder: static cache + compiled step."),
    compile: bool = typer.Option(True, "--compile/--no-compile", help="With --fast: compile the decode step."),
    compile_scope: str = typer.Option("layer", help="With --fast: compile one 'layer' (seconds) or the whole "
                                      "'model' (about a minute; faster per token)."),
    dtype: str = typer.Option("auto", help="Fast decoder dtype: auto, float32, bfloat16, float16."),
    weights: str = typer.Option("auto", help="Fast decoder weights: auto, int8, int4; with --backend openvino "
                                "(converting a PyTorch model): none, int8 (auto) or int4."),
    group_size: int = typer.Option(128, help="With --backend openvino and --weights int4: the int4 group size."),
    backend: str = typer.Option("auto", help="auto (the model's own), torch, openvino (our loop on a stateful "
                                "OpenVINO IR) or openvino-genai (OpenVINO GenAI's LLMPipeline on that IR: the peer)."),
    device: str = typer.Option("auto", help="auto (GPU if available), cpu or cuda."),
    draft: Optional[str] = typer.Option(None, help="Speculative decoding draft: self-int4, self-int8 (the model's "
                                        "own weights packed, needs --fast), layers-K (keep every K-th layer) or a model."),
    draft_tokens: int = typer.Option(4, help="Tokens the draft proposes per step."),
    stream: bool = typer.Option(False, "--stream/--no-stream", help="Print tokens as they are generated."),
    stats: bool = typer.Option(False, "--stats", help="Print prefill/decode timings to stderr."),
) -> None:
    """Generate text with a causal LM (greedy or sampled; chat template with --chat)."""
    from leanlm.errors import ConfigError
    from leanlm.generate import GenerationConfig, generate_result, generate_stream

    if backend not in BACKENDS:
        raise ConfigError(f"--backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    on_ov = backend.startswith("openvino")
    if on_ov and fast:
        raise ConfigError("--fast is the PyTorch fast decoder; --backend openvino runs its own stateful decoder")
    cfg = GenerationConfig(max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                           repetition_penalty=repetition_penalty, seed=seed, stop=tuple(stop or ()), chat=chat,
                           system=system, fast=fast, compile=compile, compile_scope=compile_scope, dtype=dtype,
                           weights="auto" if on_ov else weights, draft_tokens=draft_tokens)
    lm = _load(model, "cpu" if on_ov else device)
    torch_lm = lm if lm.backend == "torch" else None
    if backend == "torch" and lm.backend != "torch":
        raise ConfigError(f"{model} runs on {lm.backend}; use --backend auto (or {lm.backend})")
    if on_ov and lm.backend != "openvino":
        from leanlm.generate.openvino import OpenVinoDecoder, to_openvino

        lm = to_openvino(lm, OpenVinoDecoder(weights="int8" if weights == "auto" else weights, group_size=group_size,
                                             tokenizer=backend == "openvino-genai"))
    if backend == "openvino-genai":
        _genai(lm, prompt, cfg, draft, stats)
        return
    if lm.backend == "openvino":
        drafter = _ov_draft(torch_lm, draft, weights, group_size, device) if draft else None
    else:
        drafter = _draft(lm, draft, cfg, device) if draft else None
    if stream:
        for chunk in generate_stream(lm, prompt, cfg, draft=drafter):
            sys.stdout.write(chunk)
            sys.stdout.flush()
        sys.stdout.write("\n")
        return
    result = generate_result(lm, prompt, cfg, draft=drafter)
    typer.echo(result.text)
    if stats:
        spec = f"; draft acceptance {result.acceptance:.2f}" if drafter is not None else ""
        typer.echo(f"prompt {result.prompt_tokens} tokens, generated {result.new_tokens} ({result.finish_reason}); "
                   f"prefill {result.prefill_s * 1e3:.1f} ms, decode {result.decode_ms_per_token:.2f} ms/token{spec}",
                   err=True)


def _genai(lm, prompt: str, cfg, draft, stats: bool) -> None:
    """The peer: OpenVINO GenAI's own loop on the same IR (same prompt tokens as ours)."""
    from leanlm.errors import ConfigError
    from leanlm.generate.loop import prompt_ids
    from leanlm.generate.openvino_genai import GenaiDecoder

    if draft:
        raise ConfigError("--draft is leanlm's speculative decoding; use --backend openvino with it")
    result = GenaiDecoder(lm.path if lm.path is not None else lm).generate(prompt_ids(lm, prompt, cfg).tolist(), cfg)
    typer.echo(result.text)
    if stats:
        typer.echo(f"prompt {result.prompt_tokens} tokens, generated {result.new_tokens} (openvino-genai); "
                   f"prefill {result.prefill_s * 1e3:.1f} ms, decode {result.decode_ms_per_token:.2f} ms/token", err=True)


def _ov_draft(torch_lm, spec: str, weights: str, group_size: int, device: str):
    """A draft on OpenVINO: self-int4/self-int8 or layers-K of the PyTorch model, or a model."""
    from leanlm.errors import ConfigError
    from leanlm.generate.openvino import ov_decoder
    from leanlm.generate.speculative import layer_dropped

    if spec.startswith(("self-", "layers-")):
        if torch_lm is None:
            raise ConfigError(f"--draft {spec} is built from the PyTorch model; this directory holds only its "
                              "OpenVINO IR (pass a draft model instead)")
        if spec in ("self-int4", "self-int8"):
            return ov_decoder(torch_lm, weights=spec.split("-")[1], group_size=group_size, tokenizer=False)
        source = _draft(torch_lm, spec, None, device)
        return ov_decoder(source, weights="int8" if weights == "auto" else weights, group_size=group_size,
                          tokenizer=False)
    draft = _load(spec, "cpu")
    return draft if draft.backend == "openvino" else ov_decoder(draft, weights="int8" if weights == "auto" else weights,
                                                               group_size=group_size, tokenizer=False)


def export_cmd(
    ctx: typer.Context,
    model: str = typer.Argument(..., help="Bundled decoder (smollm2-135m) or model directory (PyTorch, float)."),
    out: Path = typer.Argument(..., help="New model directory to write."),
    backend: str = typer.Option("openvino", help="Target runtime: openvino (a stateful OpenVINO IR that our loop "
                                "and OpenVINO GenAI both run)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace OUT if it exists."),
) -> None:
    """Write a causal LM for another runtime; options from the openvino-decoder config
    (--weights none|int8|int4, --mode, --group-size, --ratio, --all-layers, --precision, --kv-cache,
    --dq-group-size, --no-tokenizer)."""
    from leanlm.compress.quantize.cli import parse_options
    from leanlm.errors import ConfigError, LeanlmError
    from leanlm.generate.openvino import OpenVinoDecoder, to_openvino

    if backend != "openvino":
        raise ConfigError(f"export supports --backend openvino, not {backend!r}")
    config = OpenVinoDecoder(**parse_options(OpenVinoDecoder, list(ctx.args)))
    if out.exists() and not overwrite:
        raise LeanlmError(f"{out} already exists; choose another output or pass --overwrite")
    converted = to_openvino(_load(model, "cpu"), config)
    converted.save(out, overwrite=overwrite)
    rt = converted.record.extra["runtime"]
    typer.echo(f"wrote {out} (openvino decoder, weights {rt['weight_format']})")


def _draft(lm, spec: str, cfg, device: str):
    """A draft for speculative decoding from its CLI spelling."""
    from leanlm.errors import ConfigError
    from leanlm.generate.fast import fast_decoder
    from leanlm.generate.speculative import layer_dropped

    if spec in ("self-int4", "self-int8"):
        if not cfg.fast:
            raise ConfigError(f"--draft {spec} packs the model's own weights for the fast decoder; add --fast")
        return fast_decoder(lm, weights=spec.split("-")[1], compile=cfg.compile, scope=cfg.compile_scope)
    if spec.startswith("layers-"):
        k = spec.split("-", 1)[1]
        if not k.isdigit() or int(k) < 2:
            raise ConfigError(f"--draft layers-K needs an integer K >= 2, got {spec!r}")
        return layer_dropped(lm, keep_every=int(k))
    return _load(spec, device)


def eval_lm_cmd(
    model: str = typer.Argument(..., help="Causal LM to evaluate (bundled name or model directory)."),
    reference: Optional[str] = typer.Option(None, help="Reference model (e.g. the float original) for KLD/top-1."),
    tokens: int = typer.Option(4096, help="Tokens of WikiText-2 test to score."),
    window: int = typer.Option(1024, help="Tokens per forward."),
    stride: int = typer.Option(512, help="Window step; each token sees >= window - stride of context."),
    text_file: Optional[Path] = typer.Option(None, help="Score this text file instead of WikiText-2 test."),
    squad: Optional[Path] = typer.Option(None, help="SQuAD v1.1 JSON: also report exact match / F1."),
    squad_n: int = typer.Option(50, help="SQuAD questions to ask."),
    device: str = typer.Option("auto", help="auto (GPU if available), cpu or cuda."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Write the results as JSON here."),
) -> None:
    """Perplexity on WikiText-2 (sliding window), KL divergence and top-1 agreement vs a reference."""
    from leanlm.bench import lm as lm_metrics
    from leanlm.errors import DataError

    text = None
    if text_file is not None:
        if not text_file.exists():
            raise DataError(f"text file {text_file} not found")
        text = text_file.read_text()
    m = _load(model, device)
    if reference:
        ref = _load(reference, device)
        res = lm_metrics.compare(m, ref, text=text, tokens=tokens, window=window, stride=stride)
        typer.echo(f"perplexity {res['perplexity']:.3f} (reference {res['reference_perplexity']:.3f}) over "
                   f"{res['tokens']} tokens; KLD {res['kld']:.5f} [{res['kld_ci'][0]:.5f}, {res['kld_ci'][1]:.5f}]; "
                   f"top-1 agreement {res['top1']:.4f} [{res['top1_ci'][0]:.4f}, {res['top1_ci'][1]:.4f}]")
    else:
        res = lm_metrics.perplexity(m, text=text, tokens=tokens, window=window, stride=stride)
        typer.echo(f"perplexity {res['perplexity']:.3f} [{res['ci'][0]:.3f}, {res['ci'][1]:.3f}] over {res['tokens']} tokens "
                   f"(window {res['window']}, stride {res['stride']})")
    if squad is not None:
        sq = lm_metrics.squad(m, squad, n=squad_n)
        res["squad"] = sq
        typer.echo(f"SQuAD: exact match {sq['exact_match']:.1f}, F1 {sq['f1']:.1f} on {sq['n']} questions")
    if output:
        output.write_text(json.dumps(res, indent=2))
        typer.echo(f"wrote {output}")
