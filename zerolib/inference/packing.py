"""One forward pass of many requests: their new tokens packed into rows, with masks.

Requests of different lengths share rows (no padding per request): each row holds several
requests' new tokens back to back, and a row's keys are the cached prefix blocks its requests
read, each distinct block once, followed by the row's own tokens. The mask lets a token see
the blocks its request reads and the earlier new tokens of its own request, nothing else. A
block that another request of the same row computes is read from that request's columns, in
the same pass: siblings of a multi-label request compute their prompt once, in one pass.
Requests with the same cached prefix are placed next to each other and share its key columns.

Rows hold ``row_tokens`` new tokens (more if one request needs more); the tail of the last row
is padding that attends only to itself and whose output is never read.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from zerolib.inference.blocks import BLOCK_TOKENS
from zerolib.inference.prefix_cache import PlannedRequest, PrefixKVCache


@dataclass
class Placement:
    """Where a request's new tokens sit: row, first column, count."""

    row: int
    column: int
    count: int

    @property
    def last(self) -> tuple[int, int]:
        return self.row, self.column + self.count - 1


@dataclass
class _Row:
    used: int = 0
    blocks: dict[int, int] = field(default_factory=dict)  # block hash -> its first key column


@dataclass
class PackedPass:
    """Model inputs of one pass; ``placements[i]`` is where request ``i`` of the call went."""

    input_ids: torch.Tensor  # [rows, R]
    positions: torch.Tensor  # [rows, R]
    allowed: torch.Tensor  # [rows, R, P + R] bool: may query (row, r) see key k
    prefix: torch.Tensor | None  # [layers, 2, rows, kv_heads, P, head_dim]: cached keys, values
    placements: dict[int, Placement]

    @property
    def prefix_columns(self) -> int:
        return 0 if self.prefix is None else self.prefix.shape[-2]

    def additive_mask(self, dtype: torch.dtype) -> torch.Tensor:
        """[rows, 1, R, P + R]: 0 where allowed, the dtype's lowest value elsewhere."""
        mask = torch.zeros(self.allowed.shape, dtype=dtype)
        return mask.masked_fill_(~self.allowed, torch.finfo(dtype).min).unsqueeze(1)


def _families(planned: list[PlannedRequest]) -> list[list[int]]:
    """Requests linked by reading each other's blocks, each family in call order."""
    parent = list(range(len(planned)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i
    for index, request in enumerate(planned):
        for source in request.sources:
            if source is not None:
                parent[root(index)] = root(source)
    families: dict[int, list[int]] = {}
    for index in range(len(planned)):
        families.setdefault(root(index), []).append(index)
    return list(families.values())


def schedule(planned: list[PlannedRequest], max_row_tokens: int) -> list[list[list[int]]]:
    """Passes of units: a unit is requests that share a row. A family (a request and the ones
    reading blocks it computes) of at most ``max_row_tokens`` new tokens is one unit of the
    first pass, so its shared prefix is computed and read in the same forward pass (rows widen
    to the widest unit); a larger family runs by level, one pass per level, reading earlier
    passes' blocks from the cache."""
    passes: list[list[list[int]]] = []
    for family in _families(planned):
        if len(family) == 1 or sum(len(planned[i].new_tokens) for i in family) <= max_row_tokens:
            units = [(0, family)]
        else:
            units = [(planned[i].level, [i]) for i in family]
        for level, unit in units:
            passes.extend([] for _ in range(level + 1 - len(passes)))
            passes[level].append(unit)
    return passes


def _unit_order(units: list[list[int]], planned: list[PlannedRequest]) -> list[list[int]]:
    # units reading the same cached prefix side by side (shared key columns), longest first
    def key(unit):
        first = planned[unit[0]]
        return first.hashes[:first.matched], -sum(len(planned[i].new_tokens) for i in unit)
    return sorted(units, key=key)


def pack(units: list[list[int]], planned: list[PlannedRequest], cache: PrefixKVCache, row_tokens: int) -> PackedPass:
    """Packs the ``units`` of one pass (lists of indices into ``planned``) into rows: a unit's
    requests share a row, and a block one of them computes is read there by the others; every
    other block they read comes from ``cache``."""
    if not units:
        raise ValueError("pack needs at least one request")
    width = max([row_tokens] + [sum(len(planned[i].new_tokens) for i in unit) for unit in units])
    rows: list[_Row] = []
    placements: dict[int, Placement] = {}
    for unit in _unit_order(units, planned):
        count = sum(len(planned[i].new_tokens) for i in unit)
        if not rows or rows[-1].used + count > width:
            rows.append(_Row())
        row = rows[-1]
        for index in unit:
            request = planned[index]
            for block, source in enumerate(request.sources):
                if source not in unit:  # cached before the call, or computed by an earlier pass
                    row.blocks.setdefault(request.hashes[block], len(row.blocks) * BLOCK_TOKENS)
            placements[index] = Placement(len(rows) - 1, row.used, len(request.new_tokens))
            row.used += len(request.new_tokens)
    prefix_width = max(len(row.blocks) for row in rows) * BLOCK_TOKENS
    input_ids = torch.zeros(len(rows), width, dtype=torch.long)
    positions = torch.zeros(len(rows), width, dtype=torch.long)
    allowed = torch.zeros(len(rows), width, prefix_width + width, dtype=torch.bool)
    causal = torch.ones(width, width, dtype=torch.bool).tril()
    for index, place in placements.items():
        request = planned[index]
        cols = slice(place.column, place.column + place.count)
        input_ids[place.row, cols] = torch.tensor(request.new_tokens)
        positions[place.row, cols] = torch.arange(request.cached_tokens, len(request.tokens))
        new_keys = prefix_width + place.column
        allowed[place.row, cols, new_keys:new_keys + place.count] = causal[:place.count, :place.count]
        for block, source in enumerate(request.sources):
            first = _block_column(request.hashes[block], block, source, place.row, placements, planned,
                                  rows, prefix_width)
            allowed[place.row, cols, first:first + BLOCK_TOKENS] = True
    for row_index, row in enumerate(rows):  # padding sees itself only (a row of all -inf is NaN)
        pad = torch.arange(row.used, width)
        allowed[row_index, pad, prefix_width + pad] = True
    return PackedPass(input_ids, positions, allowed, _prefix_tensor(rows, cache, prefix_width), placements)


def _block_column(block_hash: int, block: int, source: int | None, row: int, placements: dict[int, Placement],
                  planned: list[PlannedRequest], rows: list[_Row], prefix_width: int) -> int:
    """The first key column of a block a request reads: among the new tokens of the request of
    its row that computes it, or among the row's cached blocks."""
    if source in placements and placements[source].row == row:
        return prefix_width + placements[source].column + block * BLOCK_TOKENS - planned[source].cached_tokens
    return rows[row].blocks[block_hash]


def _prefix_tensor(rows: list[_Row], cache: PrefixKVCache, width: int) -> torch.Tensor | None:
    if width == 0:
        return None
    sample = cache.get(next(h for row in rows for h in row.blocks))
    layers, two, kv_heads, _, head_dim = sample.shape
    prefix = sample.new_zeros(layers, two, len(rows), kv_heads, width, head_dim)
    for row_index, row in enumerate(rows):
        for block_hash, first in row.blocks.items():
            prefix[:, :, row_index, :, first:first + BLOCK_TOKENS] = cache.get(block_hash)
    return prefix


class PrefixKV:
    """The cache object a model's attention layers call: ``update(keys, values, layer_index)``
    returns the cached prefix's keys/values followed by the new ones, and keeps the new ones
    (the contract of a Hugging Face cache, which zerolib's MoE GPT follows too)."""

    def __init__(self, prefix: torch.Tensor | None, num_layers: int):
        self.prefix = prefix
        self.computed: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * num_layers

    def update(self, keys: torch.Tensor, values: torch.Tensor, layer_index: int, *args, **kwargs):
        self.computed[layer_index] = (keys, values)
        if self.prefix is None:
            return keys, values
        return (torch.cat([self.prefix[layer_index, 0].to(keys.dtype), keys], dim=-2),
                torch.cat([self.prefix[layer_index, 1].to(values.dtype), values], dim=-2))

    def span(self, row: int, start: int, end: int) -> torch.Tensor:
        """[layers, 2, kv_heads, end - start, head_dim]: the keys and values this pass computed
        for columns ``[start, end)`` of ``row`` (a copy, to outlive the pass)."""
        missing = [i for i, kv in enumerate(self.computed) if kv is None]
        if missing:
            raise RuntimeError(f"the model's attention never passed layers {missing} to the cache: cannot keep "
                               f"their keys for the prefix cache")
        return torch.stack([torch.stack((k[row, :, start:end], v[row, :, start:end])) for k, v in self.computed])
