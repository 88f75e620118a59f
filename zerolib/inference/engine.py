"""MoEPrefillEngine: prefill-only scoring of mixture-of-experts models on N data-parallel ranks.

A request is a prompt and candidate tokens; its answer is read from the logits at the prompt's
last position (docs/moe_prefill.md). Every rank calls :meth:`MoEPrefillEngine.score` with the
same requests and the same assignment of requests to ranks; each rank computes its own
requests (attention and routers are replicated, data-parallel), with the experts placed as
``moe_prefill.mode`` says (zerolib/inference/experts.py), and rank 0 returns every answer.

A call usually runs as one forward pass: requests are packed into rows
(zerolib/inference/packing.py), and a request whose prompt starts with blocks that another
request of the call computes shares its row and reads them there, so a shared prefix is computed
once (zerolib/inference/prefix_cache.py). A family of such requests longer than ``max_row_tokens`` runs
over a few passes, the later ones reading the earlier ones' blocks from the prefix KV cache.
Every rank runs as many passes as the busiest rank (a rank short of work runs a one-token pass),
because a pass's expert gathers and all-to-alls are collectives.
"""
from __future__ import annotations

import time

import torch
import torch.distributed as dist
from torch import nn

from zerolib.comm import CommContext
from zerolib.config.errors import ConfigError
from zerolib.inference.adapters import PrefillModel, adapt
from zerolib.inference.blocks import BLOCK_TOKENS
from zerolib.inference.experts import ExpertParallel, GatheredExperts, time_layer_gather
from zerolib.inference.packing import pack, schedule
from zerolib.inference.prefix_cache import PlannedRequest, PrefixKVCache
from zerolib.inference.requests import Limits, parse_requests
from zerolib.inference.settings import PrefillConfig, load_prefill_config
from zerolib.offload.aio import AioSettings, SharedFileIO
from zerolib.utils.logging import get_logger

logger = get_logger(__name__)


class MoEPrefillEngine:
    """``MoEPrefillEngine(model, config, tokenizer=None)``; see the module docstring.

    ``model`` is a transformers MoE causal LM (Qwen3-MoE, Mixtral) or zerolib's MoEGPT, the
    same on every rank; the engine takes it over (experts are repartitioned in place). It
    exposes what the router needs: ``rank``, ``world_size``, ``cost`` (the per-layer FLOPs
    model), ``t_ep`` (seconds to gather one layer's experts, slowest rank), ``flops_rate`` (F:
    FLOP/s of this model's forward here, slowest rank), ``threshold`` (T = t_EP x F x gamma,
    per-layer FLOPs), ``cache_blocks``, ``max_input_tokens``, and ``stats`` (what this rank
    computed).
    """

    def __init__(self, model: nn.Module, config: dict | PrefillConfig | None = None, tokenizer=None,
                 comm: CommContext | None = None):
        self.config = load_prefill_config(config)
        self.settings = settings = self.config.moe_prefill
        self.tokenizer = tokenizer
        self.comm = comm or CommContext.from_environment(timeout_seconds=settings.timeout_seconds)
        self.rank, self.world_size = self.comm.rank, self.comm.world_size
        self.model: PrefillModel = adapt(model.eval())
        self.cost = self.model.cost()
        self.max_input_tokens = self.model.max_positions()
        self.cache_blocks = settings.cache_blocks
        self.cache = PrefixKVCache(settings.cache_blocks)
        self.stats = {"computed_tokens": 0, "cached_tokens": 0, "computed_flops": 0.0, "requests": 0, "passes": 0}
        self._check_same_weights()
        self.flops_rate = self._measure_flops_rate()
        self.placement = self._place_experts()
        self.t_ep = max(time_layer_gather(self.comm, self.model.experts[0].numels, self.model.dtype),
                        self._slowest(self.placement.read_seconds() if self.placement is not None else 0.0))
        self.threshold = settings.threshold_flops or self.t_ep * self.flops_rate * settings.gamma
        self._run_idle_pass()  # records the layer order: the next pass prefetches
        if self.rank == 0:
            logger.info("MoE prefill: mode %s on %d ranks; t_EP %.2f ms per layer, F %.3g FLOP/s, T %.3g FLOPs per "
                        "layer%s", settings.mode, self.world_size, self.t_ep * 1e3, self.flops_rate, self.threshold,
                        " (moe_prefill.threshold_flops)" if settings.threshold_flops else "")

    # -- start-up ---------------------------------------------------------------------------
    def _check_same_weights(self) -> None:
        """Every rank must serve the same weights: ranks built from different seeds or files
        would answer differently depending on where the router sends a request."""
        if not self.comm.distributed:
            return
        named = list(self.model.model.named_parameters())
        mine = torch.stack([p.detach().double().sum() for _, p in named])
        every = torch.empty(len(named) * self.world_size, dtype=torch.float64)
        self.comm.all_gather_into(every, mine)
        every = every.view(self.world_size, -1)
        for rank in range(1, self.world_size):
            differs = (every[rank] != every[0]).nonzero()
            if len(differs):
                raise ValueError(f"rank {rank}'s model differs from rank 0's (first in '{named[int(differs[0])][0]}'): "
                                 f"every rank must load the same weights")

    @torch.no_grad()
    def _measure_flops_rate(self) -> float:
        """F: FLOP/s of a forward of ``calibration_tokens`` through the whole model, before
        any expert moves (so no transfer is in the figure); the fastest of three forwards (what
        the machine can do: other jobs only ever slow one down), the slowest rank's."""
        tokens = self.settings.calibration_tokens
        if self.max_input_tokens:
            tokens = min(tokens, self.max_input_tokens)
        probe = PlannedRequest(tokens=[t % max(self.cost.vocab_size, 1) for t in range(tokens)], hashes=[],
                               matched=0, reusable=0, level=0)
        packed = pack([[0]], [probe], self.cache, tokens)
        self.model.forward_pass(packed)  # warm-up
        seconds = []
        for _ in range(3):
            start = time.perf_counter()
            self.model.forward_pass(packed)
            seconds.append(time.perf_counter() - start)
        rate = torch.tensor([self.cost.prefill(tokens) * self.cost.num_layers / min(seconds)], dtype=torch.float64)
        self.comm.all_reduce(rate, dist.ReduceOp.MIN)
        return float(rate.item())

    def _place_experts(self):
        mode, offload = self.settings.mode, self.settings.offload
        if offload.device != "none" and mode not in ("async_ep", "sync_gather"):
            raise ConfigError("moe_prefill.offload.device", f"offloads the shards that async_ep and sync_gather "
                                                            f"gather; mode '{mode}' has none")
        if mode in ("async_ep", "sync_gather"):
            return GatheredExperts(self.model, self.comm, prefetch=mode == "async_ep", offload=offload,
                                   io=SharedFileIO(AioSettings()))
        if mode == "dp_ep":
            return ExpertParallel(self.model, self.comm)
        return None

    def _slowest(self, seconds: float) -> float:
        """The largest of every rank's ``seconds``."""
        value = torch.tensor([seconds], dtype=torch.float64)
        self.comm.all_reduce(value, dist.ReduceOp.MAX)
        return float(value.item())

    # -- scoring ----------------------------------------------------------------------------
    def _limits(self) -> Limits:
        longest = self.max_input_tokens or 1 << 31
        return Limits(max_requests=1 << 31, max_input_tokens=longest, max_candidates=1 << 31,
                      vocab_size=self.cost.vocab_size, input_limit_source="the model's positions")

    def _assignment(self, requests: list[dict], assignment) -> list[int]:
        if assignment is None:  # by FLOPs, greedily: the least loaded rank takes the next request
            loads, out = [0.0] * self.world_size, []
            for request in requests:
                rank = min(range(self.world_size), key=lambda r: (loads[r], r))
                loads[rank] += self.cost.prefill(len(request["input_ids"]))
                out.append(rank)
            return out
        out = list(assignment)
        if len(out) != len(requests):
            raise ValueError(f"assignment lists {len(out)} ranks for {len(requests)} requests")
        bad = [r for r in out if not (isinstance(r, int) and 0 <= r < self.world_size)]
        if bad:
            raise ValueError(f"assignment names rank {bad[0]}, outside [0, {self.world_size})")
        return out

    def score(self, requests: list[dict], assignment: list[int] | None = None, return_logits: bool = False):
        """Scores ``requests`` (docs/moe_prefill.md: ``input_ids`` or ``text``, ``candidates``,
        optional ``labels``); call on every rank with the same arguments. ``assignment[i]`` is
        the rank that computes request i (default: balanced by FLOPs). Rank 0 returns, per
        request, ``{"logprobs": [per candidate], "best": id[, "logits": [...]]}`` (a
        multi-label request: ``{"labels": [...]}``); other ranks return None.

        ``assignment`` counts requests after multi-label requests are split into siblings."""
        parsed = parse_requests(requests, self._limits(), self.tokenizer)
        flat = parsed.requests
        owners = self._assignment(flat, assignment)
        mine = [i for i, rank in enumerate(owners) if rank == self.rank]
        last_hidden = self._compute([flat[i]["input_ids"] for i in mine])
        answers = {}
        if mine:
            logits = self.model.logits(torch.stack(last_hidden))
            answers = {i: _answer(row, flat[i]["candidates"], return_logits) for i, row in zip(mine, logits)}
        gathered = self.comm.gather_object(answers, dst=0)
        if self.rank != 0:
            return None
        merged = {index: answer for part in gathered for index, answer in part.items()}
        return parsed.answer([merged[i] for i in range(len(flat))])

    def _compute(self, token_lists: list[list[int]]) -> list[torch.Tensor]:
        """Last-position hidden states of this rank's requests, in order."""
        planned = self.cache.plan(token_lists)
        passes = schedule(planned, self.settings.max_row_tokens)
        count = torch.tensor([len(passes)], dtype=torch.int64)
        self.comm.all_reduce(count, dist.ReduceOp.MAX)
        last: dict[int, torch.Tensor] = {}
        for units in passes:
            last.update(self._run_pass(units, planned))
        for _ in range(int(count.item()) - len(passes)):
            self._run_idle_pass()
        self.cache.settle(planned)
        return [last[i] for i in range(len(planned))]

    def _run_pass(self, units: list[list[int]], planned: list[PlannedRequest]) -> dict[int, torch.Tensor]:
        """One forward pass of ``units`` (see packing.schedule): stores the blocks it computed,
        counts its work and returns each request's last hidden state."""
        packed = pack(units, planned, self.cache, self.settings.row_tokens)
        hidden, computed = self.model.forward_pass(packed)
        self.stats["passes"] += 1
        for index, place in packed.placements.items():
            request = planned[index]
            for block in range(request.matched, request.reusable):
                column = place.column + block * BLOCK_TOKENS - request.cached_tokens
                self.cache.put(request.hashes[block], computed.span(place.row, column, column + BLOCK_TOKENS))
            self.stats["computed_tokens"] += len(request.new_tokens)
            self.stats["cached_tokens"] += request.cached_tokens
            self.stats["computed_flops"] += self.cost.prefill(len(request.tokens), request.cached_tokens) * \
                self.cost.num_layers
            self.stats["requests"] += 1
        return {index: hidden[place.last] for index, place in packed.placements.items()}

    def _run_idle_pass(self) -> None:
        """A one-token pass for a rank with nothing to compute: its collectives must still run."""
        idle = PlannedRequest(tokens=[0], hashes=[], matched=0, reusable=0, level=0)
        self.model.forward_pass(pack([[0]], [idle], self.cache, 1))
        self.stats["passes"] += 1

    def close(self) -> None:
        """Removes the hooks the engine put on the model."""
        if self.placement is not None:
            self.placement.close()


def _answer(logits: torch.Tensor, candidates: list[int], return_logits: bool) -> dict:
    chosen = torch.tensor(candidates, dtype=torch.long)
    logprobs = torch.log_softmax(logits, dim=-1)[chosen]
    result = {"logprobs": logprobs.tolist(), "best": int(candidates[int(torch.argmax(logits[chosen]))])}
    if return_logits:
        result["logits"] = logits.tolist()
    return result
