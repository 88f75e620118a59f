"""Bytes held by tensors, counting each storage once (views share their base's storage)."""
from __future__ import annotations

import torch


def unique_storage_bytes(groups: dict[str, list[torch.Tensor]]) -> dict[str, int]:
    """Bytes per group; a storage already counted in an earlier group is not counted again."""
    seen: set[int] = set()
    result = {}
    for kind, tensors in groups.items():
        total = 0
        for tensor in tensors:
            storage = tensor.untyped_storage()
            key = storage.data_ptr()
            if key in seen or storage.nbytes() == 0:
                continue
            seen.add(key)
            total += storage.nbytes()
        result[kind] = total
    return result
