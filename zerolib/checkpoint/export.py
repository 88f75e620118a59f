"""``zerolib export CKPT_DIR OUT``: a sharded checkpoint to Hugging Face-style weight files.

One output shard is built at a time from memory-mapped rank files, so peak memory stays near
one output shard however large the model is.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import re
import sys
from pathlib import Path

import torch

from zerolib.checkpoint.consolidate import open_checkpoint, output_names
from zerolib.checkpoint.reader import CheckpointReader
from zerolib.checkpoint.storage import CheckpointError, atomic_write, write_json

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
          "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}


def parse_size(text: str) -> int:
    """``"5GB"`` -> 5e9 bytes (decimal units as Hugging Face; KiB/MiB/GiB binary)."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*", str(text))
    if not match or match.group(2).upper() not in _UNITS:
        raise ValueError(f"--max_shard_size {text!r}: expected a number of bytes with an optional unit "
                         "(KB, MB, GB, KiB, MiB, GiB)")
    size = int(float(match.group(1)) * _UNITS[match.group(2).upper()])
    if size <= 0:
        raise ValueError(f"--max_shard_size {text!r} must be positive")
    return size


def plan_shards(reader: CheckpointReader, dtype: torch.dtype, max_bytes: int, copies_aliases: bool) -> list[list[str]]:
    """Output keys per shard, filled in order up to ``max_bytes`` (a larger tensor gets its own)."""
    aliases = reader.manifest["aliases"]
    shards, used = [[]], 0
    for name in output_names(reader):
        source = aliases.get(name, name)
        nbytes = torch.Size(reader.tensors[source]["shape"]).numel() * dtype.itemsize
        if name in aliases and not copies_aliases:
            nbytes = 0  # torch.save stores a tied tensor once
        if shards[-1] and used + nbytes > max_bytes and name not in aliases:
            shards.append([])
            used = 0
        shards[-1].append(name)
        used += nbytes
    return shards


def _write_shard(tensors: dict, path: Path, safetensors: bool) -> None:
    if safetensors:
        from safetensors.torch import save_file

        atomic_write(path, lambda temporary: save_file(tensors, temporary, metadata={"format": "pt"}))
    else:
        atomic_write(path, lambda temporary: torch.save(tensors, temporary))


def _shard_tensors(reader: CheckpointReader, names: list[str], dtype: torch.dtype, safetensors: bool) -> dict:
    aliases, tensors = reader.manifest["aliases"], {}
    for name in names:
        source = aliases.get(name, name)
        if name in aliases and source in tensors:
            # safetensors refuses shared storage; torch.save keeps the tie
            tensors[name] = tensors[source].clone() if safetensors else tensors[source]
        else:
            tensors[name] = reader.read_full(source).to(dtype).contiguous()
    return tensors


def export(ckpt_dir, out_dir, tag: str | None = None, dtype: str = "fp32", safetensors: bool = False,
           max_shard_size: str | int = "5GB") -> list[Path]:
    """Writes the checkpoint's full weights to ``out_dir``; returns the files written."""
    if dtype not in DTYPES:
        raise ValueError(f"--dtype {dtype!r}: expected one of {sorted(DTYPES)}")
    if safetensors and importlib.util.find_spec("safetensors") is None:
        raise CheckpointError("--safetensors needs the 'safetensors' package (pip install zerolib[safetensors])")
    max_bytes = max_shard_size if isinstance(max_shard_size, int) else parse_size(max_shard_size)
    torch_dtype = DTYPES[dtype]
    # A quarter of the shard size of mapped source pages may stay resident beside the shard.
    reader = open_checkpoint(ckpt_dir, tag, byte_budget=max(1, max_bytes // 4))
    plan = plan_shards(reader, torch_dtype, max_bytes, copies_aliases=safetensors)
    stem, suffix = ("model", ".safetensors") if safetensors else ("pytorch_model", ".bin")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written, weight_map, total = [], {}, 0
    for number, names in enumerate(plan, start=1):
        filename = f"{stem}{suffix}" if len(plan) == 1 else f"{stem}-{number:05d}-of-{len(plan):05d}{suffix}"
        tensors = _shard_tensors(reader, names, torch_dtype, safetensors)
        _write_shard(tensors, out / filename, safetensors)
        total += sum(t.numel() * t.element_size() for n, t in tensors.items() if n not in reader.manifest["aliases"])
        weight_map.update({name: filename for name in names})
        written.append(out / filename)
        del tensors
        reader.release()
    if len(plan) > 1:
        index = out / f"{stem}{suffix}.index.json"
        write_json({"metadata": {"total_size": total}, "weight_map": weight_map}, index)
        written.append(index)
    return written


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="zerolib export",
                                     description="Write a zerolib checkpoint's full weights as Hugging Face-style files.")
    parser.add_argument("ckpt_dir", help="directory given to save_checkpoint (holds 'latest' and the tags)")
    parser.add_argument("out", help="output directory")
    parser.add_argument("--tag", default=None, help="checkpoint tag (default: the one 'latest' names)")
    parser.add_argument("--dtype", default="fp32", choices=sorted(DTYPES), help="dtype of the written weights")
    parser.add_argument("--safetensors", action="store_true", help="write .safetensors files")
    parser.add_argument("--max_shard_size", default="5GB", help="largest output file, e.g. 500MB, 5GB")
    return parser


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; returns the exit status (1 on a checkpoint or argument error)."""
    args = _parser().parse_args(argv)
    try:
        files = export(args.ckpt_dir, args.out, tag=args.tag, dtype=args.dtype, safetensors=args.safetensors,
                       max_shard_size=args.max_shard_size)
    except (CheckpointError, ValueError) as err:
        print(f"zerolib export: {err}", file=sys.stderr)
        return 1
    print(json.dumps({"files": [str(f) for f in files]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
