"""Build several ops at once, each in its own process (compilation is single-threaded per op).

Run as ``python -m op_builder.prebuild <BuilderClass> <simd>`` to build one op; the parent
calls that in parallel. The cache's file lock makes concurrent builds of one op safe.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import op_builder
from op_builder.builder import OpBuilder, OpBuildError

_REPO_ROOT = str(Path(__file__).resolve().parent.parent)


def build_in_parallel(builders: list[OpBuilder], verbose: bool = False, rebuild_cached: bool = True) -> dict[str, str]:
    """Build every builder at once; ``{extension: "built" | "cached" | "skipped: why" | "failed: output"}``.

    With ``rebuild_cached=False`` ops already in the cache are not re-checked here (loading them
    later still rebuilds them if their sources changed); that saves a process start per op.
    """
    results, running = {}, {}
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [_REPO_ROOT, os.environ.get("PYTHONPATH")])))
    for builder in builders:
        reason = builder.incompatibility()
        if reason is not None:
            results[builder.extension_name] = f"skipped: {reason}"
            continue
        if not rebuild_cached and builder.is_cached():
            results[builder.extension_name] = "cached"
            continue
        command = [sys.executable, "-m", "op_builder.prebuild", type(builder).__name__, builder.simd]
        running[builder.extension_name] = subprocess.Popen(
            command, env=env, stdout=None if verbose else subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for name, process in running.items():
        output, _ = process.communicate()
        results[name] = "built" if process.returncode == 0 else f"failed: {output}"
    return results


def _main(argv: list[str]) -> int:
    class_name, simd = argv
    builder_class = getattr(op_builder, class_name)
    builder = builder_class(simd) if builder_class.uses_cpu_simd else builder_class()
    try:
        builder.load()
    except OpBuildError as error:
        print(error, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
