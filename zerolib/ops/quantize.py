"""Block-wise int8/int4 quantization: the API ZeRO++ (qwZ, qgZ) uses, and its wire layout."""
from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence

import torch

from op_builder import CUDAQuantizerBuilder, QuantizerBuilder
from zerolib.ops.loader import load_op
from zerolib.ops.quant_reference import (
    check_format,
    dequantize_reduce_reference,
    dequantize_reference,
    quantize_reference,
)

_SCALE_BYTES = 4  # scales and zero points are fp32


@dataclasses.dataclass(frozen=True)
class QuantizedTensor:
    """A tensor quantized block by block (layout in docs/ops.md).

    ``data`` is uint8 of ``wire_sizes(numel, ...)[0]`` bytes (int4: two codes per byte),
    ``scales`` fp32 per block, ``zero_points`` fp32 per block (asymmetric) or None. All sizes
    follow from ``numel``, ``bits`` and ``block_size``, so peers can allocate receive buffers.
    """

    data: torch.Tensor
    scales: torch.Tensor
    zero_points: torch.Tensor | None
    numel: int
    shape: torch.Size
    bits: int
    block_size: int

    @property
    def symmetric(self) -> bool:
        return self.zero_points is None

    def to_wire(self) -> torch.Tensor:
        """One uint8 buffer: data, then scales, then zero points (if any), back to back."""
        parts = [self.data, self.scales.view(torch.uint8)]
        if self.zero_points is not None:
            parts.append(self.zero_points.view(torch.uint8))
        return torch.cat(parts)

    @classmethod
    def from_wire(cls, buffer: torch.Tensor, shape, bits: int, block_size: int, symmetric: bool) -> QuantizedTensor:
        """Rebuild from ``to_wire()``'s buffer (views into it, no copy)."""
        shape = torch.Size(shape)
        numel = shape.numel()
        data_bytes, scale_bytes = wire_sizes(numel, bits, block_size)
        expected = wire_nbytes(numel, bits, block_size, symmetric)
        if buffer.dtype != torch.uint8 or buffer.numel() != expected:
            raise ValueError(f"QuantizedTensor.from_wire: expected {expected} uint8 bytes for shape {tuple(shape)}, "
                             f"bits={bits}, block_size={block_size}; got {buffer.numel()} of {buffer.dtype}")
        scales = buffer[data_bytes:data_bytes + scale_bytes].view(torch.float32)
        zero_points = None if symmetric else buffer[data_bytes + scale_bytes:].view(torch.float32)
        return cls(buffer[:data_bytes], scales, zero_points, numel, shape, bits, block_size)


def wire_sizes(numel: int, bits: int, block_size: int) -> tuple[int, int]:
    """(data bytes, bytes of the scales) for ``numel`` values; zero points take as many as scales."""
    check_format(bits, block_size)
    blocks = -(-numel // block_size)
    return blocks * block_size * bits // 8, blocks * _SCALE_BYTES


def wire_nbytes(numel: int, bits: int, block_size: int, symmetric: bool) -> int:
    """Size of ``QuantizedTensor.to_wire()`` for ``numel`` values."""
    data_bytes, scale_bytes = wire_sizes(numel, bits, block_size)
    return data_bytes + scale_bytes * (1 if symmetric else 2)


def _native_ops(device: torch.device, require_native: bool):
    if device.type == "cpu":
        return load_op(QuantizerBuilder, require_native=require_native)
    if device.type == "cuda":
        return load_op(CUDAQuantizerBuilder, require_native=require_native)
    return None


def quantize(x: torch.Tensor, bits: int = 8, block_size: int = 256, symmetric: bool = True, *,
             out: torch.Tensor | None = None, require_native: bool = False) -> QuantizedTensor:
    """Quantize ``x`` (fp32/bf16/fp16, any shape and size) in blocks of ``block_size`` values.

    Each value is reproduced by ``dequantize`` within half its block's scale. ``out``, a uint8
    tensor of ``wire_nbytes(x.numel(), ...)`` bytes, receives the result in the wire layout (for
    example a slice of an all-gather send buffer); the returned QuantizedTensor then views it.
    """
    check_format(bits, block_size)
    if x.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise TypeError(f"quantize: x has dtype {x.dtype}; expected float32, bfloat16 or float16")
    ops = _native_ops(x.device, require_native)
    flat = x.detach().contiguous().view(-1)
    if out is not None:
        target = QuantizedTensor.from_wire(out, x.shape, bits, block_size, symmetric)
        outputs = (target.data, target.scales, target.zero_points)
        if ops is None:
            for destination, source in zip(outputs, quantize_reference(flat, bits, block_size, symmetric)):
                if destination is not None:
                    destination.copy_(source)
        else:
            ops.call("quantize", flat, bits, block_size, symmetric, *outputs)
        return target
    if ops is None:
        data, scales, zero_points = quantize_reference(flat, bits, block_size, symmetric)
    else:
        data, scales, zero_points = ops.call("quantize", flat, bits, block_size, symmetric)
    return QuantizedTensor(data, scales, None if symmetric else zero_points, flat.numel(), x.shape, bits, block_size)


def _unpack(qs: Sequence[QuantizedTensor]):
    first = qs[0]
    for index, q in enumerate(qs):
        same = (q.numel, q.bits, q.block_size, q.symmetric) == (first.numel, first.bits, first.block_size,
                                                                 first.symmetric)
        if not same:
            raise ValueError(f"dequantize_reduce: input {index} has numel={q.numel}, bits={q.bits}, "
                             f"block_size={q.block_size}, symmetric={q.symmetric}; input 0 has numel={first.numel}, "
                             f"bits={first.bits}, block_size={first.block_size}, symmetric={first.symmetric}")
    empty = torch.empty(0, device=first.data.device)
    zero_points = [empty if q.zero_points is None else q.zero_points for q in qs]
    return [q.data for q in qs], [q.scales for q in qs], zero_points


def _check_out(out: torch.Tensor | None, numel: int, requantize: bool = False) -> None:
    if out is None:
        return
    if requantize:
        raise ValueError("dequantize_reduce: out= and requantize=True exclude each other")
    if out.dtype != torch.float32 or out.numel() != numel or not out.is_contiguous():
        raise ValueError(f"dequantize: out must be a contiguous float32 tensor of {numel} elements, "
                         f"got {out.dtype} of {out.numel()}")


def dequantize_reduce(qs: Sequence[QuantizedTensor], *, requantize: bool = False, out: torch.Tensor | None = None,
                      require_native: bool = False):
    """Sum of the dequantized inputs (same shape, bits, block size and symmetry) in fp32, in one pass.

    ``out`` (contiguous fp32, same number of elements) receives the sum and is returned, which
    avoids allocating (and page-faulting) a new buffer on every call. With ``requantize=True``
    the sum is quantized again block by block while still in cache and a QuantizedTensor of the
    inputs' format is returned instead (the CPU kernel never stores the fp32 sum).
    """
    if not qs:
        raise ValueError("dequantize_reduce: needs at least one QuantizedTensor")
    first = qs[0]
    _check_out(out, first.numel, requantize)
    data, scales, zero_points = _unpack(qs)
    ops = _native_ops(first.data.device, require_native)
    run = dequantize_reduce_reference if ops is None else functools.partial(ops.call, "dequantize_reduce")
    flat_out = None if out is None else out.view(-1)
    total, q_data, q_scales, q_zero = run(data, scales, zero_points, first.numel, first.bits, first.block_size,
                                          first.symmetric, requantize, flat_out)
    if requantize:
        return QuantizedTensor(q_data, q_scales, None if first.symmetric else q_zero, first.numel, first.shape,
                               first.bits, first.block_size)
    return out if out is not None else total.view(first.shape)


def dequantize(q: QuantizedTensor, dtype: torch.dtype = torch.float32, *, out: torch.Tensor | None = None,
               require_native: bool = False) -> torch.Tensor:
    """The values ``q`` encodes, in ``q.shape`` and ``dtype``; or written into ``out``
    (contiguous fp32 of ``q.numel`` elements, any shape), which is returned."""
    _check_out(out, q.numel)
    ops = _native_ops(q.data.device, require_native)
    zero_points = torch.empty(0, device=q.data.device) if q.zero_points is None else q.zero_points
    args = (q.data, q.scales, zero_points, q.numel, q.bits, q.block_size, q.symmetric,
            None if out is None else out.view(-1))
    values = dequantize_reference(*args) if ops is None else ops.call("dequantize", *args)
    return out if out is not None else values.view(q.shape).to(dtype)
