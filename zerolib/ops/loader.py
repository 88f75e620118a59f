"""Load a native op once per process, or fall back to the PyTorch reference with one warning."""
from __future__ import annotations

import functools
import warnings

from op_builder import OpBuilder, OpBuildError, selected_simd_level


class NativeOpFallbackWarning(UserWarning):
    """A native op could not be built; zerolib uses the (slower) PyTorch reference instead."""


@functools.cache
def _load_once(builder_class: type[OpBuilder], simd: str | None):
    """Build/load ``builder_class`` for ``simd`` once per process: (torch.ops namespace, error).

    The cache is the process-wide record of loaded extensions (a shared library can be loaded
    only once anyway); it also guarantees the fallback warning is issued once per op and path.
    """
    builder = builder_class(simd) if builder_class.uses_cpu_simd else builder_class()
    try:
        return builder.load(), None
    except OpBuildError as error:
        warnings.warn(
            f"zerolib: native op {builder.extension_name!r} is unavailable, using the PyTorch reference "
            f"(run `zerolib report` for details; pass require_native=True to make this an error).\n{error}",
            NativeOpFallbackWarning,
            stacklevel=3,
        )
        return None, error


def load_op(builder_class: type[OpBuilder], *, simd: str | None = None, require_native: bool = False):
    """The op's ``torch.ops`` namespace, or None to mean "use the PyTorch reference".

    ``simd`` picks a CPU path (default: the one selected for this CPU, see ``ZEROLIB_SIMD``).
    With ``require_native=True`` a failed build raises the OpBuildError (with the compiler output)
    instead of returning None.
    """
    if builder_class.uses_cpu_simd:
        simd = simd or selected_simd_level()
    ops, error = _load_once(builder_class, simd)
    if ops is None and require_native:
        raise error
    return ops
