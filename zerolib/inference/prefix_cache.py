"""A rank's prefix KV cache: keys and values of 16-token blocks, named by chained hashes.

The router's committed table for a rank mirrors this cache (the same hashes from
zerolib/inference/blocks.py, the same capacity, the same LRU rule in
zerolib/inference/router.py's :class:`PrefixLRU`), so a request routed for its prefix really
finds it here. Within one ``score`` call nothing is evicted (a later request may still read a
block an earlier one brings in); the call then records every request's blocks in request order
and drops what fell out, which leaves exactly the state the sequential LRU rule gives.

Blocks that an earlier request of the same call computes are read from that request: in the
same forward pass when both share a row (zerolib/inference/packing.py), from the cache when the
earlier request ran in an earlier pass. A block's keys are stored after rotary embedding: block ``i`` always covers positions
``[16 i, 16 i + 16)`` (its hash chains every token before it), so cached keys are valid for any
request that matches the block.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from zerolib.inference.blocks import BLOCK_TOKENS, block_hashes, matched_blocks, reusable_blocks
from zerolib.inference.router import PrefixLRU


@dataclass
class PlannedRequest:
    """One request as this rank will compute it."""

    tokens: list[int]
    hashes: list[int]
    matched: int  # leading blocks it does not compute: cached, or computed by an earlier request
    reusable: int  # leading blocks it commits to the cache
    level: int  # the pass it would run in if it could not share a row with the requests it reads
    sources: list[int | None] = field(default_factory=list)  # per matched block: None (cached before
    # the call) or the index of the request of this call that computes it

    @property
    def cached_tokens(self) -> int:
        return self.matched * BLOCK_TOKENS

    @property
    def new_tokens(self) -> list[int]:
        return self.tokens[self.cached_tokens:]


class PrefixKVCache:
    """Block hash -> tensor [layers, 2 (keys, values), kv_heads, 16, head_dim], LRU over hashes."""

    def __init__(self, capacity_blocks: int):
        self.order = PrefixLRU(capacity_blocks)
        self.blocks: dict[int, torch.Tensor] = {}

    @property
    def capacity(self) -> int:
        return self.order.capacity

    def plan(self, token_lists: list[list[int]]) -> list[PlannedRequest]:
        """Each request's cache match as a sequential run would see it (the LRU replayed in
        request order), where each matched block comes from (the cache, or the earlier request
        of this call that computes it), and its level: one more than the requests it reads, the
        pass it runs in when it cannot share their row. A shared prefix is computed once."""
        replay, present, producer = self.order.copy(), set(self.blocks), {}
        planned: list[PlannedRequest] = []
        for index, tokens in enumerate(token_lists):
            hashes = block_hashes(tokens)
            matched = matched_blocks(hashes, replay, len(tokens))
            reusable = reusable_blocks(len(tokens))
            sources = [None if h in present else producer[h] for h in hashes[:matched]]
            level = max((planned[s].level + 1 for s in sources if s is not None), default=0)
            for block_hash in hashes[matched:reusable]:
                producer.setdefault(block_hash, index)
            replay.record(hashes[:reusable])
            planned.append(PlannedRequest(list(tokens), hashes, matched, reusable, level, sources))
        return planned

    def get(self, block_hash: int) -> torch.Tensor:
        return self.blocks[block_hash]

    def put(self, block_hash: int, kv: torch.Tensor) -> None:
        """Stores a block computed in this call (the first computation wins)."""
        self.blocks.setdefault(block_hash, kv)

    def settle(self, planned: list[PlannedRequest]) -> None:
        """End of a call: record each request's reusable blocks in order, drop the evicted."""
        for request in planned:
            self.order.record(request.hashes[:request.reusable])
        for block_hash in [h for h in self.blocks if h not in self.order]:
            del self.blocks[block_hash]

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.blocks.values())
