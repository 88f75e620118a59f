"""Run as a script by test_export_memory.py, each mode in a fresh process.

``save DIR``: one process (no process group) saves a ~200 MB fp32 checkpoint of a wide GPT.
``export DIR OUT MAX_SHARD``: exports it while a thread samples this process's RSS; prints
JSON with the RSS before the export and the peak during it.
"""
import json
import sys
import threading
import time


def save(directory: str) -> None:
    import torch

    import zerolib
    from zerolib.models import GPT, GPTConfig

    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=256, block_size=64, n_layer=4, n_head=8, n_embd=1024))
    config = {"train_micro_batch_size_per_gpu": 1, "optimizer": {"type": "AdamW", "params": {"lr": 1e-3}},
              "zero_optimization": {"stage": 0, "reduce_bucket_size": 20_000_000}, "steps_per_print": None}
    engine = zerolib.initialize(model, config)
    engine.save_checkpoint(directory)
    print(json.dumps({"numel": sum(p.numel() for p in model.parameters())}))


def export(directory: str, out: str, max_shard: str) -> None:
    import psutil

    from zerolib.checkpoint.export import main

    process = psutil.Process()
    before = process.memory_info().rss
    peak, done = [before], threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], process.memory_info().rss)
            time.sleep(0.002)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    status = main([directory, out, "--max_shard_size", max_shard])
    done.set()
    sampler.join()
    peak[0] = max(peak[0], process.memory_info().rss)
    print(json.dumps({"status": status, "before": before, "peak": peak[0]}))


if __name__ == "__main__":
    {"save": save, "export": export}[sys.argv[1]](*sys.argv[2:])
