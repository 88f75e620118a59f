"""The ZeRO-3 parameter coordinator: gather each unit's parameters just before it runs.

A *unit* is a module whose partitioned parameters are gathered together: the root module and
every child of an ``nn.ModuleList``/``nn.Sequential`` (transformer blocks), like FSDP2's
``fully_shard`` per block. A unit owns the parameters in its subtree that no inner unit owns,
so a parent may use a child's parameters (tied embeddings, ``F.linear(x, self.emb.weight)``).

Forward: a pre-hook gathers the unit (waiting on a prefetch if one is under way), a post-hook
releases it. Backward: a hook on each output tensor gathers the unit again just before its
backward runs; the gradient reducer releases a buffer once all its gradients are reduced.

Prefetch: the order in which units are fetched is recorded on the first iteration; later
iterations gather up to ``prefetch_numel`` elements ahead of use along that trace, and start
reading the shards of the unit(s) after those from their swap files (offload_param nvme). If the
order changes (another branch), prefetching stops for that iteration and the new order is
recorded: gathers fall back to on demand, and every rank still issues the same collectives
as long as all ranks run the same modules.

Order check (``comm.verify_module_order``): each forward fetch is compared with the other
ranks' (zerolib/partition/order_check.py). A fetch served by a prefetched gather does not wait
for its comparison, which would travel behind every byte prefetched before it.
"""
from __future__ import annotations

import contextlib
import enum
import functools
from dataclasses import dataclass

import torch
from torch import nn

from zerolib.comm import CollectiveError, CommContext
from zerolib.partition.order_check import OrderCheck
from zerolib.partition.partitioned import PartitionedParams


class Phase(enum.Enum):
    IDLE = "idle"
    FORWARD = "forward"
    BACKWARD = "backward"


@dataclass(frozen=True)
class BufferRef:
    store: PartitionedParams
    index: int


@dataclass
class Unit:
    """A module and the partitioned buffers gathered while it runs."""

    index: int
    name: str
    module: nn.Module
    refs: tuple[BufferRef, ...]

    @property
    def numel(self) -> int:
        return sum(r.store.layout.buffers[r.index].padded_numel for r in self.refs)


def find_unit_modules(root: nn.Module) -> list[tuple[str, nn.Module]]:
    """Root first, then each child of the outermost ModuleLists/Sequentials, in module order."""
    units = [("", root)]

    def visit(prefix: str, module: nn.Module, inside_unit: bool) -> None:
        for name, child in module.named_children():
            path = f"{prefix}.{name}" if prefix else name
            if isinstance(module, (nn.ModuleList, nn.Sequential)) and not inside_unit:
                units.append((path, child))
                visit(path, child, True)
            else:
                visit(path, child, inside_unit)
    visit("", root, False)
    return units


def assign_params_to_units(root: nn.Module, unit_modules: list[tuple[str, nn.Module]]) -> dict[str, int]:
    """Parameter name -> index of the innermost unit containing it (first owner for tied ones)."""
    owner: dict[str, int] = {}
    by_module = {id(m): i for i, (_, m) in enumerate(unit_modules)}

    def visit(prefix: str, module: nn.Module, unit: int) -> None:
        unit = by_module.get(id(module), unit)
        for name, _ in module.named_parameters(prefix=prefix, recurse=False):
            owner.setdefault(name, unit)
        for child_name, child in module.named_children():
            visit(f"{prefix}.{child_name}" if prefix else child_name, child, unit)
    visit("", root, 0)
    return owner


def _output_tensors(output):
    if torch.is_tensor(output):
        yield output
    elif isinstance(output, (tuple, list)):
        for item in output:
            yield from _output_tensors(item)
    elif isinstance(output, dict):
        for item in output.values():
            yield from _output_tensors(item)


@dataclass(frozen=True)
class SavedView:
    """What autograd keeps of a tensor that lives in a gathered buffer: where it is, not its
    memory (see ParamCoordinator.saved_tensors_by_reference)."""

    store: PartitionedParams
    index: int
    offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]


@dataclass(frozen=True)
class GatherPolicy:
    """``stage3_prefetch_bucket_size``, ``stage3_max_live_parameters``, ``stage3_max_reuse_distance``;
    ``read_ahead_units``: how many units past the ones being gathered have their shards read
    from swap files ahead (the MoE-prefill expert tier's window; ZeRO-3 reads one)."""

    prefetch_numel: int
    max_live_numel: int
    max_reuse_distance: int
    read_ahead_units: int = 1


class ParamCoordinator:
    """Gathers, prefetches and releases the partitioned parameters of ``units`` around their use."""

    def __init__(self, units: list[Unit], policy: GatherPolicy, comm: CommContext, *, verify_order: bool = True):
        self.units, self.policy, self.comm = units, policy, comm
        # comm.verify_module_order: forward fetches are checked against the other ranks'.
        self.order_check = OrderCheck(comm, self._unit_name) if verify_order and comm.distributed else None
        self.phase = Phase.IDLE
        self.peak_live_numel = 0
        self.trace_misses = 0  # iterations whose order differed from the recorded trace
        self._traces: dict[bool, list[int]] = {}  # recorded order, per grad mode
        self._recording: list[int] = []
        self._position = 0
        self._following_trace = False
        self._grad_mode = True
        self._active: set[int] = set()  # units whose forward is running now
        # The fetch number at which each prefetched gather still pending was posted: waiting on it
        # first verifies the order checks up to that fetch (zerolib/partition/order_check.py).
        self._posted_at: dict[BufferRef, int] = {}
        self._hooks = []
        # Each store once (a unit may hold refs to two stores): live_numel runs on every fetch.
        self._stores = list({id(r.store): r.store for u in units for r in u.refs}.values())
        for unit in units:
            self._hooks.append(unit.module.register_forward_pre_hook(functools.partial(self._pre_forward, unit)))
            self._hooks.append(unit.module.register_forward_hook(functools.partial(self._post_forward, unit)))

    # -- iteration bookkeeping --------------------------------------------------------------
    def _begin_iteration(self) -> None:
        if self.phase is not Phase.IDLE:
            self.end_iteration()
        self.phase = Phase.FORWARD
        self._grad_mode = torch.is_grad_enabled()
        self._recording = []
        self._position = 0
        self._following_trace = self._grad_mode in self._traces

    def end_iteration(self) -> None:
        """Releases everything still gathered and keeps this iteration's order for the next."""
        if self.order_check is not None:  # before waiting on prefetched gathers the peers may lack
            self.order_check.verify()
        self._posted_at.clear()
        for unit in self.units:
            self._release(unit)
        for store in self._stores:
            store.end_iteration()
        if self._recording:
            if self._traces.get(self._grad_mode) != self._recording:
                if self._grad_mode in self._traces:
                    self.trace_misses += 1
                self._traces[self._grad_mode] = self._recording
        self._recording = []
        self._active.clear()
        self.phase = Phase.IDLE

    # -- hooks ------------------------------------------------------------------------------
    def _pre_forward(self, unit: Unit, module, args):
        if unit.index == 0 and self.phase is not Phase.BACKWARD:
            self._begin_iteration()
        self._active.add(unit.index)
        self._fetch(unit)

    def _post_forward(self, unit: Unit, module, args, output):
        self._active.discard(unit.index)
        if torch.is_grad_enabled():
            for tensor in _output_tensors(output):
                if tensor.requires_grad:
                    tensor.register_hook(functools.partial(self._pre_backward, unit))
        if unit.index == 0:  # the root is needed first in backward: keep it unless there is none
            if self.order_check is not None and self.phase is Phase.FORWARD:
                self._check_forward_end()
            if not self._grad_mode:
                self.end_iteration()
            return
        if not self._reused_soon(unit):
            self._release(unit)

    def _pre_backward(self, unit: Unit, grad):
        self.phase = Phase.BACKWARD
        self._fetch(unit)

    def on_buffer_reduced(self, store: PartitionedParams, index: int) -> None:
        """All gradients of a buffer are reduced: its full copy is no longer needed."""
        if self.phase is Phase.BACKWARD:
            store.release(index)

    # -- gathering --------------------------------------------------------------------------
    def _fetch(self, unit: Unit) -> None:
        self._recording.append(unit.index)
        fetch_number = len(self._recording)
        # Forward decides the module order (backward replays its graph), so checking forward
        # fetches catches divergence at half the cost of checking every gather.
        checked = self.order_check is not None and self.phase is Phase.FORWARD
        if checked:
            self.order_check.post(fetch_number, unit.index)
        trace = self._traces.get(self._grad_mode, [])
        if self._following_trace:
            if self._position < len(trace) and trace[self._position] == unit.index:
                self._position += 1
            else:
                self._following_trace = False
        prefetched = self._following_trace and all(r.store.is_pending(r.index) or r.store.is_available(r.index)
                                                   for r in unit.refs)
        for ref in unit.refs:
            ref.store.start_gather(ref.index, training=True)
        self._note_live()
        if self._following_trace:
            self._prefetch(trace, fetch_number)
        try:
            self._verify_before_waiting(unit, prefetched)
            for ref in unit.refs:
                ref.store.wait_gather(ref.index)
                self._posted_at.pop(ref, None)
        except CollectiveError as error:  # a timeout or a peer that died
            if self.order_check is not None:
                self.order_check.forget()
            raise error.within(f"ZeRO-3 gather of module '{unit.name}', {self.phase.value}, "
                               f"fetch #{fetch_number}") from None

    def _verify_before_waiting(self, unit: Unit, prefetched: bool) -> None:
        """Verifies the order checks this fetch's gathers depend on: up to the fetch that posted
        them if they were prefetched along the trace, else every check posted so far."""
        if self.order_check is None:
            return
        if prefetched:
            self.order_check.verify(through=max((self._posted_at.get(r, 0) for r in unit.refs), default=0))
        else:
            self.order_check.verify()

    def _check_forward_end(self) -> None:
        try:
            self.order_check.end_of_forward(len(self._recording))
        except CollectiveError as error:
            self.order_check.forget()
            raise error.within(f"ZeRO-3 end-of-forward check after {len(self._recording)} gathers") from None

    def _unit_name(self, index: int) -> str | None:
        return self.units[index].name if 0 <= index < len(self.units) else None

    def _prefetch(self, trace: list[int], fetch_number: int) -> None:
        """Gathers ahead along the trace: always the next unit (as FSDP2 does, so a budget under
        one block still overlaps), then more while the prefetch budget and max-live allow. With
        shards in swap files, the reads of those units' shards and of ``read_ahead_units`` units
        after them are started first, so that they run while the gathers wait for the first of
        them, and a unit's shards are in memory by the time it is gathered."""
        budget = self.policy.prefetch_numel
        upcoming = [self.units[i] for i in trace[self._position:]]
        to_gather, live = [], self.live_numel()
        for ahead, unit in enumerate(upcoming if budget > 0 else []):
            missing = [r for r in unit.refs if not (r.store.is_available(r.index) or r.store.is_pending(r.index))]
            size = sum(r.store.layout.buffers[r.index].padded_numel for r in missing)
            if (size > budget and ahead > 0) or live + size > self.policy.max_live_numel:
                break
            budget, live = budget - min(size, budget), live + size
            to_gather.append(missing)
        for unit in upcoming[:len(to_gather) + self.policy.read_ahead_units]:
            self._read_ahead(unit)
        for missing in to_gather:
            for ref in missing:
                ref.store.start_gather(ref.index, training=True)
                self._posted_at[ref] = fetch_number
            self._note_live()

    @staticmethod
    def _read_ahead(unit: Unit) -> None:
        for ref in unit.refs:
            ref.store.prefetch_shard(ref.index)

    def _reused_soon(self, unit: Unit) -> bool:
        """Whether the recorded trace uses ``unit`` again within ``max_reuse_distance`` elements."""
        if not self._following_trace:
            return False
        distance = 0
        for unit_index in self._traces[self._grad_mode][self._position:]:
            if unit_index == unit.index:
                return distance <= self.policy.max_reuse_distance
            distance += self.units[unit_index].numel
        return False

    def _release(self, unit: Unit) -> None:
        for ref in unit.refs:
            ref.store.release(ref.index)

    def live_numel(self) -> int:
        return sum(store.gathered_numel() for store in self._stores)

    def _note_live(self) -> None:
        self.peak_live_numel = max(self.peak_live_numel, self.live_numel())

    # -- what autograd saves ---------------------------------------------------------------
    @contextlib.contextmanager
    def saved_tensors_by_reference(self):
        """Forward under this context: autograd saves a tensor that lives in a gathered buffer
        (a weight, or a view such as ``weight.t()`` that ``F.linear`` saves) as a
        :class:`SavedView`. Saved as a tensor, it would keep the whole gathered buffer alive
        from forward to backward after the unit's release, every unit at once; by reference,
        backward reads it from the buffer its pre-backward gather brought back."""
        with torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack):
            yield

    def _pack(self, tensor: torch.Tensor):
        for store in self._stores:
            index = store.buffer_holding(tensor)
            if index is not None:
                return SavedView(store, index, tensor.storage_offset(), tuple(tensor.size()), tuple(tensor.stride()))
        return tensor

    @staticmethod
    def _unpack(saved):
        if not isinstance(saved, SavedView):
            return saved
        saved.store.wait_gather(saved.index)  # gathered already by the unit's pre-backward hook
        return saved.store.full_buffer(saved.index).as_strided(saved.size, saved.stride, saved.offset)

    # -- whole-model access -----------------------------------------------------------------
    def gather_all(self) -> None:
        if self.order_check is not None:  # prefetched gathers may be pending
            self.order_check.verify()
        self._posted_at.clear()
        for unit in self.units:
            for ref in unit.refs:
                ref.store.start_gather(ref.index)
        for unit in self.units:
            for ref in unit.refs:
                ref.store.wait_gather(ref.index)

    def release_all(self) -> None:
        if self.phase is Phase.IDLE:
            for unit in self.units:
                self._release(unit)

    def remove_hooks(self) -> None:
        for handle in self._hooks:
            handle.remove()
        self._hooks.clear()
