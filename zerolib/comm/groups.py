"""Sub-groups of the world along the node layout: blocks of consecutive ranks, and strides.

With ``size`` ranks per block, block b holds ranks ``[b*size, (b+1)*size)`` (a node when
``size`` is the node size, an hpZ partition group when it is ``zero_hpz_partition_size``), and
stride group l holds the ranks with index l inside their block (``l, l+size, l+2*size, ...``),
one per block: the ranks that exchange data across nodes in a two-hop collective.

``torch.distributed.new_group`` must be called by every rank for every group, in the same
order, even for groups the rank is not in; :class:`GroupCache` does exactly that, once per
partition of the world, the first time any rank asks for it.
"""
from __future__ import annotations

import torch.distributed as dist


def block_ranks(world_size: int, size: int) -> list[list[int]]:
    """The blocks of ``size`` consecutive ranks that cover the world, in order."""
    _check_divides(world_size, size)
    return [list(range(start, start + size)) for start in range(0, world_size, size)]


def stride_ranks(world_size: int, size: int) -> list[list[int]]:
    """For each index l inside a block of ``size``, the ranks with that index, in order."""
    _check_divides(world_size, size)
    return [list(range(local, world_size, size)) for local in range(size)]


def _check_divides(world_size: int, size: int) -> None:
    if size < 1 or world_size % size:
        raise ValueError(f"a group size of {size} does not divide the world size {world_size}")


class GroupCache:
    """Creates each partition of the world into groups once and hands out this rank's group.

    A group covering the whole world is None (the default group), so collectives over it take
    the same path as world collectives.
    """

    def __init__(self, rank: int, world_size: int):
        self.rank, self.world_size = rank, world_size
        self._mine: dict[tuple[str, int], object] = {}

    def block(self, size: int):
        """The group of ``size`` consecutive ranks that holds this rank."""
        return self._group("block", size, block_ranks(self.world_size, size))

    def stride(self, size: int):
        """The group of ranks that share this rank's index inside blocks of ``size``."""
        return self._group("stride", size, stride_ranks(self.world_size, size))

    def _group(self, kind: str, size: int, partition: list[list[int]]):
        key = (kind, size)
        if key not in self._mine:
            mine = None
            for ranks in partition:
                if len(ranks) == self.world_size:
                    group = None
                else:
                    group = dist.new_group(ranks)  # every rank creates every group, in order
                if self.rank in ranks:
                    mine = group
            self._mine[key] = mine
        return self._mine[key]
