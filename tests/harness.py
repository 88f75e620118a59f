"""Run a function on N local ranks over gloo and collect what each returns.

Each rank is a fresh process (spawn) with RANK/WORLD_SIZE/MASTER_ADDR/MASTER_PORT set and one
intra-op thread. A rank that raises fails the caller with that rank's traceback; a rank that
hangs is killed after ``timeout`` seconds and named.
"""
from __future__ import annotations

import io
import multiprocessing as mp
import os
import queue
import socket
import time
import traceback

import torch


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _rank_main(fn, rank, world_size, port, results, args, extra_env):
    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank),
                       "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world_size),
                       "LOCAL_WORLD_SIZE": str(world_size)})
    os.environ.update(extra_env or {})
    torch.set_num_threads(1)
    try:
        value = fn(*args)
        buffer = io.BytesIO()
        torch.save(value, buffer)
        results.put((rank, "ok", buffer.getvalue()))
    except BaseException:  # report everything, including SystemExit, to the parent
        results.put((rank, "error", traceback.format_exc()))
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def run_ranks(fn, world_size: int, *args, timeout: float = 240.0, env: dict | None = None) -> list:
    """``[fn(*args) on rank 0, ..., on rank world_size-1]``; ``fn`` must be importable."""
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    port = free_port()
    procs = [ctx.Process(target=_rank_main, args=(fn, r, world_size, port, results, args, env), daemon=True)
             for r in range(world_size)]
    for proc in procs:
        proc.start()
    collected: dict[int, object] = {}
    deadline = time.monotonic() + timeout
    try:
        while len(collected) < world_size:
            try:
                rank, status, payload = results.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                missing = sorted(set(range(world_size)) - set(collected))
                raise AssertionError(f"ranks {missing} did not finish within {timeout:.0f} s") from None
            if status == "error":
                raise AssertionError(f"rank {rank} failed:\n{payload}")
            collected[rank] = torch.load(io.BytesIO(payload), weights_only=False)
    finally:
        for proc in procs:
            proc.join(timeout=5)
            if proc.is_alive():
                proc.kill()
    return [collected[r] for r in range(world_size)]
