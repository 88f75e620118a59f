"""ZeRO-3 loads a local Hugging Face checkpoint straight into shards: a model built on the meta
device under zerolib.partitioned_init, filled by zerolib.initialize(..., pretrained=DIR), holds
exactly the checkpoint's weights and gives the logits of a plain from_pretrained model."""
import os

import pytest
import safetensors.torch as safetensors_torch  # the dev extra installs both
import torch
import transformers

from harness import run_ranks
from zerolib.checkpoint import CheckpointError

VOCAB, SEQ = 64, 10
CONFIG = {"train_micro_batch_size_per_gpu": 2, "steps_per_print": None,
          "optimizer": {"type": "AdamW", "params": {"lr": 1e-3}},
          "zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 100}}


def tiny_config(kind: str, vocab: int = VOCAB):
    if kind == "gpt2":  # tied input and output embeddings
        return transformers.GPT2Config(vocab_size=vocab, n_positions=32, n_embd=32, n_layer=2, n_head=2,
                                       bos_token_id=0, eos_token_id=0)
    if kind == "llama":  # rotary inv_freq: a non-persistent buffer computed at construction
        return transformers.LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=32)
    return transformers.Qwen3MoeConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, moe_intermediate_size=32,
                                       num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                                       num_experts=2, num_experts_per_tok=1, max_position_embeddings=32, head_dim=16)


def save_tiny(kind: str, directory, seed: int = 0) -> str:
    torch.manual_seed(seed)
    transformers.AutoModelForCausalLM.from_config(tiny_config(kind)).save_pretrained(directory)
    return str(directory)


def tokens() -> torch.Tensor:
    return torch.randint(0, VOCAB, (2, SEQ), generator=torch.Generator().manual_seed(3))


def build_on_meta(directory: str, config=CONFIG):
    import zerolib

    with zerolib.partitioned_init(config):
        return transformers.AutoModelForCausalLM.from_config(transformers.AutoConfig.from_pretrained(directory))


def load_on_ranks(directories: dict) -> dict:
    import zerolib

    results = {}
    for kind, directory in directories.items():
        engine = zerolib.initialize(build_on_meta(directory), CONFIG, pretrained=directory)
        engine.eval()
        with torch.no_grad():
            logits = engine(input_ids=tokens()).logits
        results[kind] = {"weights": engine.full_state_dict(), "logits": logits,
                         "buffers": {n: b.clone() for n, b in engine.module.named_buffers()},
                         "held": sum(engine.memory_breakdown().values())}
    scratch = zerolib.initialize(build_on_meta(directories["llama"]), CONFIG)  # no checkpoint: fresh values
    results["scratch_buffers"] = {n: b.clone() for n, b in scratch.module.named_buffers()}
    return results


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf_pretrained")
    directories = {kind: save_tiny(kind, root / kind) for kind in ("gpt2", "llama")}
    return directories, run_ranks(load_on_ranks, 2, directories)


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_loaded_weights_are_the_checkpoint(loaded, kind):
    directories, ranks = loaded
    saved = safetensors_torch.load_file(os.path.join(directories[kind], "model.safetensors"))
    for rank, result in enumerate(ranks):
        weights = result[kind]["weights"]
        assert sorted(weights) == sorted(saved), f"rank {rank}: names differ from the checkpoint's"
        for name, value in saved.items():
            assert weights[name].dtype == torch.float32
            assert torch.equal(weights[name], value), f"{kind} rank {rank}: {name} differs from the checkpoint"


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_logits_and_buffers_match_plain_from_pretrained(loaded, kind):
    directories, ranks = loaded
    plain = transformers.AutoModelForCausalLM.from_pretrained(directories[kind]).eval()
    with torch.no_grad():
        want = plain(input_ids=tokens()).logits
    plain_buffers = dict(plain.named_buffers())
    for rank, result in enumerate(ranks):
        # Same fp32 weights and the same ops: equal up to the summation order of gathered matmuls.
        assert torch.allclose(result[kind]["logits"], want, atol=1e-6, rtol=0), f"{kind} rank {rank}: logits differ"
        assert sorted(result[kind]["buffers"]) == sorted(plain_buffers)
        for name, value in plain_buffers.items():
            assert torch.equal(result[kind]["buffers"][name], value), f"{kind} rank {rank}: buffer {name} differs"
    if kind == "gpt2":
        assert plain.lm_head.weight is plain.transformer.wte.weight


def test_meta_hf_model_without_checkpoint_computes_its_buffers(loaded):
    directories, ranks = loaded
    plain = transformers.AutoModelForCausalLM.from_pretrained(directories["llama"])
    for result in ranks:
        for name, value in plain.named_buffers():
            assert torch.equal(result["scratch_buffers"][name], value), f"{name} was not computed"


def single_rank(directory, model=None, config=CONFIG):
    import zerolib

    return zerolib.initialize(model if model is not None else build_on_meta(directory), config, pretrained=directory)


def test_base_model_checkpoint_loads_with_prefix_and_new_head(tmp_path, caplog):
    torch.manual_seed(0)
    base = transformers.LlamaModel(tiny_config("llama"))  # keys without the "model." prefix, no lm_head
    base.save_pretrained(tmp_path)
    engine = single_rank(str(tmp_path))
    weights = engine.full_state_dict()
    for name, value in base.state_dict().items():
        if not name.endswith("inv_freq"):
            assert torch.equal(weights[f"model.{name}"], value), name
    assert weights["lm_head.weight"].abs().sum() > 0, "the missing head must be initialised, not left empty"


def test_forgetting_pretrained_is_pointed_out(tmp_path, caplog):
    import zerolib

    directory = save_tiny("llama", tmp_path / "llama")
    zerolib.initialize(build_on_meta(directory), CONFIG)
    assert f"pass pretrained={directory!r}" in caplog.text


def test_from_pretrained_inside_partitioned_init_says_what_to_do_instead(tmp_path):
    import zerolib

    directory = save_tiny("llama", tmp_path / "llama")
    with pytest.raises(RuntimeError, match=r"from_config\(AutoConfig.from_pretrained\(DIR\)\).*pretrained=DIR"):
        with zerolib.partitioned_init(CONFIG):
            transformers.AutoModelForCausalLM.from_pretrained(directory)


def test_checkpoint_errors_name_what_is_wrong(tmp_path):
    import zerolib

    with pytest.raises(CheckpointError, match="not a local directory"):
        single_rank(str(tmp_path / "nowhere"), model=build_on_meta(save_tiny("llama", tmp_path / "llama")))
    with pytest.raises(CheckpointError, match=r"shapes differ: model.embed_tokens.weight is \(80, 32\)"):
        with zerolib.partitioned_init(CONFIG):
            wider = transformers.AutoModelForCausalLM.from_config(tiny_config("llama", vocab=80))
        single_rank(str(tmp_path / "llama"), model=wider)
    moe = save_tiny("qwen3moe", tmp_path / "moe")  # saved per expert; the model fuses the experts
    with pytest.raises(CheckpointError, match="experts.0.down_proj.weight.*experts.down_proj"):
        single_rank(moe)
    with pytest.raises(ValueError, match="already has its weights"):
        single_rank(str(tmp_path / "llama"), model=transformers.AutoModelForCausalLM.from_config(tiny_config("llama")))
    (tmp_path / "bin").mkdir()
    torch.save({}, tmp_path / "bin" / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="neither model.safetensors"):
        single_rank(str(tmp_path / "bin"), model=build_on_meta(str(tmp_path / "llama")))


class ComputedBuffer(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(200, 200)
        self.register_buffer("scale", torch.arange(4.0), persistent=False)  # lost on the meta device


def test_a_buffer_no_init_computes_is_named():
    import zerolib

    with zerolib.partitioned_init(CONFIG):
        model = ComputedBuffer()
    with pytest.raises(ValueError, match=r"buffers \['scale'\].*did not compute them"):
        zerolib.initialize(model, CONFIG)
