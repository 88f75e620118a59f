"""Stage 0-2 parameter storage: every rank holds every parameter, packed in flat buffers."""
from __future__ import annotations

import functools

import torch

from zerolib.comm import CommContext, PendingCollective
from zerolib.partition.layout import FlatLayout, ParamSlot


class ReplicatedParams:
    """Full flat buffers whose slices the module's parameters are views of.

    After the optimizer has updated this rank's slice, :meth:`publish` all-gathers every buffer
    in place so that all ranks hold the same full parameters again. With ``defer_publish`` the
    all-gathers are only launched, and each buffer is waited for just before the first module
    whose own parameters live in it runs forward (:func:`install_forward_waits`), so the
    gather overlaps the next forward instead of ending the step.
    """

    def __init__(self, layout: FlatLayout, params: dict[str, torch.nn.Parameter], comm: CommContext, *,
                 defer_publish: bool = False):
        self.layout, self.comm, self.params = layout, comm, params
        self.defer_publish = defer_publish
        self._pending: dict[int, PendingCollective] = {}
        # Buffers still in flight when the root module's forward ended: a gradient for one of
        # their parameters means it was read in forward before its values arrived.
        self.finished_late: frozenset[int] = frozenset()
        first = next(iter(params.values()))
        self.dtype = first.dtype
        self.buffers = [torch.zeros(b.padded_numel, dtype=first.dtype, device=first.device) for b in layout.buffers]
        with torch.no_grad():
            for spec in layout.buffers:
                for slot in spec.slots:
                    view = self.buffers[spec.index][slot.offset:slot.end]
                    view.copy_(params[slot.name].detach().reshape(-1))
                    params[slot.name].data = view.view(slot.shape)
        for buffer in self.buffers:  # every rank starts from rank 0's values
            comm.broadcast(buffer, 0)

    # Whole but for a deferred publish: the gather/release protocol of stage 3 is easily met.
    def is_available(self, index: int) -> bool:
        return index not in self._pending

    def wait_gather(self, index: int) -> None:
        pending = self._pending.pop(index, None)
        if pending is not None:
            pending.wait()

    def finish_publish(self, *, late: bool = False) -> None:
        """Waits for every all-gather still in flight; ``late`` records which were (the root
        module's forward has ended, so their parameters should have been waited for already)."""
        if late:
            self.finished_late = frozenset(self._pending)
        for index in list(self._pending):
            self.wait_gather(index)

    def check_fresh(self, slot: ParamSlot) -> None:
        """Raises if ``slot``'s parameter got a gradient although forward ran before it arrived."""
        if slot.buffer_index in self.finished_late:
            raise RuntimeError(
                f"parameter '{slot.name}' was used in forward before its updated values arrived: with "
                "zero_optimization.overlap_comm, stages 1-2 finish the parameter all-gather during the next "
                "forward, waiting for a parameter when the module that owns it starts, and this parameter was "
                "read elsewhere (its module did not run first). Set overlap_comm to false for this model.")

    def release(self, index: int) -> None:
        pass

    def full_buffer(self, index: int) -> torch.Tensor:
        return self.buffers[index]

    def shard_view(self, buffer_index: int, shard: int) -> torch.Tensor:
        lo, hi = self.layout.buffers[buffer_index].shard_range(shard)
        return self.buffers[buffer_index][lo:hi]

    def open_shard(self, buffer_index: int, shard: int, *, read: bool = True) -> torch.Tensor:
        """Slice ``shard`` of the buffer (always resident here; see PartitionedParams)."""
        return self.shard_view(buffer_index, shard)

    def close_shard(self, buffer_index: int, *, dirty: bool = False) -> None:
        pass

    def publish(self, shard: int) -> None:
        """All-gathers each buffer from the owners' updated slices (see ``defer_publish``)."""
        if self.layout.num_shards == 1:
            return
        self.finish_publish()
        self.finished_late = frozenset()
        for index, buffer in enumerate(self.buffers):
            self._pending[index] = self.comm.all_gather_into(buffer, self.shard_view(index, shard), async_op=True)
        if not self.defer_publish:
            self.finish_publish()

    def storage(self) -> list[torch.Tensor]:
        return list(self.buffers)


def install_forward_waits(root: torch.nn.Module, store: ReplicatedParams) -> list:
    """Forward pre-hooks that finish a deferred publish buffer by buffer, as modules start.

    Each module waits for the buffers of its own (direct) parameters; the root's forward
    post-hook finishes whatever is left, noting it in ``store.finished_late``.
    """
    buffer_of = {id(store.params[slot.name]): slot.buffer_index for slot in store.layout.slots.values()}
    handles = []
    for module in root.modules():
        indices = sorted({buffer_of[id(p)] for p in module.parameters(recurse=False) if id(p) in buffer_of})
        if indices:
            handles.append(module.register_forward_pre_hook(functools.partial(_wait_for, store, tuple(indices))))
    handles.append(root.register_forward_hook(lambda *args: store.finish_publish(late=True)))
    return handles


def _wait_for(store: ReplicatedParams, indices: tuple[int, ...], module, args) -> None:
    for index in indices:
        store.wait_gather(index)
