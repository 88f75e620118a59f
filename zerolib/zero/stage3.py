"""Stage 3 wiring: which parameters are partitioned, per unit, and who gathers them.

Parameters smaller than ``stage3_param_persistence_threshold`` elements stay whole on every
rank (gathering them would cost more in latency than they save in memory); their gradients and
optimizer state are still partitioned. Every other parameter lives only as a 1/N shard and is
gathered per unit by the :class:`ParamCoordinator`. Frozen parameters are partitioned too, in
buffers of their own that the optimizer never sees. ZeRO++ (settings.zeropp) plugs a weight
gather into both stores and a quantized reduce-scatter into the gradient reducer.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from zerolib.comm import CommContext
from zerolib.partition.coordinator import (BufferRef, GatherPolicy, ParamCoordinator, Unit,
                                           assign_params_to_units, find_unit_modules)
from zerolib.partition.layout import FlatLayout
from zerolib.partition.partitioned import FillFn, PartitionedParams, ShardFillFn, ShardSwap
from zerolib.zero.optimizer import ZeroSettings
from zerolib.utils.logging import get_logger
from zerolib.zero.zeropp import describe, gradient_reduce_scatter_for, weight_gather_for


@dataclass
class Stage3Plan:
    """The partitioned stores of one model and the coordinator that gathers them."""

    layout: FlatLayout  # trainable parameters: what the optimizer steps
    store: PartitionedParams
    frozen_store: PartitionedParams | None
    coordinator: ParamCoordinator
    # ZeRO++ qgZ: the gradient reduce-scatter to use instead of the plain one (None: plain).
    gradient_reduce_scatter: object | None = None

    def secondary_storage(self) -> list[torch.Tensor]:
        """hpZ's secondary shards (empty without hpZ), for memory accounting."""
        stores = [s for s in (self.store, self.frozen_store) if s is not None and s.training_gather is not None]
        return [t for s in stores for t in s.training_gather.storage()]


def _groups_by_unit(names: list[str], params: dict[str, nn.Parameter], owner: dict[str, int], num_units: int):
    groups: list[list[tuple[str, torch.Size]]] = [[] for _ in range(num_units)]
    for name in names:
        groups[owner[name]].append((name, params[name].shape))
    return groups


def _buffer_of_unit(unit_groups: list[list], first_index: int) -> dict[int, int]:
    """Unit index -> index of its buffer, for the units with parameters (one buffer each, in
    unit order, numbered from ``first_index``)."""
    return {u: first_index + i for i, u in enumerate(u for u, group in enumerate(unit_groups) if group)}


def _units(unit_modules, refs_by_store: list[tuple[PartitionedParams | None, dict[int, int]]]) -> list[Unit]:
    """The coordinator's units, each with its buffer in every store that has one for it."""
    return [Unit(index, name or "<root>", module,
                 tuple(BufferRef(store, buffers[index]) for store, buffers in refs_by_store if index in buffers))
            for index, (name, module) in enumerate(unit_modules)]


def _tagged(shard_swap, tag: str):
    return functools.partial(shard_swap, tag=tag) if shard_swap is not None else None


def plan_stage3(module: nn.Module, comm: CommContext, settings: ZeroSettings, dtype: torch.dtype,
                fill: FillFn | None = None, verify_order: bool = True, shard_device: torch.device | None = None,
                pin_memory: bool = False, fill_shard: ShardFillFn | None = None,
                shard_swap: Callable[[dict[int, int], torch.dtype, str], ShardSwap | None] | None = None) -> Stage3Plan:
    """Partitions ``module``'s parameters (already on the device, in ``dtype``); ``shard_device``
    and ``pin_memory`` place the shards for offload_param, and ``shard_swap(numels, dtype, tag)``
    (offload_param nvme) gives each store (tag "trainable" or "frozen") its swap files;
    ``fill`` and ``fill_shard`` give a meta-device model its values (see PartitionedParams)."""
    # Every rank builds the ZeRO++ pieces in this same order: they create process groups.
    zeropp = settings.zeropp
    placement = dict(shard_device=shard_device, pin_memory=pin_memory, fill_shard=fill_shard)
    unit_modules = find_unit_modules(module)
    owner = assign_params_to_units(module, unit_modules)
    params = dict(module.named_parameters())
    threshold = settings.param_persistence_threshold
    persistent = [n for n, p in params.items() if p.requires_grad and p.numel() < threshold]
    sharded = [n for n, p in params.items() if p.requires_grad and p.numel() >= threshold]
    frozen = [n for n, p in params.items() if not p.requires_grad and p.numel() >= threshold]

    align = zeropp.buffer_align
    persistent_layout = FlatLayout.packed([(n, params[n].shape) for n in persistent], comm.world_size,
                                          max_buffer_numel=settings.bucket_numel, align=align)
    persistent_groups = [[(s.name, s.shape) for s in b.slots] for b in persistent_layout.buffers]
    unit_groups = _groups_by_unit(sharded, params, owner, len(unit_modules))
    layout = FlatLayout(persistent_groups + [g for g in unit_groups if g], comm.world_size, align=align)
    trainable = {n: params[n] for n in persistent + sharded}
    store = PartitionedParams(layout, trainable, comm, dtype=dtype, fill=fill,
                              replicated=frozenset(range(len(persistent_groups))),
                              training_gather=weight_gather_for(comm, zeropp),
                              make_shard_swap=_tagged(shard_swap, "trainable"), **placement)
    unit_buffer = _buffer_of_unit(unit_groups, len(persistent_groups))
    frozen_groups = _groups_by_unit(frozen, params, owner, len(unit_modules))
    frozen_store, frozen_buffer = None, {}
    if frozen:
        frozen_layout = FlatLayout([g for g in frozen_groups if g], comm.world_size, align=align)
        frozen_store = PartitionedParams(frozen_layout, {n: params[n] for n in frozen}, comm, dtype=dtype, fill=fill,
                                         training_gather=weight_gather_for(comm, zeropp),
                                         make_shard_swap=_tagged(shard_swap, "frozen"), **placement)
        frozen_buffer = _buffer_of_unit(frozen_groups, 0)
    units = _units(unit_modules, [(store, unit_buffer), (frozen_store, frozen_buffer)])
    policy = GatherPolicy(settings.prefetch_bucket_numel, settings.max_live_numel, settings.max_reuse_distance)
    coordinator = ParamCoordinator(units, policy, comm, verify_order=verify_order)
    summary = describe(comm, zeropp)
    if summary:
        get_logger().info("%s", summary)
    return Stage3Plan(layout, store, frozen_store, coordinator,
                      gradient_reduce_scatter=gradient_reduce_scatter_for(comm, zeropp))
