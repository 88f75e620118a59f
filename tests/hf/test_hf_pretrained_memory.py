"""Loading a ~100M-parameter Llama checkpoint into ZeRO-3 shards on 2 ranks: no rank ever holds
the model. Each rank's peak RSS grows by about its shard (half the model) plus a few rows
read at a time, and the held parameter bytes are exactly its shard."""
import json
import os
import re
import subprocess
import sys

import pytest

from harness import run_ranks

WORLD = 2
# hidden 768, 12 layers, vocab 8192, untied head: 12 x 7.1M + 2 x 6.3M = 97.5M parameters (390 MB).
MODEL = dict(vocab_size=8192, hidden_size=768, intermediate_size=2048, num_hidden_layers=12,
             num_attention_heads=12, num_key_value_heads=12, max_position_embeddings=64, tie_word_embeddings=False)
SAVE = """
import json, sys, torch, transformers
with torch.device("meta"):
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**json.loads(sys.argv[2])))
model.to_empty(device="cpu")
generator = torch.Generator().manual_seed(0)
with torch.no_grad():
    for p in model.parameters():
        p.copy_(torch.rand(p.shape, generator=generator) - 0.5)
model.save_pretrained(sys.argv[1])
"""
SLACK = 64 << 20  # the allocator and the interpreter's own pages


def _kib(field: str) -> int:
    with open("/proc/self/status") as file:
        return int(re.search(field + r":\s+(\d+) kB", file.read()).group(1)) * 1024


def measure_load(directory: str) -> dict:
    import transformers

    import zerolib

    config = {"train_micro_batch_size_per_gpu": 1, "steps_per_print": None,
              "optimizer": {"type": "AdamW", "params": {"lr": 1e-4}}, "zero_optimization": {"stage": 3}}
    with zerolib.partitioned_init(config):
        model = transformers.AutoModelForCausalLM.from_config(transformers.AutoConfig.from_pretrained(directory))
    before = _kib("VmRSS")
    with open("/proc/self/clear_refs", "w") as file:
        file.write("5")  # resets VmHWM, the peak RSS, to the current RSS
    engine = zerolib.initialize(model, config, pretrained=directory)
    largest = max(p.numel() for p in engine.stage3.store.params.values()) * 4
    return {"growth": _kib("VmHWM") - before, "held": engine.memory_breakdown()["params"],
            "shard": engine.stage3.layout.shard_numel * 4, "largest": largest,
            "numel": engine.stage3.layout.total_numel}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    directory = str(tmp_path_factory.mktemp("llama170m"))
    done = subprocess.run([sys.executable, "-c", SAVE, directory, json.dumps(MODEL)], capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return directory


def test_no_rank_materialises_the_model(checkpoint):
    if not os.path.exists("/proc/self/clear_refs"):
        pytest.skip("needs Linux's /proc/self/clear_refs to reset the peak RSS")
    full = os.path.getsize(os.path.join(checkpoint, "model.safetensors"))
    for rank, result in enumerate(run_ranks(measure_load, WORLD, checkpoint)):
        print(f"rank {rank}: {result['numel'] / 1e6:.0f}M params, checkpoint {full / 2**20:.0f} MiB, "
              f"peak RSS growth {result['growth'] / 2**20:.0f} MiB ({result['growth'] / full:.2f} of the model), "
              f"parameter shard {result['held'] / 2**20:.0f} MiB")
        assert result["shard"] <= result["held"] < full / WORLD + 2**20  # the shard, plus the whole norm weights
        assert result["growth"] < result["shard"] + 2 * result["largest"] + SLACK, (
            f"rank {rank}: peak RSS grew {result['growth'] / 2**20:.0f} MiB for a "
            f"{result['shard'] / 2**20:.0f} MiB shard")
        assert result["growth"] < 0.75 * full
