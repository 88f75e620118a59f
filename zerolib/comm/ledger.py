"""Per-kind accounting of the bytes this rank puts on the wire.

Every collective zerolib issues is recorded here, so ``engine.comm_stats()`` is exact rather
than estimated. Bytes are counted the same way for every kind: the payload this rank sends
under a bandwidth-optimal ring (or pairwise) algorithm, with N ranks in the group and M the
size of the full message in bytes:

=================  =====================  =========================================
kind               bytes sent per rank    full message M
=================  =====================  =========================================
all_gather         (N-1)/N * M            the gathered output
reduce_scatter     (N-1)/N * M            the input before reduction
all_to_all         (N-1)/N * M            the input (1/N of it stays local)
all_reduce         2 (N-1)/N * M          the tensor (reduce-scatter + all-gather)
broadcast          (N-1)/N * M            the tensor (pipelined chain)
gather             M (non-root ranks)     the pickled object (results to rank 0)
=================  =====================  =========================================

An all-to-all with uneven splits (``all_to_all_uneven``) records exactly the rows it sends to
other ranks.

``inter_bytes`` is the part of ``bytes`` sent over a group that spans more than one node
group; the rest stays inside a node.
"""
from __future__ import annotations

from dataclasses import dataclass, field

COLLECTIVE_KINDS = ("all_gather", "reduce_scatter", "all_reduce", "all_to_all", "broadcast", "gather")


def wire_bytes(kind: str, message_bytes: int, group_size: int) -> int:
    """Bytes one rank sends for a collective of ``kind`` over ``group_size`` ranks."""
    if group_size <= 1:
        return 0
    share = message_bytes * (group_size - 1) // group_size
    return 2 * share if kind == "all_reduce" else share


@dataclass
class _KindStats:
    calls: int = 0
    bytes: int = 0
    inter_bytes: int = 0
    seconds: float = 0.0


@dataclass
class CommLedger:
    """Counts calls and bytes per collective kind since the last :meth:`reset`."""

    _stats: dict[str, _KindStats] = field(default_factory=dict)

    def record(self, kind: str, nbytes: int, *, crosses_nodes: bool = False, seconds: float = 0.0) -> None:
        stats = self._stats.setdefault(kind, _KindStats())
        stats.calls += 1
        stats.bytes += nbytes
        stats.seconds += seconds
        if crosses_nodes:
            stats.inter_bytes += nbytes

    def add_seconds(self, kind: str, seconds: float) -> None:
        """Adds wait time to ``kind`` (async collectives are timed when waited on)."""
        self._stats.setdefault(kind, _KindStats()).seconds += seconds

    def reset(self) -> None:
        self._stats.clear()

    def snapshot(self) -> dict[str, dict[str, float]]:
        """``{kind: {"calls", "bytes", "inter_bytes", "seconds"}}`` for kinds used so far."""
        return {
            kind: {"calls": s.calls, "bytes": s.bytes, "inter_bytes": s.inter_bytes, "seconds": s.seconds}
            for kind, s in self._stats.items()
        }
