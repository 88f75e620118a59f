"""Builders for zerolib's native ops: one class per op, JIT-compiled into a shared cache.

``prebuild_all()`` is what ``ZEROLIB_BUILD_OPS=1 pip install .`` runs (see setup.py).
"""
from __future__ import annotations

import sys

from op_builder.builder import CACHE_ENV_VAR, OpBuilder, OpBuildError, cache_root
from op_builder.cpu_features import (
    SIMD_ENV_VAR,
    SIMD_LEVELS,
    runnable_simd_levels,
    selected_simd_level,
    simd_compiler_flags,
)
from op_builder.ops import (
    LIBRARY_BUILDERS,
    AdamMemoryCeilingBuilder,
    CPUAdamBuilder,
    CUDAQuantizerBuilder,
    QuantizerBuilder,
)


def prebuild_all(verbose: bool = False) -> dict[str, str]:
    """Build every library op that can build here, for this CPU's SIMD path, into the cache.

    Builds run in parallel processes. A failure is printed and does not stop the others (the
    library falls back to PyTorch at run time). Returns
    ``{extension name: "built" | "skipped: <why>" | "failed: <compiler output>"}``.
    """
    from op_builder.prebuild import build_in_parallel

    results = build_in_parallel([builder_class() for builder_class in LIBRARY_BUILDERS], verbose=verbose)
    for name, outcome in results.items():
        print(f"zerolib prebuild {name}: {outcome}", file=sys.stderr)
    return results


__all__ = [
    "CACHE_ENV_VAR",
    "SIMD_ENV_VAR",
    "SIMD_LEVELS",
    "LIBRARY_BUILDERS",
    "AdamMemoryCeilingBuilder",
    "CPUAdamBuilder",
    "CUDAQuantizerBuilder",
    "OpBuilder",
    "OpBuildError",
    "QuantizerBuilder",
    "cache_root",
    "prebuild_all",
    "runnable_simd_levels",
    "selected_simd_level",
    "simd_compiler_flags",
]
