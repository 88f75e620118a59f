"""Saying which collective failed and who was waiting in it, instead of gloo's or NCCL's bare
"timed out waiting 600000ms for recv".

Every collective zerolib issues carries a :class:`CallLabel`: its kind, the ranks of its group
and its number among that group's collectives. The members of a group issue its collectives in
the same order, so the numbers agree across ranks. When a collective fails (the backend raises
after ``comm.timeout_seconds``, or as soon as a peer's connection closes), the rank notes
``zerolib/waiting/<group>/<number>/<rank>`` in the job's key-value store (the TCP store that
rank 0 hosts at MASTER_ADDR:MASTER_PORT) and looks, for a short grace period, for its peers'
notes. Ranks that noted were waiting in the same collective; the others are the ones to look
at: stalled, dead, or inside a different collective.
"""
from __future__ import annotations

import datetime
import os
import time
from dataclasses import dataclass

import torch.distributed as dist

# The longest a failing rank waits for its peers' notes; short next to any real timeout.
MAX_GRACE_SECONDS = 5.0


class CollectiveError(RuntimeError):
    """A collective failed or timed out; the message names it, this rank, and the waiting ranks.

    ``purpose`` says what the collective was for (a ZeRO-3 gather names its module); callers
    that know it add it with :meth:`within`.
    """

    def __init__(self, rank: int, label: "CallLabel", details: str, purpose: str = ""):
        self.rank, self.label, self.details, self.purpose = rank, label, details, purpose
        what = f"{label.describe()} ({purpose})" if purpose else label.describe()
        super().__init__(f"rank {rank}: {what} {details}")

    def within(self, purpose: str) -> "CollectiveError":
        """The same error, saying what the collective was for."""
        return CollectiveError(self.rank, self.label, self.details, purpose)


@dataclass(frozen=True)
class CallLabel:
    """Which collective: its kind, its group's ranks and its number in that group."""

    kind: str
    ranks: tuple[int, ...]
    number: int

    def describe(self) -> str:
        return f"{self.kind} #{self.number} over ranks {_rank_list(self.ranks)}"

    def board_key(self, rank: int) -> str:
        return f"zerolib/waiting/{','.join(map(str, self.ranks))}/{self.number}/{rank}"


def _rank_list(ranks) -> str:
    ranks = list(ranks)
    if len(ranks) > 2 and ranks == list(range(ranks[0], ranks[-1] + 1)):
        return f"{ranks[0]}-{ranks[-1]}"
    return ", ".join(map(str, ranks)) or "none"


def _store_client(grace: float):
    """A client of the job's TCP store, or None when there is none to reach."""
    host, port = os.environ.get("MASTER_ADDR"), os.environ.get("MASTER_PORT", "")
    if not host or not port.isdigit():
        return None
    try:
        return dist.TCPStore(host, int(port), is_master=False, wait_for_workers=False,
                             timeout=datetime.timedelta(seconds=grace))
    except (RuntimeError, ValueError):  # rank 0, which hosts the store, is gone
        return None


def waiting_ranks(label: CallLabel, rank: int, grace: float) -> list[int] | None:
    """The ranks of ``label``'s group that report waiting in it within ``grace`` seconds
    (this one included), or None when the store cannot be reached."""
    store = _store_client(grace)
    if store is None:
        return None
    try:
        store.set(label.board_key(rank), "waiting")
        deadline = time.monotonic() + grace
        while True:
            seen = [r for r in label.ranks if store.check([label.board_key(r)])]
            if len(seen) == len(label.ranks) or time.monotonic() >= deadline:
                return seen
            time.sleep(0.05)
    except RuntimeError:  # the store went away while we asked
        return None


def explain_failure(label: CallLabel, rank: int, error: BaseException, waited: float,
                    timeout_seconds: float) -> CollectiveError:
    """The error to raise on ``rank`` for ``label``, which failed with ``error`` after ``waited`` s."""
    grace = min(MAX_GRACE_SECONDS, timeout_seconds)
    waiting = waiting_ranks(label, rank, grace)
    if waiting is None:
        who = f"rank {rank} was waiting in it (the other ranks' state is unknown: no store to ask)"
    else:
        missing = [r for r in label.ranks if r not in waiting]
        who = f"ranks waiting in it: {_rank_list(waiting)}"
        if missing:
            who += (f"; not in it after {grace:g} s more: {_rank_list(missing)} (stalled, dead, or "
                    "inside a different collective)")
    return CollectiveError(rank, label, f"failed after {waited:.1f} s (comm.timeout_seconds is {timeout_seconds:g}); "
                                        f"{who}. Backend error: {str(error).strip()}")
