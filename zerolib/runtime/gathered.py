"""``GatheredParameters``: full parameters inside a block, re-partitioned after it."""
from __future__ import annotations

from contextlib import contextmanager

import torch


@contextmanager
def GatheredParameters(params, modifier_rank: int | None = None, *, engine=None):  # noqa: N802 (DeepSpeed's name)
    """Makes ``params`` whole inside the block, then partitions them again.

    With ``modifier_rank`` set, that rank's in-place edits are broadcast to every rank when the
    block ends and copied into the shards *and* the fp32 master weights, so the next step
    starts from the edited values. ``engine`` is the engine whose model owns the parameters
    (zerolib keeps partition state in the engine, not on the tensors); without one, the
    parameters must not be partitioned.
    """
    params = [params] if isinstance(params, torch.Tensor) else list(params)
    if engine is None:
        if any(p.numel() == 0 for p in params):
            raise ValueError("these parameters are partitioned (ZeRO-3): pass engine=<the engine> to "
                             "zerolib.GatheredParameters, or use engine.gathered_parameters(...)")
        yield params
        return
    with engine.gathered_parameters(params, modifier_rank=modifier_rank):
        yield params
