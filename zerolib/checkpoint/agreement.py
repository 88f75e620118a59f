"""Ranks agree on a checkpoint step's outcome before the next collective, so that one rank's
failure (a full disk, a missing file) fails every rank, named, instead of leaving the others
waiting in a collective that rank never joins."""
from __future__ import annotations

import torch

from zerolib.checkpoint.storage import CheckpointError


def raise_if_any_failed(comm, error: CheckpointError | None, what: str) -> None:
    """Raises ``error`` on its rank and, on every other rank, an error naming the lowest failed
    rank; ``what`` says what was being done (``"saving checkpoint /x/tag"``)."""
    if not comm.distributed:
        if error is not None:
            raise error
        return
    first = torch.tensor([comm.rank if error is not None else comm.world_size], dtype=torch.int64, device=comm.device)
    comm.all_reduce(first, torch.distributed.ReduceOp.MIN)
    if error is not None:
        raise error
    if int(first) < comm.world_size:
        raise CheckpointError(f"{what} failed on rank {int(first)}; see that rank's error")
