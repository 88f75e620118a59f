"""The MoE-prefill frontend router: which data-parallel rank computes which request.

A round is built from the head of a FIFO queue. Every rank ``i`` has a load ``L_i`` in true
per-layer FLOPs (zerolib.inference.cost): a request of ``n`` tokens whose first ``M`` are
already cached (or promised) on rank ``i`` adds ``C_pfx(P - M) + C_sfx(S, P)``, which is
``cost.prefill(n, M)``. A rank is saturated once ``L_i >= T``, the engine's threshold; the round
ends when every rank is saturated or the queue is exhausted. So every saturated rank ends a
round with ``T <= L_i < T + (largest admitted request's cost)``.

Where a request goes is the policy, and only the policy differs between the three routers:

* :class:`PrefixRouter` (REFERENCE.md's cascade): among unsaturated ranks, the longest
  contiguous prefix match (ties: least ``L_i``); no match anywhere -> the least loaded.
* :class:`LeastLoadedRouter`: the least loaded unsaturated rank.
* :class:`RoundRobinRouter`: the next unsaturated rank in turn.

All three keep the same books (committed and pending tables, true-FLOPs loads, admission
against ``T``), so a benchmark between them measures placement alone.

Per rank the router keeps a *committed* table, a mirror of that rank's prefix KV cache
(zerolib/inference/prefix_cache.py: the same block hashes, the same capacity ``cache_blocks``, LRU touched in
request order as each request runs), and a *pending* table: the blocks promised to requests
routed but not finished. Pending blocks are kept as the cache state they will produce -- the
committed table with the routed requests replayed on it in order -- so a match counts exactly
the blocks the engine will find when the request runs, including a promised block that an
earlier request of the same round evicts again. If the mirror ever drifts from the engine's
cache (say a capacity mismatch) only efficiency suffers: the engine computes what its cache lacks.
"""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field

from zerolib.inference.blocks import BLOCK_TOKENS, block_hashes, matched_blocks, reusable_blocks
from zerolib.inference.cost import ModelCost


class PrefixLRU:
    """The block hashes one rank's prefix cache holds, least recently used first."""

    def __init__(self, capacity: int):
        if capacity < 0:
            raise ValueError(f"cache capacity must be >= 0 blocks, got {capacity}")
        self.capacity = capacity
        self._blocks: OrderedDict[int, None] = OrderedDict()

    def __contains__(self, block_hash: int) -> bool:
        return block_hash in self._blocks

    def __len__(self) -> int:
        return len(self._blocks)

    def hashes(self) -> list[int]:
        """Cached hashes, least recently used first."""
        return list(self._blocks)

    def copy(self) -> "PrefixLRU":
        twin = PrefixLRU(self.capacity)
        twin._blocks = self._blocks.copy()
        return twin

    def record(self, hashes: Sequence[int]) -> None:
        """A request ran with these leading blocks: touch the ones held and insert the rest,
        evicting the least recently used past capacity.

        Blocks are touched last to first, so a request's first block is its most recent one:
        eviction then eats a prefix from its tail, and what stays cached is still a usable
        (contiguous, leading) prefix. Touched first to last, the head block would go first and
        strand the rest of the chain, which no later request could match.
        """
        for block_hash in reversed(hashes):
            if block_hash in self._blocks:
                self._blocks.move_to_end(block_hash)
                continue
            self._blocks[block_hash] = None
            if len(self._blocks) > self.capacity:
                self._blocks.popitem(last=False)


@dataclass
class RoundPlan:
    """The requests admitted into one round, in queue order: the first ``taken`` offered."""

    assignment: list[int] = field(default_factory=list)  # global rank of each admitted request
    cached_tokens: list[int] = field(default_factory=list)  # tokens expected from its rank's cache
    costs: list[float] = field(default_factory=list)  # per-layer FLOPs each request adds
    loads: list[float] = field(default_factory=list)  # L_i of every rank after the round
    reusable: list[list[int]] = field(default_factory=list)  # hashes each request commits
    finished: bool = False

    @property
    def taken(self) -> int:
        return len(self.assignment)


class Router:
    """Shared books of the three routers; subclasses choose the rank (:meth:`choose`).

    ``plan_round(token_lists)`` admits requests from the front of ``token_lists`` (the FIFO
    queue) and returns a :class:`RoundPlan`; after the engines have scored the round,
    ``finish_round(plan)`` moves its pending blocks into the committed tables.
    """

    name = "base"

    def __init__(self, cost: ModelCost, threshold: float, world_size: int, cache_blocks: int,
                 block_tokens: int = BLOCK_TOKENS):
        if not threshold > 0:
            raise ValueError(f"router threshold T must be positive per-layer FLOPs, got {threshold}")
        if world_size < 1:
            raise ValueError(f"router world_size must be >= 1, got {world_size}")
        self.cost, self.threshold, self.world_size = cost, float(threshold), world_size
        self.block_tokens = block_tokens
        self.committed = [PrefixLRU(cache_blocks) for _ in range(world_size)]
        # committed + the routed, unfinished requests replayed in order: what each cache will hold
        self._projected = [PrefixLRU(cache_blocks) for _ in range(world_size)]

    def pending(self, rank: int) -> set[int]:
        """Blocks promised on ``rank`` by routed, unfinished requests and not cached there yet."""
        return {h for h in self._projected[rank].hashes() if h not in self.committed[rank]}

    def plan_round(self, token_lists: Sequence[Sequence[int]]) -> RoundPlan:
        """Admit requests from the front of ``token_lists`` until every rank is saturated."""
        plan = RoundPlan(loads=[0.0] * self.world_size)
        for tokens in token_lists:
            open_ranks = [r for r in range(self.world_size) if plan.loads[r] < self.threshold]
            if not open_ranks:
                break
            hashes = block_hashes(tokens, self.block_tokens)
            matches = {r: matched_blocks(hashes, self._projected[r], len(tokens), self.block_tokens)
                       for r in open_ranks}
            rank = self.choose(open_ranks, matches, plan.loads)
            cached = matches[rank] * self.block_tokens
            added = self.cost.prefill(len(tokens), cached)
            reusable = hashes[:reusable_blocks(len(tokens), self.block_tokens)]
            self._projected[rank].record(reusable)
            plan.loads[rank] += added
            plan.assignment.append(rank)
            plan.cached_tokens.append(cached)
            plan.costs.append(added)
            plan.reusable.append(reusable)
        return plan

    def finish_round(self, plan: RoundPlan) -> None:
        """The round ran: its requests' blocks are now in their ranks' caches, in request order."""
        if plan.finished:
            raise ValueError("finish_round called twice for the same round")
        for rank, reusable in zip(plan.assignment, plan.reusable):
            self.committed[rank].record(reusable)
        plan.finished = True

    def choose(self, open_ranks: list[int], matches: dict[int, int], loads: list[float]) -> int:
        raise NotImplementedError

    @staticmethod
    def least_loaded(ranks: Sequence[int], loads: Sequence[float]) -> int:
        """The rank of ``ranks`` with the least load; ties go to the lowest rank."""
        return min(ranks, key=lambda r: (loads[r], r))


class PrefixRouter(Router):
    """REFERENCE.md's cascade: longest prefix match among unsaturated ranks, else least loaded."""

    name = "prefix"

    def choose(self, open_ranks, matches, loads):
        longest = max(matches[r] for r in open_ranks)
        if longest == 0:
            return self.least_loaded(open_ranks, loads)
        return self.least_loaded([r for r in open_ranks if matches[r] == longest], loads)


class LeastLoadedRouter(Router):
    """Baseline: the least loaded unsaturated rank, blind to prefixes."""

    name = "least_loaded"

    def choose(self, open_ranks, matches, loads):
        return self.least_loaded(open_ranks, loads)


class RoundRobinRouter(Router):
    """Baseline: unsaturated ranks in turn; the turn carries over from round to round."""

    name = "round_robin"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._next = 0

    def choose(self, open_ranks, matches, loads):
        rank = min(open_ranks, key=lambda r: (r - self._next) % self.world_size)
        self._next = (rank + 1) % self.world_size
        return rank


ROUTERS = {cls.name: cls for cls in (PrefixRouter, LeastLoadedRouter, RoundRobinRouter)}


def make_router(name: str, cost: ModelCost, threshold: float, world_size: int, cache_blocks: int) -> Router:
    """The router called ``name`` (``prefix``, ``least_loaded`` or ``round_robin``)."""
    if name not in ROUTERS:
        raise ValueError(f"unknown router {name!r}; choose one of {', '.join(ROUTERS)}")
    return ROUTERS[name](cost, threshold, world_size, cache_blocks)


def router_for_engine(name: str, engine) -> Router:
    """A router sized from an engine's contract attributes (cost, threshold, cache_blocks)."""
    return make_router(name, engine.cost, engine.threshold, engine.world_size, engine.cache_blocks)
