"""ZeRO-Offload (optimizer state and step on the CPU) and its NVMe tier (swap files, async I/O)."""
from zerolib.offload.aio import (AioSettings, AsyncFileIO, IOStats, SharedFileIO, SwapIOError, aligned_buffer,
                                 supports_direct_io)
from zerolib.offload.factory import OffloadOptimizerFactory, ParamSwapFactory, offload_optimizer_factory
from zerolib.offload.gradients import SwappedGradients
from zerolib.offload.optimizer import OffloadAdam, ShardAccess, SubGroup, plan_sub_groups
from zerolib.offload.swapper import SubGroupSwapper, prepare_directory

__all__ = ["AioSettings", "AsyncFileIO", "IOStats", "OffloadAdam", "OffloadOptimizerFactory", "ParamSwapFactory",
           "SharedFileIO", "ShardAccess", "SubGroup", "SubGroupSwapper", "SwapIOError", "SwappedGradients",
           "aligned_buffer", "offload_optimizer_factory", "plan_sub_groups", "prepare_directory",
           "supports_direct_io"]
