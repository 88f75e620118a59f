"""Full tensors out of a sharded checkpoint, one at a time, on a single process."""
from __future__ import annotations

from typing import Iterator

import torch

from zerolib.checkpoint.reader import CheckpointReader, resolve_directory


def open_checkpoint(ckpt_dir, tag: str | None = None, byte_budget: int | None = None) -> CheckpointReader:
    """A reader for ``ckpt_dir/tag`` (``tag`` from ``latest`` when None)."""
    return CheckpointReader(resolve_directory(ckpt_dir, tag), byte_budget=byte_budget)


def output_names(reader: CheckpointReader) -> list[str]:
    """Every state-dict key in the model's order: tensors, then tied aliases after their source."""
    names = []
    aliases_of: dict[str, list[str]] = {}
    for alias, source in reader.manifest["aliases"].items():
        aliases_of.setdefault(source, []).append(alias)
    for name in reader.tensors:
        names.append(name)
        names.extend(aliases_of.get(name, []))
    return names


def iter_full_tensors(reader: CheckpointReader, dtype: torch.dtype = torch.float32) -> Iterator[tuple[str, torch.Tensor]]:
    """``(name, full tensor)`` in manifest order; trainable values are the fp32 masters."""
    for name in reader.tensors:
        yield name, reader.read_full(name).to(dtype)


def consolidate(ckpt_dir, tag: str | None = None) -> dict[str, torch.Tensor]:
    """``{name: full fp32 tensor}`` for every parameter and persistent buffer (tied names share one tensor)."""
    reader = open_checkpoint(ckpt_dir, tag)
    result = dict(iter_full_tensors(reader))
    for alias, source in reader.manifest["aliases"].items():
        result[alias] = result[source]
    reader.release()
    return {name: result[name] for name in output_names(reader)}
