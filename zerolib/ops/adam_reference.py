"""Adam/AdamW in plain PyTorch with the native kernel's exact semantics (the fallback and the oracle).

All arithmetic is fp32. Grads of any float dtype are upcast; moments stored in bf16 are upcast,
updated, and rounded back (the parameter update uses the unrounded fp32 moments, as the kernel
does); ``param_copies`` receive the new parameter rounded to their dtype.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch


def _check_lists(params, grads, exp_avgs, exp_avg_sqs, param_copies, steps) -> None:
    n = len(params)
    if not len(grads) == len(exp_avgs) == len(exp_avg_sqs) == n:
        raise ValueError(
            f"adam_step: got {n} params, {len(grads)} grads, {len(exp_avgs)} exp_avgs, "
            f"{len(exp_avg_sqs)} exp_avg_sqs; the lists must have equal lengths"
        )
    if param_copies and len(param_copies) != n:
        raise ValueError(f"adam_step: got {len(param_copies)} param_copies for {n} params")
    if len(steps) not in (1, n):
        raise ValueError(f"adam_step: got {len(steps)} steps for {n} params (pass one or one per param)")
    for i, param in enumerate(params):
        if param.dtype != torch.float32:
            raise TypeError(f"adam_step: params[{i}] has dtype {param.dtype}, expected torch.float32")
        for name, tensors in (("grads", grads), ("exp_avgs", exp_avgs), ("exp_avg_sqs", exp_avg_sqs)):
            if tensors[i].numel() != param.numel():
                raise ValueError(
                    f"adam_step: {name}[{i}] has {tensors[i].numel()} elements but params[{i}] has {param.numel()}"
                )


def adam_step_reference(
    params: Sequence[torch.Tensor],
    grads: Sequence[torch.Tensor],
    exp_avgs: Sequence[torch.Tensor],
    exp_avg_sqs: Sequence[torch.Tensor],
    param_copies: Sequence[torch.Tensor],
    steps: Sequence[int],
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    adamw_mode: bool,
    bias_correction: bool,
) -> None:
    """Update params, exp_avgs, exp_avg_sqs (and param_copies) in place; see the module docstring."""
    _check_lists(params, grads, exp_avgs, exp_avg_sqs, param_copies, steps)
    with torch.no_grad():
        for i, param in enumerate(params):
            step = steps[0] if len(steps) == 1 else steps[i]
            if step < 1:
                raise ValueError(f"adam_step: step for params[{i}] is {step}; steps count from 1")
            bias_correction1 = 1 - beta1**step if bias_correction else 1.0
            bias_correction2 = 1 - beta2**step if bias_correction else 1.0
            grad = grads[i].float()
            if not adamw_mode and weight_decay:
                grad = grad.add(param, alpha=weight_decay)
            exp_avg = exp_avgs[i].float().mul_(beta1).add_(grad, alpha=1 - beta1)
            exp_avg_sq = exp_avg_sqs[i].float().mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
            exp_avgs[i].copy_(exp_avg)
            exp_avg_sqs[i].copy_(exp_avg_sq)
            if adamw_mode and weight_decay:
                param.mul_(1 - lr * weight_decay)
            denom = exp_avg_sq.sqrt().div_(math.sqrt(bias_correction2)).add_(eps)  # not in place: may alias the state
            param.addcdiv_(exp_avg, denom, value=-lr / bias_correction1)
            if param_copies:
                param_copies[i].copy_(param)
