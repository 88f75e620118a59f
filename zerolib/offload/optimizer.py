"""OffloadAdam: the ZeRO-Offload optimizer over a rank's flat fp32 master slices.

The master slices are cut into sub-groups of at most ``sub_group_size`` elements. The first
``ratio`` of the elements (whole sub-groups, in buffer order) are *offloaded*: their fp32 master
lives on the host and is stepped there by the native CPU Adam (:func:`zerolib.ops.adam_step`),
which writes the 16-bit working copy in the same pass; their Adam moments live in host memory
(``device="cpu"``) or in swap files (``device="nvme"``, one sub-group resident at a time while
the next one is read ahead). The remaining sub-groups are stepped where the masters live by the
normal optimizer (``make_device_optimizer``), as ZeRO-Offload++'s partial offload does.

It is a ``torch.optim.Optimizer`` with one param group over the master slices, so LR schedules
and ``param_groups`` work unchanged; ``state[master]["step"]`` counts steps as torch does.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from zerolib.offload.swapper import SubGroupSwapper
from zerolib.ops import adam_step


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


class OffloadAdam(torch.optim.Optimizer):
    """Adam/AdamW whose offloaded share is stepped on the host in sub-groups (see module doc)."""

    writes_param_copies = True  # ZeroOptimizer then skips its own master -> working copy

    def __init__(self, masters: list[torch.Tensor], *, lr: float, betas: tuple[float, float], eps: float,
                 weight_decay: float, adamw_mode: bool, sub_group_size: int, ratio: float = 1.0,
                 swapper_factory: Callable[[list[int]], SubGroupSwapper] | None = None,
                 make_device_optimizer: Callable[[list[torch.Tensor]], torch.optim.Optimizer] | None = None):
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, adamw_mode=adamw_mode)
        super().__init__(masters, defaults)
        self.masters = list(masters)
        self.sub_groups, offloaded = plan_sub_groups([m.numel() for m in masters], sub_group_size, ratio)
        # Host fp32 copies of offloaded masters; on a CPU device they are the masters themselves.
        self.host_masters = {t: self._to_host(masters[t]) for t in offloaded}
        self.swapper = swapper_factory([g.numel for g in self.sub_groups]) if swapper_factory else None
        on_device = [m for i, m in enumerate(masters) if i not in offloaded]
        if on_device and make_device_optimizer is None:
            raise ValueError("offload_optimizer.ratio < 1 needs an optimizer for the part kept on the device")
        self.device_optimizer = make_device_optimizer(on_device) if on_device else None
        self.param_copies: list[torch.Tensor | None] = [None] * len(masters)

    @staticmethod
    def _to_host(master: torch.Tensor) -> torch.Tensor:
        if master.device.type == "cpu":
            return master
        return master.detach().to("cpu", copy=True).pin_memory() if torch.cuda.is_available() else master.cpu()

    def set_param_copies(self, copies: list[torch.Tensor]) -> None:
        """16-bit working slices that receive each master after its update (one per master)."""
        if len(copies) != len(self.masters):
            raise ValueError(f"OffloadAdam: {len(copies)} param copies for {len(self.masters)} master slices")
        self.param_copies = list(copies)

    @torch.no_grad()
    def step(self, closure=None):
        """Steps every sub-group; offloaded ones on the host, overlapping their swap I/O."""
        loss = closure() if closure is not None else None
        group = self.param_groups[0]
        stepped = set()
        for index, sub in enumerate(self.sub_groups):
            stepped.add(sub.tensor)
            self._step_sub_group(index, sub, group)
        for t in stepped:
            self.state[self.masters[t]]["step"] = self._step_count(t) + 1
            self._publish_to_device(t)
        if self.swapper is not None:
            self.swapper.flush()
        self._step_device_part(group)
        return loss

    def _step_count(self, tensor: int) -> int:
        return self.state[self.masters[tensor]].get("step", 0)

    def _step_sub_group(self, index: int, sub: SubGroup, group: dict) -> None:
        master = self.masters[sub.tensor]
        if master.grad is None:
            raise ValueError(f"OffloadAdam: master slice {sub.tensor} has no gradient")
        param = self.host_masters[sub.tensor][sub.lo:sub.hi]
        grad = master.grad[sub.lo:sub.hi].to("cpu", non_blocking=True)
        exp_avg, exp_avg_sq = self._acquire_moments(index, sub)
        copy = self.param_copies[sub.tensor]
        # A device-resident 16-bit copy is refreshed from the host master after the step instead.
        copies = [copy[sub.lo:sub.hi]] if copy is not None and copy.device.type == "cpu" else None
        beta1, beta2 = group["betas"]
        adam_step([param], [grad], [exp_avg], [exp_avg_sq], step=self._step_count(sub.tensor) + 1, lr=group["lr"],
                  beta1=beta1, beta2=beta2, eps=group["eps"], weight_decay=group["weight_decay"],
                  adamw_mode=group["adamw_mode"], param_copies=copies)
        if self.swapper is not None:
            self.swapper.release(index)

    def _acquire_moments(self, index: int, sub: SubGroup) -> list[torch.Tensor]:
        if self.swapper is not None:
            return self.swapper.acquire(index)
        state = self.state[self.masters[sub.tensor]]
        if "exp_avg" not in state:  # torch's layout: whole-slice moments, stepped by sub-group views
            host = self.host_masters[sub.tensor]
            state["exp_avg"], state["exp_avg_sq"] = torch.zeros_like(host), torch.zeros_like(host)
        return [state["exp_avg"][sub.lo:sub.hi], state["exp_avg_sq"][sub.lo:sub.hi]]

    def _publish_to_device(self, tensor: int) -> None:
        host, master = self.host_masters[tensor], self.masters[tensor]
        if host.data_ptr() != master.data_ptr():
            master.copy_(host, non_blocking=True)
        copy = self.param_copies[tensor]
        if copy is not None and copy.device.type != "cpu":
            copy.copy_(master)

    def _step_device_part(self, group: dict) -> None:
        if self.device_optimizer is None:
            return
        for inner in self.device_optimizer.param_groups:  # follow the LR schedule
            inner["lr"] = group["lr"]
        self.device_optimizer.step()
        with torch.no_grad():
            for index, master in enumerate(self.masters):
                if index not in self.host_masters and self.param_copies[index] is not None:
                    self.param_copies[index].copy_(master)

    # -- state -----------------------------------------------------------------------------
    def moments(self) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
        """Full ``(exp_avg, exp_avg_sq)`` of each offloaded master slice (read back from swap)."""
        result = {t: (torch.zeros_like(m), torch.zeros_like(m)) for t, m in self.host_masters.items()}
        for index, sub in enumerate(self.sub_groups):
            exp_avg, exp_avg_sq = self._acquire_moments(index, sub)
            result[sub.tensor][0][sub.lo:sub.hi].copy_(exp_avg)
            result[sub.tensor][1][sub.lo:sub.hi].copy_(exp_avg_sq)
            if self.swapper is not None:
                self.swapper.release(index)
        if self.swapper is not None:
            self.swapper.flush()
        return result

    def close(self) -> None:
        """Removes the swap files (also done at interpreter exit)."""
        if self.swapper is not None:
            self.swapper.close()

    def _on_device(self) -> list[int]:
        return [i for i in range(len(self.masters)) if i not in self.host_masters]

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
        own = {t: {"step": int(s["step"])} for t, s in states.items() if t in self.host_masters and "step" in s}
        super().load_state_dict({**state_dict, "state": own})
        for master in self.masters:  # torch may keep "step" as a tensor
            if "step" in self.state[master]:
                self.state[master]["step"] = int(self.state[master]["step"])
        for index, sub in enumerate(self.sub_groups):
            if "exp_avg" not in states.get(sub.tensor, {}):
                continue
            source = (states[sub.tensor]["exp_avg"], states[sub.tensor]["exp_avg_sq"])
            for target, value in zip(self._acquire_moments(index, sub), source):
                target.copy_(value.reshape(-1)[sub.lo:sub.hi])
            if self.swapper is not None:
                self.swapper.release(index)
        if self.swapper is not None:
            self.swapper.flush()
