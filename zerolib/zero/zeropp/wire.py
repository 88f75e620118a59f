"""Quantized pieces laid end to end in one uint8 buffer, as ZeRO++'s collectives send them.

A collective moves ``count`` pieces of ``numel`` values each; every piece is one
``QuantizedTensor.to_wire()`` layout (codes, then fp32 scales) of ``piece_nbytes`` bytes, so
piece p starts at byte ``p * piece_nbytes``. Every size follows from ``numel``, the bits and
the block size, so peers allocate receive buffers without exchanging metadata.

Non-finite values: the native kernel's block maximum may skip a NaN, which would let an fp16
overflow (or a diverged weight) pass as finite numbers. :func:`quantize_into` therefore
poisons every scale of a piece whose input holds a NaN or an infinity, so every value the
receivers decode from it is NaN and the overflow check after the reduction still fires.
"""
from __future__ import annotations

import torch

from zerolib.ops import QuantizedTensor, dequantize, dequantize_reduce, quantize, wire_nbytes


def piece_nbytes(numel: int, bits: int, block_size: int) -> int:
    """Bytes of one symmetric quantized piece of ``numel`` values (codes + scales).

    ``block_size`` must be a multiple of 8 (config ``zero_quantized_block_size``): the codes
    then fill a multiple of 4 bytes, so every piece's fp32 scales stay 4-byte aligned."""
    if block_size % 8:
        raise ValueError(f"ZeRO++ block size must be a multiple of 8, got {block_size}")
    return wire_nbytes(numel, bits, block_size, True)


def piece(wire: torch.Tensor, index: int, numel: int, bits: int, block_size: int) -> QuantizedTensor:
    """A view of piece ``index`` of ``wire``."""
    size = piece_nbytes(numel, bits, block_size)
    return QuantizedTensor.from_wire(wire[index * size:(index + 1) * size], (numel,), bits, block_size, True)


def quantize_into(x: torch.Tensor, out: torch.Tensor, bits: int, block_size: int) -> None:
    """Quantizes ``x`` into the uint8 wire slice ``out``; a non-finite ``x`` decodes as all NaN."""
    q = quantize(x, bits, block_size, True, out=out)
    if x.numel():
        low, high = torch.aminmax(x.detach())
        # (high - low) * 0 is 0 for finite inputs and NaN otherwise; no host sync needed.
        q.scales.add_((high.float() - low.float()) * 0)


def dequantize_pieces(wire: torch.Tensor, count: int, numel: int, bits: int, block_size: int,
                      out: torch.Tensor) -> None:
    """Decodes ``count`` pieces into consecutive ``numel``-element slices of ``out`` (any float dtype)."""
    staging = None if out.dtype == torch.float32 else torch.empty(numel, dtype=torch.float32, device=out.device)
    for index in range(count):
        target = out[index * numel:(index + 1) * numel]
        q = piece(wire, index, numel, bits, block_size)
        if staging is None:
            dequantize(q, out=target)
        else:
            target.copy_(dequantize(q, out=staging))


def sum_pieces(wire: torch.Tensor, indices: list[int], numel: int, bits: int, block_size: int,
               out: torch.Tensor) -> torch.Tensor:
    """Writes the fp32 sum of the pieces ``indices`` of ``wire`` into fp32 ``out`` (zeros if none)."""
    if not indices:
        return out.zero_()
    return dequantize_reduce([piece(wire, i, numel, bits, block_size) for i in indices], out=out)
