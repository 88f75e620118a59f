"""A real scorer with MoEPrefillEngine's contract (MOE_CONTRACT.md), for the frontend's tests and
benchmark until the backend lands: zerolib's dense GPT run in plain PyTorch, data-parallel over
the ranks, with a per-rank prefix KV cache.

It computes real answers: each rank's requests of a round run through the model's own modules
in one padded batch (a few, when some read a prefix another computes in the same call, which is
then computed once); tokens whose 16-token blocks are in this rank's cache are not recomputed,
their keys and values come from the cache (the same hashes, capacity and LRU rule the contract
gives the engine), so a router that keeps prefixes on one rank really saves work here.
``stats`` counts the tokens and FLOPs each rank actually computed.

Tests that use it switch to ``zerolib.inference.MoEPrefillEngine`` once the backend is merged;
nothing but construction differs.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F

from zerolib.comm import CommContext
from zerolib.inference.blocks import BLOCK_TOKENS, block_hashes, matched_blocks, reusable_blocks
from zerolib.inference.cost import ModelCost
from zerolib.inference.router import PrefixLRU
from zerolib.models import GPT


def gpt_cost(model: GPT) -> ModelCost:
    """Per-layer FLOPs of zerolib's GPT: dense GELU MLP (2 matmuls of 4x width), no experts."""
    c = model.config
    return ModelCost(num_layers=c.n_layer, hidden=c.n_embd, q_width=c.n_embd, kv_width=c.n_embd,
                     num_moe_layers=0, num_experts=0, top_k=0, expert_intermediate=0,
                     dense_intermediate=4 * c.n_embd, ffn_matmuls=2, vocab_size=c.vocab_size)


class BlockKVCache:
    """Per block hash, the keys and values of that block's tokens in every layer
    ([layers, 2, heads, 16, head_dim]), with the contract's LRU order over blocks.

    Within one ``score`` call nothing is evicted (a later request may still need a block an
    earlier one brought in); the call then records every request's blocks in request order and
    drops what fell out, so the end state is exactly the sequential LRU rule's.
    """

    def __init__(self, capacity: int):
        self.order = PrefixLRU(capacity)
        self.kv: dict[int, torch.Tensor] = {}

    def gather(self, hashes: list[int]) -> torch.Tensor | None:
        return torch.cat([self.kv[h] for h in hashes], dim=3) if hashes else None

    def settle(self, recorded: list[list[int]]) -> None:
        for hashes in recorded:
            self.order.record(hashes)
        for block_hash in [h for h in self.kv if h not in self.order]:
            del self.kv[block_hash]


@dataclass
class _Item:
    """One request of this rank's batch: its tokens, block hashes, and what the cache gives it."""

    tokens: list[int]
    hashes: list[int]
    matched: int  # leading blocks read from the cache
    reusable: int  # leading blocks it commits
    level: int  # forward pass it runs in: after the passes that compute blocks it reads


class StandInScorer:
    """``score(requests, assignment=None, return_logits=False)`` on every rank; rank 0 returns
    every request's ``{"logprobs", "best"[, "logits"]}`` in request order."""

    def __init__(self, model: GPT, cache_blocks: int = 256, comm: CommContext | None = None,
                 threshold: float | None = None, gamma: float = 1.2):
        self.model = model.eval()
        self.comm = comm or CommContext.from_environment()
        self.rank, self.world_size = self.comm.rank, self.comm.world_size
        self.cost = gpt_cost(model)
        self.cache_blocks = cache_blocks
        self.cache = BlockKVCache(cache_blocks)
        self.stats = {"computed_tokens": 0, "cached_tokens": 0, "computed_flops": 0.0, "requests": 0}
        self.t_ep, self.flops_rate = self._measure()
        self.threshold = threshold if threshold is not None else self.t_ep * self.flops_rate * gamma

    def _measure(self) -> tuple[float, float]:
        """t_ep: an all-gather of one layer's feed-forward weights (what AsyncEP moves per layer);
        flops_rate: FLOP/s of a 64-token forward through the model's layers."""
        mlp = self.model.blocks[0].mlp
        flat = torch.cat([p.detach().reshape(-1) for p in mlp.parameters()])
        shard = flat[: flat.numel() // self.world_size].clone()
        gathered = torch.empty(shard.numel() * self.world_size)
        start = time.perf_counter()
        self.comm.all_gather_into(gathered, shard)
        t_ep = max(time.perf_counter() - start, 1e-6)
        tokens = torch.zeros(1, 64, dtype=torch.long)
        start = time.perf_counter()
        with torch.no_grad():
            self.model(tokens)
        rate = self.cost.prefill(64) * self.cost.num_layers / max(time.perf_counter() - start, 1e-9)
        return t_ep, rate

    def _plan(self, token_lists: list[list[int]]) -> list[_Item]:
        """Each request's cache match as a sequential run would see it (the cache replayed in
        request order), and the pass it can run in: a request reading blocks that an earlier
        request of this call computes runs in a later pass, so a shared prefix is computed once."""
        replay, present, produced_in = self.cache.order.copy(), set(self.cache.kv), {}
        items = []
        for tokens in token_lists:
            hashes = block_hashes(tokens)
            matched = matched_blocks(hashes, replay, len(tokens))
            reusable = reusable_blocks(len(tokens))
            level = max((produced_in[h] + 1 for h in hashes[:matched] if h not in present), default=0)
            for block_hash in hashes[matched:reusable]:
                produced_in.setdefault(block_hash, level)
            replay.record(hashes[:reusable])
            items.append(_Item(tokens, hashes, matched, reusable, level))
        return items

    @torch.no_grad()
    def _forward(self, items: list[_Item]) -> torch.Tensor:
        """Last-position logits of ``items`` in one padded batch; stores the blocks they compute."""
        model, width = self.model, self.model.config.n_embd
        heads = model.config.n_head
        starts = [item.matched * BLOCK_TOKENS for item in items]
        new = [len(item.tokens) - start for item, start in zip(items, starts)]
        batch, longest, keys = len(items), max(new), max(s + n for s, n in zip(starts, new))
        ids = torch.zeros(batch, longest, dtype=torch.long)
        positions = torch.zeros(batch, longest, dtype=torch.long)
        allowed = torch.zeros(batch, 1, longest, keys, dtype=torch.bool)
        allowed[:, :, :, 0] = True  # padding rows attend somewhere (their output is never read)
        for b, (item, start, count) in enumerate(zip(items, starts, new)):
            ids[b, :count] = torch.tensor(item.tokens[start:])
            positions[b, :count] = torch.arange(start, start + count)
            allowed[b, 0, :count, :start + count] = torch.ones(count, start + count, dtype=torch.bool).tril(start)
        prefixes = [self.cache.gather(item.hashes[:item.matched]) for item in items]
        x = model.tok_emb(ids) + model.pos_emb(positions)
        computed = []
        for layer, block in enumerate(model.blocks):
            q, k, v = block.attn.qkv(block.ln1(x)).split(width, dim=2)
            q, k, v = (t.view(batch, longest, heads, width // heads).transpose(1, 2) for t in (q, k, v))
            all_k = q.new_zeros(batch, heads, keys, width // heads)
            all_v = torch.zeros_like(all_k)
            for b, (prefix, start, count) in enumerate(zip(prefixes, starts, new)):
                if prefix is not None:
                    all_k[b, :, :start], all_v[b, :, :start] = prefix[layer, 0], prefix[layer, 1]
                all_k[b, :, start:start + count], all_v[b, :, start:start + count] = k[b, :, :count], v[b, :, :count]
            y = F.scaled_dot_product_attention(q, all_k, all_v, attn_mask=allowed)
            x = x + block.attn.proj(y.transpose(1, 2).reshape(batch, longest, width))
            x = x + block.mlp(block.ln2(x))
            computed.append(torch.stack([k, v], dim=1))  # [batch, 2, heads, longest, head_dim]
        logits = model.lm_head(model.ln_f(x[torch.arange(batch), torch.tensor(new) - 1]))
        self._store(items, starts, torch.stack(computed, dim=1))
        return logits

    def _store(self, items: list[_Item], starts: list[int], computed: torch.Tensor) -> None:
        for b, (item, start) in enumerate(zip(items, starts)):
            for index in range(item.matched, item.reusable):
                offset = index * BLOCK_TOKENS - start
                self.cache.kv.setdefault(item.hashes[index], computed[b, :, :, :, offset:offset + BLOCK_TOKENS].clone())
            self.stats["computed_tokens"] += len(item.tokens) - start
            self.stats["cached_tokens"] += start
            self.stats["computed_flops"] += self.cost.prefill(len(item.tokens), start) * self.cost.num_layers
            self.stats["requests"] += 1

    @staticmethod
    def _similar_lengths(indices: list[int], items: list[_Item]) -> list[list[int]]:
        """Split a pass into batches whose new-token counts are within 2x of each other, so that
        padding (which a packed engine does not pay) wastes at most half of a batch's rows."""
        def new_tokens(i):
            return len(items[i].tokens) - items[i].matched * BLOCK_TOKENS
        groups: list[list[int]] = []
        for i in sorted(indices, key=new_tokens):
            if groups and new_tokens(i) <= 2 * new_tokens(groups[-1][0]):
                groups[-1].append(i)
            else:
                groups.append([i])
        return groups

    def score_own(self, token_lists: list[list[int]]) -> list[torch.Tensor]:
        """Last-position logits of this rank's requests (in order), batched by pass."""
        items = self._plan(token_lists)
        logits: list[torch.Tensor | None] = [None] * len(items)
        for level in sorted({item.level for item in items}):
            for chosen in self._similar_lengths([i for i, item in enumerate(items) if item.level == level], items):
                for i, row in zip(chosen, self._forward([items[i] for i in chosen])):
                    logits[i] = row
        self.cache.settle([item.hashes[:item.reusable] for item in items])
        return logits

    def _balanced(self, requests) -> list[int]:
        loads = [0.0] * self.world_size
        assignment = []
        for request in requests:
            rank = min(range(self.world_size), key=lambda r: (loads[r], r))
            loads[rank] += self.cost.prefill(len(request["input_ids"]))
            assignment.append(rank)
        return assignment

    def score(self, requests: list[dict], assignment: list[int] | None = None, return_logits: bool = False):
        assignment = self._balanced(requests) if assignment is None else list(assignment)
        if len(assignment) != len(requests):
            raise ValueError(f"assignment has {len(assignment)} ranks for {len(requests)} requests")
        indices = [i for i, rank in enumerate(assignment) if rank == self.rank]
        logits = self.score_own([list(requests[i]["input_ids"]) for i in indices]) if indices else []
        mine = {i: self._result(row, requests[i]["candidates"], return_logits) for i, row in zip(indices, logits)}
        if self.world_size == 1:
            return [mine[i] for i in range(len(requests))]
        gathered = [None] * self.world_size if self.rank == 0 else None
        dist.gather_object(mine, gathered, dst=0)
        if self.rank != 0:
            return None
        merged = {index: result for part in gathered for index, result in part.items()}
        return [merged[i] for i in range(len(requests))]

    @staticmethod
    def _result(logits: torch.Tensor, candidates: list[int], return_logits: bool) -> dict:
        logprobs = torch.log_softmax(logits.float(), dim=-1)
        chosen = torch.tensor(candidates, dtype=torch.long)
        best = candidates[int(torch.argmax(logits[chosen]))]
        result = {"logprobs": logprobs[chosen].tolist(), "best": int(best)}
        if return_logits:
            result["logits"] = logits.tolist()
        return result


def reference_scores(model: GPT, requests: list[dict]) -> list[dict]:
    """The same answers from a plain full forward of each request, no cache, one process."""
    out = []
    with torch.no_grad():
        for request in requests:
            logits = model.eval()(torch.tensor([request["input_ids"]]))[0, -1]
            out.append(StandInScorer._result(logits, request["candidates"], False))
    return out
