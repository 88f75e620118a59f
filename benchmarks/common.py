"""Helpers shared by the benchmark scripts: timing across ranks, byte counting, tables."""
from __future__ import annotations

import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist

REPO_ROOT = Path(__file__).resolve().parent.parent
# The multi-rank runner is shared with the tests: one way to spawn gloo ranks in this repo.
sys.path.insert(0, str(REPO_ROOT / "tests"))
from harness import run_ranks  # noqa: E402  (re-exported for the scripts)

__all__ = ["run_ranks", "timed_steps", "median", "unique_bytes", "print_table", "rank"]


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def timed_steps(step_fn, steps: int) -> list[float]:
    """Seconds of each of ``steps`` calls, the slowest rank's time for each (the step's real cost).

    A barrier before each step starts every rank together, so that one rank's lag does not hide
    inside the next step's collectives.
    """
    seconds = []
    for _ in range(steps):
        dist.barrier()
        start = time.perf_counter()
        step_fn()
        elapsed = torch.tensor([time.perf_counter() - start], dtype=torch.float64)
        dist.all_reduce(elapsed, op=dist.ReduceOp.MAX)
        seconds.append(elapsed.item())
    return seconds


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def unique_bytes(tensors) -> int:
    """Bytes of the distinct storages behind ``tensors`` (views of one buffer count once)."""
    seen, total = set(), 0
    for tensor in tensors:
        if tensor is None:
            continue
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in seen:
            seen.add(storage.data_ptr())
            total += storage.nbytes()
    return total


def print_table(headers: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows)]
    for line in [headers, ["-" * w for w in widths], *rows]:
        print("  ".join(str(cell).ljust(w) for cell, w in zip(line, widths)))
