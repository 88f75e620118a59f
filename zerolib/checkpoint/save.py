"""Saving: every rank writes its own file, rank 0 the manifest, and ``latest`` moves last.

Order, so that a crash at any point leaves the previous checkpoint loadable:
1. each rank writes ``rankNNNNN.pt`` atomically and computes its sha256;
2. the digests are gathered and rank 0 writes ``manifest.json`` atomically;
3. the ranks agree that every file of the new tag is complete;
4. rank 0 rewrites ``latest`` atomically, and the ranks agree that it did.

A write that fails (a full disk, an unwritable directory) raises a CheckpointError naming the
file, the bytes to write and the bytes free; each agreement turns it into an error on every
rank (agreement.py), so no rank waits for a file that will never come, and ``latest`` still
names the previous checkpoint.
"""
from __future__ import annotations

import errno
import shutil
from pathlib import Path

import torch

from zerolib.checkpoint.agreement import raise_if_any_failed
from zerolib.checkpoint.manifest import FROZEN, TRAINABLE, WHOLE, build_manifest, engine_places
from zerolib.checkpoint.rng import capture_rng
from zerolib.checkpoint.storage import (LATEST_FILE, MANIFEST_FILE, CheckpointError, check_tag, file_digest, rank_file_name,
                                        save_tensors, write_json, write_latest)

_DIGEST_BYTES = 32


def _split_state(optimizer) -> tuple[list[dict], dict]:
    """Per-buffer optimizer state as compact copies; keys sorted into elementwise and scalar.
    Read through ``state_dict()``, so state an offloaded optimizer keeps in swap files counts."""
    states, keys = [], {"elementwise": set(), "scalar": set()}
    by_index = optimizer.optimizer.state_dict()["state"]
    for index, master in enumerate(optimizer.master):
        saved = {}
        for key, value in by_index.get(index, {}).items():
            if torch.is_tensor(value) and value.shape == master.shape and value.numel() > 1:
                keys["elementwise"].add(key)
            else:
                keys["scalar"].add(key)
            saved[key] = value.detach().clone() if torch.is_tensor(value) else value
        states.append(saved)
    return states, {kind: sorted(names) for kind, names in keys.items()}


def _shard_copy(store, index: int) -> torch.Tensor:
    shard = store.open_shard(index, store.shard)
    copy = shard.detach().clone()
    store.close_shard(index, dirty=False)
    return copy


def _param_groups(optimizer) -> list[dict]:
    return [{k: v for k, v in group.items() if k != "params"} for group in optimizer.optimizer.param_groups]


def _rank_payload(engine, client_state) -> tuple[dict, dict]:
    """This rank's file contents, and the optimizer state keys (for the manifest)."""
    optimizer, rank = engine.optimizer, engine.comm.rank
    groups, state_keys = {}, {}
    if rank < optimizer.layout.num_shards:  # stage 0 keeps one copy: rank 0 writes it
        states, state_keys = _split_state(optimizer)
        # clone(): a slice saved as-is would drag its whole flat buffer into the file
        groups[TRAINABLE] = {"values": [optimizer.master_value(i).detach().clone() for i in range(len(optimizer.master))],
                             "state": states}
    if engine.stage3 is not None and engine.stage3.frozen_store is not None:
        store = engine.stage3.frozen_store
        groups[FROZEN] = {"values": [_shard_copy(store, spec.index) for spec in store.layout.buffers]}
    whole = {}
    if rank == 0:
        module_tensors = {**dict(engine.module.named_parameters()), **dict(engine.module.named_buffers())}
        whole = {name: module_tensors[name].detach().clone() for name, place in engine_places(engine).items()
                 if place.group == WHOLE}
    payload = {
        "rank": rank, "groups": groups, "whole": whole, "param_groups": _param_groups(optimizer),
        "rng": capture_rng(), "client_state": client_state if client_state is not None else {},
        "scaler": engine.loss_scaler.state_dict() if engine.loss_scaler is not None else None,
        "scheduler": engine.lr_scheduler.state_dict() if engine.lr_scheduler is not None else None,
        "counters": {"global_steps": engine.global_steps, "micro_steps": engine.micro_steps,
                     "skipped_steps": engine.skipped_steps},
    }
    return payload, state_keys


def _gather_file_records(comm, digest: str, size: int) -> dict:
    """``{file name: {"sha256", "bytes"}}`` for every rank, on every rank."""
    mine = torch.tensor([size] + list(bytes.fromhex(digest)), dtype=torch.int64, device=comm.device)
    every = torch.empty(comm.world_size * mine.numel(), dtype=torch.int64, device=comm.device)
    comm.all_gather_into(every, mine)
    records = {}
    for rank, row in enumerate(every.view(comm.world_size, -1).tolist()):
        records[rank_file_name(rank)] = {"bytes": row[0], "sha256": bytes(row[1:1 + _DIGEST_BYTES]).hex()}
    return records


def _tensor_bytes(obj) -> int:
    """Bytes of the tensors inside ``obj`` (nested dicts, lists, tuples): about the file's size."""
    if torch.is_tensor(obj):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(_tensor_bytes(value) for value in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_tensor_bytes(value) for value in obj)
    return 0


def _free_bytes(path: Path) -> str:
    existing = next((p for p in path.parents if p.is_dir()), Path("."))
    try:
        return f"{shutil.disk_usage(existing).free} bytes free in {existing}"
    except OSError:
        return f"free space in {existing} unknown"


def _reason(err: BaseException) -> str:
    """The operating system's reason when there is one (torch.save wraps it in a RuntimeError)."""
    cause = err
    while cause is not None and not isinstance(cause, OSError):
        cause = cause.__cause__ or cause.__context__
    if cause is not None and cause.strerror:
        return f"{cause.strerror} ({errno.errorcode.get(cause.errno, cause.errno)})"
    return f"{type(err).__name__}: {err}"


def _attempt(path: Path, write, nbytes: int | None = None) -> CheckpointError | None:
    """Runs ``write()``; a failure becomes an error naming ``path``, the bytes and the space left."""
    try:
        write()
    except (OSError, RuntimeError) as err:  # torch.save reports a failed write as a RuntimeError
        size = f"about {nbytes} bytes of tensors; " if nbytes is not None else ""
        return CheckpointError(f"cannot write checkpoint file {path} ({size}{_free_bytes(path)}): {_reason(err)}. "
                               "The previous checkpoint is untouched.")
    return None


def _write_rank_file(engine, directory: Path, client_state) -> tuple[Path, dict, CheckpointError | None]:
    path = directory / rank_file_name(engine.comm.rank)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        return path, {}, CheckpointError(f"cannot create checkpoint directory {directory}: {err.strerror}")
    payload, state_keys = _rank_payload(engine, client_state)
    return path, state_keys, _attempt(path, lambda: save_tensors(payload, path), _tensor_bytes(payload))


def save_checkpoint(engine, save_dir, tag: str | None = None, client_state: dict | None = None) -> str:
    """Writes ``save_dir/tag`` (default ``global_step{N}``) on every rank; returns its path.

    ``client_state`` may hold tensors, numbers, strings and containers of them (it is read
    back with ``weights_only=True``).
    """
    if engine.optimizer is None:
        raise ValueError("save_checkpoint needs an optimizer: add an 'optimizer' block to the config")
    tag = check_tag(str(tag) if tag is not None else f"global_step{engine.global_steps}")
    directory = Path(save_dir) / tag
    comm, what = engine.comm, f"saving checkpoint {directory}"
    path, state_keys, error = _write_rank_file(engine, directory, client_state)
    raise_if_any_failed(comm, error, what)
    records = _gather_file_records(comm, *file_digest(path))
    if comm.rank == 0:
        manifest = build_manifest(engine, tag, records, state_keys)
        error = _attempt(directory / MANIFEST_FILE, lambda: write_json(manifest, directory / MANIFEST_FILE))
    raise_if_any_failed(comm, error, what)
    if comm.rank == 0:
        error = _attempt(Path(save_dir) / LATEST_FILE, lambda: write_latest(Path(save_dir), tag))
    raise_if_any_failed(comm, error, what)
    return str(directory)
