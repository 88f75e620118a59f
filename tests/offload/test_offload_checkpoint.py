"""Checkpoints of an engine whose masters, moments, gradients and parameter shards live in
swap files (offload_optimizer and offload_param nvme): saving reads them back, loading writes
them, and training resumes exactly as it would have gone on (one process, a tiny GPT)."""
import gc
import os

import pytest
import torch

import zerolib
from zerolib.models import GPT, GPTConfig

MODEL = GPTConfig(vocab_size=64, block_size=16, n_layer=2, n_head=2, n_embd=32)


def make_engine(swap_dir: str, dtype: str):
    nvme = {"device": "nvme", "nvme_path": swap_dir}
    config = {"train_micro_batch_size_per_gpu": 2, "steps_per_print": None, "gradient_clipping": 0.5,
              "optimizer": {"type": "AdamW", "params": {"lr": 1e-2, "weight_decay": 0.1}},
              "zero_optimization": {"stage": 3, "sub_group_size": 3000, "stage3_param_persistence_threshold": 100,
                                    "offload_optimizer": {**nvme, "buffer_count": 3},
                                    "offload_param": {**nvme, "buffer_count": 2, "max_in_cpu": 0}}}
    if dtype == "bf16":
        config["bf16"] = {"enabled": True}
    torch.manual_seed(0)
    return zerolib.initialize(GPT(MODEL), config)


def train(engine, batches) -> None:
    for tokens in batches:
        engine.backward(engine(tokens[:, :-1], tokens[:, 1:]))
        engine.step()


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_checkpoint_round_trip_with_everything_swapped(tmp_path, dtype):
    batches = torch.randint(0, MODEL.vocab_size, (4, 2, MODEL.block_size + 1), generator=torch.Generator().manual_seed(3))
    first = make_engine(str(tmp_path / "swap_a"), dtype)
    train(first, batches[:2])
    first.save_checkpoint(str(tmp_path / "ckpt"), tag="two")
    train(first, batches[2:])
    expected = first.full_state_dict()
    del first
    gc.collect()
    second = make_engine(str(tmp_path / "swap_b"), dtype)
    second.load_checkpoint(str(tmp_path / "ckpt"), tag="two")
    train(second, batches[2:])
    got = second.full_state_dict()
    for name, value in expected.items():
        assert torch.equal(got[name], value), f"{name}: resumed training differs from uninterrupted training"
    del second
    gc.collect()
    assert os.listdir(tmp_path / "swap_a") == [] and os.listdir(tmp_path / "swap_b") == []
