"""ZeRO-3 fp32 in memory vs ZeRO-3 with the optimizer and the parameters on NVMe: peak RSS,
step time, swap bandwidth against the disk's raw bandwidth.

One rank (world size 1: the machine has 2 shared cores, and per-rank memory is what offload
changes). Each mode trains in a fresh subprocess, so its peak RSS is its own: the kernel's
high-water mark (``ru_maxrss``), from start-up to the last step. The model is built under
``zerolib.partitioned_init`` so that no full copy is made outside the engine.

The disk's raw sequential bandwidth is measured by the same script, before and after the
training runs, with O_DIRECT requests as the swapper issues them (``aio.block_size`` bytes,
``thread_count * queue_depth`` under way) on a 2 GiB file: written fresh (new blocks),
overwritten in place (what the swapper does) and read. The reference for the goals is the best of those, so the ratio is a
strict one. The swap bandwidth is the bytes the engine's swappers moved in the timed steps
divided by the wall-clock time during which at least one transfer of that kind was running.

    PYTHONPATH=$PWD python benchmarks/bench_offload.py [--quick] [--nvme-path DIR] [--steps N]

Prints ratios against the in-memory baseline measured in the same run.
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import torch

GIB = 1024**3
FULL = dict(vocab_size=32000, block_size=64, n_layer=24, n_head=16, n_embd=1024)  # ~335M params
QUICK = dict(vocab_size=1000, block_size=32, n_layer=4, n_head=4, n_embd=256)  # ~3.4M params
# One transfer at a time (reads then do not compete with writes), 8 requests of 1 MiB in flight.
AIO = {"block_size": 1_048_576, "queue_depth": 8, "thread_count": 1}
# Both modes: the same ZeRO-3 knobs. One rank has no all-gather to overlap (a gather is a copy),
# so no gather prefetch; units are released after forward (max_reuse_distance 0). With NVMe the
# coordinator still reads the next unit's shard from disk while the current one runs.
ZERO3 = {"stage": 3, "stage3_param_persistence_threshold": 10_000, "stage3_prefetch_bucket_size": 0,
         "stage3_max_reuse_distance": 0}
# NVMe: 2.5M-element optimizer sub-groups (3 in memory: stepped, read ahead, written back); 2
# parameter shards in memory (the one gathered, the next one read ahead).
NVME = {"sub_group_size": 2_500_000, "optimizer_buffers": 3, "param_buffers": 2}


def config(mode: str, nvme_path: str) -> dict:
    zero = dict(ZERO3)
    if mode == "nvme":
        zero["sub_group_size"] = NVME["sub_group_size"]
        zero["offload_optimizer"] = {"device": "nvme", "nvme_path": nvme_path, "buffer_count": NVME["optimizer_buffers"]}
        zero["offload_param"] = {"device": "nvme", "nvme_path": nvme_path, "buffer_count": NVME["param_buffers"],
                                 "max_in_cpu": 0}
    return {"train_micro_batch_size_per_gpu": 1, "gradient_accumulation_steps": 1, "steps_per_print": None,
            "optimizer": {"type": "AdamW", "params": {"lr": 1e-4}}, "zero_optimization": zero, "aio": AIO}


def peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def train(mode: str, model_shape: dict, steps: int, nvme_path: str) -> dict:
    """Runs in the subprocess: builds the engine for ``mode`` and times ``steps`` steps."""
    import zerolib
    from zerolib.models import GPT, GPTConfig

    torch.set_num_threads(2)
    start_rss = peak_rss()  # python + torch + zerolib, before any model
    torch.manual_seed(0)
    with zerolib.partitioned_init():
        model = GPT(GPTConfig(**model_shape))
    numel = sum(p.numel() for p in model.parameters())
    engine = zerolib.initialize(model, config(mode, nvme_path))
    init_rss = peak_rss()
    tokens = torch.randint(0, model_shape["vocab_size"], (1, model_shape["block_size"] + 1))
    times, phases, io_before = [], [], None
    for step in range(steps):
        if step == 1:  # the first step allocates and records the trace: time the others
            io_before = engine.swap_io.stats()
        start = time.perf_counter()
        loss = engine(tokens[:, :-1], tokens[:, 1:])
        engine.backward(loss)
        step_start = time.perf_counter()
        engine.step()
        times.append(time.perf_counter() - start)
        phases.append(time.perf_counter() - step_start)
    result = {"mode": mode, "numel": numel, "peak_rss": peak_rss(), "init_rss": init_rss, "start_rss": start_rss,
              "step_s": statistics.median(times[1:] or times), "optimizer_step_s": statistics.median(phases[1:] or phases),
              "loss": float(loss), "memory": engine.memory_breakdown(), "timed_steps": max(1, steps - 1)}
    result["swap_file_bytes"] = engine.swap_io.file_bytes()
    io = engine.swap_io.stats()
    if io.bytes_written and io_before is not None:
        result.update(bytes_read=io.bytes_read - io_before.bytes_read,
                      bytes_written=io.bytes_written - io_before.bytes_written,
                      read_s=io.read_seconds - io_before.read_seconds, write_s=io.write_seconds - io_before.write_seconds,
                      busy_s=io.busy_seconds - io_before.busy_seconds)
    return result


def raw_disk_bandwidth(directory: str, nbytes: int, request: int, in_flight: int) -> dict:
    """GB/s of one ``nbytes`` file with O_DIRECT requests of ``request`` bytes, ``in_flight`` of
    them under way at once (as the swapper issues them): written fresh, overwritten in place,
    read back."""
    from concurrent.futures import ThreadPoolExecutor

    from zerolib.offload import aligned_buffer, supports_direct_io

    direct = os.O_DIRECT if supports_direct_io(directory) else 0
    buffer = aligned_buffer(request * in_flight)
    buffer.copy_(torch.randint(0, 256, (buffer.numel(),), dtype=torch.uint8))
    views = [memoryview(buffer.numpy())[i * request:(i + 1) * request] for i in range(in_flight)]
    path = os.path.join(directory, "zerolib_raw_bandwidth.bin")

    def timed(flags: int, move) -> float:
        fd = os.open(path, flags | direct, 0o600)
        try:
            with ThreadPoolExecutor(in_flight) as pool:
                start = time.perf_counter()
                offsets = range(0, nbytes, request)
                list(pool.map(lambda i: move(fd, views[i % in_flight], offsets[i]), range(len(offsets))))
                os.fsync(fd)
                return nbytes / (time.perf_counter() - start) / 1e9
        finally:
            os.close(fd)

    try:
        fresh = timed(os.O_CREAT | os.O_WRONLY | os.O_TRUNC, lambda fd, v, o: os.pwrite(fd, v, o))
        overwrite = timed(os.O_WRONLY, lambda fd, v, o: os.pwrite(fd, v, o))
        read = timed(os.O_RDONLY, lambda fd, v, o: os.preadv(fd, [v], o))
    finally:
        os.remove(path)
    return {"fresh_write": fresh, "overwrite": overwrite, "read": read, "direct": bool(direct)}


def run_mode(mode: str, args) -> dict:
    """Trains ``mode`` in a fresh interpreter and returns its JSON result."""
    command = [sys.executable, __file__, "--child", mode, "--steps", str(args.steps), "--nvme-path", args.nvme_path]
    if args.quick:
        command.append("--quick")
    output = subprocess.run(command, check=True, capture_output=True, text=True,
                            env={**os.environ, "WORLD_SIZE": "1"}).stdout
    return json.loads(output.strip().splitlines()[-1])


def report(memory: dict, nvme: dict, raws: list[dict]) -> None:
    gb = 1e9
    print(f"model: {memory['numel'] / 1e6:.1f}M params, ZeRO-3 fp32, 1 rank, 2 threads, batch 1 x "
          f"{QUICK['block_size'] if memory['numel'] < 1e8 else FULL['block_size']} tokens")
    for r in (memory, nvme):
        print(f"{r['mode']:>6}: peak RSS {r['peak_rss'] / GIB:.2f} GiB (interpreter {r['start_rss'] / GIB:.2f}, "
              f"after init {r['init_rss'] / GIB:.2f}), step {r['step_s']:.2f} s (optimizer {r['optimizer_step_s']:.2f} s), "
              f"loss {r['loss']:.4f}")
        held = ", ".join(f"{k} {v / GIB:.2f}" for k, v in r["memory"].items() if v)
        print(f"        held after the last step (GiB): {held}")
    print(f"ratio peak RSS nvme / in-memory: {nvme['peak_rss'] / memory['peak_rss']:.3f} (goal <= 0.25)")
    print(f"ratio step time nvme / in-memory: {nvme['step_s'] / memory['step_s']:.2f}")
    for when, raw in zip(("before", "after"), raws):
        print(f"raw disk ({'O_DIRECT' if raw['direct'] else 'buffered'}, {when}): fresh write "
              f"{raw['fresh_write']:.2f} GB/s, overwrite {raw['overwrite']:.2f} GB/s, read {raw['read']:.2f} GB/s")
    fresh = max(r["fresh_write"] for r in raws)
    overwrite = max(r["overwrite"] for r in raws)
    best_read = max(r["read"] for r in raws)
    write = nvme["bytes_written"] / max(nvme["write_s"], 1e-9) / gb
    read = nvme["bytes_read"] / max(nvme["read_s"], 1e-9) / gb
    both = (nvme["bytes_written"] + nvme["bytes_read"]) / max(nvme["busy_s"], 1e-9) / gb
    steps = nvme["timed_steps"]
    print(f"swap I/O in the {steps} timed steps: {nvme['bytes_written'] / gb:.2f} GB written, "
          f"{nvme['bytes_read'] / gb:.2f} GB read; I/O under way {nvme['busy_s']:.1f} s of ~{steps * nvme['step_s']:.1f} s")
    print(f"swap I/O: write {write:.2f} GB/s ({write / fresh:.2f} of raw fresh-file write, {write / overwrite:.2f} of raw "
          f"overwrite), read {read:.2f} GB/s ({read / best_read:.2f} of raw) (goal >= 0.60; raw: best of before/after)")
    print(f"swap I/O, reads and writes together: {both:.2f} GB/s while any transfer ran")


def largest_models(memory: dict, nvme: dict, disk_free: int) -> None:
    """The estimator's model states against this run's, and the largest model it then allows
    on this machine, counting what each run held besides model states (measured) as fixed."""
    from zerolib.estimator import largest_model, model_state_bytes

    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    modes = (("in memory", memory, {}), ("optimizer + params on NVMe", nvme,
                                       {"offload_optimizer": "nvme", "offload_param": "nvme"}))
    for label, run, offload in modes:
        settings = dict(num_procs=1, stage=3, dtype="fp32", **offload)
        places = model_state_bytes(run["numel"], **settings).by_place
        in_memory = places["device"] + places["cpu"]
        held = sum(v for k, v in run["memory"].items() if k in ("params", "grads", "master", "optimizer_state"))
        overhead = run["peak_rss"] - in_memory
        psi, limit = largest_model(total, disk_bytes=disk_free, overhead_bytes=overhead, **settings)
        print(f"{label}: estimated model states in memory {in_memory / GIB:.2f} GiB (held after a step: "
              f"{held / GIB:.2f}), on disk {places['nvme'] / GIB:.2f} GiB (swap files: "
              f"{run.get('swap_file_bytes', 0) / GIB:.2f}); besides model states {overhead / GIB:.2f} GiB")
        print(f"  largest model on this {total / GIB:.1f} GiB machine ({disk_free / GIB:.0f} GiB free on disk), "
              f"that overhead held fixed: {psi / 1e9:.2f}B params (limited by {limit})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny model, small raw test: a smoke run")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--nvme-path", default=None, help="directory for swap files (default: a temp dir)")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.steps = args.steps or (3 if args.quick else 4)
    shape = QUICK if args.quick else FULL
    if args.child:
        print(json.dumps(train(args.child, shape, args.steps, args.nvme_path)))
        return
    with tempfile.TemporaryDirectory(prefix="zerolib_bench_", dir=args.nvme_path) as directory:
        args.nvme_path = directory
        size = (64 if args.quick else 2048) * 1024**2
        raw = functools.partial(raw_disk_bandwidth, directory, size, AIO["block_size"],
                                AIO["thread_count"] * AIO["queue_depth"])
        raws = [raw()]
        memory = run_mode("memory", args)
        nvme = run_mode("nvme", args)
        raws.append(raw())
        report(memory, nvme, raws)
        largest_models(memory, nvme, shutil.disk_usage(directory).free)


if __name__ == "__main__":
    main()
