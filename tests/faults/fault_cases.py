"""Small engines the fault tests share (spawned ranks import this module by name)."""
import torch

import zerolib
from zerolib.models import GPT, GPTConfig


def tiny_gpt_engine(stage: int, micro_batch: int, n_layer: int = 1, vocab_size: int = 32):
    """A seeded GPT of ``n_layer`` blocks under ZeRO ``stage`` with AdamW."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=vocab_size, block_size=16, n_layer=n_layer, n_head=2, n_embd=16 * n_layer))
    return zerolib.initialize(model, {"train_micro_batch_size_per_gpu": micro_batch, "steps_per_print": None,
                                      "optimizer": {"type": "AdamW", "params": {"lr": 1e-2}},
                                      "zero_optimization": {"stage": stage}})


def train_step(engine, seed: int) -> None:
    """One forward, backward and step on tokens that differ per rank and per seed."""
    vocab = engine.module.config.vocab_size
    gen = torch.Generator().manual_seed(seed + 10 * engine.comm.rank)
    tokens = torch.randint(0, vocab, (engine.config.train_micro_batch_size_per_gpu, 9), generator=gen)
    engine.backward(engine(tokens[:, :-1], tokens[:, 1:]))
    engine.step()
