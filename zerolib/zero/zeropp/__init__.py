"""ZeRO++ (arXiv 2306.10209) on zerolib's stage 3: each switch plugs into the existing path.

- qwZ and hpZ change how a store's training gathers travel: :class:`WeightGather`, which
  ``PartitionedParams`` calls for the gathers the coordinator issues (weight_gather.py).
- qgZ replaces the gradient reducer's reduce-scatter with a two-hop quantized all-to-all:
  :class:`HierarchicalQuantizedReduceScatter` (hierarchical_reduce.py).
See docs/zeropp.md.
"""
from __future__ import annotations

from zerolib.comm import CommContext
from zerolib.zero.zeropp.hierarchical_reduce import HierarchicalQuantizedReduceScatter
from zerolib.zero.zeropp.settings import ZeroPPSettings
from zerolib.zero.zeropp.weight_gather import WeightGather


def describe(comm: CommContext, settings: ZeroPPSettings) -> str | None:
    """One line saying which ZeRO++ switches are on and over which groups (None: none on)."""
    parts = []
    if settings.quantized_weights:
        parts.append(f"qwZ int8 weight gathers (blocks of {settings.block_size})")
    if settings.hierarchical_weights:
        k = settings.hpz_partition_size
        where = "inside a node" if comm.node_size % k == 0 else f"wider than a node of {comm.node_size}: " \
                "backward gathers cross nodes"
        parts.append(f"hpZ secondary shards over groups of {k} ranks ({where})")
    if settings.quantized_gradients:
        parts.append(f"qgZ int{settings.gradient_bits} gradients, two-hop over {comm.world_size // comm.node_size} "
                     f"node group(s) of {comm.node_size}")
    return "ZeRO++: " + "; ".join(parts) if parts else None


def weight_gather_for(comm: CommContext, settings: ZeroPPSettings) -> WeightGather | None:
    """A WeightGather when qwZ or hpZ is on (one per store), else None (plain gathers)."""
    return WeightGather(comm, settings) if settings.changes_weight_gathers else None


def gradient_reduce_scatter_for(comm: CommContext, settings: ZeroPPSettings):
    """The quantized two-hop reduce-scatter when qgZ is on, else None (the plain one)."""
    if not settings.quantized_gradients:
        return None
    return HierarchicalQuantizedReduceScatter(comm, bits=settings.gradient_bits, block_size=settings.block_size)


__all__ = ["HierarchicalQuantizedReduceScatter", "WeightGather", "ZeroPPSettings", "describe",
           "gradient_reduce_scatter_for", "weight_gather_for"]
