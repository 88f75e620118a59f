"""Faults 2 and 3: a rank that stalls, and ranks that run different modules under ZeRO-3.

A stalled rank: its peers' collective times out after ``comm.timeout_seconds`` and each of them
fails naming the collective, the ZeRO-3 module being gathered, the ranks waiting in it and the
one that never came. Ranks that diverge (another branch, or a module skipped at the end of the
forward) fail in the same step naming the rank and the module, and nothing hangs.
"""
import os
import time
from pathlib import Path

import pytest
import torch

import zerolib
from harness import run_ranks
from zerolib.models import GPT, GPTConfig

TINY = GPTConfig(vocab_size=64, block_size=16, n_layer=3, n_head=2, n_embd=32)
TIMEOUT_SECONDS = 2
# A bound on how long a fault may take to surface; the requirement, not a speed claim.
BOUND_SECONDS = 30


def _loss(model: GPT, x: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.cross_entropy(model.lm_head(model.ln_f(x)).flatten(0, 1), targets.flatten())


class TakesAnotherBranchOnRankOne(GPT):
    """Rank 1 runs the blocks in the order 0, 2, 1 (a data-dependent branch gone wrong)."""

    def forward(self, idx, targets=None):
        x = self.tok_emb(idx) + self.pos_emb(torch.arange(idx.shape[1]))
        order = (0, 2, 1) if os.environ["RANK"] == "1" else (0, 1, 2)
        for i in order:
            x = self.blocks[i](x)
        return _loss(self, x, targets)


class SkipsTheLastBlockOnRankOne(GPT):
    """Rank 1 ends its forward one module early: before the end-of-forward check, rank 0's next
    gather met rank 1's backward, and gloo aborted the process or both ranks hung."""

    def forward(self, idx, targets=None):
        x = self.tok_emb(idx) + self.pos_emb(torch.arange(idx.shape[1]))
        for i, block in enumerate(self.blocks):
            if not (i == 2 and os.environ["RANK"] == "1"):
                x = block(x)
        return _loss(self, x, targets)


class AnotherBranchOnRankOneInStepTwo(GPT):
    """Like TakesAnotherBranchOnRankOne, once the first step has recorded the trace: the blocks
    are then prefetched, and their order checks are verified later (zerolib/partition/order_check.py)."""

    def forward(self, idx, targets=None):
        self.calls = getattr(self, "calls", 0) + 1
        x = self.tok_emb(idx) + self.pos_emb(torch.arange(idx.shape[1]))
        order = (0, 2, 1) if os.environ["RANK"] == "1" and self.calls == 2 else (0, 1, 2)
        for i in order:
            x = self.blocks[i](x)
        return _loss(self, x, targets)


class SkipsTheLastBlockOnRankOneInStepTwo(GPT):
    """Like SkipsTheLastBlockOnRankOne, once the first step has recorded the trace."""

    def forward(self, idx, targets=None):
        self.calls = getattr(self, "calls", 0) + 1
        x = self.tok_emb(idx) + self.pos_emb(torch.arange(idx.shape[1]))
        for i, block in enumerate(self.blocks):
            if not (i == 2 and os.environ["RANK"] == "1" and self.calls == 2):
                x = block(x)
        return _loss(self, x, targets)


def _engine(model: GPT):
    config = {"train_micro_batch_size_per_gpu": 1, "optimizer": {"type": "AdamW", "params": {"lr": 1e-3}},
              "zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 0},
              "comm": {"timeout_seconds": TIMEOUT_SECONDS}, "steps_per_print": None}
    return zerolib.initialize(model, config)


def train_two_steps(model_cls) -> dict:
    """The error of the first failing phase, where it happened and how long it took."""
    torch.manual_seed(0)
    engine = _engine(model_cls(TINY))
    tokens = torch.randint(0, 64, (1, 17))
    for step in (1, 2):
        phase, start = "forward", time.monotonic()
        try:
            loss = engine(tokens[:, :-1], tokens[:, 1:])
            phase = "backward"
            engine.backward(loss)
            phase = "step"
            engine.step()
        except RuntimeError as error:
            return {"error": f"{type(error).__name__}: {error}", "step": step, "phase": phase,
                    "seconds": time.monotonic() - start}
    return {"error": None}


ANOTHER_BRANCH = ["rank 0 gathers 'blocks.1' (fetch #3)", "rank 1 gathers 'blocks.2' (fetch #3)"]
SKIPS_THE_LAST = ["rank 0 gathers 'blocks.2' (fetch #4)", "rank 1 ends its forward after 3 gathers"]


@pytest.mark.parametrize("model_cls, step, expected", [
    (TakesAnotherBranchOnRankOne, 1, ANOTHER_BRANCH),
    (SkipsTheLastBlockOnRankOne, 1, SKIPS_THE_LAST),
    (AnotherBranchOnRankOneInStepTwo, 2, ANOTHER_BRANCH),
    (SkipsTheLastBlockOnRankOneInStepTwo, 2, SKIPS_THE_LAST),
], ids=["another_branch", "skips_the_last_module", "another_branch_while_prefetching",
        "skips_the_last_module_while_prefetching"])
def test_diverging_ranks_fail_in_the_same_step_naming_rank_and_module(model_cls, step, expected):
    results = run_ranks(train_two_steps, 2, model_cls, timeout=90)
    for rank, result in enumerate(results):
        assert result["error"] is not None, f"rank {rank} trained on although the ranks diverged"
        assert result["error"].startswith("RankDivergenceError"), f"rank {rank}: {result['error']}"
        assert (result["step"], result["phase"]) == (step, "forward"), result
        for text in expected:
            assert text in result["error"], f"rank {rank}: {result['error']}"
        assert result["seconds"] < BOUND_SECONDS, result


class Stalled(Exception):
    """Ends the stalled rank's forward once its peers have failed (no collective after it)."""


def _stall_until_peers_failed(ready_dir: Path, peers: list[int]) -> None:
    deadline = time.monotonic() + 90
    while not all((ready_dir / f"failed{peer}").exists() for peer in peers):
        if time.monotonic() > deadline:
            raise Stalled("the peers never failed")
        time.sleep(0.05)
    raise Stalled("peers failed")


def stall_rank_one(ready_dir: str) -> dict:
    """Rank 1 stops in blocks.1's forward (after its gather) until ranks 0 and 2 have failed."""
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    torch.manual_seed(0)
    model = GPT(TINY)
    engine = _engine(model)
    if rank == 1:
        peers = [r for r in range(world) if r != rank]
        model.blocks[1].register_forward_pre_hook(lambda module, args: _stall_until_peers_failed(Path(ready_dir), peers))
    tokens = torch.randint(0, 64, (1, 17))
    start = time.monotonic()
    try:
        engine(tokens[:, :-1], tokens[:, 1:])
    except Stalled as stall:
        return {"error": None, "stalled": str(stall)}
    except RuntimeError as error:
        (Path(ready_dir) / f"failed{rank}").write_text("")
        return {"error": f"{type(error).__name__}: {error}", "seconds": time.monotonic() - start}
    return {"error": None}


def test_a_stalled_rank_times_out_naming_collective_module_and_waiting_ranks(tmp_path):
    results = run_ranks(stall_rank_one, 3, str(tmp_path), timeout=120)
    assert results[1] == {"error": None, "stalled": "peers failed"}, results[1]
    for rank in (0, 2):
        error = results[rank]["error"]
        assert error is not None and error.startswith(f"CollectiveError: rank {rank}: all_gather #"), error
        assert "(ZeRO-3 gather of module 'blocks.2', forward, fetch #4)" in error, error
        assert f"comm.timeout_seconds is {TIMEOUT_SECONDS}" in error, error
        assert f"Timed out waiting {TIMEOUT_SECONDS * 1000}ms" in error, error  # the timeout fired, as gloo says
        assert "ranks waiting in it: 0, 2; not in it after" in error and "s more: 1 (stalled" in error, error
        assert results[rank]["seconds"] < BOUND_SECONDS, results[rank]
