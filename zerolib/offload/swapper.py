"""Groups of tensors kept in swap files, brought into one of a few aligned buffers only while in
use (ZeRO-Infinity's NVMe tier).

A *group* is what is swapped at once: an optimizer sub-group (fp32 master, ``exp_avg``,
``exp_avg_sq``), a sub-group's gradient, or one stage-3 parameter shard. Group ``g`` holds
``tensors_per_group`` tensors of ``numels[g]`` elements of ``dtype``, stored back to back (each
padded to 4 KiB) in ``<nvme_path>/zerolib_rank<r>_<tag>_<id>_<g>.swp``. Every file is
allocated at construction, so a full disk fails before training starts, naming the file and
the bytes; afterwards each write overwrites its file in place.

At most ``buffer_count`` groups are in memory at once: the ones in use, the ones read ahead
(:meth:`prefetch`) and the ones whose write-back is in flight. A group whose write failed is
marked lost: acquiring it raises instead of reading a half-written file. Files are removed by
:meth:`close`, when the swapper is garbage-collected, or at interpreter exit.
"""
from __future__ import annotations

import os
import shutil
import uuid
import weakref
from collections.abc import Mapping, Sequence
from concurrent.futures import Future

import torch

from zerolib.offload.aio import AioSettings, AsyncFileIO, SharedFileIO, SwapIOError, aligned_buffer, round_up


def prepare_directory(path: str, nbytes: int) -> None:
    """Creates ``path`` if needed; fails naming it when it is unwritable or lacks ``nbytes`` free."""
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as error:
        raise OSError(error.errno, f"offload: cannot create nvme_path {path!r}: {error.strerror}") from error
    if not os.access(path, os.W_OK | os.X_OK):
        raise PermissionError(f"offload: nvme_path {path!r} is not writable (needs {nbytes} bytes of swap files)")
    free = shutil.disk_usage(path).free
    if free < nbytes:
        raise OSError(f"offload: nvme_path {path!r} has {free} bytes free, the swap files need {nbytes} bytes")


class SubGroupSwapper:
    """Swap files for groups of tensors and a bounded pool of aligned buffers (see module doc).

    ``numels``: elements per tensor of each group, as a list (groups 0..n-1) or a mapping from
    group id. ``io``: the engine's :class:`SharedFileIO` (one thread pool and one set of I/O
    statistics for all its swappers, which it closes with the engine); by default the swapper
    makes an :class:`AsyncFileIO` of its own.
    ``buffer_key`` names the config key to raise in errors about the pool.
    """

    def __init__(self, nvme_path: str, rank: int, tag: str, numels: Sequence[int] | Mapping[int, int], *,
                 tensors_per_group: int = 2, dtype: torch.dtype = torch.float32, buffer_count: int = 4,
                 aio: AioSettings = AioSettings(), pin_memory: bool = False,
                 io: SharedFileIO | None = None,
                 buffer_key: str = "offload_optimizer.buffer_count"):
        self.numels = dict(numels) if isinstance(numels, Mapping) else dict(enumerate(numels))
        self.per_group, self.dtype, self.buffer_key = tensors_per_group, dtype, buffer_key
        self._tensor_bytes = {g: round_up(n * dtype.itemsize) for g, n in self.numels.items()}
        group_bytes = {g: self.per_group * b for g, b in self._tensor_bytes.items()}
        self.group_bytes = group_bytes
        prepare_directory(nvme_path, sum(group_bytes.values()))
        # A per-instance id keeps two engines in one process (or a stale run) from sharing files.
        prefix = f"zerolib_rank{rank}_{tag}_{uuid.uuid4().hex[:8]}"
        self.paths = {g: os.path.join(nvme_path, f"{prefix}_{g}.swp") for g in self.numels}
        own_io = io is None
        self.io = AsyncFileIO(nvme_path, aio) if own_io else io.for_directory(nvme_path)
        self.overlap = aio.overlap_events
        # Removes the files when the swapper is garbage-collected or the interpreter exits.
        self._finalizer = weakref.finalize(self, _remove_files, self.io if own_io else None, list(self.paths.values()))
        try:
            for group, path in self.paths.items():
                self.io.preallocate(path, group_bytes[group])
        except OSError:
            self._finalizer()  # the files allocated so far
            raise
        if not own_io:
            io.register(self)
        pin = pin_memory and torch.cuda.is_available()  # pinning needs a device driver
        size = max(group_bytes.values(), default=0)
        self._free = [aligned_buffer(size, pin) for _ in range(max(1, buffer_count))] if self.numels else []
        self._writing: dict[int, tuple[Future, torch.Tensor]] = {}  # insertion order: oldest first
        self._resident: dict[int, tuple[Future | None, torch.Tensor]] = {}  # read, being read, or in use
        self._in_use: set[int] = set()
        self._on_disk: set[int] = set()  # groups whose file holds data (others read as zeros)
        self._lost: dict[int, str] = {}  # groups whose last write failed
        self.reads_ahead_used = 0  # acquires served by a read started earlier by prefetch()
        self.reads_on_demand = 0  # acquires that had to start their read

    def __contains__(self, group: int) -> bool:
        return group in self.numels

    @property
    def resident_bytes(self) -> int:
        """Host bytes of the buffer pool (what the swapped state costs in memory)."""
        held = [b for _, b in self._resident.values()] + [b for _, b in self._writing.values()]
        return sum(b.numel() for b in self._free + held)

    def buffers(self) -> list[torch.Tensor]:
        """Every pool buffer, for memory accounting."""
        return self._free + [b for _, b in self._resident.values()] + [b for _, b in self._writing.values()]

    # -- buffers ----------------------------------------------------------------------------
    def _retire_write(self, group: int) -> torch.Tensor:
        future, buffer = self._writing.pop(group)
        try:
            future.result()
        except SwapIOError as error:
            self._lost[group] = str(error)
            self._on_disk.discard(group)
            self._free.append(buffer)
            raise
        return buffer

    def can_take(self, group: int) -> bool:
        """Whether :meth:`acquire` of ``group`` finds (or can make) room without every pool
        buffer being held by a caller."""
        return (group in self._resident or group in self._writing or bool(self._free) or bool(self._writing)
                or any(g not in self._in_use for g in self._resident))

    def _free_without_waiting(self) -> bool:
        return bool(self._free) or any(f.done() for f, _ in self._writing.values())

    def _take_buffer(self) -> torch.Tensor:
        if self._free:
            return self._free.pop()
        done = [g for g, (f, _) in self._writing.items() if f.done()]
        if done or self._writing:
            return self._retire_write(done[0] if done else next(iter(self._writing)))
        read_ahead = [g for g in self._resident if g not in self._in_use]
        if read_ahead:  # the most recent read-ahead is needed last: give it up first
            future, buffer = self._resident.pop(read_ahead[-1])
            if future is not None:
                future.exception()
            return buffer
        raise RuntimeError(f"offload: all {len(self._in_use)} swap buffers are in use; raise {self.buffer_key}")

    def _views(self, group: int, buffer: torch.Tensor) -> list[torch.Tensor]:
        step = self._tensor_bytes[group]
        return [buffer[i * step:(i + 1) * step].view(self.dtype)[:self.numels[group]]
                for i in range(self.per_group)]

    def _load(self, group: int, read: bool) -> None:
        if group in self._lost:
            raise SwapIOError(f"offload: swap group {group} ({self.paths[group]}) was lost when its write "
                              f"failed: {self._lost[group]}")
        if group in self._writing:  # its buffer still holds what is being written: reuse it
            self._resident[group] = (None, self._retire_write(group))
            return
        buffer, future = self._take_buffer(), None
        if read and group in self._on_disk:
            future = self.io.read(self.paths[group], buffer, self.group_bytes[group])
        elif read:  # never written: its state starts at zero
            for view in self._views(group, buffer):
                view.zero_()
        self._resident[group] = (future, buffer)

    # -- the interface ----------------------------------------------------------------------
    def prefetch(self, group: int) -> None:
        """Starts reading ``group`` if a buffer is free without waiting (else does nothing)."""
        if group not in self.numels or group in self._resident or group in self._lost:
            return
        if group in self._writing or self._free_without_waiting():
            self._load(group, read=True)

    def acquire(self, group: int, *, read: bool = True) -> list[torch.Tensor]:
        """``group``'s tensors, resident, until :meth:`release`. ``read=False``: the caller will
        overwrite all of them, so nothing is read."""
        if group in self._in_use:
            raise RuntimeError(f"offload: swap group {group} of {self.paths[group]} acquired twice")
        if group in self._resident:
            self.reads_ahead_used += int(read and self._resident[group][0] is not None)
        else:
            self.reads_on_demand += int(read and group in self._on_disk)
            self._load(group, read)
        future, buffer = self._resident[group]
        if future is not None:
            future.result()
            self._resident[group] = (None, buffer)
        self._in_use.add(group)
        return self._views(group, buffer)

    def release(self, group: int, *, dirty: bool = True) -> None:
        """Done with ``group``: writes it back when ``dirty`` (its buffer is reused once the
        write completes), otherwise just frees its buffer."""
        self._in_use.discard(group)
        _, buffer = self._resident.pop(group)
        if not dirty:
            self._free.append(buffer)
            return
        self._writing[group] = (self.io.write(self.paths[group], buffer, self.group_bytes[group]), buffer)
        self._on_disk.add(group)

    def discard(self, group: int) -> None:
        """Drops ``group``'s contents: its buffer is freed, and it reads as zeros until written."""
        self._in_use.discard(group)
        if group in self._resident:
            future, buffer = self._resident.pop(group)
            if future is not None:
                future.exception()
            self._free.append(buffer)
        if group in self._writing:  # whether or not the write succeeds, its contents are dropped
            future, buffer = self._writing.pop(group)
            future.exception()
            self._free.append(buffer)
        self._on_disk.discard(group)
        self._lost.pop(group, None)

    def flush(self) -> None:
        """Waits for every write; raises the first failure (naming the file and bytes)."""
        error = None
        for group in list(self._writing):
            try:
                self._free.append(self._retire_write(group))
            except SwapIOError as failure:
                error = error or failure
        if error is not None:
            raise error

    def close(self) -> None:
        """Waits for pending I/O and removes this swapper's files."""
        for future, _ in list(self._writing.values()) + list(self._resident.values()):
            if future is not None:
                future.exception()
        self._finalizer()
        self._free, self._writing, self._resident = [], {}, {}  # the pool's memory goes now


def _remove_files(io: AsyncFileIO | None, paths: list[str]) -> None:
    if io is not None:
        io.close()
    for path in paths:
        if os.path.exists(path):
            os.remove(path)
