"""Block quantization (reference and every native SIMD path) against the PyTorch reference.

Tolerances: codes and scales are computed with the same fp32 operations, so native codes,
scales and zero points equal the reference's exactly. Dequantized values may differ in the last
bits: the kernel computes code * scale + bias in one fused multiply-add where the reference
rounds twice, and the sum may nearly cancel, so the bound is relative to the operands, not the
result: |diff| <= 1e-6 * (|bias| + 256 * scale), bias being -offset * scale or the zero point. Every value is reproduced within half
its block's scale, plus the fp32 rounding of the value itself: scale / 2 * (1 + 1e-5) + 1e-6 * |x|
(a value that lies halfway between two levels is off by exactly scale / 2 before rounding).
"""
from __future__ import annotations

import itertools

import pytest
import torch

from zerolib.ops import QuantizedTensor, dequantize, dequantize_reduce, quantize, wire_nbytes
from zerolib.ops.quant_reference import dequantize_reduce_reference, dequantize_reference, quantize_reference

SIZES = (1, 7, 1001, 65537)
FORMATS = list(itertools.product((8, 4), (True, False)))


def quantize_with(implementation, x, bits, block_size, symmetric):
    if implementation == "reference":
        data, scales, zero_points = quantize_reference(x, bits, block_size, symmetric)
        return QuantizedTensor(data, scales, None if symmetric else zero_points, x.numel(), x.shape, bits, block_size)
    from op_builder import QuantizerBuilder
    from zerolib.ops.loader import load_op

    op = load_op(QuantizerBuilder, simd=implementation, require_native=True)
    data, scales, zero_points = op.call("quantize", x.contiguous().view(-1), bits, block_size, symmetric)
    return QuantizedTensor(data, scales, None if symmetric else zero_points, x.numel(), x.shape, bits, block_size)


def assert_within_half_scale(x, values, q):
    scale = q.scales.repeat_interleave(q.block_size)[: q.numel]
    error = (x.float().reshape(-1) - values.reshape(-1)).abs()
    bound = scale / 2 * (1 + 1e-5) + 1e-6 * x.float().reshape(-1).abs() + 1e-30
    assert bool((error <= bound).all()), f"max error/scale {(error / scale.clamp_min(1e-30)).max().item():.4f} > 0.5"


@pytest.mark.parametrize("bits,symmetric", FORMATS, ids=[f"int{b}-{'sym' if s else 'asym'}" for b, s in FORMATS])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("block_size", [2, 64, 1000])
def test_matches_reference_and_error_bound(implementation, bits, symmetric, dtype, block_size):
    generator = torch.Generator().manual_seed(bits * 10 + block_size)
    for numel in SIZES:
        x = (torch.randn(numel, generator=generator) * 3 + 0.5).to(dtype)
        q = quantize_with(implementation, x, bits, block_size, symmetric)
        ref_data, ref_scales, ref_zero = quantize_reference(x, bits, block_size, symmetric)
        assert torch.equal(q.data, ref_data), f"numel={numel}: codes differ from the reference"
        assert torch.equal(q.scales, ref_scales), f"numel={numel}: scales differ"
        if not symmetric:
            assert torch.equal(q.zero_points, ref_zero), f"numel={numel}: zero points differ"
        values = dequantize(q) if implementation != "reference" else dequantize_reference(
            q.data, q.scales, ref_zero, numel, bits, block_size, symmetric)
        expected = dequantize_reference(ref_data, ref_scales, ref_zero, numel, bits, block_size, symmetric)
        scale = q.scales.repeat_interleave(block_size)[:numel]
        bias = scale * 128 if symmetric else ref_zero.repeat_interleave(block_size)[:numel].abs()
        difference = (values.reshape(-1) - expected).abs()
        assert bool((difference <= 1e-6 * (bias + 256 * scale)).all()), f"numel={numel}: dequantized values differ"
        assert_within_half_scale(x, values, q)


@pytest.mark.parametrize("bits,symmetric", FORMATS, ids=[f"int{b}-{'sym' if s else 'asym'}" for b, s in FORMATS])
def test_dequantize_reduce_sums_and_requantizes(implementation, bits, symmetric):
    generator = torch.Generator().manual_seed(7)
    xs = [torch.randn(3001, generator=generator) for _ in range(3)]
    qs = [quantize_with(implementation, x, bits, 256, symmetric) for x in xs]
    # The truth: each input decoded on its own, then summed in fp32.
    expected = sum(dequantize_reference(q.data, q.scales, q.zero_points, q.numel, bits, 256, symmetric) for q in qs)
    if implementation == "reference":
        empty = torch.empty(0)
        inputs = ([q.data for q in qs], [q.scales for q in qs], [empty if q.zero_points is None else q.zero_points
                                                                 for q in qs])
        total, *_ = dequantize_reduce_reference(*inputs, 3001, bits, 256, symmetric, False)
        _, data, scales, zero_points = dequantize_reduce_reference(*inputs, 3001, bits, 256, symmetric, True)
        requantized = QuantizedTensor(data, scales, None if symmetric else zero_points, 3001, (3001,), bits, 256)
        requantized_values = dequantize_reference(data, scales, zero_points, 3001, bits, 256, symmetric)
    else:
        total = dequantize_reduce(qs)
        out = torch.full((3001,), float("nan"))
        assert dequantize_reduce(qs, out=out) is out
        torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
        requantized = dequantize_reduce(qs, requantize=True)
        requantized_values = dequantize(requantized)
    torch.testing.assert_close(total, expected, rtol=1e-5, atol=1e-5)
    assert (requantized.bits, requantized.block_size, requantized.symmetric) == (bits, 256, symmetric)
    assert_within_half_scale(expected, requantized_values, requantized)


def test_shapes_sizes_and_wire_round_trip(native_ops_built):
    x = torch.randn(3, 5, 7)
    for bits, symmetric in FORMATS:
        q = quantize(x, bits=bits, block_size=16, symmetric=symmetric)
        assert dequantize(q, torch.bfloat16).shape == x.shape and dequantize(q, torch.bfloat16).dtype == torch.bfloat16
        wire = q.to_wire()
        assert wire.dtype == torch.uint8 and wire.numel() == wire_nbytes(x.numel(), bits, 16, symmetric)
        back = QuantizedTensor.from_wire(wire, x.shape, bits, 16, symmetric)
        send_buffer = torch.zeros(wire.numel() + 8, dtype=torch.uint8)
        in_place = quantize(x, bits=bits, block_size=16, symmetric=symmetric, out=send_buffer[8:])
        assert torch.equal(send_buffer[8:], wire) and in_place.data.data_ptr() == send_buffer[8:].data_ptr()
        assert torch.equal(dequantize(back), dequantize(q))
        out = torch.empty(x.numel())
        assert dequantize(q, out=out) is out and torch.equal(out.view(x.shape), dequantize(q))
    empty = quantize(torch.empty(0))
    assert empty.data.numel() == 0 and dequantize(empty).numel() == 0


def test_bad_inputs_are_named(native_ops_built):
    with pytest.raises(ValueError, match="bits must be 8 or 4"):
        quantize(torch.randn(10), bits=3)
    with pytest.raises(ValueError, match="block_size must be even"):
        quantize(torch.randn(10), block_size=7)
    with pytest.raises(TypeError, match="dtype torch.int32"):
        quantize(torch.ones(10, dtype=torch.int32))
    a, b = quantize(torch.randn(10)), quantize(torch.randn(12))
    with pytest.raises(ValueError, match="input 1 has numel=12"):
        dequantize_reduce([a, b])
    with pytest.raises(ValueError, match="expected .* bytes"):
        QuantizedTensor.from_wire(torch.zeros(3, dtype=torch.uint8), (10,), 8, 256, True)
    with pytest.raises(ValueError, match="out must be a contiguous float32 tensor of 10"):
        dequantize(a, out=torch.empty(11))
    broken = QuantizedTensor(a.data[:-1], a.scales, None, a.numel, a.shape, a.bits, a.block_size)
    with pytest.raises(RuntimeError, match="data must be contiguous uint8"):
        dequantize(broken)
