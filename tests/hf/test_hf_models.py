"""Hugging Face causal LMs built from small random configs (nothing downloaded) train under
every ZeRO stage with the same losses as plain PyTorch: GPT-2, Llama and Qwen3-MoE."""
import os

import pytest
import torch

from harness import run_ranks

transformers = pytest.importorskip("transformers", reason="transformers is not installed (pip install -e .[dev])")

KINDS = ("gpt2", "llama", "qwen3moe")
STAGES = (0, 1, 2, 3)
STEPS, WORLD, MICRO, SEQ, VOCAB = 3, 2, 2, 12, 64
LOSS_TOLERANCE = 1e-4  # fp32: only the order of gradient sums differs


def build(kind: str):
    torch.manual_seed(0)
    if kind == "gpt2":
        config = transformers.GPT2Config(vocab_size=VOCAB, n_positions=32, n_embd=32, n_layer=2, n_head=2,
                                         resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
        return transformers.GPT2LMHeadModel(config)
    if kind == "llama":
        config = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                          num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=32)
        return transformers.LlamaForCausalLM(config)
    config = transformers.Qwen3MoeConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, moe_intermediate_size=32,
                                         num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                                         num_experts=4, num_experts_per_tok=2, max_position_embeddings=32,
                                         decoder_sparse_step=1, head_dim=16)
    return transformers.Qwen3MoeForCausalLM(config)


def batches():
    return torch.randint(0, VOCAB, (STEPS, WORLD, MICRO, SEQ), generator=torch.Generator().manual_seed(1))


def train_all() -> dict:
    import zerolib

    rank = int(os.environ["RANK"])
    results = {}
    for kind in KINDS:
        for stage in STAGES:
            config = {"train_micro_batch_size_per_gpu": MICRO, "gradient_clipping": 1.0, "steps_per_print": None,
                      "optimizer": {"type": "AdamW", "params": {"lr": 1e-2}},
                      "zero_optimization": {"stage": stage, "stage3_param_persistence_threshold": 100}}
            engine = zerolib.initialize(build(kind), config)
            losses = []
            for tokens in batches()[:, rank]:
                loss = engine(input_ids=tokens, labels=tokens).loss
                engine.backward(loss)
                engine.step()
                losses.append(loss.item())
            results[(kind, stage)] = losses
    return results


def reference(kind: str) -> torch.Tensor:
    model = build(kind)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, fused=True)
    losses = torch.zeros(STEPS, WORLD)
    for step, per_rank in enumerate(batches()):
        parts = [model(input_ids=tokens, labels=tokens).loss for tokens in per_rank]
        optimizer.zero_grad()
        (sum(parts) / WORLD).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        losses[step] = torch.tensor([p.item() for p in parts])
    return losses


@pytest.fixture(scope="module")
def ranks():
    return run_ranks(train_all, WORLD)


@pytest.mark.parametrize("stage", STAGES)
@pytest.mark.parametrize("kind", KINDS)
def test_hf_model_matches_plain_pytorch(ranks, kind, stage):
    want = reference(kind)
    for rank, results in enumerate(ranks):
        got = torch.tensor(results[(kind, stage)])
        assert torch.allclose(got, want[:, rank], atol=LOSS_TOLERANCE, rtol=0), (
            f"{kind} stage {stage} rank {rank}: {got.tolist()} vs {want[:, rank].tolist()}")
