"""CPUAdam: a torch.optim.Optimizer whose step is one native call per parameter group."""
from __future__ import annotations

from collections.abc import Sequence

import torch

from zerolib.ops.adam import adam_step

_MOMENT_DTYPES = (torch.float32, torch.bfloat16)


class CPUAdam(torch.optim.Optimizer):
    """Adam/AdamW for fp32 parameters on the CPU (ZeRO-Offload's optimizer).

    ``adamw_mode=True`` applies decoupled weight decay (AdamW); False adds ``weight_decay * p``
    to the gradient (Adam's L2). amsgrad is not supported. ``moment_dtype=torch.bfloat16``
    stores ``exp_avg`` and ``exp_avg_sq`` in bf16 (18 instead of 28 bytes moved per parameter;
    the arithmetic stays fp32). Gradients may be fp32, bf16 or fp16. Like torch's Adam, each
    parameter counts its own steps (a parameter without a gradient is skipped). Uses the native
    kernel when it builds, else the PyTorch reference with one warning (``require_native=True``
    makes that an error).
    """

    def __init__(
        self,
        params,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        adamw_mode: bool = True,
        bias_correction: bool = True,
        moment_dtype: torch.dtype = torch.float32,
        *,
        require_native: bool = False,
    ):
        if lr < 0:
            raise ValueError(f"CPUAdam: lr must be >= 0, got {lr}")
        if not all(0.0 <= beta < 1.0 for beta in betas) or len(betas) != 2:
            raise ValueError(f"CPUAdam: betas must be two numbers in [0, 1), got {betas}")
        if eps < 0 or weight_decay < 0:
            raise ValueError(f"CPUAdam: eps and weight_decay must be >= 0, got eps={eps}, weight_decay={weight_decay}")
        if moment_dtype not in _MOMENT_DTYPES:
            raise ValueError(f"CPUAdam: moment_dtype must be torch.float32 or torch.bfloat16, got {moment_dtype}")
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, adamw_mode=adamw_mode,
                        bias_correction=bias_correction, moment_dtype=moment_dtype)
        super().__init__(params, defaults)
        self.require_native = require_native

    def _group_tensors(self, group: dict, group_index: int, copies: Sequence[torch.Tensor] | None):
        """The lists adam_step takes for this group's params that have a gradient."""
        params, grads, exp_avgs, exp_avg_sqs, steps, out_copies = [], [], [], [], [], []
        for index, param in enumerate(group["params"]):
            if param.grad is None:
                continue
            where = f"param_groups[{group_index}]['params'][{index}]"
            if param.dtype != torch.float32 or not param.is_contiguous():
                raise TypeError(f"CPUAdam: {where} must be a contiguous fp32 tensor, got {param.dtype}")
            if param.grad.is_sparse:
                raise TypeError(f"CPUAdam: {where} has a sparse gradient, which is not supported")
            state = self.state[param]
            if not state:
                state["step"] = 0
                state["exp_avg"] = torch.zeros_like(param, dtype=group["moment_dtype"])
                state["exp_avg_sq"] = torch.zeros_like(param, dtype=group["moment_dtype"])
            state["step"] += 1
            params.append(param)
            grads.append(param.grad.contiguous())
            exp_avgs.append(state["exp_avg"])
            exp_avg_sqs.append(state["exp_avg_sq"])
            steps.append(state["step"])
            if copies is not None:
                out_copies.append(copies[index])
        return params, grads, exp_avgs, exp_avg_sqs, steps, out_copies

    def load_state_dict(self, state_dict: dict) -> None:
        """Load as torch does (a torch.optim.Adam/AdamW state dict works too), then restore each
        group's moment dtype: torch casts floating state to the parameter's dtype, which would
        silently turn bf16 moments into fp32."""
        super().load_state_dict(state_dict)
        for group in self.param_groups:
            for key, default in self.defaults.items():  # a torch.optim.AdamW state has none of ours
                group.setdefault(key, default)
            for param in group["params"]:
                state = self.state.get(param)
                if state and "step" in state:
                    # torch keeps a loaded "step" tensor by reference: copy its value out now.
                    state["step"] = int(state["step"])
                for key in ("exp_avg", "exp_avg_sq"):
                    if state and key in state:
                        state[key] = state[key].to(group["moment_dtype"]).contiguous()

    @torch.no_grad()
    def step(self, closure=None, param_copies: Sequence[Sequence[torch.Tensor]] | None = None):
        """One optimizer step. ``param_copies[g][i]``, if given, is a bf16/fp16 tensor that receives
        ``param_groups[g]['params'][i]`` after the update, written in the same pass."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        if param_copies is not None and len(param_copies) != len(self.param_groups):
            raise ValueError(f"CPUAdam.step: param_copies has {len(param_copies)} groups, "
                             f"the optimizer has {len(self.param_groups)}")
        for group_index, group in enumerate(self.param_groups):
            copies = None if param_copies is None else param_copies[group_index]
            params, grads, exp_avgs, exp_avg_sqs, steps, out_copies = self._group_tensors(group, group_index, copies)
            if not params:
                continue
            beta1, beta2 = group["betas"]
            adam_step(params, grads, exp_avgs, exp_avg_sqs, step=steps, lr=group["lr"], beta1=beta1, beta2=beta2,
                      eps=group["eps"], weight_decay=group["weight_decay"], adamw_mode=group["adamw_mode"],
                      bias_correction=group["bias_correction"], param_copies=out_copies or None,
                      require_native=self.require_native)
        return loss
