"""Block quantization throughput: zerolib's native kernels (each SIMD path) vs the eager PyTorch
reference and vs copy bandwidth (torch clone), all measured in this run.

    PYTHONPATH=$PWD python benchmarks/bench_quant.py [--numel 32M] [--threads 2]

GB/s counts bytes read plus written (quantize int8: 4 in + ~1 out per value; dequantize: ~1 in
+ 4 out). Prints medians and ratios; asserts nothing.
"""
from __future__ import annotations

import argparse

import torch

from op_builder import QuantizerBuilder, runnable_simd_levels
from zerolib.ops.loader import load_op
from zerolib.ops.quant_reference import dequantize_reference, quantize_reference

from bench_cpu_adam import median_ms, parse_size  # noqa: E402  (same folder; run as a script)


def bytes_moved(numel: int, bits: int, block_size: int, decode: bool) -> int:
    packed = numel * bits // 8 + 4 * (numel // block_size)
    return numel * 4 + packed if not decode else packed + numel * 4


def row(label: str, ms: float, nbytes: int, copy_gbps: float | None = None, reference_ms: float | None = None) -> float:
    gbps = nbytes / (ms * 1e-3) / 1e9
    extra = ""
    if copy_gbps:
        extra += f"  {gbps / copy_gbps * 100:5.0f}% of copy bandwidth"
    if reference_ms:
        extra += f"  {reference_ms / ms:6.1f}x vs eager torch"
    print(f"  {label:<44} {ms:8.2f} ms {gbps:6.1f} GB/s{extra}")
    return gbps


def bench(numel: int, repeats: int, bits: int, block_size: int) -> None:
    x = torch.randn(numel)
    print(f"\n== int{bits} symmetric, block {block_size}, {numel / 1e6:.0f}M fp32 values, "
          f"{torch.get_num_threads()} threads, median of {repeats} ==")
    # clone allocates its output: its time is mostly page faults on the fresh buffer. copy_ into an
    # existing buffer is the machine's copy bandwidth; ratios below are against that (stricter).
    row("torch clone (allocates: page faults)", median_ms(x.clone, repeats), numel * 8)
    target = torch.empty_like(x)
    copy_gbps = row("torch copy_ into a buffer (copy bandwidth)", median_ms(lambda: target.copy_(x), repeats), numel * 8)
    q_bytes, d_bytes = bytes_moved(numel, bits, block_size, False), bytes_moved(numel, bits, block_size, True)
    reference = quantize_reference(x, bits, block_size, True)
    ref_q = row("eager torch quantize", median_ms(lambda: quantize_reference(x, bits, block_size, True), repeats),
                q_bytes)
    ref_q_ms = q_bytes / ref_q / 1e6
    ref_d = row("eager torch dequantize", median_ms(
        lambda: dequantize_reference(*reference, numel, bits, block_size, True), repeats), d_bytes)
    ref_d_ms = d_bytes / ref_d / 1e6
    for level in runnable_simd_levels():
        op = load_op(QuantizerBuilder, simd=level, require_native=True)
        data, scales, zero = op.call("quantize", x, bits, block_size, True)
        wire = torch.empty(data.numel() + 4 * scales.numel(), dtype=torch.uint8)
        wire_views = (wire[: data.numel()], wire[data.numel():].view(torch.float32), None)
        q_ms = median_ms(lambda: op.call("quantize", x, bits, block_size, True, *wire_views), repeats)
        d_ms = median_ms(lambda: op.call("dequantize", data, scales, zero, numel, bits, block_size, True, target),
                         repeats)
        alloc_ms = median_ms(lambda: op.call("dequantize", data, scales, zero, numel, bits, block_size, True), repeats)
        row(f"zerolib quantize, out= [{level}]", q_ms, q_bytes, copy_gbps, ref_q_ms)
        row(f"zerolib dequantize, out= [{level}]", d_ms, d_bytes, copy_gbps, ref_d_ms)
        row(f"zerolib dequantize, allocating [{level}]", alloc_ms, d_bytes, copy_gbps, ref_d_ms)
        row(f"zerolib quantize + dequantize, out= [{level}]", q_ms + d_ms, q_bytes + d_bytes, copy_gbps,
            ref_q_ms + ref_d_ms)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--numel", default="32M")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    for bits in (8, 4):
        bench(parse_size(args.numel), args.repeats, bits, 256)


if __name__ == "__main__":
    main()
