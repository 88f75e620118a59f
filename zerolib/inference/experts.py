"""Where each MoE layer's experts live during prefill, one class per mode.

* :class:`GatheredExperts` (``async_ep``, ``sync_gather``): every rank stores 1/N of each
  layer's experts, by expert index, in ZeRO-3's partitioned stores
  (zerolib/partition/partitioned.py), and ZeRO-3's :class:`ParamCoordinator` gathers a layer's
  experts just before they run and releases them after. With prefetch (AsyncEP) the coordinator
  starts layer i+1's all-gather when layer i is fetched, so the transfer runs while layer i
  computes; at most two layers are whole at once, in two reused buffers (a double buffer). The
  first MoE layer stays whole: nothing runs before it to hide its gather behind.
* :class:`ExpertParallel` (``dp_ep``): every rank keeps only its experts; each layer sends
  every routed token to the rank owning its expert and the outputs back (two all-to-alls).
* ``reference``: the model stays whole (no placement object).

Expert index e lives on rank ``e // ceil(E / N)``: a shard is a whole number of experts (the
layout is aligned to one expert), padded at the end when N does not divide E.
"""
from __future__ import annotations

import statistics
import time

import torch

from zerolib.comm import CommContext
from zerolib.comm.scratch import ScratchPool
from zerolib.config.errors import ConfigError
from zerolib.inference.adapters import PrefillModel
from zerolib.offload.swapper import SubGroupSwapper
from zerolib.partition.coordinator import BufferRef, GatherPolicy, ParamCoordinator, Unit
from zerolib.partition.layout import FlatLayout
from zerolib.partition.partitioned import PartitionedParams


def _copy_own_rows(params: dict[str, torch.nn.Parameter]):
    """A PartitionedParams ``fill_shard`` that copies this rank's slice of each buffer's one
    (still whole) parameter, so building the shards needs no broadcast."""
    def fill(spec, lo, hi, shard) -> bool:
        (slot,) = spec.slots
        flat = params[slot.name].detach().reshape(-1)
        real = max(0, min(hi, flat.numel()) - lo)
        shard[:real].copy_(flat[lo:lo + real])
        return True
    return fill


class GatheredExperts:
    """Experts partitioned by index and gathered per layer by the ZeRO-3 coordinator.

    One store per kind of expert tensor (``gate_up_proj``, ``down_proj``, ...) holds one buffer
    per partitioned layer; a layer is a coordinator unit whose refs are its buffer in each store.
    With ``offload.device`` nvme each store's shards live in swap files, and the coordinator
    starts reading ``offload.window`` layers ahead of the gather, into a pool of ``window + 2``
    buffers per store (reading, gathering, and one in flight between them).
    """

    def __init__(self, model: PrefillModel, comm: CommContext, *, prefetch: bool, offload=None, io=None):
        self.comm, self.io = comm, io
        self.pool = ScratchPool()
        self.layers = model.experts[1:] if comm.distributed else []
        window = offload.window if offload is not None and offload.device == "nvme" else 1
        self.stores = self._partition(offload, io, window)
        units = [Unit(0, "trunk", model.trunk, ())]
        for index, layer in enumerate(self.layers):
            units.append(Unit(index + 1, layer.name, layer.module,
                              tuple(BufferRef(store, index) for store in self.stores.values())))
        layer_numel = max((unit.numel for unit in units[1:]), default=0)
        policy = GatherPolicy(prefetch_numel=layer_numel if prefetch else 0, max_live_numel=2 * layer_numel,
                              max_reuse_distance=0, read_ahead_units=window)
        self.coordinator = ParamCoordinator(units, policy, comm, verify_order=False)

    def _partition(self, offload, io, window: int) -> dict[str, PartitionedParams]:
        by_kind: dict[str, list[tuple[str, torch.nn.Parameter]]] = {}
        for layer in self.layers:
            for kind, param in layer.module.named_parameters(recurse=False):
                by_kind.setdefault(kind, []).append((f"{layer.name}.{kind}", param))
        stores = {}
        for kind, named in by_kind.items():
            shapes = {param.shape for _, param in named}
            if len(shapes) > 1:
                raise ValueError(f"experts tensor '{kind}' has different shapes across MoE layers ({sorted(shapes)}): "
                                 f"AsyncEP gathers every layer into the same buffers")
            layout = FlatLayout([[(name, param.shape)] for name, param in named], self.comm.world_size,
                                align=named[0][1][0].numel())
            params = dict(named)
            stores[kind] = PartitionedParams(layout, params, self.comm, dtype=named[0][1].dtype,
                                             fill_shard=_copy_own_rows(params), full_pool=self.pool,
                                             shard_device="cpu" if offload is not None and offload.device == "cpu"
                                             else None, make_shard_swap=self._swap_maker(offload, io, window, kind))
        return stores

    def _swap_maker(self, offload, io, window: int, kind: str):
        if offload is None or offload.device != "nvme":
            return None

        def make(numels: dict[int, int], dtype: torch.dtype) -> SubGroupSwapper:
            return SubGroupSwapper(offload.nvme_path, self.comm.rank, f"experts_{kind}", numels, tensors_per_group=1,
                                   dtype=dtype, buffer_count=window + 2, aio=io.settings, io=io,
                                   pin_memory=offload.pin_memory, buffer_key="moe_prefill.offload.window")
        return make

    def read_seconds(self) -> float:
        """Seconds to read one layer's shards from the swap files (0 when they are in memory)."""
        if not self.layers or all(store.swap is None for store in self.stores.values()):
            return 0.0
        start = time.perf_counter()
        for store in self.stores.values():
            store.open_shard(0)
            store.close_shard(0)
        return time.perf_counter() - start

    def resting_bytes(self) -> int:
        """Bytes of expert shards this rank holds in memory between passes (swap pools included)."""
        tensors = [s for store in self.stores.values() for s in store.shards if s is not None]
        tensors += [b for store in self.stores.values() for b in store.swap_buffers()]
        return sum(t.numel() * t.element_size() for t in tensors)

    def close(self) -> None:
        """Removes the hooks; with the nvme tier, the swap files and I/O threads go too."""
        self.coordinator.remove_hooks()
        if self.io is not None:
            self.io.close()


class ExpertParallel:
    """DP+EP: each rank keeps its own experts; tokens go to them and come back.

    A forward pre-hook on each experts module sends every (token, choice) pair to the rank that
    owns the chosen expert (one all-to-all, after a tiny one of counts) and hands the module
    the pairs it received, with expert ids made local; a forward hook sends the weighted outputs
    back (the second all-to-all) and sums each token's choices. The expert math is the module's
    own forward, on its own rows.
    """

    def __init__(self, model: PrefillModel, comm: CommContext):
        self.comm = comm
        self._in_flight: dict[int, tuple] = {}
        self._hooks = []
        self.local = {}
        for layer in model.experts:
            if layer.num_experts % comm.world_size:
                raise ConfigError("moe_prefill.mode", f"dp_ep needs the experts of '{layer.name}' "
                                                      f"({layer.num_experts}) to split evenly over {comm.world_size} ranks")
            per_rank = layer.num_experts // comm.world_size
            first = comm.rank * per_rank
            for _, param in layer.params():
                param.data = param.data[first:first + per_rank].clone()
            self.local[id(layer.module)] = per_rank
            self._hooks.append(layer.module.register_forward_pre_hook(self._dispatch))
            self._hooks.append(layer.module.register_forward_hook(self._combine))
        if hasattr(model.model, "set_experts_implementation"):
            # transformers' grouped kernels size their groups by the module's full expert count;
            # the eager loop runs only the experts chosen, so it works on a rank's own rows
            # (and ran as fast as grouped_mm on this CPU).
            model.model.set_experts_implementation("eager")

    def _exchange(self, rows: torch.Tensor, send_counts: list[int], recv_counts: list[int]) -> torch.Tensor:
        out = rows.new_empty((sum(recv_counts), *rows.shape[1:]))
        self.comm.all_to_all_uneven(out, rows.contiguous(), recv_counts, send_counts)
        return out

    def _dispatch(self, module, args):
        hidden, top_k_index, top_k_weights = args[:3]
        per_rank = self.local[id(module)]
        choices = top_k_index.reshape(-1)
        owner = torch.div(choices, per_rank, rounding_mode="floor")
        order = torch.argsort(owner, stable=True)
        send_counts = torch.bincount(owner, minlength=self.comm.world_size)
        recv_counts = torch.empty_like(send_counts)
        self.comm.all_to_all(recv_counts, send_counts)
        send, recv = send_counts.tolist(), recv_counts.tolist()
        id_dtype = {4: torch.int32, 2: torch.int16}[hidden.element_size()]
        local_ids = (choices - owner * per_rank)[order].to(id_dtype).view(hidden.dtype)
        payload = torch.cat([hidden[order // top_k_index.shape[-1]], local_ids[:, None],
                             top_k_weights.reshape(-1)[order, None].to(hidden.dtype)], dim=1)
        received = self._exchange(payload, send, recv)
        self._in_flight[id(module)] = (order // top_k_index.shape[-1], send, recv, hidden.shape[0])
        width = hidden.shape[1]
        expert_ids = received[:, width].contiguous().view(id_dtype).long()
        return received[:, :width].contiguous(), expert_ids[:, None], received[:, width + 1:width + 2].contiguous()

    def _combine(self, module, args, output):
        token_of, send, recv, num_tokens = self._in_flight.pop(id(module))
        returned = self._exchange(output, recv, send)
        combined = output.new_zeros(num_tokens, output.shape[1])
        return combined.index_add_(0, token_of, returned)

    def resting_bytes(self) -> int:
        return 0  # the experts' own (local) rows are part of the model's parameters

    def read_seconds(self) -> float:
        return 0.0  # nothing is read from swap files

    def close(self) -> None:
        for handle in self._hooks:
            handle.remove()
        self._hooks.clear()


def time_layer_gather(comm: CommContext, expert_numels: list[int], dtype: torch.dtype, repeats: int = 3) -> float:
    """t_EP: median seconds to all-gather one MoE layer's experts (the slowest rank's), the
    same bytes in every mode so that T, and therefore the router's rounds, match between them.
    One rank copies the layer once, as a gather from itself would."""
    shards = [torch.zeros(-(-numel // comm.world_size), dtype=dtype, device=comm.device) for numel in expert_numels]
    fulls = [torch.empty(shard.numel() * comm.world_size, dtype=dtype, device=comm.device) for shard in shards]
    times = []
    for _ in range(repeats + 1):  # the first round pays for page faults
        start = time.perf_counter()
        pending = [comm.all_gather_into(full, shard, async_op=True) for full, shard in zip(fulls, shards)]
        for item in pending:
            item.wait()
        times.append(time.perf_counter() - start)
    seconds = torch.tensor([statistics.median(times[1:])], dtype=torch.float64)
    comm.all_reduce(seconds, torch.distributed.ReduceOp.MAX)
    return float(seconds.item())
