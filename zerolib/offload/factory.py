"""Builds the offloaded optimizer a config asks for (``zero_optimization.offload_optimizer``)."""
from __future__ import annotations

from functools import partial
from typing import Callable

import torch

from zerolib.offload.aio import AioSettings
from zerolib.offload.optimizer import OffloadAdam
from zerolib.offload.swapper import SubGroupSwapper

MakeOptimizer = Callable[[list[torch.Tensor]], torch.optim.Optimizer]


def _adam_hyperparams(optimizer_config) -> dict:
    if optimizer_config.type not in ("Adam", "AdamW"):
        raise ValueError(f"zero_optimization.offload_optimizer: optimizer.type must be Adam or AdamW "
                         f"(the native CPU Adam steps offloaded state), got {optimizer_config.type!r}")
    params = optimizer_config.params
    p = params.model_dump(exclude_none=True) if hasattr(params, "model_dump") else dict(params or {})
    adamw_mode = optimizer_config.type == "AdamW" or p.get("adam_w_mode", True)
    return dict(lr=p.get("lr", 1e-3), betas=tuple(p.get("betas", (0.9, 0.999))), eps=p.get("eps", 1e-8),
                weight_decay=p.get("weight_decay", 0.0), adamw_mode=adamw_mode)


def offload_optimizer_factory(config, rank: int, make_device_optimizer: MakeOptimizer) -> MakeOptimizer:
    """``make_optimizer`` for :class:`ZeroOptimizer` when ``offload_optimizer.device`` is cpu or nvme.

    ``config`` is the resolved ZeroConfig; ``make_device_optimizer`` steps the share that
    ``offload_optimizer.ratio`` keeps on the device.
    """
    zero, offload = config.zero_optimization, config.zero_optimization.offload_optimizer
    swapper_factory = None
    if offload.device == "nvme":
        aio = AioSettings(**config.aio.model_dump()) if getattr(config, "aio", None) is not None else AioSettings()
        swapper_factory = partial(SubGroupSwapper, offload.nvme_path, rank, "optimizer",
                                  buffer_count=offload.buffer_count, aio=aio, pin_memory=offload.pin_memory)
    return partial(OffloadAdam, **_adam_hyperparams(config.optimizer), sub_group_size=int(zero.sub_group_size),
                   ratio=float(offload.ratio), swapper_factory=swapper_factory,
                   make_device_optimizer=make_device_optimizer)
