"""Stages 1-2 with overlap_comm: the post-step all-gather is finished during the next forward,
module by module, and nothing can read the parameters half-gathered without being told."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from harness import run_ranks
from zerolib.models import GPT, GPTConfig

TINY = GPTConfig(vocab_size=64, block_size=8, n_layer=2, n_head=2, n_embd=32)


def config(stage: int, overlap: bool) -> dict:
    return {"train_micro_batch_size_per_gpu": 2, "optimizer": {"type": "AdamW", "params": {"lr": 1e-2}},
            "steps_per_print": None,
            "zero_optimization": {"stage": stage, "overlap_comm": overlap, "reduce_bucket_size": 4000,
                                  "allgather_bucket_size": 4000}}


def tokens(step: int) -> torch.Tensor:
    rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
    return torch.randint(0, TINY.vocab_size, (2, 9), generator=torch.Generator().manual_seed(10 * step + rank))


def deferral_is_real_and_readers_wait(stage: int) -> dict:
    import zerolib

    torch.manual_seed(0)
    engine = zerolib.initialize(GPT(TINY), config(stage, overlap=True))
    seen = {}
    for step in range(3):
        batch = tokens(step)
        engine.backward(engine(batch[:, :-1], batch[:, 1:]))
        engine.step()
        store = engine.optimizer.store
        seen.setdefault("pending_after_step", []).append(
            sum(not store.is_available(spec.index) for spec in store.layout.buffers))
    # A reader between steps sees the finished values: state_dict waits for the gather.
    state = {k: v.float() for k, v in engine.module.state_dict().items()}
    full = engine.full_state_dict()
    seen["state_dict_matches"] = all(torch.equal(state[name], full[name]) for name in full)
    batch = tokens(9)
    engine(batch[:, :-1], batch[:, 1:])
    seen["pending_after_forward"] = sum(not store.is_available(spec.index) for spec in store.layout.buffers)
    seen["buffers"] = len(store.layout.buffers)
    return seen


@pytest.mark.parametrize("stage", [1, 2])
def test_gather_is_left_for_the_next_forward_and_readers_wait_for_it(stage):
    for result in run_ranks(deferral_is_real_and_readers_wait, 2, stage):
        assert result["buffers"] > 1
        assert result["pending_after_step"] == [result["buffers"]] * 3
        assert result["pending_after_forward"] == 0
        assert result["state_dict_matches"]


class ReadsHeadWithoutCallingIt(nn.Module):
    """The root uses ``head.weight`` directly; ``head``'s own forward never runs."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(64, 32)
        self.head = nn.Linear(32, 64, bias=False)

    def forward(self, idx, targets):
        logits = F.linear(self.embed(idx), self.head.weight)
        return F.cross_entropy(logits.view(-1, 64), targets.reshape(-1))


def train_reader(overlap: bool) -> str:
    import zerolib

    torch.manual_seed(0)
    engine = zerolib.initialize(ReadsHeadWithoutCallingIt(), config(2, overlap))
    try:
        for step in range(2):
            batch = tokens(step)
            engine.backward(engine(batch[:, :-1], batch[:, 1:]))
            engine.step()
    except RuntimeError as error:
        return str(error)
    return "trained"


def test_a_parameter_read_outside_its_module_is_reported_not_used_stale():
    errors = run_ranks(train_reader, 2, True)
    for message in errors:
        assert "parameter 'head.weight' was used in forward before its updated values arrived" in message
        assert "overlap_comm" in message
    assert run_ranks(train_reader, 2, False) == ["trained", "trained"]
