"""Optimizer state of each sub-group kept in a swap file, brought into one of a few aligned buffers
only while that sub-group is stepped (ZeRO-Infinity's NVMe tier).

Sub-group ``c`` holds ``tensors_per_group`` fp32 tensors of ``numels[c]`` elements (Adam's
``exp_avg`` and ``exp_avg_sq``), stored back to back in ``<nvme_path>/zerolib_rank<r>_<tag>_<id>_<c>.swp``.
At most ``buffer_count`` sub-groups are resident at once: the one being stepped, the next one
being read ahead, and ones whose write-back is still in flight. Files are removed by
:meth:`close`, when the swapper is garbage-collected, or at interpreter exit.
"""
from __future__ import annotations

import os
import shutil
import uuid
import weakref
from collections import deque
from concurrent.futures import Future

import torch

from zerolib.offload.aio import AioSettings, AsyncFileIO, aligned_buffer, round_up


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
    """Swap files and a bounded pool of aligned buffers for per-sub-group optimizer state."""

    def __init__(self, nvme_path: str, rank: int, tag: str, numels: list[int], *, tensors_per_group: int = 2,
                 buffer_count: int = 4, aio: AioSettings = AioSettings(), pin_memory: bool = False):
        self.numels, self.per_group = list(numels), tensors_per_group
        self._tensor_bytes = [round_up(4 * n) for n in self.numels]
        group_bytes = [self.per_group * b for b in self._tensor_bytes]
        # One extra sub-group: a write goes to a .tmp file before it replaces the old one.
        prepare_directory(nvme_path, sum(group_bytes) + max(group_bytes, default=0))
        # A per-instance id keeps two engines in one process (or a stale run) from sharing files.
        prefix = f"zerolib_rank{rank}_{tag}_{uuid.uuid4().hex[:8]}"
        self.paths = [os.path.join(nvme_path, f"{prefix}_{c}.swp") for c in range(len(numels))]
        self.io = AsyncFileIO(nvme_path, aio)
        self.overlap = aio.overlap_events
        pin = pin_memory and torch.cuda.is_available()  # pinning needs a device driver
        size = max(group_bytes, default=0)
        self._free = [aligned_buffer(size, pin) for _ in range(max(1, buffer_count))]
        self._writing: deque[tuple[Future, torch.Tensor]] = deque()
        self._resident: dict[int, tuple[Future | None, torch.Tensor]] = {}
        self._on_disk: set[int] = set()
        # Removes the files when the swapper is garbage-collected or the interpreter exits.
        self._finalizer = weakref.finalize(self, _remove_files, self.io, list(self.paths))

    @property
    def resident_bytes(self) -> int:
        """Host bytes of the buffer pool (what the swapped state costs in memory)."""
        in_use = [b for _, b in self._resident.values()] + [b for _, b in self._writing]
        return sum(b.numel() for b in self._free + in_use)

    def _take_buffer(self) -> torch.Tensor:
        if not self._free:
            if not self._writing:
                raise RuntimeError("offload: every swap buffer is in use; raise offload_optimizer.buffer_count")
            future, buffer = self._writing.popleft()
            future.result()
            self._free.append(buffer)
        return self._free.pop()

    def _views(self, group: int, buffer: torch.Tensor) -> list[torch.Tensor]:
        step = self._tensor_bytes[group]
        return [buffer[i * step:(i + 1) * step].view(torch.float32)[:self.numels[group]]
                for i in range(self.per_group)]

    def _load(self, group: int, buffer: torch.Tensor) -> None:
        future = None
        if group in self._on_disk:
            future = self.io.read(self.paths[group], buffer, self.per_group * self._tensor_bytes[group])
        else:  # never written: its state starts at zero
            for view in self._views(group, buffer):
                view.zero_()
        self._resident[group] = (future, buffer)

    def prefetch(self, group: int) -> None:
        """Starts reading sub-group ``group`` if a buffer is free without waiting (else no-op)."""
        if group in self._resident or group >= len(self.numels):
            return
        if self._free or (self._writing and self._writing[0][0].done()):
            self._load(group, self._take_buffer())

    def acquire(self, group: int) -> list[torch.Tensor]:
        """Sub-group ``group``'s tensors, resident; reads the next one ahead if enabled."""
        if group not in self._resident:
            self._load(group, self._take_buffer())
        future, buffer = self._resident[group]
        if future is not None:
            future.result()
        if self.overlap:
            self.prefetch(group + 1)
        return self._views(group, buffer)

    def release(self, group: int) -> None:
        """Starts writing sub-group ``group`` back; its buffer is reused once the write is done."""
        _, buffer = self._resident.pop(group)
        future = self.io.write(self.paths[group], buffer, self.per_group * self._tensor_bytes[group])
        self._on_disk.add(group)
        self._writing.append((future, buffer))

    def flush(self) -> None:
        """Waits for every write; raises the first failure (naming the file and bytes)."""
        while self._writing:
            future, buffer = self._writing.popleft()
            self._free.append(buffer)
            future.result()

    def close(self) -> None:
        """Waits for pending I/O and removes this rank's swap files."""
        for future, _ in list(self._writing) + [(f, b) for f, b in self._resident.values() if f is not None]:
            future.exception()
        self._finalizer()


def _remove_files(io: AsyncFileIO, paths: list[str]) -> None:
    io.close()
    for path in paths:
        for name in (path, path + ".tmp"):
            if os.path.exists(name):
                os.remove(name)
