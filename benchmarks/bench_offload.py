"""ZeRO-3 fp32 in memory vs ZeRO-3 with offload to NVMe: peak RSS, step time, swap bandwidth.

One rank (world size 1: the machine has 2 shared cores, and per-rank memory is what offload
changes). Each mode trains in a fresh subprocess, so its peak RSS (psutil, sampled every 20 ms)
is its own. The model is built under ``zerolib.partitioned_init`` so that no full copy is made
outside the engine. The disk's raw sequential bandwidth is measured by the same script with
O_DIRECT writes and reads of a large file, and the swap I/O achieved during the optimizer
step is reported against it.

    PYTHONPATH=$PWD python benchmarks/bench_offload.py [--quick] [--nvme-path DIR]

Prints ratios against the in-memory baseline measured in the same run.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time

import psutil
import torch

GIB = 1024**3
FULL = dict(vocab_size=32000, block_size=64, n_layer=24, n_head=16, n_embd=1024)  # ~335M params
QUICK = dict(vocab_size=1000, block_size=32, n_layer=4, n_head=4, n_embd=256)  # ~3.4M params


class PeakRss:
    """Samples this process's RSS on a thread; ``peak`` is the largest sample since start."""

    def __init__(self, period: float = 0.02):
        self.peak, self._period, self._stop = 0, period, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        process = psutil.Process()
        while not self._stop.is_set():
            self.peak = max(self.peak, process.memory_info().rss)
            time.sleep(self._period)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return max(self.peak, psutil.Process().memory_info().rss)


def train(mode: str, model_shape: dict, steps: int, nvme_path: str) -> dict:
    """Runs in the subprocess: builds the engine for ``mode`` and times ``steps`` steps."""
    import zerolib
    from zerolib.models import GPT, GPTConfig

    torch.set_num_threads(2)
    rss = PeakRss()
    start_rss = psutil.Process().memory_info().rss  # python + torch + zerolib, before any model
    zero = {"stage": 3, "sub_group_size": 10_000_000, "stage3_param_persistence_threshold": 10_000}
    if mode == "nvme":
        zero["offload_optimizer"] = {"device": "nvme", "nvme_path": nvme_path, "buffer_count": 3}
    config = {"train_micro_batch_size_per_gpu": 1, "gradient_accumulation_steps": 1, "steps_per_print": None,
              "optimizer": {"type": "AdamW", "params": {"lr": 1e-4}}, "zero_optimization": zero,
              "aio": {"block_size": 1_048_576, "queue_depth": 16, "thread_count": 2}}
    torch.manual_seed(0)
    with zerolib.partitioned_init():
        model = GPT(GPTConfig(**model_shape))
    numel = sum(p.numel() for p in model.parameters())
    engine = zerolib.initialize(model, config)
    init_rss = rss.peak
    tokens = torch.randint(0, model_shape["vocab_size"], (1, model_shape["block_size"] + 1))
    times, step_times = [], []
    for _ in range(steps):
        start = time.perf_counter()
        loss = engine(tokens[:, :-1], tokens[:, 1:])
        engine.backward(loss)
        step_start = time.perf_counter()
        engine.step()
        times.append(time.perf_counter() - start)
        step_times.append(time.perf_counter() - step_start)
    result = {"mode": mode, "numel": numel, "peak_rss": rss.stop(), "init_rss": init_rss, "start_rss": start_rss,
              "step_s": statistics.median(times[1:] or times), "optimizer_step_s": statistics.median(step_times[1:] or step_times),
              "loss": float(loss)}
    swapper = getattr(engine.optimizer.optimizer, "swapper", None)
    if swapper is not None:
        stats = swapper.io.stats
        result.update(bytes_read=stats.bytes_read, bytes_written=stats.bytes_written,
                      read_gbps=stats.bytes_read / max(stats.read_seconds, 1e-9) / 1e9,
                      write_gbps=stats.bytes_written / max(stats.write_seconds, 1e-9) / 1e9)
    return result


def raw_disk_bandwidth(directory: str, nbytes: int, request: int = 64 * 1024 * 1024) -> tuple[float, float]:
    """(write, read) GB/s of one large file with O_DIRECT requests of ``request`` bytes."""
    from zerolib.offload import aligned_buffer, supports_direct_io

    direct = os.O_DIRECT if supports_direct_io(directory) else 0
    buffer = aligned_buffer(request)
    buffer.copy_(torch.randint(0, 256, (buffer.numel(),), dtype=torch.uint8))
    view = memoryview(buffer.numpy())
    path = os.path.join(directory, "zerolib_raw_bandwidth.bin")
    try:
        fd = os.open(path, os.O_CREAT | os.O_WRONLY | os.O_TRUNC | direct, 0o600)
        start = time.perf_counter()
        for offset in range(0, nbytes, request):
            os.pwrite(fd, view, offset)
        os.fsync(fd)
        write = nbytes / (time.perf_counter() - start) / 1e9
        os.close(fd)
        fd = os.open(path, os.O_RDONLY | direct)
        start = time.perf_counter()
        for offset in range(0, nbytes, request):
            os.preadv(fd, [view], offset)
        read = nbytes / (time.perf_counter() - start) / 1e9
        os.close(fd)
    finally:
        os.remove(path)
    return write, read


def run_mode(mode: str, args) -> dict:
    """Trains ``mode`` in a fresh interpreter and returns its JSON result."""
    command = [sys.executable, __file__, "--child", mode, "--steps", str(args.steps), "--nvme-path", args.nvme_path]
    if args.quick:
        command.append("--quick")
    output = subprocess.run(command, check=True, capture_output=True, text=True,
                            env={**os.environ, "WORLD_SIZE": "1"}).stdout
    return json.loads(output.strip().splitlines()[-1])


def largest_trainable(result: dict, total: int) -> str:
    """Params that fit in 90% of ``total`` at this run's measured resident bytes per parameter."""
    per_param = (result["peak_rss"] - result["start_rss"]) / result["numel"]
    if per_param <= 0:
        return "n/a"
    return f"~{(0.9 * total - result['start_rss']) / per_param / 1e9:.2f}B params ({per_param:.1f} B/param)"


def report(memory: dict, nvme: dict, raw: tuple[float, float]) -> None:
    total = psutil.virtual_memory().total
    print(f"model: {memory['numel'] / 1e6:.1f}M params, ZeRO-3 fp32, 1 rank, 2 threads")
    for r in (memory, nvme):
        print(f"{r['mode']:>6}: peak RSS {r['peak_rss'] / GIB:.2f} GiB (after init {r['init_rss'] / GIB:.2f}), "
              f"step {r['step_s']:.2f} s (optimizer {r['optimizer_step_s']:.2f} s), loss {r['loss']:.4f}")
    print(f"ratio peak RSS nvme / in-memory: {nvme['peak_rss'] / memory['peak_rss']:.3f} (goal <= 0.25)")
    print(f"ratio step time nvme / in-memory: {nvme['step_s'] / memory['step_s']:.2f}")
    print(f"raw disk O_DIRECT: write {raw[0]:.2f} GB/s, read {raw[1]:.2f} GB/s")
    print(f"swap I/O: write {nvme['write_gbps']:.2f} GB/s ({nvme['write_gbps'] / raw[0]:.2f} of raw), "
          f"read {nvme['read_gbps']:.2f} GB/s ({nvme['read_gbps'] / raw[1]:.2f} of raw) (goal >= 0.60)")
    print(f"largest model on this {total / GIB:.0f} GiB machine at the measured resident bytes/param "
          f"(estimate): in memory {largest_trainable(memory, total)}, "
          f"optimizer on NVMe {largest_trainable(nvme, total)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny model, small raw test: a smoke run")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--nvme-path", default=None, help="directory for swap files (default: a temp dir)")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.steps = args.steps or (2 if args.quick else 3)
    shape = QUICK if args.quick else FULL
    if args.child:
        print(json.dumps(train(args.child, shape, args.steps, args.nvme_path)))
        return
    with tempfile.TemporaryDirectory(prefix="zerolib_bench_", dir=args.nvme_path) as directory:
        args.nvme_path = directory
        raw = raw_disk_bandwidth(directory, (256 if args.quick else 4096) * 1024**2)
        memory = run_mode("memory", args)
        nvme = run_mode("nvme", args)
        report(memory, nvme, raw)


if __name__ == "__main__":
    main()
