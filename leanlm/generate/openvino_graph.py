"""The OpenVINO decoder's graph: a causal LM as a stateful OpenVINO IR (`leanlm.generate.openvino`).

The model's own weights go into a small Llama forward built from the fast decoder's fused blocks
(q|k|v and gate|up as one matmul each, per-layer widths, so pruned and layer-dropped models
convert too) that takes the KV cache as explicit tensors. OpenVINO's PyTorch frontend converts it
(`convert_graph`); a `beam_idx` input plus OpenVINO's stateful transformation move the cache
inside the infer request; NNCF compresses the weights (`compress`); `with_logits_to_keep` adds
the Slice before the output head that our loop feeds.

Example:
    >>> graph = compress(convert_graph(lm), OpenVinoDecoder(weights="int8"))
"""
from __future__ import annotations

import copy
import logging
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from leanlm.artifact import LeanModel
from leanlm.errors import UnsupportedError
from leanlm.generate.fast import Block, Fused, _rms_norm, check_supported

if TYPE_CHECKING:
    from leanlm.generate.openvino import OpenVinoDecoder


# --------------------------------------------------------------------------- the graph

def _rotate(x: torch.Tensor) -> torch.Tensor:
    # slices, as transformers writes it: the CPU plugin's RoPE fusion matches this pattern
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class _ExportLlama(nn.Module):
    """Llama forward over an explicit KV cache, shaped for conversion (not for running in torch).

    forward(input_ids (B, T), attention_mask (B, P + T), position_ids (B, T), past (2L tensors
    (B, KV, P, D))) -> (logits (B, T, V), 2L presents (B, KV, P + T, D)).
    """

    def __init__(self, hf: nn.Module):
        super().__init__()
        cfg = hf.config
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        self.eps = float(cfg.rms_norm_eps)
        f32 = torch.float32
        self.embed = nn.Parameter(hf.model.embed_tokens.weight.detach().float(), requires_grad=False)
        self.layers = nn.ModuleList(Block(layer, "float", f32, self.head_dim) for layer in hf.model.layers)
        self.norm = nn.Parameter(hf.model.norm.weight.detach().float(), requires_grad=False)
        self.head = Fused([hf.lm_head], "float", f32)
        rope = hf.model.rotary_emb
        self.register_buffer("inv_freq", rope.inv_freq.detach().float().clone(), persistent=False)
        self.rope_scale = float(getattr(rope, "attention_scaling", 1.0))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor,
                past: Sequence[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        B, T = input_ids.shape
        D = self.head_dim
        x = F.embedding(input_ids, self.embed)
        freqs = position_ids[..., None].float() * self.inv_freq  # (B, T, D/2)
        emb = torch.cat([freqs, freqs], dim=-1)
        cos, sin = (emb.cos() * self.rope_scale)[:, None], (emb.sin() * self.rope_scale)[:, None]
        S = attention_mask.shape[1]
        query_slot = torch.arange(T) + (S - T)
        mask = (torch.arange(S)[None, :] <= query_slot[:, None])[None, None] & attention_mask[:, None, None, :].bool()
        presents: list[torch.Tensor] = []
        for i, blk in enumerate(self.layers):
            H, KV = blk.n_heads, blk.n_kv
            h = _rms_norm(x, blk.ln1, self.eps)
            q, k, v = blk.qkv(h)
            q = q.view(B, T, H, D).transpose(1, 2)
            k = k.view(B, T, KV, D).transpose(1, 2)
            v = v.view(B, T, KV, D).transpose(1, 2)
            q = q * cos + _rotate(q) * sin
            k = k * cos + _rotate(k) * sin
            k = torch.cat([past[2 * i], k], dim=2)
            v = torch.cat([past[2 * i + 1], v], dim=2)
            presents += [k, v]
            if H != KV:  # GQA as unsqueeze/expand/reshape: the pattern the CPU plugin fuses with the cache
                k = k[:, :, None].expand(B, KV, H // KV, S, D).reshape(B, H, S, D)
                v = v[:, :, None].expand(B, KV, H // KV, S, D).reshape(B, H, S, D)
            o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
            x = x + blk.o(o.transpose(1, 2).reshape(B, T, H * D))[0]
            h = _rms_norm(x, blk.ln2, self.eps)
            gate, up = blk.gate_up(h)
            x = x + blk.down(F.silu(gate) * up)[0]
        return (self.head(_rms_norm(x, self.norm, self.eps))[0], *presents)


def _kv_name(kind: str, i: int) -> str:
    return f"{kind}.{i // 2}.{'key' if i % 2 == 0 else 'value'}"


def convert_graph(model: LeanModel) -> Any:
    """The float model as a stateful `openvino.Model` with optimum-intel's input/output names."""
    from leanlm.runtime.openvino import require_openvino
    from leanlm.runtime.torch_eager import _is_plain

    ov = require_openvino()
    if model.task != "causal-lm" or not isinstance(model.module, nn.Module):
        raise UnsupportedError(f"the OpenVINO decoder converts PyTorch causal-lm models; this one is "
                               f"{model.task} on {model.backend}")
    hf = model.module
    if not _is_plain(hf):
        raise UnsupportedError("the OpenVINO decoder converts float models; quantize with its weights option instead")
    check_supported(hf)
    with torch.no_grad():
        wrapper = _ExportLlama(copy.deepcopy(hf).float().cpu().eval()).eval()
    L = len(wrapper.layers)
    past = tuple(torch.zeros(1, wrapper.layers[i // 2].n_kv, 3, wrapper.head_dim) for i in range(2 * L))
    example = {"input_ids": torch.ones(1, 4, dtype=torch.long), "attention_mask": torch.ones(1, 7, dtype=torch.long),
               "position_ids": torch.arange(3, 7)[None], "past": past}
    from leanlm.runtime.onnx_export import _quiet_export

    with torch.no_grad(), _quiet_export():
        graph = ov.convert_model(wrapper, example_input=example)
    for port, name in zip(graph.inputs, ["input_ids", "attention_mask", "position_ids"]):
        port.get_tensor().set_names({name})
    for i, port in enumerate(graph.inputs[3:]):
        port.get_tensor().set_names({_kv_name("past_key_values", i)})
    graph.outputs[0].get_tensor().set_names({"logits"})
    for i, port in enumerate(graph.outputs[1:]):
        port.get_tensor().set_names({_kv_name("present", i)})
    _make_stateful(graph, 2 * L)
    return graph


def _make_stateful(graph: Any, n_cache: int) -> None:
    """Hide the cache inputs/outputs as state; add beam_idx (GenAI's input; we feed [0])."""
    import openvino as ov
    from openvino import opset13 as ops
    from openvino._offline_transformations import apply_make_stateful_transformation

    beam = ops.parameter(ov.PartialShape([-1]), ov.Type.i32, name="beam_idx")
    beam.output(0).get_tensor().set_names({"beam_idx"})
    graph.add_parameters([beam])
    for i in range(n_cache):
        port = graph.input(_kv_name("past_key_values", i))
        consumers = port.get_target_inputs()
        gathered = ops.gather(port, beam, ops.constant(0))  # reorder by beam: the fused kernel's pattern
        for c in consumers:
            c.replace_source_output(gathered.output(0))
    graph.validate_nodes_and_infer_types()
    apply_make_stateful_transformation(graph, {_kv_name("past_key_values", i): _kv_name("present", i)
                                               for i in range(n_cache)})
    # a fresh state is (batch, kv heads, 0, head dim) zeros, batch taken from input_ids
    batch = ops.gather(ops.shape_of(graph.input("input_ids"), "i64"), ops.constant([0]), ops.constant(0))
    for op in graph.get_ops():
        if op.get_type_name() == "ReadValue":
            shape = op.get_output_partial_shape(0)
            dims = [batch] + [ops.constant(np.array([shape[j].get_length() if j != 2 else 0], np.int64))
                              for j in (1, 2, 3)]
            op.set_arguments([ops.broadcast(ops.constant(0.0, ov.Type.f32), ops.concat(dims, 0))])
    graph.validate_nodes_and_infer_types()


def compress(graph: Any, config: OpenVinoDecoder) -> Any:
    """NNCF weight compression of the IR (data-free), as the config asks; float graphs pass through."""
    if config.nncf_mode is None:
        return graph
    try:
        import nncf
    except ImportError:
        raise UnsupportedError("OpenVINO weight compression needs NNCF: pip install 'leanlm[openvino]'") from None
    logging.getLogger("nncf").setLevel(logging.WARNING)  # its bit-width table is INFO
    kwargs: dict[str, Any] = {"mode": getattr(nncf.CompressWeightsMode, config.nncf_mode)}
    if config.weights == "int4":
        from nncf.quantization.advanced_parameters import AdvancedCompressionParameters, GroupSizeFallbackMode

        kwargs.update(group_size=config.group_size, ratio=float(config.ratio), all_layers=config.all_layers,
                      advanced_parameters=AdvancedCompressionParameters(
                          group_size_fallback_mode=GroupSizeFallbackMode(config.group_fallback)))
    try:
        return nncf.compress_weights(graph, **kwargs)
    except nncf.errors.InvalidGroupSizeError:
        raise UnsupportedError(f"int4 group_size {config.group_size} does not divide every layer's input width; "
                               "choose a smaller group_size (32) or -1 (per channel)") from None


def with_logits_to_keep(graph: Any) -> Any:
    """Add input `logits_to_keep` (i64 [1]): the head runs on the last n positions only."""
    import openvino as ov
    from openvino import opset13 as ops

    node = graph.output("logits").get_node().input_value(0).get_node()
    while node.get_type_name() != "MatMul":  # Convert ops may sit between the head and the Result
        node = node.input_value(0).get_node()
    keep = ops.parameter(ov.PartialShape([1]), ov.Type.i64, name="logits_to_keep")
    keep.output(0).get_tensor().set_names({"logits_to_keep"})
    hidden = node.input_value(0)
    last = ops.slice(hidden, ops.negative(keep), ops.constant(np.array([np.iinfo(np.int64).max], np.int64)),
                     ops.constant(np.array([1], np.int64)), ops.constant(np.array([1], np.int64)))
    node.input(0).replace_source_output(last.output(0))
    graph.add_parameters([keep])
    graph.validate_nodes_and_infer_types()
    return graph
