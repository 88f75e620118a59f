"""CPU Adam step time and bandwidth: zerolib (each SIMD path) vs torch fused AdamW, DeepSpeed's
DeepSpeedCPUAdam (when importable) and an Adam-shaped memory ceiling, all measured in this run.

    PYTHONPATH=$PWD python benchmarks/bench_cpu_adam.py [--sizes 50M,200M] [--threads 2]

Prints medians (ms/step), GB/s and ratios; asserts nothing. Also prints a short accuracy check
of bf16 moments (a small regression trained with fp32 vs bf16 moments).
"""
from __future__ import annotations

import argparse
import ctypes
import statistics
import time

import torch

from op_builder import AdamMemoryCeilingBuilder, runnable_simd_levels
from zerolib.ops import CPUAdam, adam_step

# Bytes moved per parameter (reads + writes), as in ZeRO-Offload's accounting.
BYTES_FP32 = 28  # p r/w 8, g 4, m r/w 8, v r/w 8
BYTES_MIXED = 28  # bf16 grad 2 (not 4), + bf16 param copy written 2
BYTES_BF16_MOMENTS = 18  # p 8, bf16 grad 2, bf16 m r/w 4, bf16 v r/w 4
HYPER = dict(lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.01, adamw_mode=True)


def median_ms(fn, repeats: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def ceiling_kernel(simd: str):
    """The Adam-shaped copy (4 reads, 3 writes, fp32) built like CPU Adam's kernels for ``simd``."""
    op = AdamMemoryCeilingBuilder(simd).load()

    class Table(ctypes.Structure):
        _fields_ = [("run", ctypes.CFUNCTYPE(None, *[ctypes.c_void_p] * 4, ctypes.c_int64, ctypes.c_int32)),
                    ("simd_path", ctypes.c_char_p)]

    return Table.from_address(op.kernel_table).run


def zerolib_case(n, grad_dtype, moment_dtype, copy_dtype, simd):
    params, grads = torch.randn(n), torch.randn(n).to(grad_dtype)
    m, v = torch.zeros(n, dtype=moment_dtype), torch.zeros(n, dtype=moment_dtype)
    copies = [torch.empty(n, dtype=copy_dtype)] if copy_dtype else None
    return lambda: adam_step([params], [grads], [m], [v], step=10, param_copies=copies, simd=simd,
                             require_native=True, **HYPER)


def fused_adamw_case(n, with_param_cast: bool, with_grad_upcast: bool = False):
    """torch's fused AdamW; optionally with the casts a bf16-gradient / bf16-parameter step needs
    around it (fused AdamW wants fp32 grads for fp32 params)."""
    param = torch.randn(n, requires_grad=True)
    param.grad = torch.randn(n)
    optimizer = torch.optim.AdamW([param], lr=1e-3, weight_decay=0.01, fused=True)
    copy = torch.empty(n, dtype=torch.bfloat16)
    bf16_grad = torch.randn(n).to(torch.bfloat16)

    def step():
        if with_grad_upcast:
            param.grad.copy_(bf16_grad)
        optimizer.step()
        if with_param_cast:
            copy.copy_(param.detach())

    return step


def deepspeed_case(n):
    try:
        from deepspeed.ops.adam import DeepSpeedCPUAdam
    except Exception as error:  # not installed, or its op fails to build
        return None, f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
    param = torch.nn.Parameter(torch.randn(n))
    param.grad = torch.randn(n)
    try:
        optimizer = DeepSpeedCPUAdam([param], lr=1e-3, weight_decay=0.01, adamw_mode=True)
    except Exception as error:
        return None, f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
    return optimizer.step, ""


def paired_ms(first, second, repeats: int, warmup: int = 2) -> tuple[float, float]:
    """Median ms of two steps timed alternately (A, B, A, B, ...): on a shared machine the load
    drifts, and interleaving exposes both sides of a ratio to the same drift."""
    for _ in range(warmup):
        first()
        second()
    times = ([], [])
    for _ in range(repeats):
        for fn, bucket in zip((first, second), times):
            start = time.perf_counter()
            fn()
            bucket.append(time.perf_counter() - start)
    return statistics.median(times[0]) * 1e3, statistics.median(times[1]) * 1e3


def line(label: str, ms: float, n: int, bytes_per_param: int, note: str = "") -> None:
    gbps = bytes_per_param * n / (ms * 1e-3) / 1e9
    print(f"  {label:<48} {ms:8.1f} ms/step {gbps:6.1f} GB/s  {note}")


def compare(n, repeats, label, ours, ours_bytes, baseline_label, baseline, baseline_bytes) -> None:
    """Time ours against a baseline, interleaved, and print both with the ratio."""
    ours_ms, baseline_ms = paired_ms(ours, baseline, repeats)
    line(label, ours_ms, n, ours_bytes, f"{baseline_ms / ours_ms:5.2f}x vs {baseline_label}")
    line(f"  ({baseline_label})", baseline_ms, n, baseline_bytes)


def bench_size(n: int, repeats: int) -> None:
    print(f"\n== {n / 1e6:.0f}M params, {torch.get_num_threads()} threads, median of {repeats}, pairs interleaved ==")
    levels = [level for level in runnable_simd_levels() if level != "scalar"]
    ds_step, why = deepspeed_case(n)
    if not ds_step:
        print(f"  DeepSpeedCPUAdam: not measured ({why})")
    for level in levels:
        ours = zerolib_case(n, torch.float32, torch.float32, None, level)
        run = ceiling_kernel(level)
        p, g, m, v = (torch.randn(n) for _ in range(4))
        threads = torch.get_num_threads()
        ceiling = lambda: run(p.data_ptr(), g.data_ptr(), m.data_ptr(), v.data_ptr(), n, threads)  # noqa: E731
        ours_ms, ceiling_ms = paired_ms(ours, ceiling, repeats)
        line(f"zerolib fp32 [{level}]", ours_ms, n, BYTES_FP32, f"{ceiling_ms / ours_ms * 100:4.0f}% of the ceiling")
        line(f"  (memory ceiling, 4R+3W fp32, {level} build)", ceiling_ms, n, BYTES_FP32)
        del p, g, m, v
        compare(n, repeats, f"zerolib fp32 [{level}]", ours, BYTES_FP32, "fused AdamW", fused_adamw_case(n, False),
                BYTES_FP32)
        if ds_step:
            compare(n, repeats, f"zerolib fp32 [{level}]", ours, BYTES_FP32, "DeepSpeedCPUAdam", ds_step, BYTES_FP32)
        del ours
        mixed = zerolib_case(n, torch.bfloat16, torch.float32, torch.bfloat16, level)
        # Byte counts cap these ratios at 34/28 = 1.21x and 40/28 = 1.43x.
        compare(n, repeats, f"zerolib bf16 grad -> fp32 + bf16 copy [{level}]", mixed, BYTES_MIXED,
                "fused AdamW + param cast", fused_adamw_case(n, True), BYTES_FP32 + 6)
        compare(n, repeats, f"zerolib bf16 grad -> fp32 + bf16 copy [{level}]", mixed, BYTES_MIXED,
                "grad upcast + fused AdamW + param cast", fused_adamw_case(n, True, with_grad_upcast=True),
                BYTES_FP32 + 12)
        del mixed
        for grad_dtype, bytes_per_param in ((torch.float32, BYTES_BF16_MOMENTS + 2),
                                            (torch.bfloat16, BYTES_BF16_MOMENTS)):
            name = "fp32" if grad_dtype == torch.float32 else "bf16"
            compare(n, repeats, f"zerolib bf16 moments, {name} grads [{level}]",
                    zerolib_case(n, grad_dtype, torch.bfloat16, None, level), bytes_per_param, "fused AdamW",
                    fused_adamw_case(n, False), BYTES_FP32)


def train_tiny_regression(moment_dtype: torch.dtype, steps: int = 300, seed: int = 0) -> float:
    """Train a 16-64-1 MLP on a fixed smooth regression with CPUAdam; return the final loss
    (mean of the last 20 steps). Used to compare bf16 moments with fp32 ones."""
    generator = torch.Generator().manual_seed(seed)
    inputs = torch.randn(512, 16, generator=generator)
    targets = torch.sin(inputs @ torch.randn(16, 1, generator=generator) * 0.5)
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(16, 64), torch.nn.Tanh(), torch.nn.Linear(64, 1))
    optimizer = CPUAdam(model.parameters(), lr=1e-2, weight_decay=0.0, moment_dtype=moment_dtype)
    losses = []
    for _ in range(steps):
        loss = torch.nn.functional.mse_loss(model(inputs), targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return statistics.fmean(losses[-20:])


def parse_size(text: str) -> int:
    text = text.strip().upper()
    scale = {"K": 10**3, "M": 10**6, "G": 10**9}.get(text[-1], 1)
    return int(float(text.rstrip("KMG")) * scale)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="50M,200M", help="comma-separated parameter counts, e.g. 1M,50M")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}; SIMD paths runnable here: {', '.join(runnable_simd_levels())}")
    for size in args.sizes.split(","):
        bench_size(parse_size(size), args.repeats)
    fp32_loss, bf16_loss = train_tiny_regression(torch.float32), train_tiny_regression(torch.bfloat16)
    print(f"\nbf16-moment accuracy: tiny MLP regression, 300 steps: final loss fp32 moments {fp32_loss:.5f}, "
          f"bf16 moments {bf16_loss:.5f} (ratio {bf16_loss / fp32_loss:.3f})")


if __name__ == "__main__":
    main()
