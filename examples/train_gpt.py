"""Train a byte-level GPT on the shipped corpus with zerolib.

    zerolib --num_procs 2 examples/train_gpt.py --config examples/configs/zero2.json

Every rank draws its own random windows of the training split (a sampler seeded with the seed
and the rank), rank 0 shows a progress bar with the loss and tokens/s, and the run ends with
the mean training loss of the last steps and the loss on the held-out split, both averaged over
all ranks. Any config under examples/configs/ works; they use DeepSpeed's key names.

fp32 is the default and the fastest on CPUs: without bf16/fp16 matrix units (AVX-512-BF16,
AMX) a 16-bit matmul runs about 45x slower than fp32, so zero2_bf16.json and zero2_fp16.json
are there to show the mixed-precision path, not to be fast on such a machine.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.distributed as dist
from tqdm import tqdm

import zerolib
from byte_corpus import DEFAULT_CORPUS, ByteCorpus, RankSampler, held_out_windows
from zerolib.models import GPT, GPTConfig

MODEL_PRESETS = {
    "small": dict(n_layer=4, n_head=4, n_embd=128),
    "medium": dict(n_layer=6, n_head=8, n_embd=256),
}
LAST_STEPS_AVERAGED = 10


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, help="a zerolib/DeepSpeed JSON config, e.g. examples/configs/zero2.json")
    parser.add_argument("--steps", type=int, default=300, help="optimizer steps (default 300)")
    parser.add_argument("--seq_len", type=int, default=128, help="bytes per training sequence (default 128)")
    parser.add_argument("--model", choices=sorted(MODEL_PRESETS), default="small", help="size preset (default small)")
    parser.add_argument("--n_layer", type=int, help="override the preset's number of blocks")
    parser.add_argument("--n_head", type=int, help="override the preset's attention heads")
    parser.add_argument("--n_embd", type=int, help="override the preset's width")
    parser.add_argument("--seed", type=int, default=0, help="model init and data order (default 0)")
    parser.add_argument("--corpus", default=str(DEFAULT_CORPUS), help="text file to train on")
    parser.add_argument("--no_progress", action="store_true", help="no progress bar (for logs and tests)")
    args = parser.parse_args(argv)
    for name in ("steps", "seq_len"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1, got {getattr(args, name)}")
    return args


def load_json_config(path: str, steps: int) -> dict:
    """The config file as a dict, with a schedule's ``total_num_steps`` set to ``--steps``
    (and its warm-up shortened to a tenth of a run shorter than it).

    A decaying schedule written for a different run length would otherwise stop decaying early
    or never reach its floor.
    """
    config_path = Path(path)
    if not config_path.is_file():
        raise SystemExit(f"--config {path}: no such file")
    try:
        config = json.loads(config_path.read_text())
    except json.JSONDecodeError as err:
        raise SystemExit(f"--config {path}: not valid JSON ({err})") from None
    params = (config.get("scheduler") or {}).get("params") or {}
    if "total_num_steps" in params:
        params["total_num_steps"] = steps
        # Keep the warm-up inside a short run (the config rejects a warm-up past the end).
        if params.get("warmup_num_steps", 0) > steps:
            params["warmup_num_steps"] = max(1, steps // 10)
    return config


def build_model(args: argparse.Namespace) -> GPT:
    shape = dict(MODEL_PRESETS[args.model])
    shape.update({k: getattr(args, k) for k in ("n_layer", "n_head", "n_embd") if getattr(args, k) is not None})
    if shape["n_embd"] % shape["n_head"]:
        raise SystemExit(f"--n_embd {shape['n_embd']} must be a multiple of --n_head {shape['n_head']}")
    torch.manual_seed(args.seed)  # identical init everywhere; the engine also broadcasts rank 0's
    return GPT(GPTConfig(vocab_size=256, block_size=args.seq_len, **shape))


def mean_over_ranks(total: float, count: float) -> float:
    """``sum(total) / sum(count)`` over all ranks (plain torch.distributed: not model state)."""
    values = torch.tensor([total, count], dtype=torch.float64)
    if dist.is_initialized():
        dist.all_reduce(values)
    return (values[0] / values[1]).item()


def train(engine, sampler: RankSampler, steps: int, tokens_per_step: int, show_bar: bool) -> list[float]:
    """Runs ``steps`` optimizer steps; returns this rank's mean loss of each step."""
    losses = []
    bar = tqdm(total=steps, disable=not show_bar, unit="step", dynamic_ncols=True)
    start = time.perf_counter()
    for _ in range(steps):
        step_loss = 0.0
        for _ in range(engine.gradient_accumulation_steps):
            inputs, targets = sampler.next_batch()
            loss = engine(inputs, targets)
            engine.backward(loss)
            engine.step()
            step_loss += loss.item() / engine.gradient_accumulation_steps
        losses.append(step_loss)
        elapsed = time.perf_counter() - start
        bar.set_postfix(loss=f"{step_loss:.3f}", lr=f"{engine.get_lr()[0]:.2e}",
                        tok_s=f"{tokens_per_step * len(losses) / elapsed:,.0f}")
        bar.update()
    bar.close()
    return losses


@torch.no_grad()
def held_out_loss(engine, corpus: ByteCorpus, seq_len: int, batch_size: int) -> float:
    """Token-weighted mean loss over the whole held-out split, shared out across ranks."""
    rank = dist.get_rank() if dist.is_initialized() else 0
    world_size = dist.get_world_size() if dist.is_initialized() else 1
    engine.eval()
    total, count = 0.0, 0
    for inputs, targets in held_out_windows(corpus.held_out, seq_len, rank, world_size, batch_size):
        total += engine(inputs, targets).item() * targets.numel()
        count += targets.numel()
    engine.train()
    return mean_over_ranks(total, count)


def main(argv=None) -> dict:
    """Runs the job; returns ``{"losses", "final_loss", "held_out_loss", "seconds"}`` (for tests)."""
    args = parse_args(argv)
    corpus = ByteCorpus(args.corpus)
    corpus.check_fits(args.seq_len)
    model = build_model(args)
    engine = zerolib.initialize(model, load_json_config(args.config, args.steps))
    rank = dist.get_rank() if dist.is_initialized() else 0
    world_size = dist.get_world_size() if dist.is_initialized() else 1
    micro = engine.config.train_micro_batch_size_per_gpu
    tokens_per_step = micro * args.seq_len * engine.gradient_accumulation_steps * world_size
    if rank == 0:
        print(f"GPT {model.num_parameters() / 1e6:.2f}M params, {world_size} rank(s), "
              f"ZeRO stage {engine.config.zero_optimization.stage}, {tokens_per_step} tokens/step, "
              f"corpus {len(corpus.train)} train + {len(corpus.held_out)} held-out bytes", flush=True)
    sampler = RankSampler(corpus.train, args.seq_len, micro, seed=args.seed, rank=rank)
    start = time.perf_counter()
    losses = train(engine, sampler, args.steps, tokens_per_step, show_bar=rank == 0 and not args.no_progress)
    seconds = time.perf_counter() - start
    last = losses[-LAST_STEPS_AVERAGED:]
    summary = {"losses": losses, "final_loss": mean_over_ranks(sum(last), len(last)),
               "held_out_loss": held_out_loss(engine, corpus, args.seq_len, micro), "seconds": seconds}
    if rank == 0:
        print(f"first loss {losses[0]:.3f} (rank 0); final loss: mean of the last {len(last)} steps over all ranks")
        print(f"final loss {summary['final_loss']:.3f} after {args.steps} steps ({seconds:.1f} s, "
              f"{tokens_per_step * args.steps / seconds:,.0f} tokens/s)")
        print(f"held-out loss {summary['held_out_loss']:.3f}")
    return summary


if __name__ == "__main__":
    main()
