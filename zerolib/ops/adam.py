"""The functional Adam step the ZeRO engine calls on its flat fp32 slices."""
from __future__ import annotations

from collections.abc import Sequence

import torch

from op_builder import CPUAdamBuilder
from zerolib.ops.adam_reference import adam_step_reference
from zerolib.ops.loader import load_op


def adam_step(
    params: Sequence[torch.Tensor],
    grads: Sequence[torch.Tensor],
    exp_avgs: Sequence[torch.Tensor],
    exp_avg_sqs: Sequence[torch.Tensor],
    *,
    step: int | Sequence[int],
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    adamw_mode: bool,
    bias_correction: bool = True,
    param_copies: Sequence[torch.Tensor] | None = None,
    simd: str | None = None,
    require_native: bool = False,
) -> None:
    """One Adam (``adamw_mode=False``, L2 decay) or AdamW step over lists of tensors, in place.

    ``params`` are contiguous fp32 tensors; ``grads`` fp32, bf16 or fp16; ``exp_avgs`` and
    ``exp_avg_sqs`` fp32 or bf16 (both the same); ``param_copies`` optional bf16/fp16 tensors
    that receive the updated parameters in the same pass. ``step`` (counting from 1) is one
    int for all tensors or one per tensor. All tensors go to the native kernel in one call; on
    non-CPU tensors, or when the kernel cannot build, the PyTorch reference runs instead.
    ``simd`` forces a CPU path and ``require_native`` turns a build failure into an error.
    """
    steps = [step] if isinstance(step, int) else list(step)
    copies = list(param_copies) if param_copies else []
    args = (params, grads, exp_avgs, exp_avg_sqs, copies, steps, lr, beta1, beta2, eps, weight_decay, adamw_mode,
            bias_correction)
    on_cpu = not params or params[0].device.type == "cpu"
    ops = load_op(CPUAdamBuilder, simd=simd, require_native=require_native) if on_cpu else None
    if ops is None:
        adam_step_reference(*args)
    else:
        ops.call("adam_step", *args)
