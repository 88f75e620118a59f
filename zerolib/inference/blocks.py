"""Prefix blocks: requests cut into fixed-size token blocks named by chained hashes.

The router and each engine's prefix cache name a request's prefix the same way, so that "rank r
has cached this prefix" means the same thing to both. Block i's hash covers blocks 0..i (it
chains the previous hash), so two requests share block i's hash only if they share every token
up to the end of block i. Only full blocks are hashed: a partial tail block is never cached.
The hash is blake2b, not Python's ``hash()``, which is salted per process and would differ
between ranks.
"""
from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np

BLOCK_TOKENS = 16


def block_hashes(tokens: Sequence[int], block_tokens: int = BLOCK_TOKENS) -> list[int]:
    """One 64-bit hash per full block of ``tokens``, each chained on the one before."""
    ids = np.asarray(tokens, dtype=np.int64)
    hashes, previous = [], b""
    for start in range(0, len(ids) - block_tokens + 1, block_tokens):
        digest = hashlib.blake2b(previous + ids[start:start + block_tokens].tobytes(), digest_size=8).digest()
        hashes.append(int.from_bytes(digest, "little"))
        previous = digest
    return hashes


def reusable_blocks(num_tokens: int, block_tokens: int = BLOCK_TOKENS) -> int:
    """How many leading blocks of a ``num_tokens`` request may come from a cache: full blocks
    only, and never the block holding the last token, whose logits must be computed."""
    return max(0, (num_tokens - 1) // block_tokens)


def matched_blocks(hashes: Sequence[int], cached, num_tokens: int, block_tokens: int = BLOCK_TOKENS) -> int:
    """Length of the run of leading ``hashes`` found in ``cached`` (a set or mapping), capped
    by :func:`reusable_blocks`."""
    limit = min(len(hashes), reusable_blocks(num_tokens, block_tokens))
    count = 0
    while count < limit and hashes[count] in cached:
        count += 1
    return count
