"""Builds the ``torch.optim`` optimizer that steps each rank's flat fp32 master slices."""
from __future__ import annotations

import torch


def _params_dict(params) -> dict:
    if params is None:
        return {}
    return params.model_dump(exclude_none=True) if hasattr(params, "model_dump") else dict(params)


def build_optimizer(optimizer_config, tensors: list[torch.Tensor]) -> torch.optim.Optimizer:
    """The optimizer an ``optimizer`` config block names, over ``tensors``.

    As in DeepSpeed, ``Adam`` applies decoupled weight decay (AdamW) unless
    ``params.adam_w_mode`` is false. The fused torch kernels are used for fp32 masters.
    """
    kind = optimizer_config.type
    p = _params_dict(optimizer_config.params)
    lr = p.get("lr", 1e-3)
    if kind in ("Adam", "AdamW"):
        decoupled = kind == "AdamW" or p.get("adam_w_mode", True)
        cls = torch.optim.AdamW if decoupled else torch.optim.Adam
        return cls(tensors, lr=lr, betas=tuple(p.get("betas", (0.9, 0.999))), eps=p.get("eps", 1e-8),
                   weight_decay=p.get("weight_decay", 0.0), fused=True)
    if kind == "SGD":
        return torch.optim.SGD(tensors, lr=lr, momentum=p.get("momentum", 0.0), dampening=p.get("dampening", 0.0),
                               weight_decay=p.get("weight_decay", 0.0), nesterov=p.get("nesterov", False))
    raise ValueError(f"optimizer.type: {kind!r} is not supported (Adam, AdamW, SGD)")
