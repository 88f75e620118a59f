"""Build a model too large for one rank: construct on the meta device, materialise per buffer.

``partitioned_init`` only puts construction on the meta device, so no parameter memory is
allocated and torch's constructors are left alone. ``zerolib.initialize`` then fills each
stage-3 buffer one at a time: it gives the parameters of that buffer real storage, fills them,
copies the values into the buffer, keeps this rank's shard and frees the rest. Peak memory is
one buffer (one block), not the model.

Values come from a pretrained checkpoint when one is given (a ``source``, see
zerolib/checkpoint/pretrained.py) and otherwise from the module's ``reset_parameters()`` and
the model's ``_init_weights(module)`` (the Hugging Face convention), under a seed derived from
the module's name, so they do not depend on the number of ranks. Buffers left on the meta
device (a rotary embedding's ``inv_freq``) are filled first, the same two ways.
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

    A Hugging Face checkpoint loads straight into shards with ``from_config`` inside the block
    and ``zerolib.initialize(model, config, pretrained=DIR)`` (docs/huggingface.md);
    transformers refuses ``from_pretrained`` under a meta device, and the error then says this.
    """
    with torch.device("meta"):
        try:
            yield
        except RuntimeError as err:
            if "from_pretrained" in str(err) and "meta" in str(err):
                raise RuntimeError(
                    "from_pretrained cannot run inside zerolib.partitioned_init (transformers refuses to load "
                    "weights under a meta device). Build the model with "
                    "AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(DIR)) inside the block and pass "
                    "zerolib.initialize(model, config, pretrained=DIR): every rank then reads only its own shard "
                    "of the checkpoint") from err
            raise


def is_on_meta(module: nn.Module) -> bool:
    return any(p.is_meta for p in module.parameters())


def _assign(param: nn.Parameter, data: torch.Tensor) -> None:
    """``param.data = data``, also across the meta/real boundary (which ``.data`` refuses);
    the Parameter object, and so ties and references to it, stay the same."""
    if param.device == data.device:
        param.data = data
    else:
        torch.utils.swap_tensors(param, nn.Parameter(data, requires_grad=param.requires_grad))


def _unset(like: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Storage for a meta buffer, holding a value no init leaves behind (NaN, or the minimum
    integer), so that a buffer its module's init did not fill is detected."""
    fill = float("nan") if like.dtype.is_floating_point else torch.iinfo(like.dtype).min
    return torch.full(like.shape, fill, dtype=like.dtype, device=device)


class MetaMaterializer:
    """Fills stage-3 buffers of a meta-device model from ``source`` or with fresh initial values.

    ``source`` (optional, a ``PretrainedWeights``) answers ``has(name)``, ``read(names)``
    (yielding ``(name, tensor)``) and ``read_ranges([(name, first, end)])`` (yielding flat
    element ranges) for full parameter and buffer names; a parameter it lacks is initialised.
    """

    def __init__(self, root: nn.Module, dtype: torch.dtype, device: torch.device, source=None):
        self.root, self.dtype, self.device, self.source = root, dtype, device, source
        self.base_seed = torch.initial_seed()
        self._owner: dict[str, tuple[str, nn.Module, str]] = {}  # full name -> (module name, module, local)
        self._shapes: dict[tuple[int, str], torch.Size] = {}
        self.aliases: dict[str, list[str]] = {}  # a parameter's first name -> all its names (ties)
        first_name: dict[int, str] = {}
        for module_name, module in root.named_modules(remove_duplicate=False):
            for local, param in module.named_parameters(recurse=False):
                full_name = f"{module_name}.{local}" if module_name else local
                self._owner.setdefault(full_name, (module_name, module, local))
                self._shapes[(id(module), local)] = param.shape
                self.aliases.setdefault(first_name.setdefault(id(param), full_name), []).append(full_name)

    def wanted_from_source(self) -> dict[str, tuple[list[str], torch.Size]]:
        """Every parameter and persistent buffer, with all its names and its shape."""
        wanted = {name: (names, self._owner_param(name).shape) for name, names in self.aliases.items()}
        persistent = self.root.state_dict(keep_vars=True)
        for name, buffer in self.root.named_buffers():
            if name in persistent:
                wanted[name] = ([name], buffer.shape)
        return wanted

    def _owner_param(self, name: str) -> torch.Tensor:
        _, module, local = self._owner[name]
        return getattr(module, local)

    def __call__(self, spec: BufferSpec, full: torch.Tensor) -> None:
        slots = {slot.name: slot for slot in spec.slots}

        def put(name, value):  # the parameter leaves the meta device, as init does below
            slot = slots[name]
            full[slot.offset:slot.end].copy_(value.reshape(-1))
            _assign(self._owner_param(name), full[slot.offset:slot.end].view(slot.shape))
        loaded = self._read(list(slots), put)
        fresh = [name for name in slots if name not in loaded]
        by_module: dict[str, tuple[nn.Module, set[str]]] = {}
        for name in fresh:
            module_name, module, local = self._owner[name]
            by_module.setdefault(module_name, (module, set()))[1].add(local)
        for module_name, (module, wanted) in by_module.items():
            self._materialize(module_name, module, wanted)
        with torch.no_grad():
            for name in fresh:
                slot = slots[name]
                full[slot.offset:slot.end].copy_(self._owner_param(name).detach().reshape(-1))

    def fill_shard(self, spec: BufferSpec, lo: int, hi: int, shard: torch.Tensor) -> bool:
        """Reads only elements ``[lo, hi)`` of buffer ``spec`` from the source into ``shard``,
        when the source holds every parameter of the buffer (the answer is the same on every
        rank); otherwise returns False and the buffer is filled whole by ``__call__``."""
        if self.source is None or not all(self.source.has(slot.name) for slot in spec.slots):
            return False
        requests = []  # (name, first element, end element) of the part of each parameter in [lo, hi)
        for slot in spec.slots:
            start, end = max(slot.offset, lo), min(slot.end, hi)
            if start < end:
                requests.append((slot.name, start - slot.offset, end - slot.offset))
        offsets = {slot.name: slot.offset - lo for slot in spec.slots}
        with torch.no_grad():
            for name, first, end, value in self.source.read_ranges(requests):
                shard[offsets[name] + first:offsets[name] + end].copy_(value)
        for slot in spec.slots:  # off the meta device; the store points each at an empty tensor
            _assign(self._owner_param(slot.name), torch.empty(0, dtype=self.dtype, device=self.device))
        return True

    def _read(self, names: list[str], put) -> set[str]:
        """Passes each name the source holds to ``put(name, value)``; returns those names."""
        if self.source is None:
            return set()
        present = [n for n in names if self.source.has(n)]
        with torch.no_grad():
            for name, value in self.source.read(present):
                put(name, value)
        return set(present)

    def materialize_remaining(self) -> None:
        """Parameters in no stage-3 buffer (small frozen ones) still need values."""
        remaining = [name for name, param in self.root.named_parameters() if param.is_meta]

        def put(name, value):
            _assign(self._owner_param(name), value.to(self.device, self.dtype, copy=True))
        loaded = self._read(remaining, put)
        for name in remaining:
            if name not in loaded:
                module_name, module, local = self._owner[name]
                self._materialize(module_name, module, {local})

    def materialize_buffers(self) -> None:
        """Gives every meta buffer a value: from the source, or from its module's init (a
        rotary embedding's ``_init_weights`` computes ``inv_freq``). A buffer neither fills is
        an error naming it."""
        modules = dict(self.root.named_modules())
        meta = {name: b for name, b in self.root.named_buffers() if b.is_meta}

        def put(name, value):
            module_name, _, local = name.rpartition(".")
            setattr(modules[module_name], local, value.to(self.device, meta[name].dtype, copy=True))
        loaded = self._read(list(meta), put)
        by_module: dict[str, list[str]] = {}
        for name in meta:
            if name not in loaded:
                module_name, _, local = name.rpartition(".")
                by_module.setdefault(module_name, []).append(local)
        for module_name, locals_ in by_module.items():
            module = modules[module_name]
            for local in locals_:
                setattr(module, local, _unset(getattr(module, local), self.device))
            self._run_init(module_name, module)
        unset = [f"{m}.{local}" if m else local for m, locals_ in by_module.items() for local in locals_
                 if self._still_unset(getattr(modules[m], local))]
        if unset:
            raise ValueError(
                f"buffers {unset} were created under zerolib.partitioned_init and their module's init did not "
                "compute them (meta device); create them outside the block or re-create them before "
                "zerolib.initialize")

    @staticmethod
    def _still_unset(buffer: torch.Tensor) -> bool:
        if buffer.dtype.is_floating_point:
            return bool(buffer.isnan().any())
        return bool((buffer == torch.iinfo(buffer.dtype).min).any())

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
        self._run_init(module_name, module)
        for local, data in others.items():
            _assign(getattr(module, local), data)

    def _run_init(self, module_name: str, module: nn.Module) -> None:
        torch.manual_seed(self.base_seed + zlib.crc32(module_name.encode()))
        with torch.no_grad():
            if hasattr(module, "reset_parameters"):
                module.reset_parameters()
            init_weights = getattr(self.root, "_init_weights", None)
            if callable(init_weights):
                init_weights(module)
