"""Stage 0-2 parameter storage: every rank holds every parameter, packed in flat buffers."""
from __future__ import annotations

import torch

from zerolib.comm import CommContext
from zerolib.partition.layout import FlatLayout


class ReplicatedParams:
    """Full flat buffers whose slices the module's parameters are views of.

    After the optimizer has updated this rank's slice, :meth:`publish` all-gathers every buffer
    in place so that all ranks hold the same full parameters again.
    """

    def __init__(self, layout: FlatLayout, params: dict[str, torch.nn.Parameter], comm: CommContext):
        self.layout, self.comm = layout, comm
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

    # Always whole: the gather/release protocol of stage 3 is trivially satisfied.
    def is_available(self, index: int) -> bool:
        return True

    def wait_gather(self, index: int) -> None:
        pass

    def release(self, index: int) -> None:
        pass

    def full_buffer(self, index: int) -> torch.Tensor:
        return self.buffers[index]

    def shard_view(self, buffer_index: int, shard: int) -> torch.Tensor:
        lo, hi = self.layout.buffers[buffer_index].shard_range(shard)
        return self.buffers[buffer_index][lo:hi]

    def publish(self, shard: int, async_op: bool = True) -> None:
        """All-gathers each buffer from the owners' updated slices."""
        if self.layout.num_shards == 1:
            return
        pending = [self.comm.all_gather_into(buffer, self.shard_view(i, shard), async_op=async_op)
                   for i, buffer in enumerate(self.buffers)]
        for item in pending:
            if item is not None:
                item.wait()

    def storage(self) -> list[torch.Tensor]:
        return list(self.buffers)
