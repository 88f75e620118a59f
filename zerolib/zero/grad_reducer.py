"""Reduce gradients buffer by buffer into each rank's fp32 gradient shard.

Stage 0 and 1 keep full gradient buffers that autograd accumulates into (``param.grad`` is a
view of them) and reduce them once per accumulation boundary: all-reduce for stage 0,
reduce-scatter for stage 1. Stage 2 copies each gradient into a transient bucket as soon as
autograd has produced it and reduce-scatters the bucket as soon as all of its parameters have
reported, on every micro-step, so that no rank ever holds a full gradient buffer for long.

Buckets are launched strictly in one fixed order (last buffer first, which is roughly the order
backward produces them). Every rank therefore issues the same collectives in the same order even
when a data-dependent branch leaves some parameters without a gradient on one rank.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from zerolib.comm import CommContext, PendingCollective
from zerolib.partition.layout import BufferSpec, FlatLayout, ParamSlot


# Two buckets under reduction while backward fills a third, as DeepSpeed's stage 2 does: enough
# to keep the wire busy; more would only hold more gradient memory.
MAX_BUCKETS_IN_FLIGHT = 2


@dataclass
class _InFlight:
    buffer_index: int
    pending: PendingCollective | None
    reduced: torch.Tensor
    bucket: torch.Tensor
    reduced_is_scratch: bool = False


class GradientReducer:
    """Owns gradient storage for stages 0-2 and turns it into averaged fp32 gradient shards."""

    def __init__(self, comm: CommContext, layout: FlatLayout, params: dict[str, torch.nn.Parameter], *,
                 stage: int, comm_dtype: torch.dtype, overlap_comm: bool, predivide_factor: float = 1.0,
                 on_reduced=None, check_fresh=None, reduce_scatter=None):
        """``check_fresh(slot)``, if given, runs as each gradient arrives: it raises if the
        parameter was read before its deferred all-gather had finished (ReplicatedParams).
        ``reduce_scatter`` replaces ``comm.reduce_scatter_sum`` for the buckets (same call;
        ZeRO++ qgZ passes its quantized two-hop version)."""
        self.comm, self.layout, self.params, self.stage = comm, layout, params, stage
        self.reduce_scatter = reduce_scatter or comm.reduce_scatter_sum
        self.comm_dtype, self.overlap_comm = comm_dtype, overlap_comm
        self.predivide_factor = predivide_factor
        # Stage 3 launches each buffer as soon as it is complete (ranks run the same modules in
        # the same order, which the all-gathers already require) so its gathered parameters can
        # be released at once; stage 2 keeps one fixed order so that ranks may take branches.
        self.ordered_launch = stage < 3
        self.on_reduced = on_reduced
        self.check_fresh = check_fresh
        # Offload to nvme: an object that takes the reduced gradient shards of the buffers it
        # accepts (zerolib.offload.SwappedGradients: into swap files) instead of them being kept.
        self.sink = None
        self.shard = comm.rank if layout.num_shards > 1 else 0
        param_dtype = next(iter(params.values())).dtype
        device = next(iter(params.values())).device
        # Stages 0/1: gradients accumulate in place across micro-steps in these full buffers.
        self.full_grads = None
        if stage < 2:
            self.full_grads = [torch.zeros(b.padded_numel, dtype=param_dtype, device=device) for b in layout.buffers]
        # fp32 gradients of this rank's slices; for fp32 stage 0/1 they are views of full_grads.
        self._grad_shards_are_views = stage < 2 and param_dtype == torch.float32
        self.grad_shards: list[torch.Tensor | None] = [None] * len(layout.buffers)
        self._kept_shards: list[torch.Tensor | None] = [None] * len(layout.buffers)
        self._launch_order = [b.index for b in reversed(layout.buffers)]
        self._trainable_counts = [len(b.slots) for b in layout.buffers]
        self._buckets: dict[int, torch.Tensor] = {}
        self._reported = [0] * len(layout.buffers)
        self._next_launch = 0
        self._launched: set[int] = set()
        self._in_flight: list[_InFlight] = []
        self._hooks = []
        self._boundary = False
        # Every stage hooks gradient completion: stage 2/3 to copy into buckets, stage 0/1 to
        # launch each buffer's reduction during the boundary backward (overlapping it, as DDP does).
        for slot in (s for b in layout.buffers for s in b.slots):
            hook = functools.partial(self._on_grad_ready, slot)
            self._hooks.append(params[slot.name].register_post_accumulate_grad_hook(hook))

    # -- backward ---------------------------------------------------------------------------
    def prepare_backward(self, boundary: bool = True) -> None:
        """Points ``param.grad`` at the full buffers again (a user's ``zero_grad()`` drops them)."""
        self._boundary = boundary
        if self.full_grads is None:
            return
        for spec in self.layout.buffers:
            for slot in spec.slots:
                param = self.params[slot.name]
                view = self.full_grads[spec.index][slot.offset:slot.end].view(slot.shape)
                if param.grad is None or param.grad.data_ptr() != view.data_ptr():
                    param.grad = view

    def _on_grad_ready(self, slot: ParamSlot, param: torch.Tensor) -> None:
        index = slot.buffer_index
        if self.check_fresh is not None:
            self.check_fresh(slot)
        if self.stage < 2:  # the gradient already sits in its full buffer
            if self._boundary:
                self._reported[index] += 1
                self._launch_ready()
            return
        if index not in self._buckets:
            if self._is_launched(index):
                raise RuntimeError(
                    f"parameter '{slot.name}' produced a gradient after its bucket was reduced "
                    "(a second backward through it in one micro-step); use non-reentrant activation "
                    "checkpointing or call engine.backward once per micro-step")
            self._bound_in_flight()
            self._buckets[index] = self._new_bucket(self.layout.buffers[index].padded_numel)
        self._buckets[index][slot.offset:slot.end].add_(param.grad.reshape(-1))
        param.grad = None
        self._reported[index] += 1
        if self.ordered_launch:
            self._launch_ready()
        elif self._reported[index] >= self._trainable_counts[index]:
            self._launch(index)

    def _is_launched(self, index: int) -> bool:
        return index in self._launched

    def _launch_ready(self) -> None:
        while self._next_launch < len(self._launch_order):
            index = self._launch_order[self._next_launch]
            if self._reported[index] < self._trainable_counts[index]:
                return
            self._launch(index)

    def _launch(self, index: int) -> None:
        spec = self.layout.buffers[index]
        if self.stage >= 2:
            bucket = self._buckets.pop(index, None)
            if bucket is None:  # no parameter of this buffer was used on this rank
                bucket = self._new_bucket(spec.padded_numel)
        else:
            bucket = self.full_grads[index].to(self.comm_dtype)
        if self.predivide_factor != 1.0:
            bucket.div_(self.predivide_factor)
        self._next_launch += 1
        self._launched.add(index)
        if self.on_reduced is not None:
            self.on_reduced(index)
        if self.layout.num_shards == 1:
            pending = self.comm.all_reduce(bucket, async_op=self.overlap_comm)
            self._in_flight.append(_InFlight(index, pending, bucket, bucket))
            return
        reduced, is_scratch = self._reduce_target(spec, bucket)
        pending = self.reduce_scatter(reduced, bucket, async_op=self.overlap_comm)
        self._in_flight.append(_InFlight(index, pending, reduced, bucket, reduced_is_scratch=is_scratch))

    def _bound_in_flight(self) -> None:
        """Stages 2-3 hold at most MAX_BUCKETS_IN_FLIGHT buckets under reduction: a new bucket
        first waits for the oldest, so gradient memory stays near reduce_bucket_size (stage 3:
        a few units' buckets, not one per unit until backward ends)."""
        while self.stage >= 2 and len(self._in_flight) >= MAX_BUCKETS_IN_FLIGHT:
            self._retire(self._in_flight.pop(0))

    def _retire(self, item: _InFlight) -> None:
        """Waits for one reduction, folds it into the gradient shard, recycles its buffers."""
        if item.pending is not None:
            item.pending.wait()
        self._accumulate_into_shard(self.layout.buffers[item.buffer_index], item.reduced)
        if item.reduced_is_scratch:
            self.comm.scratch.give(item.reduced)
        if self.stage >= 2:  # the send has completed: the bucket can be refilled
            self.comm.scratch.give(item.bucket)

    def _new_bucket(self, numel: int) -> torch.Tensor:
        return self.comm.scratch.take(numel, self.comm_dtype, self.comm.device).zero_()

    def _reduce_target(self, spec: BufferSpec, bucket: torch.Tensor) -> tuple[torch.Tensor, bool]:
        """Where the reduce-scatter writes, and whether that is a scratch buffer to give back:
        in place when nothing is there yet to accumulate into."""
        if self.stage < 2 and bucket.data_ptr() == self.full_grads[spec.index].data_ptr():
            lo, hi = spec.shard_range(self.shard)
            return bucket[lo:hi], False  # this rank's slice of its own full buffer
        if self.grad_shards[spec.index] is None and self.comm_dtype == torch.float32 and not self._sinks(spec.index):
            return self._shard_storage(spec), False
        return self.comm.scratch.take(spec.shard_numel, bucket.dtype, bucket.device), True

    def _sinks(self, index: int) -> bool:
        return self.sink is not None and self.sink.accepts(index)

    def _shard_storage(self, spec: BufferSpec) -> torch.Tensor:
        """The fp32 gradient shard of a buffer, kept across steps (refilling it beats a fresh
        allocation's page faults)."""
        if self._kept_shards[spec.index] is None:
            self._kept_shards[spec.index] = torch.empty(spec.shard_numel, dtype=torch.float32, device=self.comm.device)
        return self._kept_shards[spec.index]

    def finish_backward(self, boundary: bool) -> None:
        """Launches whatever is left (in order) and folds the results into the gradient shards.

        Stages 0/1 communicate only at the accumulation boundary; stage 2 on every micro-step.
        """
        if self.stage < 2 and not boundary:
            return
        for index in self._launch_order:
            if not self._is_launched(index):
                self._launch(index)
        for item in self._in_flight:
            self._retire(item)
        self._in_flight.clear()
        self._buckets.clear()
        self._reported = [0] * len(self.layout.buffers)
        self._next_launch = 0
        self._launched.clear()

    def _accumulate_into_shard(self, spec: BufferSpec, reduced: torch.Tensor) -> None:
        scale = self.predivide_factor / self.comm.world_size
        if self._grad_shards_are_views:
            lo, hi = spec.shard_range(self.shard)
            shard = self.full_grads[spec.index][lo:hi]
            if shard.data_ptr() != reduced.data_ptr():
                shard.copy_(reduced)
            shard.mul_(scale)
            self.grad_shards[spec.index] = shard
            return
        if self._sinks(spec.index):
            self.sink.accumulate(spec.index, reduced, scale, final=self._boundary)
            return
        kept = self._kept_shards[spec.index]
        if kept is not None and reduced.data_ptr() == kept.data_ptr():
            self.grad_shards[spec.index] = kept.mul_(scale)
            return
        if self.grad_shards[spec.index] is None:
            self.grad_shards[spec.index] = self._shard_storage(spec).copy_(reduced).mul_(scale)
        else:
            self.grad_shards[spec.index].add_(reduced.float(), alpha=scale)

    def zero_grads(self) -> None:
        """Drops the reduced shards and clears the accumulation buffers after a step."""
        if self.full_grads is not None:
            for buffer in self.full_grads:
                buffer.zero_()
        self.grad_shards = [None] * len(self.layout.buffers)
        if self.sink is not None:
            self.sink.reset()

    def storage(self) -> list[torch.Tensor]:
        """Every gradient tensor currently held, for memory accounting."""
        held = list(self.full_grads or []) + list(self._buckets.values())
        return held + [g for g in self.grad_shards + self._kept_shards if g is not None]

    def remove_hooks(self) -> None:
        for handle in self._hooks:
            handle.remove()
        self._hooks.clear()
