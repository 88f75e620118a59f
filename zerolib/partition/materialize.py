"""Build a model too large for one rank: construct on the meta device, materialise per buffer.

``partitioned_init`` only puts construction on the meta device, so no parameter memory is
allocated and torch's constructors are left alone. ``zerolib.initialize`` then fills each
stage-3 buffer one at a time: it gives the parameters of that buffer real storage, runs their
module's ``reset_parameters()`` and the model's ``_init_weights(module)`` (the Hugging Face
convention) under a seed derived from the module's name, copies the values into the buffer,
keeps this rank's shard and frees the rest. Peak memory is one buffer (one block), not the
model, and the values do not depend on the number of ranks.
"""
from __future__ import annotations

import zlib
from contextlib import contextmanager

import torch
from torch import nn

from zerolib.partition.layout import BufferSpec


@contextmanager
def partitioned_init(config=None):
    """Constructs modules on the meta device inside the block (ZeRO-3's ``zero.Init``).

    ``config`` is accepted for DeepSpeed compatibility (``zero.Init(config_dict_or_path=...)``);
    the engine reads the stage and dtypes from the config given to ``zerolib.initialize``,
    which must use ``zero_optimization.stage`` 3.
    """
    with torch.device("meta"):
        yield


def is_on_meta(module: nn.Module) -> bool:
    return any(p.is_meta for p in module.parameters())


def check_no_meta_buffers(module: nn.Module) -> None:
    """Buffers computed in ``__init__`` are lost on the meta device: say which, clearly."""
    lost = [name for name, b in module.named_buffers() if b.is_meta]
    if lost:
        raise ValueError(
            f"buffers {lost} were created under zerolib.partitioned_init and have no values (meta "
            "device); create them outside the block or re-create them before zerolib.initialize")


def _assign(param: nn.Parameter, data: torch.Tensor) -> None:
    """``param.data = data``, also across the meta/real boundary (which ``.data`` refuses);
    the Parameter object, and so ties and references to it, stay the same."""
    if param.device == data.device:
        param.data = data
    else:
        torch.utils.swap_tensors(param, nn.Parameter(data, requires_grad=param.requires_grad))


class MetaMaterializer:
    """Fills stage-3 buffers of a meta-device model with freshly initialised values."""

    def __init__(self, root: nn.Module, dtype: torch.dtype, device: torch.device):
        self.root, self.dtype, self.device = root, dtype, device
        self.base_seed = torch.initial_seed()
        self._owner: dict[str, tuple[str, nn.Module, str]] = {}  # full name -> (module name, module, local)
        self._shapes: dict[tuple[int, str], torch.Size] = {}
        for module_name, module in root.named_modules(remove_duplicate=False):
            for local, param in module.named_parameters(recurse=False):
                full_name = f"{module_name}.{local}" if module_name else local
                self._owner.setdefault(full_name, (module_name, module, local))
                self._shapes[(id(module), local)] = param.shape

    def __call__(self, spec: BufferSpec, full: torch.Tensor) -> None:
        by_module: dict[str, tuple[nn.Module, set[str]]] = {}
        for slot in spec.slots:
            module_name, module, local = self._owner[slot.name]
            by_module.setdefault(module_name, (module, set()))[1].add(local)
        for module_name, (module, wanted) in by_module.items():
            self._materialize(module_name, module, wanted)
        with torch.no_grad():
            for slot in spec.slots:
                _, module, local = self._owner[slot.name]
                full[slot.offset:slot.end].copy_(getattr(module, local).detach().reshape(-1))

    def materialize_remaining(self) -> None:
        """Parameters in no stage-3 buffer (small frozen ones) still need values."""
        for name, param in list(self.root.named_parameters()):
            if param.is_meta:
                module_name, module, local = self._owner[name]
                self._materialize(module_name, module, {local})

    def _materialize(self, module_name: str, module: nn.Module, wanted: set[str]) -> None:
        """Initialises ``wanted`` parameters of ``module``; its others are shown to the init
        code as meta tensors of their full shape, so it computes fans without touching memory."""
        others = {}
        for local, param in module.named_parameters(recurse=False):
            shape = self._shapes[(id(module), local)]
            if local in wanted:
                _assign(param, torch.empty(shape, dtype=self.dtype, device=self.device))
            else:
                others[local] = param.data
                _assign(param, torch.empty(shape, dtype=self.dtype, device="meta"))
        torch.manual_seed(self.base_seed + zlib.crc32(module_name.encode()))
        with torch.no_grad():
            if hasattr(module, "reset_parameters"):
                module.reset_parameters()
            init_weights = getattr(self.root, "_init_weights", None)
            if callable(init_weights):
                init_weights(module)
        for local, data in others.items():
            _assign(getattr(module, local), data)
