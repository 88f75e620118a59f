"""The base class every native op builder derives from: sources, flags, cache, lock, errors.

An op is two shared libraries, both JIT-built by torch.utils.cpp_extension and ninja:
- the *binding* (``zerolib_<op>``): checks tensors and registers the op with torch.ops. It
  includes torch's heavy headers, so it is compiled once per op, not once per SIMD path.
- the *kernels* (``zerolib_<op>_kernels_<simd>``): plain C++ on raw pointers, compiled with one
  SIMD path's flags; cheap to build, so every path gets its own library and cache name. It
  exports a C function returning a table of entry points; the binding calls through it.
"""
from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import fcntl
import os
import re
import shutil
import sys
from pathlib import Path
from typing import Any

from op_builder.cpu_features import missing_cpu_flags, selected_simd_level, simd_compiler_flags

CACHE_ENV_VAR = "ZEROLIB_OPS_CACHE"


def _find_csrc() -> Path:
    """The C++ sources: ``csrc/`` beside ``op_builder/`` in a checkout, or ``op_builder/csrc``
    when an installed package ships them as package data."""
    here = Path(__file__).resolve().parent
    packaged = here / "csrc"
    return packaged if packaged.is_dir() else here.parent / "csrc"


CSRC_DIR = _find_csrc()

# Memory-bound kernels: -O3 vectorises, -fno-math-errno lets sqrt and rounding vectorise at all
# (errno is a side effect), -fno-trapping-math allows if-converting the tails. No -ffast-math:
# it would reorder the Adam arithmetic and break the comparison with torch.
BASE_CXX_FLAGS = ("-O3", "-fno-math-errno", "-fno-trapping-math", "-fopenmp", "-Wno-c++20-extensions",
                  f"-I{CSRC_DIR / 'includes'}")
# Hidden symbols: two SIMD paths of one op may be loaded into one process, and their inline
# helpers must never resolve to each other (an AVX-512 copy called from the scalar path).
KERNEL_ONLY_FLAGS = ("-fvisibility=hidden",)


class OpBuildError(RuntimeError):
    """A native op could not be built or loaded; the message holds the compiler's output."""


@dataclasses.dataclass(frozen=True)
class NativeOp:
    """A loaded op: its torch.ops namespace (or None), its kernel library and kernel table."""

    ops: Any
    kernel_library: ctypes.CDLL | None
    kernel_table: int  # address of the kernels' entry-point table (0 when the op has none)
    simd: str

    def call(self, name: str, *args):
        """Call op ``name``, passing the kernel table first when the op has one."""
        function = getattr(self.ops, name)
        return function(self.kernel_table, *args) if self.kernel_table else function(*args)


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
def exclusive_lock(lock_path: Path):
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

    Subclasses set ``op_name``, ``binding_sources`` and/or ``kernel_sources`` and may extend
    ``incompatibility``. ``simd`` picks the CPU path; None means the one selected for this CPU.
    """

    op_name: str = ""
    binding_sources: tuple[str, ...] = ()
    kernel_sources: tuple[str, ...] = ()
    # False for ops with no CPU SIMD code (CUDA ops): they get one build, not one per path.
    uses_cpu_simd: bool = True

    def __init__(self, simd: str | None = None):
        self.simd = (simd or selected_simd_level()) if self.uses_cpu_simd else "none"

    @property
    def binding_name(self) -> str:
        return f"zerolib_{self.op_name}"

    @property
    def kernel_name(self) -> str:
        """The kernel library's name, distinct per SIMD path."""
        return f"zerolib_{self.op_name}_kernels_{self.simd}"

    @property
    def extension_name(self) -> str:
        """How reports and warnings name this op on this path."""
        return self.kernel_name if self.kernel_sources else self.binding_name

    def _targets(self) -> list[tuple[str, tuple[str, ...]]]:
        targets = [(self.binding_name, self.binding_sources), (self.kernel_name, self.kernel_sources)]
        return [(name, sources) for name, sources in targets if sources]

    def source_paths(self) -> list[str]:
        return [str(CSRC_DIR / source) for _, sources in self._targets() for source in sources]

    def cxx_flags(self, kernel: bool = True) -> list[str]:
        """Host compiler flags; the kernel library adds this SIMD path's and hides its symbols."""
        if not kernel:
            return list(BASE_CXX_FLAGS)
        return [*BASE_CXX_FLAGS, *KERNEL_ONLY_FLAGS, *simd_compiler_flags(self.simd)]

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

    def library_paths(self) -> list[Path]:
        return [cache_root() / name / f"{name}.so" for name, _ in self._targets()]

    def is_cached(self) -> bool:
        """Compiled libraries for this op and SIMD path are in the cache (they are rebuilt if stale)."""
        return all(path.exists() for path in self.library_paths())

    def _build(self, name: str, sources: tuple[str, ...], verbose: bool) -> Path:
        from torch.utils import cpp_extension

        kernel = name == self.kernel_name
        build_dir = cache_root() / name
        build_dir.mkdir(parents=True, exist_ok=True)
        flags = self.cxx_flags(kernel=kernel)
        with exclusive_lock(cache_root() / f"{name}.lock"):
            try:
                cpp_extension.load(
                    name=name,
                    sources=[str(CSRC_DIR / source) for source in sources],
                    extra_cflags=flags,
                    extra_cuda_cflags=self.cuda_flags(),
                    extra_ldflags=["-fopenmp"],
                    build_directory=str(build_dir),
                    is_python_module=False,
                    verbose=verbose,
                )
            except Exception as error:  # torch raises RuntimeError with ninja's output appended
                raise OpBuildError(
                    f"building op {self.op_name!r} ({name}, SIMD path {self.simd}) failed.\n"
                    f"sources: {' '.join(sources)} (in {CSRC_DIR})\n"
                    f"flags: {' '.join(flags)}\n"
                    f"compiler output:\n{error}"
                ) from error
        return build_dir / f"{name}.so"

    def load(self, verbose: bool = False) -> NativeOp:
        """Build (or reuse from the cache) and load the op.

        Raises OpBuildError, naming the op, the SIMD path, the flags and the compiler's output,
        when the op is incompatible or its build fails.
        """
        import torch

        reason = self.incompatibility()
        if reason is not None:
            raise OpBuildError(f"op {self.op_name!r} ({self.extension_name}) cannot build here: {reason}")
        ops, library, table = None, None, 0
        for name, sources in self._targets():
            path = self._build(name, sources, verbose)
            if name == self.kernel_name:
                library = ctypes.CDLL(str(path))
                entry = getattr(library, f"zerolib_{self.op_name}_kernel_table")
                entry.restype = ctypes.c_void_p
                table = entry()
            else:
                ops = getattr(torch.ops, name)
        return NativeOp(ops, library, table, self.simd)
