"""Builds what the config's offload blocks ask for: the offloaded optimizer
(``zero_optimization.offload_optimizer``) and the parameter shard swap (``offload_param: nvme``)."""
from __future__ import annotations

from typing import Callable

import torch

from zerolib.offload.aio import AioSettings, SharedFileIO
from zerolib.offload.optimizer import OffloadAdam, plan_sub_groups
from zerolib.offload.swapper import SubGroupSwapper

MakeOptimizer = Callable[[list[torch.Tensor]], torch.optim.Optimizer]


def aio_settings(config) -> AioSettings:
    """The resolved ``aio`` block."""
    return AioSettings(**config.aio.model_dump()) if getattr(config, "aio", None) is not None else AioSettings()


def _adam_hyperparams(optimizer_config) -> dict:
    if optimizer_config.type not in ("Adam", "AdamW"):
        raise ValueError(f"zero_optimization.offload_optimizer: optimizer.type must be Adam or AdamW "
                         f"(the native CPU Adam steps offloaded state), got {optimizer_config.type!r}")
    params = optimizer_config.params
    p = params.model_dump(exclude_none=True) if hasattr(params, "model_dump") else dict(params or {})
    adamw_mode = optimizer_config.type == "AdamW" or p.get("adam_w_mode", True)
    return dict(lr=p.get("lr", 1e-3), betas=tuple(p.get("betas", (0.9, 0.999))), eps=p.get("eps", 1e-8),
                weight_decay=p.get("weight_decay", 0.0), adamw_mode=adamw_mode)


class OffloadOptimizerFactory:
    """``make_optimizer`` for :class:`ZeroOptimizer` when ``offload_optimizer.device`` is cpu or nvme.

    ``make_device_optimizer`` steps the share that ``offload_optimizer.ratio`` keeps on the
    device; ``io`` shares one I/O thread pool (and its statistics) among the engine's swappers.
    """

    def __init__(self, config, rank: int, make_device_optimizer: MakeOptimizer, io: SharedFileIO | None = None):
        zero = config.zero_optimization
        self.offload, self.rank = zero.offload_optimizer, rank
        self.sub_group_size, self.ratio = int(zero.sub_group_size), float(self.offload.ratio)
        self.hyperparams = _adam_hyperparams(config.optimizer)
        self.make_device_optimizer = make_device_optimizer
        self.aio = aio_settings(config)
        self.io = io if io is not None else SharedFileIO(self.aio)

    def swapped_masters(self, numels: list[int]) -> set[int]:
        """Master slices whose fp32 values live in swap files (nvme: the offloaded ones), given
        that the masters are copies of their own (not the working parameters themselves)."""
        if self.offload.device != "nvme":
            return set()
        return plan_sub_groups(numels, self.sub_group_size, self.ratio)[1]

    def _make_swapper(self, tag: str, numels: list[int], tensors_per_group: int) -> SubGroupSwapper:
        return SubGroupSwapper(self.offload.nvme_path, self.rank, tag, numels, tensors_per_group=tensors_per_group,
                               buffer_count=self.offload.buffer_count, aio=self.aio,
                               pin_memory=self.offload.pin_memory, io=self.io)

    def __call__(self, masters: list[torch.Tensor]) -> OffloadAdam:
        swapping = self.offload.device == "nvme"
        return OffloadAdam(masters, **self.hyperparams, sub_group_size=self.sub_group_size, ratio=self.ratio,
                           make_swapper=self._make_swapper if swapping else None,
                           make_device_optimizer=self.make_device_optimizer)


def offload_optimizer_factory(config, rank: int, make_device_optimizer: MakeOptimizer,
                              io: SharedFileIO | None = None) -> OffloadOptimizerFactory:
    """The ``make_optimizer`` for ``offload_optimizer.device`` cpu or nvme (see the class)."""
    return OffloadOptimizerFactory(config, rank, make_device_optimizer, io)


class ParamSwapFactory:
    """Makes the swap files of a stage-3 store's parameter shards (``offload_param: nvme``).

    Called once per store with ``{buffer index: shard elements}`` of its partitioned buffers;
    in buffer order, each shard that still fits in what is left of ``max_in_cpu`` elements
    stays in host memory (DeepSpeed's meaning of the key), the rest go to swap files. Returns
    None when nothing is swapped.
    """

    def __init__(self, config, rank: int, io: SharedFileIO):
        self.offload, self.rank, self.io = config.zero_optimization.offload_param, rank, io
        self.aio = aio_settings(config)
        self._cpu_budget = int(self.offload.max_in_cpu)  # shared by the trainable and frozen stores

    def __call__(self, numels: dict[int, int], dtype: torch.dtype, tag: str) -> SubGroupSwapper | None:
        swapped = {}
        for index in sorted(numels):
            if numels[index] <= self._cpu_budget:
                self._cpu_budget -= numels[index]
            else:
                swapped[index] = numels[index]
        if not swapped:
            return None
        largest = max(swapped, key=swapped.get)
        if swapped[largest] > self.offload.buffer_size:
            raise ValueError(f"zero_optimization.offload_param.buffer_size: {self.offload.buffer_size} elements "
                             f"cannot hold the {tag} parameter shard of buffer {largest} ({swapped[largest]} "
                             f"elements on rank {self.rank}); raise buffer_size to at least {swapped[largest]}")
        return SubGroupSwapper(self.offload.nvme_path, self.rank, f"param_{tag}", swapped, tensors_per_group=1,
                               dtype=dtype, buffer_count=self.offload.buffer_count, aio=self.aio,
                               pin_memory=self.offload.pin_memory, io=self.io,
                               buffer_key="zero_optimization.offload_param.buffer_count")
