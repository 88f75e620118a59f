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


def fused_adamw_case(n, with_param_cast: bool):
    param = torch.randn(n, requires_grad=True)
    param.grad = torch.randn(n)
    optimizer = torch.optim.AdamW([param], lr=1e-3, weight_decay=0.01, fused=True)
    copy = torch.empty(n, dtype=torch.bfloat16)

    def step():
        optimizer.step()
        if with_param_cast:
            copy.copy_(param.detach())  # the separate cast a mixed-precision step needs

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


def report(label, ms, n, bytes_per_param, baseline_ms=None, baseline_name=""):
    gbps = bytes_per_param * n / (ms * 1e-3) / 1e9
    ratio = f"  {baseline_ms / ms:5.2f}x vs {baseline_name}" if baseline_ms else ""
    print(f"  {label:<46} {ms:8.1f} ms/step {gbps:6.1f} GB/s{ratio}")
    return ms


def bench_size(n: int, repeats: int) -> None:
    print(f"\n== {n / 1e6:.0f}M params, {torch.get_num_threads()} threads, median of {repeats} ==")
    levels = [level for level in runnable_simd_levels() if level != "scalar"]
    ceilings = {}
    for level in levels:
        run = ceiling_kernel(level)
        p, g, m, v = (torch.randn(n) for _ in range(4))
        ms = median_ms(lambda: run(p.data_ptr(), g.data_ptr(), m.data_ptr(), v.data_ptr(), n, torch.get_num_threads()),
                       repeats)
        ceilings[level] = report(f"memory ceiling (4R+3W fp32, {level} build)", ms, n, BYTES_FP32)
        del p, g, m, v
    fused = report("torch AdamW(fused=True) fp32", median_ms(fused_adamw_case(n, False), repeats), n, BYTES_FP32)
    ds_step, why = deepspeed_case(n)
    deepspeed = report("DeepSpeedCPUAdam fp32", median_ms(ds_step, repeats), n, BYTES_FP32) if ds_step else None
    if not ds_step:
        print(f"  DeepSpeedCPUAdam: not measured ({why})")
    best_name, best = ("DeepSpeed", deepspeed) if deepspeed and deepspeed < fused else ("fused AdamW", fused)
    for level in levels:
        ms = median_ms(zerolib_case(n, torch.float32, torch.float32, None, level), repeats)
        report(f"zerolib fp32 [{level}]", ms, n, BYTES_FP32, best, best_name)
        print(f"  {'':<46} {'':>8}    {ceilings[level] / ms * 100:5.0f}% of the {level} ceiling")
    cast_baseline = report("fused AdamW + bf16 param cast", median_ms(fused_adamw_case(n, True), repeats), n,
                           BYTES_FP32 + 6)
    for level in levels:
        ms = median_ms(zerolib_case(n, torch.bfloat16, torch.float32, torch.bfloat16, level), repeats)
        report(f"zerolib bf16 grad -> fp32 + bf16 copy [{level}]", ms, n, BYTES_MIXED, cast_baseline,
               "fused+cast")
        for grad_dtype, bytes_per_param in ((torch.float32, BYTES_BF16_MOMENTS + 2), (torch.bfloat16, BYTES_BF16_MOMENTS)):
            name = "fp32" if grad_dtype == torch.float32 else "bf16"
            ms = median_ms(zerolib_case(n, grad_dtype, torch.bfloat16, None, level), repeats)
            report(f"zerolib bf16 moments, {name} grads [{level}]", ms, n, bytes_per_param, fused, "fused AdamW")


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
