"""Fine-tune a local Hugging Face causal LM with zerolib on a text file.

    python -m zerolib.launcher --num_procs 2 examples/train_hf.py --model PATH --config ds.json

``--model`` is a directory with config.json and weights (``save_pretrained`` output). Under
ZeRO-3 the model is built on the meta device and ``zerolib.initialize(..., pretrained=DIR)``
reads each rank's slice of the safetensors weights, so no rank holds the whole model; at
other stages every rank loads it with ``AutoModelForCausalLM.from_pretrained``. Text comes from ``--data`` (default
examples/data/corpus.txt if present, else a short built-in text) and is tokenized with the
directory's tokenizer when it has one, else byte by byte (ids = bytes mod vocab size), so a
bare random model trains too. Each rank draws its own random windows of ``--seq`` tokens.
``--config`` is a zerolib/DeepSpeed JSON; without it a stage-3 AdamW config is used.
"""
from __future__ import annotations

import argparse
import os
import sys

import torch

import zerolib
from zerolib.checkpointing import CheckpointOptions

HERE = os.path.dirname(os.path.abspath(__file__))
BUILT_IN_TEXT = ("ZeRO removes the memory redundancies of data-parallel training by partitioning the "
                 "optimizer states, gradients and parameters across the ranks, and gathers each "
                 "parameter only while it is needed. ") * 20
DEFAULT_CONFIG = {"train_micro_batch_size_per_gpu": 2, "gradient_clipping": 1.0, "steps_per_print": 10,
                  "optimizer": {"type": "AdamW", "params": {"lr": 5e-5, "weight_decay": 0.0}},
                  "zero_optimization": {"stage": 3}}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="local model directory (config.json + weights)")
    parser.add_argument("--config", help="zerolib/DeepSpeed JSON config (default: stage 3, AdamW)")
    parser.add_argument("--data", help="text file (default: examples/data/corpus.txt or built-in text)")
    parser.add_argument("--steps", type=int, default=100, help="optimizer steps")
    parser.add_argument("--seq", type=int, default=64, help="tokens per sample")
    parser.add_argument("--checkpointing", action="store_true",
                        help="recompute each transformer layer in backward (activation checkpointing)")
    parser.add_argument("--save", help="directory to save the fine-tuned model to (rank 0)")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def read_text(path: str | None) -> str:
    default = os.path.join(HERE, "data", "corpus.txt")
    if path is None:
        path = default if os.path.isfile(default) else None
    if path is None:
        return BUILT_IN_TEXT
    with open(path, encoding="utf-8") as file:
        return file.read()


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model")


def tokenize(text: str, model_dir: str, vocab_size: int) -> torch.Tensor:
    if not any(os.path.isfile(os.path.join(model_dir, name)) for name in TOKENIZER_FILES):
        return torch.tensor(list(text.encode("utf-8")), dtype=torch.long) % vocab_size  # a bare model: bytes
    from transformers import AutoTokenizer

    return torch.tensor(AutoTokenizer.from_pretrained(model_dir)(text)["input_ids"], dtype=torch.long)


def enable_checkpointing(model, options: CheckpointOptions) -> None:
    """Hugging Face models recompute each decoder layer with non-reentrant torch checkpointing,
    as zerolib.checkpointing.checkpoint does; ``offload`` keeps the saved inputs in host memory."""
    if not getattr(model, "supports_gradient_checkpointing", False):
        raise SystemExit(f"--checkpointing: {type(model).__name__} does not support activation checkpointing")
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5
        model.activation_checkpointing_enable(offload=options.cpu_checkpointing)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def progress(step: int, total: int, loss: float) -> None:
    width = 30
    done = width * step // total
    print(f"\r[{'#' * done}{'.' * (width - done)}] step {step}/{total} loss {loss:.4f}", end="",
          file=sys.stderr, flush=True)


def load_model(model_dir: str, config):
    """``(model, pretrained)``: under ZeRO-3 a meta-device model that ``initialize`` fills from
    ``pretrained`` shard by shard; otherwise the whole model, loaded on every rank."""
    from transformers import AutoConfig, AutoModelForCausalLM

    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if zerolib.load_config(config, world_size=world_size).zero_optimization.stage == 3:
        with zerolib.partitioned_init(config):
            return AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model_dir)), model_dir
    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32), None


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    config = args.config or DEFAULT_CONFIG  # a JSON path: zerolib reads it and names any bad key
    model, pretrained = load_model(args.model, config)
    engine = zerolib.initialize(model, config, pretrained=pretrained)
    if args.checkpointing:
        enable_checkpointing(model, CheckpointOptions.from_config(engine.config))
    tokens = tokenize(read_text(args.data), args.model, model.config.vocab_size)
    if tokens.numel() <= args.seq + 1:
        raise SystemExit(f"the text has {tokens.numel()} tokens: fewer than --seq {args.seq} + 1")
    rank = engine.comm.rank
    gen = torch.Generator().manual_seed(args.seed * 1000 + rank)  # each rank its own windows
    micro = engine.config.train_micro_batch_size_per_gpu
    engine.train()
    loss = torch.tensor(float("nan"))
    while engine.global_steps < args.steps:
        starts = torch.randint(0, tokens.numel() - args.seq, (micro,), generator=gen)
        batch = torch.stack([tokens[s:s + args.seq] for s in starts.tolist()]).to(engine.comm.device)
        loss = engine(input_ids=batch, labels=batch).loss
        engine.backward(loss)
        engine.step()
        if rank == 0 and engine.micro_steps % engine.gradient_accumulation_steps == 0:
            progress(engine.global_steps, args.steps, loss.item())
    if rank == 0:
        print(f"\nfinished {engine.global_steps} steps, last loss {loss.item():.4f}", flush=True)
    weights = engine.full_state_dict()  # on every rank: it gathers
    if args.save and rank == 0:
        model.save_pretrained(args.save, state_dict=weights)
    engine.monitor.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())

