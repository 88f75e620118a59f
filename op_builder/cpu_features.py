"""Which SIMD path the native CPU ops are compiled for.

Three paths exist: ``avx512`` (AVX-512 F/BW/VL plus AVX2, FMA, F16C), ``avx2`` (AVX2, FMA, F16C)
and ``scalar`` (no explicit intrinsics). The best path the CPU can run is chosen unless
``ZEROLIB_SIMD`` forces a lower one. Each path is compiled into its own extension (distinct cache
name), so switching paths never reuses a binary built for another one.
"""
from __future__ import annotations

import functools
import os
import platform

SIMD_ENV_VAR = "ZEROLIB_SIMD"

# Best first. The flags are the CPU features a path needs, as /proc/cpuinfo spells them.
SIMD_LEVELS = ("avx512", "avx2", "scalar")
_REQUIRED_CPU_FLAGS = {
    "avx512": ("avx512f", "avx512bw", "avx512vl", "avx2", "fma", "f16c"),
    "avx2": ("avx2", "fma", "f16c"),
    "scalar": (),
}
# Explicit -m flags instead of -march=native: the avx2 build must not pick up AVX-512
# instructions on a machine that has them, or it would crash on a CPU that does not.
_COMPILER_FLAGS = {
    "avx512": ("-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx2", "-mfma", "-mf16c"),
    "avx2": ("-mavx2", "-mfma", "-mf16c"),
    "scalar": (),
}


@functools.cache  # the CPU does not change while the process runs; reading it costs ~1 ms
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (lower case), from /proc/cpuinfo or, elsewhere, py-cpuinfo."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    if platform.machine().lower() not in ("x86_64", "amd64", "i386", "i686"):
        return frozenset()
    import cpuinfo  # py-cpuinfo; slow (it may spawn a process), so only used off Linux

    return frozenset(flag.lower() for flag in cpuinfo.get_cpu_info().get("flags", ()))


def runnable_simd_levels(flags: frozenset[str] | None = None) -> tuple[str, ...]:
    """Every SIMD path this CPU can execute, best first (``scalar`` is always last)."""
    flags = cpu_flags() if flags is None else flags
    return tuple(level for level in SIMD_LEVELS if set(_REQUIRED_CPU_FLAGS[level]) <= flags)


def missing_cpu_flags(level: str, flags: frozenset[str] | None = None) -> tuple[str, ...]:
    """The CPU features ``level`` needs that this CPU lacks (empty when it can run it)."""
    flags = cpu_flags() if flags is None else flags
    return tuple(flag for flag in _REQUIRED_CPU_FLAGS[check_simd_level(level)] if flag not in flags)


def check_simd_level(level: str) -> str:
    """Return ``level`` if it names a SIMD path, else raise ValueError listing the valid ones."""
    if level not in SIMD_LEVELS:
        raise ValueError(f"unknown SIMD level {level!r}; expected one of {', '.join(SIMD_LEVELS)}")
    return level


def selected_simd_level(flags: frozenset[str] | None = None) -> str:
    """The path ops are built for: the best runnable one, or ``ZEROLIB_SIMD`` if set.

    Forcing a path the CPU cannot run is an error rather than a silent downgrade, so that a
    benchmark or test never measures a different path from the one it asked for.
    """
    runnable = runnable_simd_levels(flags)
    forced = os.environ.get(SIMD_ENV_VAR, "").strip().lower()
    if not forced:
        return runnable[0]
    try:
        check_simd_level(forced)
    except ValueError as error:
        raise ValueError(f"{SIMD_ENV_VAR}={forced!r}: {error}") from None
    if forced not in runnable:
        missing = ", ".join(missing_cpu_flags(forced, flags))
        raise ValueError(f"{SIMD_ENV_VAR}={forced} but this CPU lacks {missing}; runnable: {', '.join(runnable)}")
    return forced


def simd_compiler_flags(level: str) -> list[str]:
    """The gcc/clang flags that enable ``level``'s instructions."""
    return list(_COMPILER_FLAGS[check_simd_level(level)])
