"""Random number generator states, in a form ``torch.load(weights_only=True)`` accepts."""
from __future__ import annotations

import random

import torch

try:  # numpy is optional for zerolib; its state is saved when it is installed
    import numpy
except ImportError:  # pragma: no cover - numpy is present in the test environment
    numpy = None


def capture_rng() -> dict:
    """This process's torch CPU, CUDA (if any), Python ``random`` and numpy states."""
    version, internal, gauss = random.getstate()
    state = {"torch": torch.get_rng_state(), "python": {"version": version, "state": list(internal),
                                                         "gauss": gauss}}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    if numpy is not None:
        kind, keys, pos, has_gauss, cached = numpy.random.get_state()
        state["numpy"] = {"kind": kind, "keys": torch.from_numpy(keys.astype("int64")), "pos": int(pos),
                          "has_gauss": int(has_gauss), "cached_gaussian": float(cached)}
    return state


def restore_rng(state: dict) -> None:
    """Puts back what :func:`capture_rng` captured (CUDA/numpy only where saved and present)."""
    torch.set_rng_state(state["torch"])
    python = state["python"]
    random.setstate((python["version"], tuple(python["state"]), python["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if "numpy" in state and numpy is not None:
        saved = state["numpy"]
        numpy.random.set_state((saved["kind"], saved["keys"].numpy().astype("uint32"), saved["pos"],
                                saved["has_gauss"], saved["cached_gaussian"]))
