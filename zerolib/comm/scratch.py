"""Reusable receive buffers for collectives that zerolib assembles from point-to-point sends."""
from __future__ import annotations

import torch


class ScratchPool:
    """Hands out tensors of a given size and takes them back for the next call.

    Large CPU allocations are fresh ``mmap`` pages on every call, and touching them costs about
    as much as the transfer that fills them; a buffer given back is reused instead. Idle
    buffers are kept up to ``max_idle_bytes`` in total (None: no limit); beyond that a buffer
    given back is freed.
    """

    def __init__(self, max_idle_bytes: int | None = None):
        self.max_idle_bytes = max_idle_bytes
        self._free: dict[tuple, list[torch.Tensor]] = {}
        self._idle_bytes = 0

    @staticmethod
    def _key(numel: int, dtype: torch.dtype, device: torch.device) -> tuple:
        return numel, dtype, torch.device(device)

    def take(self, numel: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """A tensor of ``numel`` elements with arbitrary contents."""
        free = self._free.get(self._key(numel, dtype, device))
        if free:
            tensor = free.pop()
            self._idle_bytes -= tensor.numel() * tensor.element_size()
            return tensor
        return torch.empty(numel, dtype=dtype, device=device)

    def give(self, tensor: torch.Tensor) -> None:
        """Returns ``tensor`` (from :meth:`take`) for reuse; the caller must not touch it again."""
        nbytes = tensor.numel() * tensor.element_size()
        if self.max_idle_bytes is not None and self._idle_bytes + nbytes > self.max_idle_bytes:
            return
        self._idle_bytes += nbytes
        self._free.setdefault(self._key(tensor.numel(), tensor.dtype, tensor.device), []).append(tensor)

    def storage(self) -> list[torch.Tensor]:
        """Every idle buffer, for memory accounting."""
        return [t for free in self._free.values() for t in free]

    def clear(self) -> None:
        self._free.clear()
        self._idle_bytes = 0
