"""Ranks that disagree under ZeRO-3 fail fast with the rank and module named; no hang."""
import os
import time

import torch

import zerolib
from harness import run_ranks
from zerolib.models import GPT, GPTConfig

TINY = GPTConfig(vocab_size=64, block_size=16, n_layer=3, n_head=2, n_embd=32)


class SkipsABlockOnRankOne(GPT):
    def forward(self, idx, targets=None):
        x = self.tok_emb(idx) + self.pos_emb(torch.arange(idx.shape[1]))
        for i, block in enumerate(self.blocks):
            if i == 1 and os.environ["RANK"] == "1":
                continue
            x = block(x)
        return torch.nn.functional.cross_entropy(self.lm_head(self.ln_f(x)).flatten(0, 1), targets.flatten())


class StallsOnRankOne(GPT):
    def forward(self, idx, targets=None):
        if os.environ["RANK"] == "1":
            time.sleep(8)
        return super().forward(idx, targets)


def train_one_step(model_cls) -> str:
    torch.manual_seed(0)
    config = {"train_micro_batch_size_per_gpu": 1, "optimizer": {"type": "AdamW", "params": {"lr": 1e-3}},
              "zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 0},
              "comm": {"timeout_seconds": 3}, "steps_per_print": None}
    engine = zerolib.initialize(model_cls(TINY), config)
    tokens = torch.randint(0, 64, (1, 17))
    start = time.monotonic()
    try:
        loss = engine(tokens[:, :-1], tokens[:, 1:])
        engine.backward(loss)
        engine.step()
        return "no error"
    except RuntimeError as error:
        return f"{type(error).__name__} after {time.monotonic() - start:.1f}s: {error}"


def test_a_rank_that_skips_a_module_is_named():
    messages = run_ranks(train_one_step, 2, SkipsABlockOnRankOne, timeout=60)
    for rank, message in enumerate(messages):
        assert message.startswith("RankDivergenceError"), f"rank {rank}: {message}"
        assert "rank 0 gathers 'blocks.1'" in message and "rank 1 gathers 'blocks.2'" in message, message


def test_a_stalled_rank_times_out_naming_the_module():
    messages = run_ranks(train_one_step, 2, StallsOnRankOne, timeout=90)
    waiting = messages[0]
    assert "ZeRO-3 gather of module 'blocks.0'" in waiting, waiting  # the root was gathered before the stall
    assert "rank 0" in waiting
    seconds = float(waiting.split(" after ")[1].split("s:")[0])
    assert seconds < 30, f"the 3 s timeout took {seconds} s to fire"
