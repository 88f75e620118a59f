"""OffloadAdam: the ZeRO-Offload optimizer over a rank's flat fp32 master slices.

The master slices are cut into sub-groups of at most ``sub_group_size`` elements. The first
``ratio`` of the elements (whole slices, in buffer order) are *offloaded*: they are stepped on
the host by the native CPU Adam (:func:`zerolib.ops.adam_step`), which writes the working
(16-bit) parameter copy in the same pass. The rest is stepped where the masters live by the
normal optimizer (``make_device_optimizer``), as ZeRO-Offload++'s partial offload does.

Where the offloaded state lives:

* ``device: cpu``: masters and Adam moments in host memory.
* ``device: nvme``: per sub-group, the Adam moments, the fp32 master (when it is a copy of its
  own, i.e. the masters handed in are on the meta device) and the gradient are in swap files
  (:class:`~zerolib.offload.swapper.SubGroupSwapper`, :class:`SwappedGradients`). A sub-group
  is read in for its step and written out after, while the next one is already being read, so
  only a few sub-groups of fp32 state are in memory at once. When the working parameter
  shards live in swap files too (offload_param nvme), they are opened one at a time through
  :class:`ShardAccess` and written back after their last sub-group.

It is a ``torch.optim.Optimizer`` with one param group over the master slices, so LR schedules
and ``param_groups`` work unchanged; ``state[master]["step"]`` counts steps as torch does.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol

import torch

from zerolib.offload.gradients import SwappedGradients
from zerolib.offload.swapper import SubGroupSwapper
from zerolib.ops import adam_step

# (tag, elements per sub-group, tensors per sub-group) -> the swap files for them (nvme)
MakeSwapper = Callable[[str, list[int], int], SubGroupSwapper]


@dataclass(frozen=True)
class SubGroup:
    """Elements ``[lo, hi)`` of master slice ``tensor``; the unit stepped (and swapped) at once."""

    tensor: int
    lo: int
    hi: int

    @property
    def numel(self) -> int:
        return self.hi - self.lo


def plan_sub_groups(numels: list[int], sub_group_size: int, ratio: float) -> tuple[list[SubGroup], set[int]]:
    """Sub-groups of every tensor, and the tensors whose sub-groups together make ``ratio`` of
    the elements (at least one tensor when ``ratio > 0``) and are offloaded."""
    total, offloaded, running = sum(numels), set(), 0
    for index, numel in enumerate(numels):
        if running >= ratio * total - 0.5 and offloaded:
            break
        offloaded.add(index)
        running += numel
    groups = [SubGroup(t, lo, min(lo + sub_group_size, numels[t]))
              for t in sorted(offloaded) for lo in range(0, numels[t], sub_group_size)]
    return groups, offloaded


class ShardAccess(Protocol):
    """Working parameter shards an optimizer writes in its own pass: ``open(i)`` gives master
    slice i's working shard, resident until ``close(i)`` stores it (nvme: writes it back)."""

    def open(self, index: int) -> torch.Tensor: ...

    def close(self, index: int) -> None: ...


class _ResidentShards:
    """ShardAccess over tensors that are always resident."""

    def __init__(self, tensors: list[torch.Tensor]):
        self.tensors = tensors

    def open(self, index: int) -> torch.Tensor:
        return self.tensors[index]

    def close(self, index: int) -> None:
        pass


class OffloadAdam(torch.optim.Optimizer):
    """Adam/AdamW whose offloaded share is stepped on the host in sub-groups (see module doc)."""

    writes_param_copies = True  # ZeroOptimizer then skips its own master -> working copy

    def __init__(self, masters: list[torch.Tensor], *, lr: float, betas: tuple[float, float], eps: float,
                 weight_decay: float, adamw_mode: bool, sub_group_size: int, ratio: float = 1.0,
                 make_swapper: MakeSwapper | None = None,
                 make_device_optimizer: Callable[[list[torch.Tensor]], torch.optim.Optimizer] | None = None):
        """``make_swapper`` (nvme) keeps moments and gradients in swap files; masters handed in
        on the meta device keep their values there too (fill them with :meth:`write_master`)."""
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, adamw_mode=adamw_mode)
        super().__init__(masters, defaults)
        self.masters = list(masters)
        self.sub_groups, self.offloaded = plan_sub_groups([m.numel() for m in masters], sub_group_size, ratio)
        meta = {t for t, m in enumerate(masters) if m.is_meta}
        self.masters_swapped = bool(meta)
        if meta and (make_swapper is None or meta != self.offloaded):
            raise ValueError(f"OffloadAdam: master slices {sorted(meta)} are on the meta device (kept in swap "
                             f"files), which needs nvme offload of exactly the offloaded slices {sorted(self.offloaded)}")
        # Host fp32 copies of offloaded resident masters; on a CPU device they are the masters themselves.
        self.host_masters = {t: self._to_host(masters[t]) for t in self.offloaded - meta}
        numels = [g.numel for g in self.sub_groups]
        self.state_swapper = make_swapper("optimizer", numels, 3 if meta else 2) if make_swapper else None
        self.gradient_sink = SwappedGradients(self.sub_groups, make_swapper("grads", numels, 1)) if make_swapper else None
        on_device = [m for i, m in enumerate(masters) if i not in self.offloaded]
        if on_device and make_device_optimizer is None:
            raise ValueError("offload_optimizer.ratio < 1 needs an optimizer for the part kept on the device")
        self.device_optimizer = make_device_optimizer(on_device) if on_device else None
        self._copies: ShardAccess | None = None
        self._open_copies: dict[int, torch.Tensor] = {}
        self._groups_of: dict[int, list[int]] = {}
        for index, sub in enumerate(self.sub_groups):
            self._groups_of.setdefault(sub.tensor, []).append(index)

    @staticmethod
    def _to_host(master: torch.Tensor) -> torch.Tensor:
        if master.device.type == "cpu":
            return master
        return master.detach().to("cpu", copy=True).pin_memory() if torch.cuda.is_available() else master.cpu()

    def set_param_copies(self, copies: ShardAccess | list[torch.Tensor]) -> None:
        """The working (16-bit, or nvme-offloaded) shards that receive each master after its
        update: a list of tensors (one per master) or a :class:`ShardAccess`."""
        if isinstance(copies, (list, tuple)):
            if len(copies) != len(self.masters):
                raise ValueError(f"OffloadAdam: {len(copies)} param copies for {len(self.masters)} master slices")
            copies = _ResidentShards(list(copies))
        self._copies = copies

    # -- the step ---------------------------------------------------------------------------
    @torch.no_grad()
    def step(self, closure=None):
        """Steps every sub-group; offloaded ones on the host, overlapping their swap I/O."""
        loss = closure() if closure is not None else None
        group = self.param_groups[0]
        for index, sub in enumerate(self.sub_groups):
            self._step_sub_group(index, sub, group)
        for t in self.offloaded:
            self.state[self.masters[t]]["step"] = self._step_count(t) + 1
        if self.state_swapper is not None:
            self.state_swapper.flush()
        self._step_device_part(group)
        return loss

    def _step_count(self, tensor: int) -> int:
        return self.state[self.masters[tensor]].get("step", 0)

    def _step_sub_group(self, index: int, sub: SubGroup, group: dict) -> None:
        state = self._acquire_state(index, sub)
        grad, swapped_grad = self._gradient(index, sub)
        if self.state_swapper is not None and self.state_swapper.overlap:  # read the next one meanwhile
            self.state_swapper.prefetch(index + 1)
            self.gradient_sink.prefetch(index + 1)
        param = state[0] if self.masters_swapped else self.host_masters[sub.tensor][sub.lo:sub.hi]
        target = self._open_copy(index, sub)
        in_kernel = target is not None and target.device.type == "cpu" and target.dtype in (torch.bfloat16,
                                                                                              torch.float16)
        beta1, beta2 = group["betas"]
        adam_step([param], [grad], [state[-2]], [state[-1]], step=self._step_count(sub.tensor) + 1, lr=group["lr"],
                  beta1=beta1, beta2=beta2, eps=group["eps"], weight_decay=group["weight_decay"],
                  adamw_mode=group["adamw_mode"], param_copies=[target] if in_kernel else None)
        if target is not None and not in_kernel:  # an fp32 or device-resident working copy
            target.copy_(param)
        if self.state_swapper is not None:
            self.state_swapper.release(index)
        if swapped_grad:
            self.gradient_sink.done(index)
        self._close_copy(index, sub)

    def _gradient(self, index: int, sub: SubGroup) -> tuple[torch.Tensor, bool]:
        """The sub-group's gradient on the host, and whether it came from the swap files."""
        grad = self.masters[sub.tensor].grad
        if grad is not None:
            return grad[sub.lo:sub.hi].to("cpu", non_blocking=True), False
        if self.gradient_sink is not None:
            return self.gradient_sink.acquire(index), True
        raise ValueError(f"OffloadAdam: master slice {sub.tensor} has no gradient")

    def _acquire_state(self, index: int, sub: SubGroup) -> list[torch.Tensor]:
        """``[master?, exp_avg, exp_avg_sq]`` of the sub-group (master only when swapped)."""
        if self.state_swapper is not None:
            return self.state_swapper.acquire(index)
        state = self.state[self.masters[sub.tensor]]
        if "exp_avg" not in state:  # torch's layout: whole-slice moments, stepped by sub-group views
            host = self.host_masters[sub.tensor]
            state["exp_avg"], state["exp_avg_sq"] = torch.zeros_like(host), torch.zeros_like(host)
        return [state["exp_avg"][sub.lo:sub.hi], state["exp_avg_sq"][sub.lo:sub.hi]]

    def _open_copy(self, index: int, sub: SubGroup) -> torch.Tensor | None:
        if self._copies is None:
            return None
        if index == self._groups_of[sub.tensor][0]:
            self._open_copies[sub.tensor] = self._copies.open(sub.tensor)
        return self._open_copies[sub.tensor][sub.lo:sub.hi]

    def _close_copy(self, index: int, sub: SubGroup) -> None:
        if index != self._groups_of[sub.tensor][-1]:
            return
        if self._copies is not None:
            self._copies.close(sub.tensor)
            del self._open_copies[sub.tensor]
        host, master = self.host_masters.get(sub.tensor), self.masters[sub.tensor]
        if host is not None and host.data_ptr() != master.data_ptr():  # a device master (GPU)
            master.copy_(host, non_blocking=True)

    def _step_device_part(self, group: dict) -> None:
        if self.device_optimizer is None:
            return
        for inner in self.device_optimizer.param_groups:  # follow the LR schedule
            inner["lr"] = group["lr"]
        self.device_optimizer.step()
        if self._copies is None:
            return
        with torch.no_grad():
            for index in self._on_device():
                self._copies.open(index).copy_(self.masters[index])
                self._copies.close(index)

    # -- master values (swapped masters are read and written by sub-group) ----------------------
    def read_master(self, tensor: int) -> torch.Tensor:
        """Master slice ``tensor``'s fp32 values (a fresh copy when they live in swap files)."""
        if tensor not in self.offloaded or not self.masters_swapped:
            return self.host_masters.get(tensor, self.masters[tensor])
        values = torch.empty(self.masters[tensor].shape, dtype=torch.float32)
        for index in self._groups_of[tensor]:
            sub = self.sub_groups[index]
            values[sub.lo:sub.hi].copy_(self.state_swapper.acquire(index)[0])
            self.state_swapper.release(index, dirty=False)
        return values

    @torch.no_grad()
    def write_master(self, tensor: int, values: torch.Tensor) -> None:
        """Sets master slice ``tensor`` (and its host copy) to ``values``; moments are kept."""
        if tensor in self.offloaded and self.masters_swapped:
            for index in self._groups_of[tensor]:
                sub = self.sub_groups[index]
                self.state_swapper.acquire(index)[0].copy_(values[sub.lo:sub.hi])
                self.state_swapper.release(index)
            self.state_swapper.flush()
            return
        for target in (self.masters[tensor], self.host_masters.get(tensor)):
            if target is not None and target.data_ptr() != values.data_ptr():
                target.copy_(values)

    # -- state -----------------------------------------------------------------------------
    def moments(self) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
        """Full ``(exp_avg, exp_avg_sq)`` of each offloaded master slice (read back from swap)."""
        result = {t: (torch.zeros(self.masters[t].shape), torch.zeros(self.masters[t].shape)) for t in self.offloaded}
        for index, sub in enumerate(self.sub_groups):
            state = self._acquire_state(index, sub)
            result[sub.tensor][0][sub.lo:sub.hi].copy_(state[-2])
            result[sub.tensor][1][sub.lo:sub.hi].copy_(state[-1])
            if self.state_swapper is not None:
                self.state_swapper.release(index, dirty=False)
        return result

    def swap_buffers(self) -> list[torch.Tensor]:
        """The swap pools' buffers (nvme), for memory accounting."""
        if self.state_swapper is None:
            return []
        return self.state_swapper.buffers() + self.gradient_sink.swapper.buffers()

    def close(self) -> None:
        """Removes the swap files (also done at interpreter exit)."""
        if self.state_swapper is not None:
            self.state_swapper.close()
            self.gradient_sink.swapper.close()

    def _on_device(self) -> list[int]:
        return [i for i in range(len(self.masters)) if i not in self.offloaded]

    def state_dict(self) -> dict:
        """torch's layout: ``state[i]`` has step, exp_avg and exp_avg_sq of master slice ``i``,
        whether it is offloaded (moments read back from swap) or stepped on the device."""
        result = super().state_dict()
        for tensor, (exp_avg, exp_avg_sq) in self.moments().items():
            result["state"].setdefault(tensor, {}).update(exp_avg=exp_avg, exp_avg_sq=exp_avg_sq)
        if self.device_optimizer is not None:
            inner = self.device_optimizer.state_dict()["state"]
            for position, tensor in enumerate(self._on_device()):
                if position in inner:
                    result["state"][tensor] = dict(inner[position])
        return result

    def load_state_dict(self, state_dict: dict) -> None:
        """Loads :meth:`state_dict`'s layout (a torch.optim.AdamW state dict works too)."""
        states = state_dict["state"]
        if self.device_optimizer is not None:
            inner = self.device_optimizer.state_dict()
            inner["state"] = {p: states[t] for p, t in enumerate(self._on_device()) if t in states}
            self.device_optimizer.load_state_dict(inner)
        own = {t: {"step": int(s["step"])} for t, s in states.items() if t in self.offloaded and "step" in s}
        super().load_state_dict({**state_dict, "state": own})
        for master in self.masters:  # torch may keep "step" as a tensor
            if "step" in self.state[master]:
                self.state[master]["step"] = int(self.state[master]["step"])
        for index, sub in enumerate(self.sub_groups):
            if "exp_avg" not in states.get(sub.tensor, {}):
                continue
            state = self._acquire_state(index, sub)
            for target, key in zip(state[-2:], ("exp_avg", "exp_avg_sq")):
                target.copy_(states[sub.tensor][key].reshape(-1)[sub.lo:sub.hi])
            if self.state_swapper is not None:
                self.state_swapper.release(index)
        if self.state_swapper is not None:
            self.state_swapper.flush()
