"""The manifest: what a checkpoint holds and how every tensor in it was partitioned.

Tensors come in three groups. ``trainable``: the optimizer's flat buffers (fp32 master values
and optimizer state), shard ``s`` of every buffer in rank ``s``'s file. ``frozen``: ZeRO-3's
partitioned frozen parameters, sharded the same way in their own buffers. ``whole``: every
other frozen parameter and every persistent module buffer, whole, in rank 0's file. A tensor's
buffer index and offset, with its group's shard size, are enough to reslice it for any
world size or stage.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from zerolib.checkpoint.storage import CheckpointError, rank_file_name

FORMAT_VERSION = 1
TRAINABLE, FROZEN, WHOLE = "trainable", "frozen", "whole"


@dataclass(frozen=True)
class TensorPlace:
    """Where one named tensor lives in this engine: group, buffer, offset and full shape."""

    group: str
    shape: torch.Size
    dtype: torch.dtype
    requires_grad: bool
    is_buffer: bool = False
    buffer: int = -1
    offset: int = -1


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def parse_dtype(name: str) -> torch.dtype:
    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype):
        raise CheckpointError(f"manifest names an unknown dtype {name!r}")
    return dtype


def engine_layouts(engine) -> dict:
    """``{group: FlatLayout}`` of the partitioned groups this engine has."""
    layouts = {TRAINABLE: engine.optimizer.layout}
    if engine.stage3 is not None and engine.stage3.frozen_store is not None:
        layouts[FROZEN] = engine.stage3.frozen_store.layout
    return layouts


def persistent_buffers(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Module buffers that belong in a state dict (``persistent=False`` ones do not)."""
    result = {}
    for prefix, sub in module.named_modules():
        skipped = getattr(sub, "_non_persistent_buffers_set", set())  # read-only use of torch's record
        for name, buf in sub.named_buffers(recurse=False):
            if buf is not None and name not in skipped:
                result[f"{prefix}.{name}" if prefix else name] = buf
    return result


def engine_places(engine) -> dict[str, TensorPlace]:
    """Every parameter and persistent buffer of ``engine.module`` and where it lives."""
    params = dict(engine.module.named_parameters())
    places = {}
    for group, layout in engine_layouts(engine).items():
        for name, slot in layout.slots.items():
            places[name] = TensorPlace(group, slot.shape, params[name].dtype, params[name].requires_grad,
                                       buffer=slot.buffer_index, offset=slot.offset)
    for name, p in params.items():
        if name not in places:
            places[name] = TensorPlace(WHOLE, p.shape, p.dtype, p.requires_grad)
    for name, buf in persistent_buffers(engine.module).items():
        places[name] = TensorPlace(WHOLE, buf.shape, buf.dtype, False, is_buffer=True)
    return places


def parameter_aliases(module: torch.nn.Module) -> dict[str, str]:
    """``{alias: name}`` for tied parameters (a second name for the same tensor)."""
    first, aliases = {}, {}
    for name, p in module.named_parameters(remove_duplicate=False):
        if id(p) in first:
            aliases[name] = first[id(p)]
        else:
            first[id(p)] = name
    return aliases


def build_manifest(engine, tag: str, files: dict, state_keys: dict) -> dict:
    """The JSON manifest rank 0 writes after every rank's file is on disk."""
    layouts = engine_layouts(engine)
    groups = {group: {"num_shards": layout.num_shards,
                      "buffers": [{"padded_numel": b.padded_numel, "shard_numel": b.shard_numel}
                                  for b in layout.buffers]}
              for group, layout in layouts.items()}
    tensors = {}
    for name, place in engine_places(engine).items():
        entry = {"shape": list(place.shape), "dtype": dtype_name(place.dtype), "requires_grad": place.requires_grad,
                 "kind": "buffer" if place.is_buffer else "parameter", "group": place.group}
        if place.group != WHOLE:
            spec = layouts[place.group].buffers[place.buffer]
            entry.update(buffer=place.buffer, offset=place.offset, buffer_padded_numel=spec.padded_numel,
                         shard_numel=spec.shard_numel)
        tensors[name] = entry
    return {"format_version": FORMAT_VERSION, "tag": tag, "world_size": engine.comm.world_size,
            "stage": engine.config.zero_optimization.stage, "param_dtype": dtype_name(engine.dtype),
            "master_dtype": "float32", "global_steps": engine.global_steps, "groups": groups,
            "tensors": tensors, "aliases": parameter_aliases(engine.module), "optimizer_state_keys": state_keys,
            "files": files}


def check_manifest(manifest: dict, path) -> None:
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise CheckpointError(f"{path}: checkpoint format version {version!r}, this zerolib reads {FORMAT_VERSION}")
    for key in ("world_size", "groups", "tensors", "files", "optimizer_state_keys"):
        if key not in manifest:
            raise CheckpointError(f"{path}: manifest has no {key!r} field")
    _check_world_size(manifest, path)


def _check_world_size(manifest: dict, path) -> None:
    """The saved world size must match the rank files listed and every group's shard count;
    otherwise ranks would read each other's state or shards that do not exist."""
    world = manifest["world_size"]
    if isinstance(world, bool) or not isinstance(world, int) or world < 1:
        raise CheckpointError(f"{path}: world_size is {world!r}, not a positive integer")
    listed = sorted(manifest["files"])
    expected = [rank_file_name(rank) for rank in range(world)]
    if listed != expected:
        raise CheckpointError(f"{path}: the manifest says world_size {world}, so files {expected[0]}.."
                              f"{expected[-1]}, but it lists {len(listed)}: {listed[:4]}; it does not "
                              "describe the checkpoint it came with")
    for group, info in manifest["groups"].items():
        shards = info.get("num_shards")
        if shards not in (1, world):
            raise CheckpointError(f"{path}: group {group!r} is split in {shards!r} shards, which world_size "
                                  f"{world} cannot have saved (1 or {world})")
        for index, buffer in enumerate(info.get("buffers", [])):
            if buffer.get("shard_numel", 0) * shards != buffer.get("padded_numel"):
                raise CheckpointError(f"{path}: group {group!r} buffer {index} has {buffer.get('padded_numel')!r} "
                                      f"elements, not {shards} shards of {buffer.get('shard_numel')!r}")


def match_model(manifest: dict, places: dict[str, TensorPlace], directory) -> None:
    """Raises naming the tensor when the model and the checkpoint disagree on names or shapes."""
    saved = manifest["tensors"]
    missing = [name for name in places if name not in saved]
    if missing:
        raise CheckpointError(f"checkpoint {directory} has no tensor {missing[0]!r} (model shape "
                              f"{list(places[missing[0]].shape)}); {len(missing)} model tensor(s) missing: "
                              f"{missing[:8]}")
    extra = [name for name in saved if name not in places]
    if extra:
        raise CheckpointError(f"checkpoint {directory} has tensor {extra[0]!r} (shape {saved[extra[0]]['shape']}) "
                              f"that the model does not have; {len(extra)} unexpected: {extra[:8]}")
    for name, place in places.items():
        if list(place.shape) != list(saved[name]["shape"]):
            raise CheckpointError(f"tensor {name!r}: checkpoint {directory} has shape {saved[name]['shape']}, "
                                  f"the model has {list(place.shape)}")
