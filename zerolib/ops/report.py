"""``zerolib report``: which native ops can build here, which are built and cached, and why not.

Run as ``zerolib report`` or ``python -m zerolib.ops.report``. ``--build`` builds what is
compatible first (showing compiler errors); ``--all-simd`` lists every SIMD path, not only the
selected one.
"""
from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys

from op_builder import (
    CACHE_ENV_VAR,
    LIBRARY_BUILDERS,
    SIMD_ENV_VAR,
    SIMD_LEVELS,
    OpBuildError,
    cache_root,
    runnable_simd_levels,
    selected_simd_level,
)


def _compiler_version() -> str:
    compiler = os.environ.get("CXX", "c++")
    if shutil.which(compiler) is None:
        return f"{compiler}: not found"
    output = subprocess.run([compiler, "--version"], capture_output=True, text=True).stdout
    return output.splitlines()[0] if output else compiler


def _nvcc_version() -> str:
    from torch.utils.cpp_extension import CUDA_HOME

    nvcc = shutil.which("nvcc") or (os.path.join(CUDA_HOME, "bin", "nvcc") if CUDA_HOME else None)
    if not nvcc or not os.path.exists(nvcc):
        return "not found"
    lines = subprocess.run([nvcc, "--version"], capture_output=True, text=True).stdout.strip().splitlines()
    return f"{nvcc}: {lines[-1] if lines else '?'}"


def environment_lines() -> list[str]:
    """Versions and settings that decide how ops build."""
    import torch

    try:
        selected = selected_simd_level()
    except ValueError as error:
        selected = f"invalid ({error})"
    return [
        f"python          {platform.python_version()} ({sys.executable})",
        f"torch           {torch.__version__} (CUDA {torch.version.cuda or 'none: CPU build'}, "
        f"device visible: {torch.cuda.is_available()})",
        f"C++ compiler    {_compiler_version()}",
        f"nvcc            {_nvcc_version()}",
        f"CPU SIMD paths  runnable: {', '.join(runnable_simd_levels())}; selected: {selected} "
        f"({SIMD_ENV_VAR}={os.environ.get(SIMD_ENV_VAR, '<unset>')})",
        f"op cache        {cache_root()} ({CACHE_ENV_VAR}={os.environ.get(CACHE_ENV_VAR, '<unset>')})",
    ]


def op_rows(simd_levels, build: bool) -> list[tuple[str, str, str, str, str]]:
    """(op, compatible, built, cached, why not) for each library op and SIMD path."""
    rows = []
    for builder_class in LIBRARY_BUILDERS:
        levels = simd_levels if builder_class.uses_cpu_simd else [None]
        for level in levels:
            builder = builder_class(level) if builder_class.uses_cpu_simd else builder_class()
            reason = builder.incompatibility()
            built, why = "no", reason or ""
            if reason is None and build:
                try:
                    builder.load()
                    built = "yes"
                except OpBuildError as error:
                    built, why = "FAILED", str(error)
            elif reason is None and builder.is_cached():
                built = "yes (cached)"
            elif reason is None:
                why = "not built yet: builds on first use, or run `zerolib report --build`"
            cached = "yes" if builder.is_cached() else "no"
            rows.append((builder.extension_name, "yes" if reason is None else "no", built, cached, why))
    return rows


def main(argv: list[str] | None = None) -> int:
    """Print the report; return 1 if ``--build`` was asked and a compatible op failed to build."""
    parser = argparse.ArgumentParser(prog="zerolib report", description=__doc__.splitlines()[0])
    parser.add_argument("--build", action="store_true", help="build every compatible op first")
    parser.add_argument("--all-simd", action="store_true", help="list every SIMD path, not only the selected one")
    args = parser.parse_args(argv)
    print("\n".join(environment_lines()))
    try:
        levels = list(SIMD_LEVELS) if args.all_simd else [selected_simd_level()]
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    rows = op_rows(levels, args.build)
    header = ("op", "compatible", "built", "cached", "why not")
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(4)]
    print()
    for row in [header, *rows]:
        first_line = row[4].splitlines()[0] if row[4] else ""
        print("  ".join(cell.ljust(width) for cell, width in zip(row[:4], widths)) + "  " + first_line)
    for row in rows:
        if row[2] == "FAILED":
            print(f"\n--- {row[0]} build output ---\n{row[4]}")
    return 1 if any(row[2] == "FAILED" for row in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
