"""qwZ and hpZ: how a stage-3 store's training gathers travel (ZeRO++, arXiv 2306.10209).

``PartitionedParams`` hands every gather the coordinator issues for forward or backward to a
:class:`WeightGather`; exact gathers (state dicts, ``GatheredParameters``) stay plain.

qwZ (``zero_quantized_weights``): each rank quantizes its shard to int8 in blocks (one fp32
scale per block, zerolib.ops), the uint8 pieces are all-gathered and every rank decodes all N
of them, its own included, into the working dtype. All ranks therefore run on the same
working copy; the shards and the fp32 master weights are never quantized. Bytes on the wire:
``1 + 4/block_size`` per element, 0.25x of fp32 and 0.5x of 16-bit plus the scales.

hpZ (``zero_hpz_partition_size`` K): the first gather of a buffer in an iteration runs over
the whole world; on arrival each rank keeps a *secondary shard*, the 1/K of the buffer that
its index l inside its group of K consecutive ranks selects (``[l*P/K, (l+1)*P/K)``). Every
later gather of that buffer in the same iteration (the backward re-gather, a unit used twice)
is an all-gather of the secondary shards inside the group only. The secondary shards are
forgotten when the iteration ends (after backward, so before every optimizer step) and
rebuilt by the next forward's gather, so they never hold stale weights. With qwZ the
secondary shard is kept as the received int8 pieces (1 byte per element plus scales), and the
group gather moves those: backward sees exactly the weights forward used. Without qwZ it is a
copy in the working dtype and hpZ changes no value at all.
"""
from __future__ import annotations

from typing import Callable

import torch

from zerolib.comm import CommContext, PendingCollective
from zerolib.partition.layout import BufferSpec
from zerolib.zero.zeropp.settings import WEIGHT_BITS, ZeroPPSettings
from zerolib.zero.zeropp.wire import dequantize_pieces, piece_nbytes, quantize_into


class WeightGather:
    """The forward/backward gathers of one store's partitioned buffers under qwZ and/or hpZ."""

    def __init__(self, comm: CommContext, settings: ZeroPPSettings):
        self.comm = comm
        self.quantized = settings.quantized_weights
        self.block_size = settings.block_size
        self.group_size = settings.hpz_partition_size if settings.hierarchical_weights else 1
        # The hpZ group: group_size consecutive ranks; None (the world) when it spans all ranks.
        self.group = comm.block_group(self.group_size) if self.group_size > 1 else None
        self.index_in_group = comm.rank % self.group_size
        # Secondary shards, per buffer index: kept allocated across steps (refilling beats a
        # fresh allocation's page faults); valid only for the buffers in _fresh.
        self._secondary: dict[int, torch.Tensor] = {}
        self._fresh: set[int] = set()

    # -- the protocol PartitionedParams calls ----------------------------------------------
    def start(self, spec: BufferSpec, full: torch.Tensor, shard: torch.Tensor,
              on_done: Callable[[], None]) -> PendingCollective:
        """Launches the gather of ``spec``'s buffer into ``full``; ``on_done`` runs once it is whole."""
        if spec.index in self._fresh:
            return self._from_secondary(spec, full, on_done)
        return self._from_world(spec, full, shard, on_done)

    def forget(self, index: int | None = None) -> None:
        """The shards may change (an optimizer step, an edit): secondary copies are stale."""
        if index is None:
            self._fresh.clear()
        else:
            self._fresh.discard(index)

    def storage(self) -> list[torch.Tensor]:
        """The secondary shards, for memory accounting (hpZ's memory cost)."""
        return list(self._secondary.values())

    # -- the two routes ---------------------------------------------------------------------
    def _from_world(self, spec: BufferSpec, full: torch.Tensor, shard: torch.Tensor, on_done) -> PendingCollective:
        if not self.quantized:
            pending = self.comm.all_gather_into(full, shard, async_op=True)
            pending.on_done = lambda: self._arrived(spec, full, None, on_done)
            return pending
        wire = self._wire(spec, full.device)
        size = self._piece_bytes(spec)
        mine = wire[self.comm.rank * size:(self.comm.rank + 1) * size]
        quantize_into(shard, mine, WEIGHT_BITS, self.block_size)
        pending = self.comm.all_gather_into(wire, mine, async_op=True)
        pending.on_done = lambda: self._arrived(spec, full, wire, on_done)
        return pending

    def _from_secondary(self, spec: BufferSpec, full: torch.Tensor, on_done) -> PendingCollective:
        secondary = self._secondary[spec.index]
        if not self.quantized:
            pending = self.comm.all_gather_into(full, secondary, group=self.group, async_op=True)
            pending.on_done = on_done
            return pending
        wire = self._wire(spec, full.device)
        pending = self.comm.all_gather_into(wire, secondary, group=self.group, async_op=True)
        pending.on_done = lambda: self._decode(spec, wire, full, on_done)
        return pending

    def _arrived(self, spec: BufferSpec, full: torch.Tensor, wire: torch.Tensor | None, on_done) -> None:
        """A world gather is complete: decode it (qwZ) and keep the secondary shard (hpZ)."""
        if wire is not None:
            dequantize_pieces(wire, self.comm.world_size, spec.shard_numel, WEIGHT_BITS, self.block_size, full)
        if self.group_size > 1:
            source = full if wire is None else wire
            span = source.numel() // self.group_size
            piece = source[self.index_in_group * span:(self.index_in_group + 1) * span]
            kept = self._secondary.get(spec.index)
            if kept is None:
                kept = self._secondary[spec.index] = torch.empty_like(piece)
            kept.copy_(piece)
            self._fresh.add(spec.index)
        on_done()

    def _decode(self, spec: BufferSpec, wire: torch.Tensor, full: torch.Tensor, on_done) -> None:
        dequantize_pieces(wire, self.comm.world_size, spec.shard_numel, WEIGHT_BITS, self.block_size, full)
        on_done()

    def _piece_bytes(self, spec: BufferSpec) -> int:
        return piece_nbytes(spec.shard_numel, WEIGHT_BITS, self.block_size)

    def _wire(self, spec: BufferSpec, device: torch.device) -> torch.Tensor:
        return torch.empty(self.comm.world_size * self._piece_bytes(spec), dtype=torch.uint8, device=device)
