"""The ZeRO-3 module-order check: every rank must gather the same unit at the same fetch.

Each forward fetch all-gathers a 16-byte tag (unit index, fetch number) and compares it across
ranks; so does the end of each forward (a tag that says "forward over after n fetches"), so that
a rank that skips the last modules meets its peers' next check rather than a gather of another
size (which gloo cannot survive) or nothing at all (a hang).

When a tag must be verified. A fetch that posts its own gather (on demand, or off the recorded
trace) verifies its tag, and every earlier one, before it waits on that gather, so a rank never
uses data gathered for another module. A fetch served by a gather that was prefetched along the
trace does not wait for its tag: every rank posted that gather at an earlier fetch, on the same
trace, so the data cannot be another unit's. Its tag is verified before any gather posted at or
after that fetch is waited on, and at the end of the forward at the latest. Waiting at once
would undo the prefetch: collectives on one connection (gloo: one TCP stream per peer; NCCL: one
stream) complete in the order they were posted, so the tag arrives only after every byte
prefetched before it. Over an emulated 1 Gbit/s link, with the default prefetch budget (the
whole 10M-parameter model gathered ahead), the first block then waited 176 ms for all six
blocks instead of 32 ms for its own (docs/zero3.md).
"""
from __future__ import annotations

from collections import deque
from typing import Callable

import torch

from zerolib.comm import CommContext


class RankDivergenceError(RuntimeError):
    """Ranks ran different modules under ZeRO-3 (their gathers would not match)."""


# The tag a rank sends when its forward is over, in place of a unit index.
END_OF_FORWARD = -1


class OrderCheck:
    """Posts the order tags of one forward and verifies them, at once or deferred (see module doc).

    ``unit_name(index)`` names a unit for the error message.
    """

    def __init__(self, comm: CommContext, unit_name: Callable[[int], str]):
        self.comm, self.unit_name = comm, unit_name
        self._posted: deque = deque()  # (fetch number, tags, pending), oldest first, not yet verified

    def post(self, fetch_number: int, unit_index: int) -> None:
        """Starts the all-gather of this fetch's tag (``fetch_number`` counts from 1)."""
        tag = torch.tensor([unit_index, fetch_number - 1], dtype=torch.int64, device=self.comm.device)
        tags = torch.empty(2 * self.comm.world_size, dtype=torch.int64, device=self.comm.device)
        self._posted.append((fetch_number, tags, self.comm.all_gather_into(tags, tag, async_op=True)))

    def verify(self, through: int | None = None) -> None:
        """Verifies the posted tags of fetches up to ``through`` (every one if None), oldest first;
        raises :class:`RankDivergenceError` at the first that differs between ranks (and
        :class:`CollectiveError` if a peer never sends its tag: the caller says what it was doing)."""
        while self._posted and (through is None or self._posted[0][0] <= through):
            _, tags, pending = self._posted.popleft()
            pending.wait()
            self._compare(tags)

    def end_of_forward(self, fetches: int) -> None:
        """Verifies every tag left, then this rank's "forward over after ``fetches``" against its peers'."""
        self.post(fetches + 1, END_OF_FORWARD)
        self.verify()

    def forget(self) -> None:
        """Drops unverified tags after a failure (their collectives may never complete)."""
        self._posted.clear()

    def _describe(self, rank: int, unit_index: int, fetches: int) -> str:
        if unit_index == END_OF_FORWARD:
            return f"rank {rank} ends its forward after {fetches} gathers"
        name = self.unit_name(unit_index)
        if name is not None:
            return f"rank {rank} gathers '{name}' (fetch #{fetches + 1})"
        return f"rank {rank} sent an unknown module index {unit_index}"

    def _compare(self, tags: torch.Tensor) -> None:
        per_rank = tags.view(-1, 2).tolist()
        if all(row == per_rank[0] for row in per_rank):
            return
        described = ", ".join(self._describe(r, u, n) for r, (u, n) in enumerate(per_rank))
        raise RankDivergenceError(
            f"ZeRO-3 ranks ran different modules in forward: {described}. Every rank must run "
            "the same modules in the same order (a data-dependent branch or a skipped module on one rank "
            "breaks this); make the branch condition the same on all ranks.")
