"""Activation checkpointing: keep a block's input, recompute its activations in backward.

``checkpoint(fn, *args)`` runs ``fn`` without keeping its intermediate activations and runs it
again during backward (PyTorch's non-reentrant ``torch.utils.checkpoint``). Under ZeRO-3 the
recomputation calls the block's modules again, so the coordinator's forward pre-hooks gather
their parameters a second time, in backward, exactly as for the first forward.

``CheckpointOptions.from_config(cfg)`` reads the ``activation_checkpointing`` block:

- ``cpu_checkpointing``: the checkpointed inputs (the only tensors kept) live in host memory
  until backward copies them back. On a CPU-only run this changes nothing: they already are.
- ``partition_activations``: DeepSpeed splits a checkpointed input across *model-parallel* ranks,
  which all hold the same copy of it. zerolib has data parallelism only, where each rank's
  input is different, so there is nothing shared to split; the option has no effect and says so.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
import torch.utils.checkpoint
from torch import nn

_WRAPPED = "checkpointed_module"  # attribute name under which CheckpointedModule keeps its module


@dataclass(frozen=True)
class CheckpointOptions:
    """How checkpointed inputs are stored; build it with :meth:`from_config`."""

    cpu_checkpointing: bool = False

    @classmethod
    def from_config(cls, config) -> "CheckpointOptions":
        """From a ``ZeroConfig`` (or anything with an ``activation_checkpointing`` block)."""
        block = config.activation_checkpointing
        if block.partition_activations:
            warnings.warn("activation_checkpointing.partition_activations has no effect in zerolib: DeepSpeed "
                          "splits checkpointed inputs across model-parallel ranks, which hold identical copies; "
                          "zerolib's ranks are data-parallel and each holds a different input, so there is "
                          "nothing shared to split", UserWarning, stacklevel=2)
        return cls(cpu_checkpointing=bool(block.cpu_checkpointing))


def _to_device(values: tuple, devices: tuple) -> tuple:
    return tuple(v.to(d) if d is not None else v for v, d in zip(values, devices))


def checkpoint(fn, *args, options: CheckpointOptions | None = None, **kwargs):
    """``fn(*args, **kwargs)``, recomputed in backward instead of keeping its activations.

    With ``options.cpu_checkpointing`` the tensor arguments are copied to host memory for the
    time between forward and backward and copied back to their device when recomputed.
    """
    if not callable(fn):
        raise TypeError(f"zerolib.checkpointing.checkpoint: fn must be callable, got {type(fn).__name__}")
    if options is not None and options.cpu_checkpointing:
        devices = tuple(a.device if torch.is_tensor(a) and a.device.type != "cpu" else None for a in args)
        if any(d is not None for d in devices):
            host_args = tuple(a.to("cpu") if d is not None else a for a, d in zip(args, devices))

            def on_device(*saved, **kw):
                return fn(*_to_device(saved, devices), **kw)
            return torch.utils.checkpoint.checkpoint(on_device, *host_args, use_reentrant=False, **kwargs)
    return torch.utils.checkpoint.checkpoint(fn, *args, use_reentrant=False, **kwargs)


class CheckpointedModule(nn.Module):
    """Runs ``module`` under :func:`checkpoint`. ``state_dict()`` keys are those of ``module``
    alone, so checkpoints load with or without the wrapper; ``named_parameters()`` names gain
    the ``checkpointed_module.`` prefix."""

    def __init__(self, module: nn.Module, options: CheckpointOptions | None = None):
        super().__init__()
        self.add_module(_WRAPPED, module)
        self.options = options
        self.register_state_dict_post_hook(_strip_prefix)
        self.register_load_state_dict_pre_hook(_add_prefix)

    def forward(self, *args, **kwargs):
        return checkpoint(getattr(self, _WRAPPED), *args, options=self.options, **kwargs)


def _strip_prefix(module, state_dict, prefix, local_metadata):
    inner = f"{prefix}{_WRAPPED}."
    for key in [k for k in state_dict if k.startswith(inner)]:
        state_dict[prefix + key[len(inner):]] = state_dict.pop(key)


def _add_prefix(module, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):
    for key in [k for k in state_dict if k.startswith(prefix) and not k.startswith(f"{prefix}{_WRAPPED}.")]:
        state_dict[f"{prefix}{_WRAPPED}.{key[len(prefix):]}"] = state_dict.pop(key)


def checkpoint_blocks(blocks: nn.ModuleList, options: CheckpointOptions | None = None) -> nn.ModuleList:
    """Wraps every block of ``blocks`` in place in a :class:`CheckpointedModule`; returns ``blocks``.

    Call it before ``zerolib.initialize`` (ZeRO-3 partitions per block of a ModuleList)."""
    if not isinstance(blocks, nn.ModuleList):
        raise TypeError(f"checkpoint_blocks needs an nn.ModuleList (e.g. model.blocks), got {type(blocks).__name__}")
    for index, block in enumerate(blocks):
        if not isinstance(block, CheckpointedModule):
            blocks[index] = CheckpointedModule(block, options)
    return blocks


__all__ = ["CheckpointOptions", "CheckpointedModule", "checkpoint", "checkpoint_blocks"]
