"""Stage 3 parameter storage: each rank keeps 1/N of every buffer; full copies are transient.

A partitioned buffer exists in full only between :meth:`start_gather` and :meth:`release`;
while it is released the parameters in it hold an empty tensor. Buffers listed as
``replicated`` (parameters below ``stage3_param_persistence_threshold``) stay whole on every
rank, as in stages 0-2, and are re-published by an all-gather after each step.
"""
from __future__ import annotations

import functools
from typing import Callable, Protocol

import torch

from zerolib.comm import CommContext, PendingCollective
from zerolib.comm.scratch import ScratchPool
from zerolib.partition.layout import BufferSpec, FlatLayout

FillFn = Callable[[BufferSpec, torch.Tensor], None]
# Fills only this rank's slice (buffer offsets lo..hi) into the shard tensor and returns True,
# or returns False to have the whole buffer filled and broadcast from rank 0 instead. It must
# answer alike on every rank (it decides whether a broadcast happens).
ShardFillFn = Callable[[BufferSpec, int, int, torch.Tensor], bool]


class TrainingGather(Protocol):
    """How forward/backward gathers travel when not as a plain all-gather (ZeRO++:
    zerolib/zero/zeropp/weight_gather.py). It must fill ``full`` with exactly the values
    the shards hold, or a documented approximation of them, on every rank alike."""

    def start(self, spec: BufferSpec, full: torch.Tensor, shard: torch.Tensor,
              on_done: Callable[[], None]) -> PendingCollective: ...

    def forget(self, index: int | None = None) -> None: ...


class ShardSwap(Protocol):
    """Swap files for partitioned shards (offload_param nvme; zerolib.offload.SubGroupSwapper):
    a group is a buffer index holding one tensor of the store's dtype. ``acquire`` makes a shard
    resident in a pool buffer until ``release``; ``prefetch`` starts reading it ahead."""

    def __contains__(self, index: int) -> bool: ...

    def prefetch(self, index: int) -> None: ...

    def can_take(self, index: int) -> bool: ...

    def acquire(self, index: int, *, read: bool = True) -> list[torch.Tensor]: ...

    def release(self, index: int, *, dirty: bool = True) -> None: ...

    def flush(self) -> None: ...

    def buffers(self) -> list[torch.Tensor]: ...


# ({buffer index: shard elements} of the partitioned buffers, dtype) -> the swap that holds the
# ones it chooses (the rest stay on shard_device), or None to swap none.
MakeShardSwap = Callable[[dict[int, int], torch.dtype], "ShardSwap | None"]


class PartitionedParams:
    """Owns the shards of ``params``; gathers and releases full buffers on request."""

    def __init__(self, layout: FlatLayout, params: dict[str, torch.nn.Parameter], comm: CommContext, *,
                 dtype: torch.dtype, replicated: frozenset[int] = frozenset(), fill: FillFn | None = None,
                 shard_device: torch.device | None = None, pin_memory: bool = False,
                 fill_shard: ShardFillFn | None = None, training_gather: TrainingGather | None = None,
                 make_shard_swap: MakeShardSwap | None = None, full_pool: ScratchPool | None = None):
        """``shard_device`` (offload_param): where partitioned shards live between gathers, e.g.
        the host; each gather then copies the shard to ``comm.device`` first. ``fill_shard``
        (a pretrained checkpoint) writes a rank's slice directly: no full buffer, no broadcast.
        ``training_gather`` (ZeRO++): carries the gathers issued for forward and backward instead
        of a plain all-gather; exact gathers (state dicts, GatheredParameters) stay plain.
        ``make_shard_swap`` (offload_param nvme): shards it takes live in swap files between
        uses and are read into a bounded pool of buffers for each gather (see ShardSwap).
        ``full_pool`` (inference, where nothing outlives a release): full buffers are taken from
        and given back to it, so a few preallocated buffers serve every gather."""
        self.layout, self.params, self.comm, self.dtype = layout, params, comm, dtype
        self.training_gather = training_gather
        self._full_pool = full_pool
        self.shard_device = torch.device(shard_device or comm.device)
        self._pin = pin_memory and self.shard_device.type == "cpu" and torch.cuda.is_available()
        self.replicated = replicated
        self.shard = comm.rank
        fill = fill or self._fill_from_params
        self._empty = torch.empty(0, dtype=dtype, device=comm.device)
        self.shards: list[torch.Tensor | None] = []  # None: in a swap file
        self.full: dict[int, torch.Tensor] = {}  # gathered (or replicated) full buffers
        self._pending: dict[int, PendingCollective] = {}
        partitioned = {spec.index: spec.shard_numel for spec in layout.buffers if spec.index not in replicated}
        self.swap = make_shard_swap(partitioned, dtype) if make_shard_swap is not None and partitioned else None
        self.swaps_shards = self.swap is not None  # some shards are not resident (ZeroOptimizer asks)
        for spec in layout.buffers:
            lo, hi = spec.shard_range(self.shard)
            if spec.index not in replicated and fill_shard is not None:
                shard = torch.zeros(spec.shard_numel, dtype=dtype, device=self.shard_device)
                if fill_shard(spec, lo, hi, shard):
                    self.shards.append(self._keep_shard(spec.index, shard, owned=True))
                    self._point_params_at(spec, None)
                    continue
            full = torch.zeros(spec.padded_numel, dtype=dtype, device=comm.device)
            fill(spec, full)
            comm.broadcast(full, 0)  # every rank starts from rank 0's values
            if spec.index in replicated:
                self.shards.append(full[lo:hi])
                self.full[spec.index] = full
                self._point_params_at(spec, full)
            else:
                self.shards.append(self._keep_shard(spec.index, full[lo:hi], owned=False))
                self._point_params_at(spec, None)

    def _keep_shard(self, index: int, values: torch.Tensor, owned: bool) -> torch.Tensor | None:
        """Stores a partitioned shard where it lives between gathers: in swap files (None is
        what ``shards`` then holds) or on ``shard_device`` (``owned``: ``values`` is already a
        tensor of its own there)."""
        if self.swap is not None and index in self.swap:
            (target,) = self.swap.acquire(index, read=False)
            target.copy_(values)
            self.swap.release(index)
            return None
        shard = values if owned else values.to(self.shard_device, copy=True)
        return shard.pin_memory() if self._pin else shard

    def _fill_from_params(self, spec: BufferSpec, full: torch.Tensor) -> None:
        with torch.no_grad():
            for slot in spec.slots:
                full[slot.offset:slot.end].copy_(self.params[slot.name].detach().reshape(-1))

    def _point_params_at(self, spec: BufferSpec, full: torch.Tensor | None) -> None:
        for slot in spec.slots:
            data = self._empty if full is None else full[slot.offset:slot.end].view(slot.shape)
            self.params[slot.name].data = data

    # -- gather / release -------------------------------------------------------------------
    def is_available(self, index: int) -> bool:
        return index in self.full

    def is_pending(self, index: int) -> bool:
        return index in self._pending

    def start_gather(self, index: int, *, training: bool = False) -> None:
        """Launches the all-gather of buffer ``index`` (no-op if gathered or under way).

        ``training``: the gather is for a forward or backward pass (the coordinator's), which
        the ``training_gather`` may carry differently (quantized, inside a node group).
        """
        if index in self.full or index in self._pending:
            return
        spec = self.layout.buffers[index]
        if self._full_pool is not None:
            full = self._full_pool.take(spec.padded_numel, self.dtype, self.comm.device)
        else:
            full = torch.empty(spec.padded_numel, dtype=self.dtype, device=self.comm.device)
        shard, swapped = self.shards[index], self.shards[index] is None
        if swapped:  # in swap files: read (usually ahead, see prefetch_shard) into a pool buffer
            shard = self._acquire_swapped(index)
        elif shard.device != full.device:  # offloaded shard: fetch it for the collective
            shard = shard.to(full.device, non_blocking=True)
        on_done = functools.partial(self._install, index, full, swapped)
        if training and self.training_gather is not None:
            pending = self.training_gather.start(spec, full, shard, on_done=on_done)
        else:
            if self.training_gather is not None:  # the caller may edit the exact values now
                self.training_gather.forget(index)
            pending = self.comm.all_gather_into(full, shard, async_op=True)
            pending.on_done = on_done
        self._pending[index] = pending

    def _acquire_swapped(self, index: int) -> torch.Tensor:
        # Gathers in flight hold pool buffers until they complete: finish the oldest ones
        # (already launched on every rank, so waiting is safe) until a buffer can be had.
        while self._pending and not self.swap.can_take(index):
            self._pending[next(iter(self._pending))].wait()
        return self.swap.acquire(index)[0]

    def prefetch_shard(self, index: int) -> None:
        """Starts reading buffer ``index``'s shard from its swap file ahead of its gather
        (offload_param nvme; a no-op otherwise, or when no pool buffer is free)."""
        if self.swap is not None and self.shards[index] is None and not self.is_pending(index) \
                and index not in self.full:
            self.swap.prefetch(index)

    def end_iteration(self) -> None:
        """Forward and backward are over: copies kept for this iteration's gathers are stale
        once the optimizer steps (or anyone edits the shards)."""
        if self.training_gather is not None:
            self.training_gather.forget()

    def _install(self, index: int, full: torch.Tensor, from_swap: bool = False) -> None:
        self._pending.pop(index, None)
        if from_swap:  # the collective has read the shard: its pool buffer is free again
            self.swap.release(index, dirty=False)
        self.full[index] = full
        self._point_params_at(self.layout.buffers[index], full)

    def wait_gather(self, index: int) -> None:
        """Blocks until buffer ``index`` is whole and its parameters point into it."""
        self.start_gather(index)
        pending = self._pending.get(index)
        if pending is not None:
            pending.wait()

    def buffer_holding(self, tensor: torch.Tensor) -> int | None:
        """The gathered partitioned buffer whose memory ``tensor`` is a view of, if any."""
        if not self.full or tensor.device != self.comm.device:
            return None
        pointer = tensor.untyped_storage().data_ptr()
        for index, full in self.full.items():
            if index not in self.replicated and full.untyped_storage().data_ptr() == pointer:
                return index
        return None

    def full_buffer(self, index: int) -> torch.Tensor:
        """The whole buffer ``index``; it must be gathered (or replicated)."""
        return self.full[index]

    def release(self, index: int) -> None:
        """Frees the full copy of a partitioned buffer (replicated buffers stay)."""
        if index in self.replicated:
            return
        pending = self._pending.get(index)
        if pending is not None:
            pending.wait()
        full = self.full.pop(index, None)
        if full is not None:
            self._point_params_at(self.layout.buffers[index], None)
            if self._full_pool is not None:
                self._full_pool.give(full)

    def gathered_numel(self) -> int:
        """Elements of partitioned buffers currently whole or being gathered."""
        indices = (set(self.full) | set(self._pending)) - set(self.replicated)
        return sum(self.layout.buffers[i].padded_numel for i in indices)

    # -- optimizer side ---------------------------------------------------------------------
    def shard_view(self, index: int, shard: int) -> torch.Tensor:
        assert shard == self.shard, "stage 3 stores only this rank's shard"
        if self.shards[index] is None:
            raise RuntimeError(f"rank {self.shard}: the shard of parameter buffer {index} lives in an nvme swap "
                               "file (offload_param); use open_shard/close_shard to access it")
        return self.shards[index]

    def open_shard(self, index: int, shard: int | None = None, *, read: bool = True) -> torch.Tensor:
        """This rank's shard of buffer ``index``, resident until :meth:`close_shard`. In a swap
        file it is read into a pool buffer (not read with ``read=False``: the caller overwrites it)."""
        assert shard in (None, self.shard), "stage 3 stores only this rank's shard"
        if self.shards[index] is not None:
            return self.shards[index]
        return self.swap.acquire(index, read=read)[0]

    def close_shard(self, index: int, *, dirty: bool = False) -> None:
        """Done with :meth:`open_shard`'s tensor; ``dirty``: it was changed (written back)."""
        if self.shards[index] is None:
            self.swap.release(index, dirty=dirty)

    def publish(self, shard: int, async_op: bool = True) -> None:
        """Re-assembles the replicated buffers after their owners updated their slices."""
        pending = [self.comm.all_gather_into(self.full[i], self.shards[i], async_op=async_op)
                   for i in sorted(self.replicated)]
        for item in pending:
            if item is not None:
                item.wait()
        if self.swap is not None:  # a failed write of an updated shard surfaces at this step
            self.swap.flush()

    def storage(self) -> list[torch.Tensor]:
        return [s for s in self.shards if s is not None] + list(self.full.values())

    def swap_buffers(self) -> list[torch.Tensor]:
        """The shard swap's pool buffers (offload_param nvme), for memory accounting."""
        return self.swap.buffers() if self.swap is not None else []
