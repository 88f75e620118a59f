"""The fp32 gradient shards of offloaded master slices, kept in swap files by sub-group.

With ``offload_optimizer.device: nvme`` the gradient reducer hands each reduced gradient shard
to :class:`SwappedGradients` (its *gradient sink*) instead of keeping it: the shard is cut into
the optimizer's sub-groups and each piece is written to its own swap file, added to what an
earlier micro-step of the same accumulation window wrote there. The squared norm of the final
gradient is summed as it is written, so clipping needs no second pass over the files. The
optimizer then reads one sub-group's gradient at a time, next to its master and moments.
"""
from __future__ import annotations

import torch

from zerolib.offload.swapper import SubGroupSwapper


class SwappedGradients:
    """Gradient sink for the reducer (``accepts``/``accumulate``/``reset``) and gradient source
    for :class:`~zerolib.offload.optimizer.OffloadAdam` (``acquire``/``done``)."""

    def __init__(self, sub_groups, swapper: SubGroupSwapper):
        self.sub_groups, self.swapper = sub_groups, swapper
        self._of_tensor: dict[int, list[int]] = {}
        for index, sub in enumerate(sub_groups):
            self._of_tensor.setdefault(sub.tensor, []).append(index)
        self._written: set[int] = set()  # sub-groups holding a gradient of this window
        self._squares = 0.0
        self.scale = 1.0  # applied by acquire(): the loss-scale and clipping coefficient

    def accepts(self, tensor: int) -> bool:
        """Whether master slice ``tensor``'s gradient lives here (it is offloaded)."""
        return tensor in self._of_tensor

    @torch.no_grad()
    def accumulate(self, tensor: int, reduced: torch.Tensor, scale: float, final: bool) -> None:
        """Adds ``reduced * scale`` to ``tensor``'s gradient; ``final``: this is the last
        micro-step of the window, so the result's squared norm is counted."""
        groups = self._of_tensor[tensor]
        for position, index in enumerate(groups):
            sub = self.sub_groups[index]
            part = reduced[sub.lo:sub.hi]
            if index in self._written:
                (grad,) = self.swapper.acquire(index)
                if position + 1 < len(groups):
                    self.swapper.prefetch(groups[position + 1])
                grad.add_(part.float(), alpha=scale)
            else:
                (grad,) = self.swapper.acquire(index, read=False)
                grad.copy_(part).mul_(scale)
            if final:
                self._squares += float(torch.dot(grad, grad))
            self.swapper.release(index)
            self._written.add(index)

    def squared_norm(self) -> float:
        """Sum of squares of this window's final gradients (before ``scale``)."""
        return self._squares

    def acquire(self, index: int) -> torch.Tensor:
        """Sub-group ``index``'s gradient times ``scale`` (zeros if none was written)."""
        if index not in self._written:
            (grad,) = self.swapper.acquire(index, read=False)
            return grad.zero_()
        (grad,) = self.swapper.acquire(index)
        return grad.mul_(self.scale) if self.scale != 1.0 else grad

    def prefetch(self, index: int) -> None:
        if index in self._written:
            self.swapper.prefetch(index)

    def done(self, index: int) -> None:
        """The optimizer has used sub-group ``index``'s gradient: drop it."""
        self.swapper.discard(index)
        self._written.discard(index)

    def reset(self) -> None:
        """A new accumulation window (after a step, or a step skipped for overflow)."""
        for index in list(self._written):
            self.swapper.discard(index)
        self._written.clear()
        self._squares, self.scale = 0.0, 1.0
