"""A real scorer with MoEPrefillEngine's contract (MOE_CONTRACT.md), for the frontend's tests and
benchmark until the backend lands: zerolib's dense GPT run in plain PyTorch, data-parallel over
the ranks, with a per-rank prefix KV cache.

It computes real answers: each request's tokens run through the model's own modules; tokens
whose 16-token blocks are in this rank's cache are not recomputed, their keys and values come
from the cache (the same hashes, capacity and LRU rule the contract gives the engine), so a
router that keeps prefixes on one rank really saves work here. ``stats`` counts the tokens
and FLOPs each rank actually computed.

Tests that use it switch to ``zerolib.inference.MoEPrefillEngine`` once the backend is merged;
nothing but construction differs.
"""
from __future__ import annotations

import time

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
    """Per block hash, every layer's keys and values of that block's tokens, LRU over blocks."""

    def __init__(self, capacity: int):
        self.order = PrefixLRU(capacity)
        self.kv: dict[int, list[tuple[torch.Tensor, torch.Tensor]]] = {}

    def __contains__(self, block_hash: int) -> bool:
        return block_hash in self.order

    def commit(self, hashes: list[int], layers_kv: list[tuple[torch.Tensor, torch.Tensor]], start_block: int):
        """Record ``hashes`` in LRU order; blocks from ``start_block`` on take their K/V from
        ``layers_kv`` (per layer [heads, tokens, head_dim], tokens counted from block 0)."""
        for index, block_hash in enumerate(hashes):
            if block_hash not in self.kv and index >= start_block:
                span = slice(index * BLOCK_TOKENS, (index + 1) * BLOCK_TOKENS)
                self.kv[block_hash] = [(k[:, span].clone(), v[:, span].clone()) for k, v in layers_kv]
        self.order.record(hashes)
        for block_hash in [h for h in self.kv if h not in self.order]:
            del self.kv[block_hash]

    def prefix_kv(self, hashes: list[int], layer: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        if not hashes:
            return None
        ks, vs = zip(*(self.kv[h][layer] for h in hashes))
        return torch.cat(ks, dim=1), torch.cat(vs, dim=1)


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

    @torch.no_grad()
    def forward_one(self, tokens: list[int]) -> torch.Tensor:
        """Last-position logits of ``tokens``, reusing and then filling this rank's cache."""
        hashes = block_hashes(tokens)
        matched = matched_blocks(hashes, self.cache, len(tokens))
        start = matched * BLOCK_TOKENS
        ids = torch.tensor(tokens[start:], dtype=torch.long).unsqueeze(0)
        x = self.model.tok_emb(ids) + self.model.pos_emb(torch.arange(start, len(tokens)))
        layers_kv = []
        for index, block in enumerate(self.model.blocks):
            attn_out, k, v = self._attention(block, block.ln1(x), self.cache.prefix_kv(hashes[:matched], index))
            x = x + attn_out
            x = x + block.mlp(block.ln2(x))
            layers_kv.append((k, v))
        logits = self.model.lm_head(self.model.ln_f(x[:, -1]))[0]
        self.cache.commit(hashes[:reusable_blocks(len(tokens))], layers_kv, matched)
        self.stats["computed_tokens"] += len(tokens) - start
        self.stats["cached_tokens"] += start
        self.stats["computed_flops"] += self.cost.prefill(len(tokens), start) * self.cost.num_layers
        self.stats["requests"] += 1
        return logits

    @staticmethod
    def _attention(block, x, cached):
        """Causal attention of the new tokens over the cached prefix and themselves; returns the
        output and the full keys/values ([heads, all tokens, head_dim])."""
        attn = block.attn
        _, seq, width = x.shape
        q, k, v = attn.qkv(x).split(width, dim=2)
        q, k, v = (t.view(seq, attn.n_head, width // attn.n_head).transpose(0, 1) for t in (q, k, v))
        if cached is not None:
            k, v = torch.cat([cached[0], k], dim=1), torch.cat([cached[1], v], dim=1)
        prefix = k.shape[1] - seq
        allowed = torch.ones(seq, k.shape[1], dtype=torch.bool).tril(diagonal=prefix)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)
        return attn.proj(y.transpose(0, 1).reshape(1, seq, width)), k, v

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
        mine = {}
        for index, (request, rank) in enumerate(zip(requests, assignment)):
            if rank == self.rank:
                mine[index] = self._result(self.forward_one(list(request["input_ids"])),
                                           request["candidates"], return_logits)
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
