"""Block quantization in plain PyTorch with the native kernels' exact layout (fallback and oracle).

See csrc/quantization/quantize.cpp and docs/ops.md for the format.
"""
from __future__ import annotations

import torch


def check_format(bits: int, block_size: int) -> None:
    if bits not in (8, 4):
        raise ValueError(f"quantize: bits must be 8 or 4, got {bits}")
    if block_size < 2 or block_size % 2:
        raise ValueError(f"quantize: block_size must be even and >= 2, got {block_size}")


def _code_offset(bits: int, symmetric: bool) -> int:
    return 1 << (bits - 1) if symmetric else 0


def quantize_reference(x: torch.Tensor, bits: int, block_size: int, symmetric: bool):
    """(data uint8, scales fp32, zero_points fp32 or empty) for ``x`` flattened."""
    check_format(bits, block_size)
    flat = x.detach().reshape(-1).float()
    numel = flat.numel()
    blocks = -(-numel // block_size)
    if numel == 0:
        empty = torch.empty(0, dtype=torch.float32, device=x.device)
        return torch.empty(0, dtype=torch.uint8, device=x.device), empty, empty.clone()
    # Pad with the last element: it lies in the last block, so min/max stay those of real values.
    padded = torch.cat([flat, flat[-1:].expand(blocks * block_size - numel)]).view(blocks, block_size)
    if symmetric:
        levels = (1 << (bits - 1)) - 1
        scales = padded.abs().amax(dim=1) / levels
        zero_points = torch.zeros(blocks, device=x.device)
    else:
        levels = (1 << bits) - 1
        zero_points = padded.amin(dim=1)
        scales = (padded.amax(dim=1) - zero_points) / levels
    inverse = torch.where(scales > 0, 1.0 / scales, torch.zeros_like(scales))
    offset = _code_offset(bits, symmetric)
    codes = ((padded - zero_points[:, None]) * inverse[:, None]).round_().add_(offset).clamp_(0, (1 << bits) - 1)
    codes = codes.to(torch.uint8).view(-1)
    codes[numel:] = offset
    if bits == 4:
        pairs = codes.view(-1, 2)
        codes = pairs[:, 0] | (pairs[:, 1] << 4)
    return codes, scales, zero_points if not symmetric else torch.empty(0, device=x.device)


def dequantize_reference(data, scales, zero_points, numel: int, bits: int, block_size: int, symmetric: bool,
                         out: torch.Tensor | None = None):
    """fp32 tensor of ``numel`` values decoded from the layout above (written to ``out`` if given)."""
    check_format(bits, block_size)
    if bits == 4:
        data = torch.stack([data & 0x0F, data >> 4], dim=1).view(-1)
    codes = data.float().view(-1, block_size)
    bias = -_code_offset(bits, symmetric) * scales if symmetric else zero_points
    values = (codes * scales[:, None] + bias[:, None]).view(-1)[:numel]
    return values if out is None else out.copy_(values)


def dequantize_reduce_reference(data, scales, zero_points, numel, bits, block_size, symmetric, requantize,
                                out: torch.Tensor | None = None):
    """Same outputs as the native op: (fp32 sum or empty, data, scales, zero_points or empties)."""
    total = sum(dequantize_reference(d, s, z, numel, bits, block_size, symmetric)
                for d, s, z in zip(data, scales, zero_points))
    empty = torch.empty(0, device=data[0].device)
    if not requantize:
        if out is not None:
            out.copy_(total)
        return total if out is None else empty, empty.to(torch.uint8), empty, empty
    return (empty, *quantize_reference(total, bits, block_size, symmetric))
