"""Loading: each rank fills its own slices from whichever saved shards overlap them.

Because every tensor is located by (buffer, offset) in the manifest, the saved world size and
stage need not match the current ones: a rank reads, for each parameter part it owns now, the
matching elements of the saved shards (values and elementwise optimizer state alike).
"""
from __future__ import annotations

from pathlib import Path

import torch

from zerolib.checkpoint.agreement import raise_if_any_failed
from zerolib.checkpoint.manifest import WHOLE, engine_places, match_model, persistent_buffers
from zerolib.checkpoint.reader import VALUES, CheckpointReader, resolve_directory
from zerolib.checkpoint.rng import restore_rng
from zerolib.checkpoint.storage import CheckpointError


def _fill_flat(reader: CheckpointReader, spec, shard: int, target: torch.Tensor, key: str) -> None:
    """Fills ``target`` (shard ``shard`` of buffer ``spec``) with saved ``key`` of its parameters."""
    lo, _ = spec.shard_range(shard)
    for slot in spec.slots:
        part = spec.owned_part(slot, shard)
        if part is not None:
            start, end = part
            target[start - lo:end - lo].copy_(reader.read_range(slot.name, start - slot.offset, end - slot.offset, key))


def _load_values(engine, reader: CheckpointReader) -> None:
    """Fills master slices, frozen shards and whole tensors; local only (no collective)."""
    optimizer = engine.optimizer
    with torch.no_grad():
        for spec in optimizer.layout.buffers:  # a copy when the master lives in a swap file
            values = optimizer.master_value(spec.index)
            _fill_flat(reader, spec, optimizer.shard, values, VALUES)
            optimizer.set_master_value(spec.index, values)
        if engine.stage3 is not None and engine.stage3.frozen_store is not None:
            store = engine.stage3.frozen_store
            for spec in store.layout.buffers:
                _fill_flat(reader, spec, store.shard, store.open_shard(spec.index, store.shard), VALUES)
                store.close_shard(spec.index, dirty=True)
        module_tensors = {**dict(engine.module.named_parameters()), **persistent_buffers(engine.module)}
        for name, place in engine_places(engine).items():
            if place.group == WHOLE:
                module_tensors[name].copy_(reader.read_full(name).to(module_tensors[name].dtype))


def _verify_files(comm, reader: CheckpointReader) -> None:
    """Every file hashed once across the ranks; any bad file fails every rank, named."""
    bad = reader.verify_share(comm.rank, comm.world_size)
    names = sorted(reader.manifest["files"])
    worst = torch.tensor([names.index(bad[0]) if bad else -1], dtype=torch.int64, device=comm.device)
    comm.all_reduce(worst, torch.distributed.ReduceOp.MAX)
    if bad is not None:
        raise CheckpointError(bad[1])
    if int(worst) >= 0:
        raise CheckpointError(f"checkpoint file {reader.directory / names[int(worst)]} failed verification "
                              "on another rank (truncated or corrupt; see that rank's error)")
    reader.trust_listed_files()


def _load_optimizer_state(engine, reader: CheckpointReader, rank_state: dict) -> None:
    optimizer = engine.optimizer
    keys = reader.manifest["optimizer_state_keys"]
    saved_groups, groups = rank_state["param_groups"], optimizer.optimizer.param_groups
    if len(saved_groups) != len(groups):
        raise CheckpointError(f"checkpoint {reader.directory}: {len(saved_groups)} optimizer parameter groups, "
                              f"this optimizer has {len(groups)}")
    state = {}
    if keys["elementwise"]:
        scalars = reader.scalar_state()
        for spec, master in zip(optimizer.layout.buffers, optimizer.master):
            entry = {key: value.clone() if torch.is_tensor(value) else value for key, value in scalars.items()}
            for key in keys["elementwise"]:
                entry[key] = torch.zeros(master.shape, dtype=master.dtype,  # a master may be a meta placeholder
                                         device="cpu" if master.is_meta else master.device)
                _fill_flat(reader, spec, optimizer.shard, entry[key], key)
            state[spec.index] = entry
    new_groups = [{**saved, "params": group_index_list(optimizer, group)} for saved, group in zip(saved_groups, groups)]
    optimizer.load_state_dict({"state": state, "param_groups": new_groups})


def group_index_list(optimizer, group: dict) -> list[int]:
    """Positions of ``group``'s tensors among all the optimizer's tensors (torch's state-dict ids)."""
    position = {id(t): i for i, t in enumerate(optimizer.master)}
    return [position[id(t)] for t in group["params"]]


def _load_training_state(engine, rank_state: dict, load_lr_scheduler_states: bool) -> None:
    counters = rank_state["counters"]
    engine.global_steps = int(counters["global_steps"])
    engine.micro_steps = int(counters["micro_steps"])
    engine.skipped_steps = int(counters["skipped_steps"])
    if engine.loss_scaler is not None and rank_state["scaler"] is not None:
        engine.loss_scaler.load_state_dict(rank_state["scaler"])
    if load_lr_scheduler_states and engine.lr_scheduler is not None and rank_state["scheduler"] is not None:
        engine.lr_scheduler.load_state_dict(rank_state["scheduler"])
    restore_rng(rank_state["rng"])


def load_checkpoint(engine, load_dir, tag: str | None = None, load_optimizer_states: bool = True,
                    load_lr_scheduler_states: bool = True, load_module_only: bool = False):
    """Loads ``load_dir/tag`` (``tag`` from ``load_dir/latest`` when None) into ``engine``.

    Returns ``(checkpoint path, client_state)``. The checkpoint may come from another world size
    or stage. ``load_module_only`` loads weights only (no optimizer, schedule, scaler, counters, RNG).
    """
    if engine.optimizer is None:
        raise ValueError("load_checkpoint needs an optimizer: add an 'optimizer' block to the config")
    directory = resolve_directory(load_dir, tag)
    reader = CheckpointReader(directory)
    match_model(reader.manifest, engine_places(engine), directory)
    _verify_files(engine.comm, reader)
    error, client_state = None, None
    try:
        # Same rank's own state when it exists; a rank beyond the saved world takes a peer's.
        rank_state = reader.rank_file(engine.comm.rank % int(reader.manifest["world_size"]))
        _load_values(engine, reader)
        if not load_module_only:
            if load_optimizer_states:
                _load_optimizer_state(engine, reader, rank_state)
            _load_training_state(engine, rank_state, load_lr_scheduler_states)
        client_state = rank_state["client_state"]
    except CheckpointError as err:
        error = err
    finally:
        reader.release()
    raise_if_any_failed(engine.comm, error, f"loading checkpoint {directory}")
    engine.optimizer.publish_masters()  # collective: every rank's new slices to every rank
    engine.comm.barrier()
    return str(Path(directory)), client_state

