"""Flat, aligned buffers of parameters and the slice of each that a rank owns.

Parameters of one dtype are laid end to end in buffers of at most ``max_buffer_numel``
elements (a larger parameter gets a buffer of its own). Each buffer is padded so that it splits
into ``num_shards`` equal slices, each a multiple of ``align`` elements; shard r owns
``[r * shard_numel, (r + 1) * shard_numel)`` of every buffer. A buffer is therefore also the
unit of one reduce-scatter and one all-gather, which is what lets gradients be reduced as soon
as one buffer's worth of them is ready.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class ParamSlot:
    """Where one parameter lives: buffer index, element offset inside it, and its shape."""

    name: str
    buffer_index: int
    offset: int
    shape: torch.Size

    @property
    def numel(self) -> int:
        return self.shape.numel()

    @property
    def end(self) -> int:
        return self.offset + self.numel


@dataclass(frozen=True)
class BufferSpec:
    """One flat buffer: the parameters in it, its padded size and each shard's size."""

    index: int
    slots: tuple[ParamSlot, ...]
    padded_numel: int
    shard_numel: int

    def shard_range(self, shard: int) -> tuple[int, int]:
        start = shard * self.shard_numel
        return start, start + self.shard_numel

    def owned_part(self, slot: ParamSlot, shard: int) -> tuple[int, int] | None:
        """The part of ``slot`` inside shard ``shard``, as [start, end) offsets in the buffer."""
        lo, hi = self.shard_range(shard)
        start, end = max(slot.offset, lo), min(slot.end, hi)
        return (start, end) if start < end else None


DEFAULT_ALIGN = 64  # elements: every shard starts on a 256-byte boundary in fp32


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


class FlatLayout:
    """The buffers some named parameters are packed into, for ``num_shards`` owners.

    ``groups`` gives the parameters of each buffer; :meth:`packed` fills buffers greedily up
    to a size instead.
    """

    def __init__(self, groups: list[list[tuple[str, torch.Size]]], num_shards: int, *, align: int = DEFAULT_ALIGN):
        if num_shards < 1:
            raise ValueError(f"num_shards must be >= 1, got {num_shards}")
        self.num_shards = num_shards
        self.align = align
        self.buffers: tuple[BufferSpec, ...] = tuple(self._buffer(i, g) for i, g in enumerate(g for g in groups if g))
        self.slots: dict[str, ParamSlot] = {s.name: s for b in self.buffers for s in b.slots}

    @classmethod
    def packed(cls, named_shapes: list[tuple[str, torch.Size]], num_shards: int, *, max_buffer_numel: int,
               align: int = DEFAULT_ALIGN) -> "FlatLayout":
        """Buffers of at most ``max_buffer_numel`` elements (a larger parameter gets its own)."""
        groups: list[list[tuple[str, torch.Size]]] = [[]]
        used = 0
        for name, shape in named_shapes:
            numel = torch.Size(shape).numel()
            if groups[-1] and used + numel > max(1, int(max_buffer_numel)):
                groups.append([])
                used = 0
            groups[-1].append((name, torch.Size(shape)))
            used += numel
        return cls(groups, num_shards, align=align)

    def _buffer(self, index: int, group: list[tuple[str, torch.Size]]) -> BufferSpec:
        slots, offset = [], 0
        for name, shape in group:
            slots.append(ParamSlot(name, index, offset, torch.Size(shape)))
            offset += torch.Size(shape).numel()
        padded = _round_up(max(offset, 1), self.num_shards * self.align)
        return BufferSpec(index, tuple(slots), padded, padded // self.num_shards)

    @property
    def total_numel(self) -> int:
        """Elements of real parameters (no padding)."""
        return sum(slot.numel for slot in self.slots.values())

    @property
    def padded_numel(self) -> int:
        return sum(b.padded_numel for b in self.buffers)

    @property
    def shard_numel(self) -> int:
        """Elements one shard owns across all buffers."""
        return sum(b.shard_numel for b in self.buffers)
