"""One ZeRO optimizer path for every stage; the stage only decides who owns what.

=====  ==========================  ===============================  =========================
stage  parameters                  gradients                        fp32 master + optimizer
=====  ==========================  ===============================  =========================
0      full on every rank          full, all-reduced at boundary    full on every rank
1      full on every rank          full, reduce-scattered at bound  1/N slice per rank
2      full on every rank          bucketed reduce-scatter/microstep  1/N slice per rank
=====  ==========================  ===============================  =========================

Each rank steps the fp32 master copy of the slices it owns with an ordinary ``torch.optim``
optimizer over flat tensors (one per buffer), writes the result into its slice of the working
parameters and all-gathers the buffers. In fp32 the master slice *is* the working parameter
slice, so no copy is kept.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

from zerolib.comm import CommContext
from zerolib.partition import FlatLayout, ReplicatedParams
from zerolib.zero.grad_reducer import GradientReducer
from zerolib.zero.loss_scaler import DynamicLossScaler
from zerolib.zero.zeropp.settings import ZeroPPSettings


# Stages 0-2 cut their flat buffers at 25 MiB of the communication dtype (DDP's bucket_cap_mb)
# even where reduce_bucket_size allows more: a buffer's reduction can start only once backward
# has filled all of it, so one model-sized buffer would leave nothing to overlap with backward.
OVERLAP_BUCKET_BYTES = 25 << 20


class NonFiniteGradientError(FloatingPointError):
    """A bf16 or fp32 step met inf or NaN in a loss or gradient (``nonfinite_gradients`` "error")."""


@dataclass
class StepReport:
    """What one optimizer step did: whether it was skipped for overflow, and the grad norm.

    ``nonfinite_param`` names, for a step skipped without a loss scaler (bf16, fp32), the first
    parameter in the flat layout whose gradient holds inf or NaN on some rank.
    """

    skipped: bool
    grad_norm: float
    nonfinite_param: str | None = None


@dataclass(frozen=True)
class ZeroSettings:
    """The parts of the config the ZeRO path needs, already resolved."""

    stage: int
    bucket_numel: int
    overlap_comm: bool
    comm_dtype: torch.dtype
    gradient_clipping: float
    predivide_factor: float = 1.0
    # stage 3 only
    param_persistence_threshold: int = 100_000
    prefetch_bucket_numel: int = 50_000_000
    max_live_numel: int = 1_000_000_000
    max_reuse_distance: int = 1_000_000_000
    zeropp: ZeroPPSettings = ZeroPPSettings()  # stage 3: quantized/hierarchical gathers and reduction


class ZeroOptimizer:
    """Partitions optimizer state (and gradients for stage 2) of ``params`` across ranks."""

    def __init__(self, params: dict[str, torch.nn.Parameter], comm: CommContext, settings: ZeroSettings, *,
                 make_optimizer: Callable[[list[torch.Tensor]], torch.optim.Optimizer],
                 fp32_values: dict[str, torch.Tensor], loss_scaler: DynamicLossScaler | None = None,
                 layout: FlatLayout | None = None, store=None, on_buffer_reduced=None, reduce_scatter=None):
        """``layout``/``store`` default to replicated flat buffers (stages 0-2); stage 3 passes
        a :class:`PartitionedParams` store, a callback that releases reduced buffers and, with
        ZeRO++ qgZ, the gradient ``reduce_scatter`` to use (see GradientReducer)."""
        self.comm, self.settings, self.loss_scaler = comm, settings, loss_scaler
        self.params = params
        if layout is None:
            num_shards = 1 if settings.stage == 0 else comm.world_size
            shapes = [(name, p.shape) for name, p in params.items()]
            overlap_numel = OVERLAP_BUCKET_BYTES // settings.comm_dtype.itemsize
            layout = FlatLayout.packed(shapes, num_shards, max_buffer_numel=min(settings.bucket_numel, overlap_numel))
            # overlap_comm: the post-step all-gather finishes during the next forward (ReplicatedParams)
            store = ReplicatedParams(layout, params, comm, defer_publish=settings.overlap_comm and settings.stage > 0)
        self.layout, self.store = layout, store
        deferred = isinstance(store, ReplicatedParams) and store.defer_publish
        self.shard = comm.rank if layout.num_shards > 1 else 0
        # In fp32 the master slice is the working shard itself, unless that shard lives in swap
        # files (offload_param nvme). An nvme-offloaded optimizer keeps separate masters in its
        # own swap files (``swapped_masters``); they are placeholders on the meta device here.
        self.masters_are_shards = self.param_dtype == torch.float32 and not getattr(store, "swaps_shards", False)
        swapped = set()
        if not self.masters_are_shards and hasattr(make_optimizer, "swapped_masters"):
            swapped = make_optimizer.swapped_masters([spec.shard_numel for spec in layout.buffers])
        self.master = self._make_master(fp32_values, swapped)
        self.reducer = GradientReducer(comm, self.layout, params, stage=settings.stage,
                                       comm_dtype=settings.comm_dtype, overlap_comm=settings.overlap_comm,
                                       predivide_factor=settings.predivide_factor, on_reduced=on_buffer_reduced,
                                       check_fresh=store.check_fresh if deferred else None,
                                       reduce_scatter=reduce_scatter)
        self.optimizer = make_optimizer(self.master)
        for index in sorted(swapped):  # one buffer's master at a time: never all of them in memory
            self.optimizer.write_master(index, self._initial_master(self.layout.buffers[index], fp32_values))
        # -- offload hooks: an offloaded optimizer (zerolib.offload.OffloadAdam) writes the working
        # shards in the same pass as the update, so _write_back must not copy them again; with
        # nvme it also takes the reduced gradients into its swap files (the reducer's sink).
        self.reducer.sink = getattr(self.optimizer, "gradient_sink", None)
        self._optimizer_writes_params = getattr(self.optimizer, "writes_param_copies", False)
        if self._optimizer_writes_params and not self.masters_are_shards:
            self.optimizer.set_param_copies(_WorkingShards(self.store, self.shard))

    @property
    def param_dtype(self) -> torch.dtype:
        return self.store.dtype

    def _make_master(self, fp32_values: dict[str, torch.Tensor], swapped: set[int]) -> list[torch.Tensor]:
        """fp32 master slices, filled from rank 0's full-precision values (not the 16-bit copy);
        meta-device placeholders for the ``swapped`` ones, filled later by the optimizer."""
        if self.masters_are_shards:
            return [self.store.shard_view(spec.index, self.shard) for spec in self.layout.buffers]
        return [torch.empty(spec.shard_numel, dtype=torch.float32, device="meta") if spec.index in swapped
                else self._initial_master(spec, fp32_values) for spec in self.layout.buffers]

    def _initial_master(self, spec, fp32_values: dict[str, torch.Tensor] | None) -> torch.Tensor:
        if fp32_values is None:  # no full-precision source (partitioned init): upcast the shard
            return self._read_shard(spec.index)
        full = torch.zeros(spec.padded_numel, dtype=torch.float32, device=self.comm.device)
        for slot in spec.slots:
            full[slot.offset:slot.end].copy_(fp32_values[slot.name].reshape(-1))
        self.comm.broadcast(full, 0)
        lo, hi = spec.shard_range(self.shard)
        return full[lo:hi].clone()

    def _read_shard(self, index: int) -> torch.Tensor:
        """An fp32 copy of this rank's working shard of buffer ``index``."""
        shard = self.store.open_shard(index, self.shard)
        values = shard.to(torch.float32, copy=True)
        self.store.close_shard(index, dirty=False)
        return values

    # -- the step ---------------------------------------------------------------------------
    def prepare_backward(self, boundary: bool = True) -> None:
        self.reducer.prepare_backward(boundary)

    def finish_backward(self, boundary: bool) -> None:
        self.reducer.finish_backward(boundary)

    def step(self, loss_finite: torch.Tensor | None = None) -> StepReport:
        """Unscales, checks for overflow, clips, steps the owned slices and re-publishes them.

        A gradient (or, through ``loss_finite``, a loss) holding inf or NaN on any rank skips
        the step on every rank: nothing is written to the weights or the optimizer state.
        """
        self.wait_for_parameters()
        grads, sink = self.reducer.grad_shards, self.reducer.sink
        for index, grad in enumerate(grads):  # a rank with no gradient at all still steps zeros
            if grad is None and not (sink is not None and sink.accepts(index)):
                grads[index] = torch.zeros(self.layout.buffers[index].shard_numel, device=self.comm.device)
        scale = self.loss_scaler.scale if self.loss_scaler is not None else 1.0
        norm = self._global_norm(grads, loss_finite) / scale
        if not math.isfinite(norm):
            if self.loss_scaler is not None:
                self.reducer.zero_grads()
                self.loss_scaler.update(True)
                return StepReport(skipped=True, grad_norm=norm)
            name = self._first_nonfinite_parameter(grads)
            self.reducer.zero_grads()
            return StepReport(skipped=True, grad_norm=norm, nonfinite_param=name)
        coef = 1.0 / scale
        clip = self.settings.gradient_clipping
        if clip > 0:
            coef *= min(1.0, clip / (norm + 1e-6))
        for master, grad in zip(self.master, grads):
            if grad is None:  # held by the gradient sink, which applies coef as it hands it out
                continue
            if coef != 1.0:
                grad.mul_(coef)
            # offload: host masters (offload_param cpu without optimizer offload) take a host copy
            master.grad = grad if grad.device == master.device else grad.to(master.device)
        if sink is not None:
            sink.scale = coef
        self.optimizer.step()
        for master in self.master:
            master.grad = None
        self._write_back(copy_masters=not self._optimizer_writes_params)
        self.reducer.zero_grads()
        if self.loss_scaler is not None:
            self.loss_scaler.update(False)
        return StepReport(skipped=False, grad_norm=norm)

    def wait_for_parameters(self) -> None:
        """Completes a deferred publish (stages 1-2 with overlap_comm), so that every rank's
        parameters hold the last step's values."""
        if isinstance(self.store, ReplicatedParams):
            self.store.finish_publish()

    def _global_norm(self, grads: list[torch.Tensor | None], loss_finite: torch.Tensor | None = None) -> float:
        present = [g.float() if g.dtype != torch.float32 else g for g in grads if g is not None]
        squares = torch.zeros(1, dtype=torch.float32, device=self.comm.device)
        if present:
            squares += torch.stack(torch._foreach_norm(present)).pow(2).sum()
        if self.reducer.sink is not None:
            squares += self.reducer.sink.squared_norm()
        if loss_finite is not None:  # a rank's bad loss must skip the step on every rank
            squares = torch.where(loss_finite.to(squares.device), squares, torch.nan)
        if self.layout.num_shards > 1:
            self.comm.all_reduce(squares)  # the NaN of a bad loss travels with the sum
        elif loss_finite is not None and self.comm.distributed:
            # stage 0: every rank holds the whole (already reduced) gradient, so the norms agree;
            # only the loss flags need exchanging.
            any_bad = torch.isnan(squares).float()
            self.comm.all_reduce(any_bad, torch.distributed.ReduceOp.MAX)
            squares = torch.where(any_bad > 0, torch.nan, squares)
        return squares.sqrt().item()

    def _first_nonfinite_parameter(self, grads: list[torch.Tensor | None]) -> str | None:
        """The first parameter in layout order whose gradient holds inf or NaN on any rank
        (None when every gradient is finite: then only a loss was not, or the bad one is in the
        gradient sink's swap files, which only report the norm)."""
        position, found = 0, None
        for spec, grad in zip(self.layout.buffers, grads):
            lo, _ = spec.shard_range(self.shard)
            for slot in spec.slots:
                part = spec.owned_part(slot, self.shard)
                if found is None and grad is not None and part is not None \
                        and not torch.isfinite(grad[part[0] - lo:part[1] - lo]).all():
                    found = position
                position += 1
        first = torch.tensor([position if found is None else found], dtype=torch.int64, device=self.comm.device)
        self.comm.all_reduce(first, torch.distributed.ReduceOp.MIN)
        names = [slot.name for spec in self.layout.buffers for slot in spec.slots]
        return names[int(first)] if int(first) < len(names) else None

    def _write_back(self, copy_masters: bool) -> None:
        """Copies the masters into the working shards (unless they are the same memory, or the
        optimizer already wrote them) and re-publishes the parameters."""
        if copy_masters and not self.masters_are_shards:
            with torch.no_grad():
                for spec in self.layout.buffers:
                    target = self.store.open_shard(spec.index, self.shard, read=False)
                    target.copy_(self.master_value(spec.index))
                    self.store.close_shard(spec.index, dirty=True)
        self.store.publish(self.shard)

    # torch.optim-style access to this rank's slice of the optimizer, as DeepSpeed exposes it.
    @property
    def param_groups(self) -> list[dict]:
        return self.optimizer.param_groups

    @property
    def state(self):
        return self.optimizer.state

    def state_dict(self) -> dict:
        """The inner optimizer's state for this rank's master slices (one tensor per buffer)."""
        return self.optimizer.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state)

    def publish_masters(self) -> None:
        """Writes the (loaded) master slices into the working parameters on every rank."""
        self._write_back(copy_masters=True)

    def master_value(self, index: int) -> torch.Tensor:
        """Buffer ``index``'s fp32 master slice: the tensor itself, or a copy read from swap."""
        read = getattr(self.optimizer, "read_master", None)
        return read(index) if read is not None else self.master[index]

    def set_master_value(self, index: int, values: torch.Tensor) -> None:
        """Sets buffer ``index``'s master slice (wherever it lives) to ``values``."""
        write = getattr(self.optimizer, "write_master", None)
        if write is not None:
            write(index, values)
        elif values.data_ptr() != self.master[index].data_ptr():
            with torch.no_grad():
                self.master[index].copy_(values)

    def refresh_master(self, index: int) -> None:
        """Re-reads buffer ``index``'s master slice from the (edited) working parameters."""
        if not self.masters_are_shards:
            self.set_master_value(index, self._read_shard(index))

    # -- inspection -------------------------------------------------------------------------
    def full_master_weights(self) -> dict[str, torch.Tensor]:
        """Every parameter's full fp32 master value, assembled on every rank."""
        result = {}
        for spec in self.layout.buffers:
            master = self.master_value(spec.index)
            full = master.detach()
            if self.layout.num_shards > 1:
                full = torch.empty(spec.padded_numel, dtype=torch.float32, device=master.device)
                self.comm.all_gather_into(full, master.detach())
            for slot in spec.slots:
                result[slot.name] = full[slot.offset:slot.end].view(slot.shape).clone()
        return result

    def storage_by_kind(self) -> dict[str, list[torch.Tensor]]:
        """Tensors held per kind, for memory accounting (views share storage with their base)."""
        state = [t for s in self.optimizer.state.values() for t in s.values()
                 if torch.is_tensor(t) and t.numel() > 1 and not t.is_meta]
        swap = getattr(self.optimizer, "swap_buffers", list)() + getattr(self.store, "swap_buffers", list)()
        return {"params": self.store.storage(), "grads": self.reducer.storage(),
                "master": [m for m in self.master if not m.is_meta], "optimizer_state": state,
                "swap_buffers": swap}


class _WorkingShards:
    """This rank's working parameter shards, for an optimizer that writes them in its own pass
    (OffloadAdam's ShardAccess). Opened without a read: every element is overwritten."""

    def __init__(self, store, shard: int):
        self.store, self.shard = store, shard

    def open(self, index: int) -> torch.Tensor:
        return self.store.open_shard(index, self.shard, read=False)

    def close(self, index: int) -> None:
        self.store.close_shard(index, dirty=True)
