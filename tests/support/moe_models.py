"""Tiny seeded MoE models for the MoE-prefill tests (transformers' Qwen3-MoE and Mixtral, and
zerolib's MoEGPT), a workload with shared prefixes, and the single-process reference answers."""
from __future__ import annotations

import random

import torch

VOCAB = 96
MODEL_KINDS = ("qwen3_moe", "mixtral", "moe_gpt")


def build_model(kind: str, seed: int = 0, num_experts: int = 8) -> torch.nn.Module:
    """The same weights for the same (kind, seed) in every process."""
    torch.manual_seed(seed)
    if kind == "qwen3_moe":
        from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM

        config = Qwen3MoeConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, moe_intermediate_size=16,
                                num_hidden_layers=3, num_attention_heads=2, num_key_value_heads=1, head_dim=16,
                                num_experts=num_experts, num_experts_per_tok=2, max_position_embeddings=256)
        return Qwen3MoeForCausalLM(config).eval()
    if kind == "mixtral":
        from transformers import MixtralConfig, MixtralForCausalLM

        config = MixtralConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=16, num_hidden_layers=3,
                               num_attention_heads=2, num_key_value_heads=1, head_dim=16,
                               num_local_experts=num_experts, num_experts_per_tok=2, max_position_embeddings=256)
        return MixtralForCausalLM(config).eval()
    if kind == "moe_gpt":
        from zerolib.models import MoEGPT, MoEGPTConfig

        config = MoEGPTConfig(vocab_size=VOCAB, block_size=256, n_layer=3, n_head=2, n_embd=32,
                              n_experts=num_experts, expert_hidden=16)
        return MoEGPT(config).eval()
    raise ValueError(kind)


def workload(seed: int = 0, count: int = 12) -> list[dict]:
    """Requests over two shared prefixes (3 and 2 blocks long) plus some unrelated ones."""
    rng = random.Random(seed)
    prefixes = [[rng.randrange(VOCAB) for _ in range(48)], [rng.randrange(VOCAB) for _ in range(37)]]
    requests = [{"input_ids": rng.choice(prefixes) + [rng.randrange(VOCAB) for _ in range(rng.randrange(1, 20))],
                 "candidates": rng.sample(range(VOCAB), 3)} for _ in range(count - 4)]
    requests += [{"input_ids": [rng.randrange(VOCAB) for _ in range(rng.randrange(1, 60))],
                  "candidates": rng.sample(range(VOCAB), 2)} for _ in range(4)]
    return requests


@torch.no_grad()
def last_logits(model: torch.nn.Module, input_ids: list[int]) -> torch.Tensor:
    """Logits at the last position of one plain forward (no cache, no packing)."""
    out = model(torch.tensor([input_ids]))
    return getattr(out, "logits", out)[0, -1].float()


def reference_answers(model: torch.nn.Module, requests: list[dict]) -> list[dict]:
    answers = []
    for request in requests:
        logits = last_logits(model, request["input_ids"])
        chosen = torch.tensor(request["candidates"])
        answers.append({"logprobs": torch.log_softmax(logits, -1)[chosen].tolist(),
                        "best": request["candidates"][int(torch.argmax(logits[chosen]))]})
    return answers
