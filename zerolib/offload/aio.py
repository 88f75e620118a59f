"""Asynchronous reads and writes of whole files from aligned host buffers (the NVMe tier's I/O).

Each transfer is one job on a thread pool (``aio.thread_count`` threads); a job moves its file
in requests of ``block_size * queue_depth`` bytes (``block_size`` when ``single_submit``).
``os.pread``/``os.pwrite`` release the GIL, so transfers overlap the optimizer step.

Files are opened with ``O_DIRECT`` where the file system accepts it, which bypasses the page
cache: swapped-out state then really leaves memory instead of moving to the kernel's cache.
``O_DIRECT`` needs buffer addresses, sizes and offsets aligned to the device block, hence
:func:`aligned_buffer` and :data:`ALIGN`. Where it is refused (tmpfs, some network file
systems) buffered I/O is used and one warning says so.

A write goes to ``<file>.tmp`` and is renamed over ``<file>`` only once complete, so a failed
write (a full disk) never leaves a half-written swap file behind.
"""
from __future__ import annotations

import errno
import os
import shutil
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import torch

from zerolib.utils.logging import get_logger

ALIGN = 4096  # bytes: the largest logical block size of common NVMe/SSD devices


class SwapIOError(OSError):
    """A swap file could not be written or read; the message names the file and the bytes."""


def round_up(nbytes: int, multiple: int = ALIGN) -> int:
    return -(-nbytes // multiple) * multiple


def aligned_buffer(nbytes: int, pin: bool = False) -> torch.Tensor:
    """A uint8 host tensor of ``round_up(nbytes)`` bytes whose address is ``ALIGN``-aligned."""
    size = round_up(max(nbytes, 1))
    raw = torch.empty(size + ALIGN, dtype=torch.uint8, pin_memory=pin)
    skip = (-raw.data_ptr()) % ALIGN
    return raw[skip:skip + size]


def supports_direct_io(directory: str) -> bool:
    """Whether files in ``directory`` accept ``O_DIRECT`` opens and aligned writes."""
    if not hasattr(os, "O_DIRECT"):
        return False
    probe = os.path.join(directory, f".zerolib_odirect_probe_{os.getpid()}")
    buffer = aligned_buffer(ALIGN)
    try:
        fd = os.open(probe, os.O_CREAT | os.O_WRONLY | os.O_DIRECT, 0o600)
        try:
            os.pwrite(fd, buffer.numpy(), 0)
        finally:
            os.close(fd)
        return True
    except OSError as error:
        if error.errno in (errno.EINVAL, errno.EOPNOTSUPP):
            return False
        raise
    finally:
        if os.path.exists(probe):
            os.remove(probe)


@dataclass
class IOStats:
    """Bytes moved and the seconds transfers were under way (summed over jobs), for reports."""

    bytes_read: int = 0
    bytes_written: int = 0
    read_seconds: float = 0.0
    write_seconds: float = 0.0


@dataclass(frozen=True)
class AioSettings:
    """The `aio` config block, resolved (see zerolib.config.offload.AioConfig)."""

    block_size: int = 1_048_576
    queue_depth: int = 8
    thread_count: int = 1
    single_submit: bool = False
    overlap_events: bool = True

    @property
    def request_bytes(self) -> int:
        size = self.block_size if self.single_submit else self.block_size * self.queue_depth
        return round_up(size)


class AsyncFileIO:
    """Reads and writes whole files under ``directory`` on background threads."""

    def __init__(self, directory: str, settings: AioSettings, *, direct: bool | None = None):
        self.directory, self.settings = directory, settings
        self.direct = supports_direct_io(directory) if direct is None else direct
        if not self.direct:
            get_logger().warning("offload: %s does not support O_DIRECT; using buffered I/O "
                                 "(swapped state may stay in the page cache)", directory)
        self.stats = IOStats()
        self._stats_lock = threading.Lock()  # jobs finish on several threads
        self._pool = ThreadPoolExecutor(max_workers=settings.thread_count, thread_name_prefix="zerolib-aio")

    def _flags(self, base: int) -> int:
        return base | (os.O_DIRECT if self.direct else 0)

    def write(self, path: str, buffer: torch.Tensor, nbytes: int) -> Future:
        """Writes the first ``round_up(nbytes)`` bytes of aligned ``buffer`` to ``path``."""
        return self._pool.submit(self._timed, "write", self._write, path, buffer, round_up(nbytes))

    def read(self, path: str, buffer: torch.Tensor, nbytes: int) -> Future:
        """Reads ``round_up(nbytes)`` bytes of ``path`` into aligned ``buffer``."""
        return self._pool.submit(self._timed, "read", self._read, path, buffer, round_up(nbytes))

    def _timed(self, kind: str, job, path: str, buffer: torch.Tensor, nbytes: int) -> None:
        start = time.perf_counter()
        job(path, buffer, nbytes)
        elapsed = time.perf_counter() - start
        with self._stats_lock:
            if kind == "read":
                self.stats.bytes_read += nbytes
                self.stats.read_seconds += elapsed
            else:
                self.stats.bytes_written += nbytes
                self.stats.write_seconds += elapsed

    def _write(self, path: str, buffer: torch.Tensor, nbytes: int) -> None:
        staging = path + ".tmp"
        view = memoryview(buffer.numpy())
        try:
            fd = os.open(staging, self._flags(os.O_CREAT | os.O_WRONLY | os.O_TRUNC), 0o600)
            try:
                for start in range(0, nbytes, self.settings.request_bytes):
                    end = min(nbytes, start + self.settings.request_bytes)
                    if os.pwrite(fd, view[start:end], start) != end - start:
                        raise OSError(errno.ENOSPC, "short write")
            finally:
                os.close(fd)
            os.replace(staging, path)
        except OSError as error:
            if os.path.exists(staging):
                os.remove(staging)
            free = shutil.disk_usage(self.directory).free
            raise SwapIOError(error.errno, f"offload: writing {nbytes} bytes to {path} failed "
                                           f"({error.strerror or error}); {free} bytes free in {self.directory}") from error

    def _read(self, path: str, buffer: torch.Tensor, nbytes: int) -> None:
        view = memoryview(buffer.numpy())
        try:
            fd = os.open(path, self._flags(os.O_RDONLY))
            try:
                for start in range(0, nbytes, self.settings.request_bytes):
                    end = min(nbytes, start + self.settings.request_bytes)
                    if os.preadv(fd, [view[start:end]], start) != end - start:
                        raise OSError(errno.EIO, "short read (file truncated?)")
            finally:
                os.close(fd)
        except OSError as error:
            raise SwapIOError(error.errno, f"offload: reading {nbytes} bytes from {path} failed "
                                           f"({error.strerror or error})") from error

    def close(self) -> None:
        self._pool.shutdown(wait=True)
