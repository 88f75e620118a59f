"""Reads any part of any saved tensor from a checkpoint's rank files, for any new layout.

A partitioned tensor's elements ``[start, end)`` are ``[offset + start, offset + end)`` of its
saved buffer; shard ``s`` of that buffer is in rank ``s``'s file. Only the shards that overlap
are opened, each memory-mapped, so a reader touches about what it returns.
"""
from __future__ import annotations

from pathlib import Path

import torch

from zerolib.checkpoint.manifest import WHOLE, check_manifest, parse_dtype
from zerolib.checkpoint.storage import (MANIFEST_FILE, CheckpointError, check_tag, load_tensors, rank_file_name,
                                        read_json, read_latest, verify_file)

VALUES = "values"


def resolve_directory(root, tag: str | None) -> Path:
    """``root/tag``, with ``tag`` read from ``root/latest`` when None."""
    root = Path(root)
    tag = check_tag(read_latest(root) if tag is None else str(tag))
    directory = root / tag
    if not directory.is_dir():
        raise CheckpointError(f"checkpoint directory {directory} does not exist")
    return directory


class CheckpointReader:
    """Verified, memory-mapped access to one checkpoint directory.

    ``byte_budget`` bounds how many bytes of mapped files stay resident: once that much has
    been read, the maps are dropped (touched pages of a map count as this process's memory).
    """

    def __init__(self, directory, byte_budget: int | None = None):
        self.directory = Path(directory)
        self.manifest = read_json(self.directory / MANIFEST_FILE)
        check_manifest(self.manifest, self.directory / MANIFEST_FILE)
        self.byte_budget = byte_budget
        self._open: dict[int, dict] = {}
        self._verified: set[int] = set()
        self._bytes_read = 0

    @property
    def tensors(self) -> dict:
        return self.manifest["tensors"]

    def rank_file(self, rank: int) -> dict:
        """Rank ``rank``'s file, checked against the manifest's digest the first time."""
        if rank not in self._open:
            name = rank_file_name(rank)
            if name not in self.manifest["files"]:
                raise CheckpointError(f"checkpoint {self.directory}: the manifest lists no file {name}")
            path = self.directory / name
            if rank not in self._verified:
                verify_file(path, self.manifest["files"][name])
                self._verified.add(rank)
            self._open[rank] = load_tensors(path)
        return self._open[rank]

    def verify_share(self, rank: int, world_size: int) -> tuple[str, str] | None:
        """Checks files ``rank, rank + world_size, ...`` (each rank a share, every file once);
        returns ``(file name, error)`` for the first bad one."""
        names = sorted(self.manifest["files"])
        for index in range(rank, len(names), world_size):
            try:
                verify_file(self.directory / names[index], self.manifest["files"][names[index]])
            except CheckpointError as err:
                return names[index], str(err)
        return None

    def trust_listed_files(self) -> None:
        """Skips re-hashing on open once :meth:`verify_share` has covered every file on some rank."""
        self._verified.update(range(len(self.manifest["files"])))

    def release(self) -> None:
        """Drops the memory maps (they are reopened on demand)."""
        self._open.clear()
        self._bytes_read = 0

    def _account(self, tensor: torch.Tensor) -> None:
        self._bytes_read += tensor.numel() * tensor.element_size()
        if self.byte_budget is not None and self._bytes_read > self.byte_budget:
            self.release()

    def read_range(self, name: str, start: int, end: int, key: str = VALUES) -> torch.Tensor:
        """Elements ``[start, end)`` of tensor ``name`` flattened (a copy): its value or optimizer state ``key``."""
        entry = self.tensors[name]
        if entry["group"] == WHOLE:
            if key != VALUES:
                raise CheckpointError(f"checkpoint {self.directory} has no optimizer state {key!r} for {name!r}: "
                                      "it was saved as a frozen tensor")
            result = self.rank_file(0)["whole"][name].reshape(-1)[start:end].clone()
        else:
            result = self._read_partitioned(name, entry, start, end, key)
        self._account(result)
        return result

    def read_full(self, name: str, key: str = VALUES) -> torch.Tensor:
        entry = self.tensors[name]
        numel = torch.Size(entry["shape"]).numel()
        return self.read_range(name, 0, numel, key).view(entry["shape"])

    def _read_partitioned(self, name: str, entry: dict, start: int, end: int, key: str) -> torch.Tensor:
        shard_numel, buffer = entry["shard_numel"], entry["buffer"]
        lo, hi = entry["offset"] + start, entry["offset"] + end
        pieces = []
        for shard in range(lo // shard_numel, (hi - 1) // shard_numel + 1) if hi > lo else ():
            group = self.rank_file(shard)["groups"][entry["group"]]
            if key == VALUES:
                flat = group[VALUES][buffer]
            else:
                state = group["state"][buffer]
                if key not in state:
                    raise CheckpointError(f"checkpoint {self.directory}, {rank_file_name(shard)}: no optimizer "
                                          f"state {key!r} for {name!r}")
                flat = state[key]
            base = shard * shard_numel
            pieces.append(flat[max(lo, base) - base:min(hi, base + shard_numel) - base])
        if not pieces:
            return torch.empty(0, dtype=parse_dtype(entry["dtype"]) if key == VALUES else torch.float32)
        return torch.cat(pieces) if len(pieces) > 1 else pieces[0].clone()

    def scalar_state(self) -> dict:
        """Per-buffer scalar optimizer state (e.g. Adam's ``step``), equal for every buffer."""
        group = self.rank_file(0)["groups"].get("trainable", {})
        states = group.get("state") or [{}]
        return {k: v for k, v in states[0].items() if k in self.manifest["optimizer_state_keys"]["scalar"]}
