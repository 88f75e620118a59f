"""The base class every native op builder derives from: sources, flags, cache, lock, errors."""
from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import sys
from pathlib import Path

from op_builder.cpu_features import missing_cpu_flags, selected_simd_level, simd_compiler_flags

CACHE_ENV_VAR = "ZEROLIB_OPS_CACHE"
CSRC_DIR = Path(__file__).resolve().parent.parent / "csrc"

# Memory-bound kernels: -O3 vectorises, -fno-math-errno lets sqrt and rounding vectorise at all
# (errno is a side effect), -fno-trapping-math allows if-converting the tails. No -ffast-math:
# it would reorder the Adam arithmetic and break the comparison with torch.
BASE_CXX_FLAGS = ("-O3", "-fno-math-errno", "-fno-trapping-math", "-fopenmp", "-Wno-c++20-extensions")


class OpBuildError(RuntimeError):
    """A native op could not be built or loaded; the message holds the compiler's output."""


def cache_root() -> Path:
    """Where compiled ops live: ``$ZEROLIB_OPS_CACHE`` or ``~/.cache/zerolib/ops``.

    A sub-folder per torch and Python version keeps binaries built against one torch from being
    loaded into another (their C++ ABI differs).
    """
    import torch

    root = Path(os.environ.get(CACHE_ENV_VAR) or Path.home() / ".cache" / "zerolib" / "ops")
    tag = re.sub(r"[^A-Za-z0-9.]+", "_", f"torch{torch.__version__}_py{sys.version_info[0]}{sys.version_info[1]}")
    return root / tag


@contextlib.contextmanager
def _exclusive_lock(lock_path: Path):
    """An inter-process lock (flock): ranks that load an op at once build it once, in turn.

    flock is released by the kernel when a process dies, so a crashed build never leaves a stale
    lock behind (torch's own lock file can).
    """
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


class OpBuilder:
    """Describes one native op: its sources in ``csrc/``, its flags, and whether it builds here.

    Subclasses set ``op_name`` and ``sources`` and may extend ``extra_cxx_flags`` or
    ``incompatibility``. ``simd`` picks the CPU path; None means the one selected for this CPU.
    """

    op_name: str = ""
    sources: tuple[str, ...] = ()
    # False for ops with no CPU SIMD code (CUDA ops): they get one build, not one per path.
    uses_cpu_simd: bool = True

    def __init__(self, simd: str | None = None):
        self.simd = (simd or selected_simd_level()) if self.uses_cpu_simd else "none"

    @property
    def extension_name(self) -> str:
        """The extension's (and its torch.ops namespace's) name, distinct per SIMD path."""
        return f"zerolib_{self.op_name}" + (f"_{self.simd}" if self.uses_cpu_simd else "")

    def source_paths(self) -> list[str]:
        return [str(CSRC_DIR / source) for source in self.sources]

    def cxx_flags(self) -> list[str]:
        """Host compiler flags: the shared base, this SIMD path's, and the op namespace."""
        simd_flags = simd_compiler_flags(self.simd) if self.uses_cpu_simd else []
        return [*BASE_CXX_FLAGS, *simd_flags, f"-DZEROLIB_OP_NS={self.extension_name}", f"-I{CSRC_DIR / 'includes'}"]

    def cuda_flags(self) -> list[str]:
        return []

    def incompatibility(self) -> str | None:
        """Why this op cannot build on this machine, or None when it can."""
        from torch.utils.cpp_extension import is_ninja_available

        compiler = os.environ.get("CXX", "c++")
        if shutil.which(compiler) is None:
            return f"no C++ compiler: {compiler!r} is not on PATH (set CXX)"
        if not is_ninja_available():
            return "ninja is not installed (pip install ninja)"
        missing = [path for path in self.source_paths() if not os.path.exists(path)]
        if missing:
            return f"sources missing: {', '.join(missing)}"
        if self.uses_cpu_simd and missing_cpu_flags(self.simd):
            return f"this CPU lacks {', '.join(missing_cpu_flags(self.simd))} for the {self.simd} path"
        return None

    def is_compatible(self) -> bool:
        return self.incompatibility() is None

    @property
    def build_dir(self) -> Path:
        return cache_root() / self.extension_name

    @property
    def library_path(self) -> Path:
        return self.build_dir / f"{self.extension_name}.so"

    def is_cached(self) -> bool:
        """A compiled library for this op and SIMD path is in the cache (it may be rebuilt if stale)."""
        return self.library_path.exists()

    def load(self, verbose: bool = False):
        """Build (or reuse from the cache) and load the op; return its ``torch.ops`` namespace.

        Raises OpBuildError, naming the op, the SIMD path, the flags and the compiler's output,
        when the op is incompatible or its build fails.
        """
        import torch
        from torch.utils import cpp_extension

        reason = self.incompatibility()
        if reason is not None:
            raise OpBuildError(f"op {self.op_name!r} ({self.extension_name}) cannot build here: {reason}")
        self.build_dir.mkdir(parents=True, exist_ok=True)
        with _exclusive_lock(cache_root() / f"{self.extension_name}.lock"):
            try:
                cpp_extension.load(
                    name=self.extension_name,
                    sources=self.source_paths(),
                    extra_cflags=self.cxx_flags(),
                    extra_cuda_cflags=self.cuda_flags(),
                    extra_ldflags=["-fopenmp"],
                    build_directory=str(self.build_dir),
                    is_python_module=False,
                    verbose=verbose,
                )
            except Exception as error:  # torch raises RuntimeError with ninja's output appended
                raise OpBuildError(
                    f"building op {self.op_name!r} ({self.extension_name}, SIMD path {self.simd}) failed.\n"
                    f"sources: {' '.join(self.source_paths())}\n"
                    f"flags: {' '.join(self.cxx_flags())}\n"
                    f"compiler output:\n{error}"
                ) from error
        return getattr(torch.ops, self.extension_name)
