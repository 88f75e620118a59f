"""Offload blocks: `zero_optimization.offload_optimizer`, `zero_optimization.offload_param`, `aio`.

pin_memory defaults to true (DeepSpeed's current default, see docs/deepspeed_migration.md):
pinned host buffers are what make host-device copies asynchronous, and on a CPU-only machine
pinning is skipped by the engine, so the default costs nothing there.
"""
from typing import Literal

from pydantic import model_validator

from .base import Count, StrictModel, described
from .errors import KeyIssue

OffloadDevice = Literal["none", "cpu", "nvme"]


class OffloadTarget(StrictModel):
    """Where some state rests: the device, the NVMe directory, pinned host buffers."""

    device: OffloadDevice = described("none", "Where the offloaded state lives.")
    nvme_path: str | None = described(None, "Directory for the swap files; needed for nvme.")
    pin_memory: bool = described(True, "Pin host buffers so that copies overlap with compute.")

    @model_validator(mode="after")
    def _nvme_needs_path(self) -> "OffloadTarget":
        if self.device == "nvme" and not self.nvme_path:
            raise KeyIssue("nvme_path", "required when device is 'nvme'")
        return self


class OffloadOptimizerConfig(OffloadTarget):
    """`zero_optimization.offload_optimizer`: optimizer states and step on the CPU
    (ZeRO-Offload); with nvme, the fp32 masters, Adam moments and gradients in swap files,
    one `sub_group_size` sub-group in memory at a time (ZeRO-Infinity)."""

    buffer_count: Count = described(
        4, "Sub-groups in memory at once with nvme (each pool buffer holds one; 3 overlap the "
        "next read and the last write with the step).", ge=1)
    ratio: float = described(
        1.0, "Fraction of the optimizer step run on the CPU (ZeRO-Offload++).", gt=0, le=1
    )
    fast_init: bool = described(False, "Faster optimizer state initialisation for nvme.")


class OffloadParamConfig(OffloadTarget):
    """`zero_optimization.offload_param`: stage-3 parameter shards held on the CPU or NVMe,
    fetched ahead of use by the ZeRO-3 prefetcher."""

    buffer_count: Count = described(
        5, "Parameter shards in memory at once with nvme (being read ahead, gathered or written).", ge=1)
    buffer_size: Count = described(
        100_000_000, "Elements a swap buffer can hold: the largest shard sent to nvme must fit "
        "(buffers are sized to that shard).", ge=1)
    max_in_cpu: Count = described(
        1_000_000_000, "With nvme, parameter elements kept in CPU memory instead, in buffer order "
        "(DeepSpeed's meaning; 0 sends every partitioned shard to nvme)."
    )


class AioConfig(StrictModel):
    """`aio`: the asynchronous I/O engine used by nvme offload."""

    block_size: Count = described(1_048_576, "Bytes per I/O request.", ge=1)
    queue_depth: Count = described(8, "Outstanding requests per thread.", ge=1)
    thread_count: Count = described(1, "I/O threads.", ge=1)
    single_submit: bool = described(False, "Submit requests one at a time, not in batches.")
    overlap_events: bool = described(True, "Overlap submission and completion of requests.")
