"""Weight-only quantized weights for CPU: int8 (per channel or group) and int4 (group-wise).

Shared by int8/int4-weight-only, GPTQ and mixed precision. A quantized weight is a tensor
subclass that replaces `nn.Linear.weight`, so the module tree is unchanged: the torch backend
saves it in `weights.pt` and `load_state_dict(assign=True)` puts it back, no restore hook needed.

Why our own subclass rather than torchao's (measured on this CPU, batch-1 GEMV, 1 thread):
  * torchao's `Int8Tensor` weight-only path converts the whole weight to float on every call;
  * ATen's CPU weight-only kernels (`_weight_int8pack_mm`, `_weight_int4pack_mm_for_cpu`) are
    ~2x faster than fp32 GEMV with bf16 activations but 5-15x slower with fp32 ones, so
    activations go through bf16 here (the fp32 model stays fp32 around the layer);
  * `Int4OpaqueTensor` serialises the kernel's packed layout, which is chosen per CPU ISA. We
    store plain nibbles + bf16 scales/zeros (portable) and pack for the kernel lazily, per process;
  * those kernels are GEMV-shaped: with many rows (prefill, encoder batches) they are 10-40x
    slower than the bf16 GEMM (AMX / avx512_bf16), so above `KERNEL_MAX_ROWS` rows we
    dequantize the weight to bf16 and use the GEMM;
  * `_dyn_quant_matmul_4bit` (KleidiAI) has no x86 kernel: ~11x slower than fp32 GEMV here.

int4 layout is tinygemm's: w ~= (q - 8) * scale + zero with q in [0, 15], one (scale, zero) per
`group_size` input columns; scale and zero are bf16 values (quantizers here round them first,
so the error they see is the error the kernel computes).
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torchao.utils import TorchAOBaseTensor

aten = torch.ops.aten
# Rows (tokens) up to which the GEMV kernels beat dequantize + bf16 GEMM (measured, 1 thread,
# 1536x576: int4 kernel ~70 us/row vs ~2 ms to dequantize; int8 ~30 us/row vs ~0.5 ms).
KERNEL_MAX_ROWS = {"int4": 16, "int8": 24}
INT4_GROUP_SIZES = (32, 64, 128, 256)  # what _weight_int4pack_mm_for_cpu accepts
_BF16 = torch.bfloat16


# --------------------------------------------------------------------------- int4 primitives

def int4_qparams(w: torch.Tensor, group_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Round-to-nearest asymmetric int4 params per group. w: (N, K) -> scale, zero: (N, K/g) fp32."""
    g = w.float().reshape(w.shape[0], -1, group_size)
    lo, hi = g.amin(-1), g.amax(-1)
    scale = ((hi - lo) / 15).clamp(min=1e-6)
    zero = lo + 8 * scale
    return scale.to(_BF16).float(), zero.to(_BF16).float()


def int4_quantize(w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
    """w: (N, K), scale/zero: (N, K/g) -> q (N, K) uint8 in [0, 15]. Also works column-wise (g=K)."""
    g = w.shape[1] // scale.shape[1]
    s = scale.repeat_interleave(g, 1)
    z = zero.repeat_interleave(g, 1)
    return torch.clamp(torch.round((w.float() - z) / s) + 8, 0, 15).to(torch.uint8)


def int4_dequantize(q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, dtype=torch.float32) -> torch.Tensor:
    n, k = q.shape
    s = scale.float().unsqueeze(-1)  # (N, G, 1): broadcast over each group, no repeat_interleave
    w = torch.addcmul(zero.float().unsqueeze(-1) - 8 * s, q.reshape(n, scale.shape[1], -1).float(), s)
    return w.reshape(n, k).to(dtype)  # fp32 math then one cast: CPU bf16 elementwise ops are slow


def pack_nibbles(q: torch.Tensor) -> torch.Tensor:
    """(N, K) uint8 in [0, 15] -> (N, K/2) uint8; column 2j in the low nibble, 2j+1 in the high."""
    return (q[:, 0::2] | (q[:, 1::2] << 4)).contiguous()


def unpack_nibbles(p: torch.Tensor) -> torch.Tensor:
    return torch.stack([p & 0xF, p >> 4], dim=-1).reshape(p.shape[0], -1)


# --------------------------------------------------------------------------- tensor subclasses

class _WeightOnly(TorchAOBaseTensor):
    """Common parts: lazily built kernel state (never serialised) and the linear dispatch."""

    def __getstate__(self) -> dict[str, Any]:
        # the kernel layout depends on this machine's CPU: rebuild it after loading
        return {k: v for k, v in self.__dict__.items() if k != "_kernel"}

    def kernel_state(self) -> Any:
        state = self.__dict__.get("_kernel")
        if state is None:
            state = self._build_kernel()
            self.__dict__["_kernel"] = state
        return state

    def _build_kernel(self) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    def _gemv(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def nbytes_packed(self) -> int:
        return sum(getattr(self, n).numel() * getattr(self, n).element_size() for n in self.tensor_data_names)


def _linear(x: torch.Tensor, w: _WeightOnly, bias: torch.Tensor | None) -> torch.Tensor:
    # x: (..., K) -> (..., N); compute in bf16, return in x's dtype
    out_dtype = x.dtype
    x2 = x.reshape(-1, x.shape[-1]).to(_BF16)
    # the GEMV kernels have no backward: training through the layer (LoRA on this base) takes the GEMM
    if x2.shape[0] <= KERNEL_MAX_ROWS[w.kind] and w.kernel_ok() and not (x.requires_grad and torch.is_grad_enabled()):
        y = w._gemv(x2.contiguous())
    else:
        y = F.linear(x2, w.dequantize(_BF16))
    y = y.reshape(*x.shape[:-1], w.shape[0]).to(out_dtype)
    if bias is not None:
        y = y + bias
    return y


class Int4WeightCPU(_WeightOnly):
    """int4 group-wise weight (tinygemm convention). qdata: (N, K/2) uint8 nibbles; scale, zero: (N, K/g) bf16."""

    tensor_data_names = ["qdata", "scale", "zero"]
    tensor_attribute_names = ["group_size", "shape", "dtype"]
    kind = "int4"

    def __new__(cls, qdata, scale, zero, group_size, shape, dtype):
        return torch.Tensor._make_wrapper_subclass(cls, shape, dtype=dtype, device=qdata.device, requires_grad=False)

    def __init__(self, qdata, scale, zero, group_size, shape, dtype):
        super().__init__()
        self.qdata, self.scale, self.zero = qdata, scale, zero
        self.group_size = int(group_size)

    @classmethod
    def from_quantized(cls, q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, dtype=torch.float32) -> "Int4WeightCPU":
        """q: (N, K) uint8 in [0, 15]; scale, zero: (N, K/g)."""
        n, k = q.shape
        return cls(pack_nibbles(q.to(torch.uint8)), scale.to(_BF16).contiguous(), zero.to(_BF16).contiguous(),
                   k // scale.shape[1], torch.Size([n, k]), dtype)

    @classmethod
    def from_float(cls, w: torch.Tensor, group_size: int) -> "Int4WeightCPU":
        scale, zero = int4_qparams(w, group_size)
        return cls.from_quantized(int4_quantize(w, scale, zero), scale, zero, w.dtype)

    def kernel_ok(self) -> bool:
        return self.group_size in INT4_GROUP_SIZES

    def _build_kernel(self) -> tuple[torch.Tensor, torch.Tensor]:
        q = unpack_nibbles(self.qdata).to(torch.int32)
        scale, zero = self.scale, self.zero
        pad = (-q.shape[0]) % 16  # the packing wants N % 16 == 0; padded rows are sliced off
        if pad:
            q = F.pad(q, (0, 0, 0, pad), value=8)
            scale, zero = F.pad(scale, (0, 0, 0, pad)), F.pad(zero, (0, 0, 0, pad))
        packed = aten._convert_weight_to_int4pack_for_cpu(q.contiguous(), 1)
        scale_zero = torch.stack([scale.t(), zero.t()], dim=-1).contiguous()  # (G, N, 2) bf16
        return packed, scale_zero

    def _gemv(self, x: torch.Tensor) -> torch.Tensor:
        packed, scale_zero = self.kernel_state()
        y = aten._weight_int4pack_mm_for_cpu(x, packed, self.group_size, scale_zero)
        return y[:, : self.shape[0]]

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return int4_dequantize(unpack_nibbles(self.qdata), self.scale, self.zero, dtype)


class Int8WeightCPU(_WeightOnly):
    """int8 symmetric weight. qdata: (N, K) int8; scale: (N, K/g) fp32 (g = K: per output channel)."""

    tensor_data_names = ["qdata", "scale"]
    tensor_attribute_names = ["shape", "dtype"]
    kind = "int8"

    def __new__(cls, qdata, scale, shape, dtype):
        return torch.Tensor._make_wrapper_subclass(cls, shape, dtype=dtype, device=qdata.device, requires_grad=False)

    def __init__(self, qdata, scale, shape, dtype):
        super().__init__()
        self.qdata, self.scale = qdata, scale

    @classmethod
    def from_float(cls, w: torch.Tensor, group_size: int = 0) -> "Int8WeightCPU":
        n, k = w.shape
        g = group_size or k
        wg = w.float().reshape(n, k // g, g)
        scale = (wg.abs().amax(-1) / 127).clamp(min=1e-8)  # (N, G)
        q = torch.clamp(torch.round(wg / scale.unsqueeze(-1)), -127, 127).to(torch.int8).reshape(n, k)
        return cls(q, scale, w.shape, w.dtype)

    def kernel_ok(self) -> bool:
        return self.scale.shape[1] == 1  # ATen's int8 kernel takes one scale per output channel

    def _build_kernel(self) -> torch.Tensor:
        return self.scale[:, 0].to(_BF16).contiguous()

    def _gemv(self, x: torch.Tensor) -> torch.Tensor:
        return aten._weight_int8pack_mm(x, self.qdata, self.kernel_state())

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        n, k = self.shape
        w = self.qdata.reshape(n, self.scale.shape[1], -1).float() * self.scale.float().unsqueeze(-1)
        return w.reshape(n, k).to(dtype)


for _cls in (Int4WeightCPU, Int8WeightCPU):

    @_cls.implements(aten.linear.default)
    @_cls.implements_torch_function(F.linear)
    def _(func, types, args, kwargs):
        return _linear(args[0], args[1], args[2] if len(args) > 2 else kwargs.get("bias"))


torch.serialization.add_safe_globals([Int4WeightCPU, Int8WeightCPU])


# --------------------------------------------------------------------------- module helpers

def set_weight(linear: torch.nn.Linear, weight: torch.Tensor) -> None:
    """Replace a Linear's weight (untying it from anything it shared storage with)."""
    linear.weight = torch.nn.Parameter(weight, requires_grad=False)


def is_weight_only(t: Any) -> bool:
    return isinstance(t, _WeightOnly)
