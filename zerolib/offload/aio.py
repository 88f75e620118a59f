"""Asynchronous reads and writes of whole files from aligned host buffers (the NVMe tier's I/O).

Each transfer is one job on a thread pool (``aio.thread_count`` threads); a job moves its file
in requests of ``block_size`` bytes, up to ``queue_depth`` of them under way at once per job
thread (a second pool of ``thread_count * queue_depth`` request threads), or one after the other
with ``single_submit``. ``os.pread``/``os.pwrite`` release the GIL, so transfers overlap the
optimizer step, and several requests in flight keep the device's queue full (on this machine's
virtual disk 1 MiB requests went from ~3.1 to ~3.8 GB/s written and ~2.0 to ~2.5 GB/s read).

Files are opened with ``O_DIRECT`` where the file system accepts it, which bypasses the page
cache: swapped-out state then really leaves memory instead of moving to the kernel's cache.
``O_DIRECT`` needs buffer addresses, sizes and offsets aligned to the device block, hence
:func:`aligned_buffer` and :data:`ALIGN`. Where it is refused (tmpfs, some network file
systems) buffered I/O is used and one warning says so.

Swap files are allocated once, at start-up (:meth:`AsyncFileIO.preallocate`), and then
overwritten in place: a full disk fails before training, naming the file and the bytes, and
no write during training needs new blocks (on ext4 an overwrite ran ~2x faster than writing a
fresh file, see docs/offload.md).
"""
from __future__ import annotations

import errno
import os
import shutil
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field

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
    """Bytes moved and the wall-clock seconds during which at least one transfer of that kind
    (``busy_seconds``: of either kind) was under way, overlapping jobs counted once, so bytes
    over seconds is the rate achieved."""

    bytes_read: int = 0
    bytes_written: int = 0
    read_seconds: float = 0.0
    write_seconds: float = 0.0
    busy_seconds: float = 0.0
    _active: dict = field(default_factory=lambda: {"read": 0, "write": 0, "any": 0}, repr=False)
    _since: dict = field(default_factory=lambda: {"read": 0.0, "write": 0.0, "any": 0.0}, repr=False)

    def begin(self, kind: str) -> None:
        for key in (kind, "any"):
            if self._active[key] == 0:
                self._since[key] = time.perf_counter()
            self._active[key] += 1

    def end(self, kind: str, nbytes: int) -> None:
        busy = {}
        for key in (kind, "any"):
            self._active[key] -= 1
            busy[key] = time.perf_counter() - self._since[key] if self._active[key] == 0 else 0.0
        self.busy_seconds += busy["any"]
        if kind == "read":
            self.bytes_read, self.read_seconds = self.bytes_read + nbytes, self.read_seconds + busy[kind]
        else:
            self.bytes_written, self.write_seconds = self.bytes_written + nbytes, self.write_seconds + busy[kind]


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
        return round_up(self.block_size)

    @property
    def requests_in_flight(self) -> int:
        """Requests under way at once, over all job threads."""
        return 1 if self.single_submit else self.thread_count * self.queue_depth


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
        self._requests = None  # the request threads (see the module doc); none with single_submit
        if settings.requests_in_flight > 1:
            self._requests = ThreadPoolExecutor(max_workers=settings.requests_in_flight,
                                                thread_name_prefix="zerolib-aio-request")

    def _flags(self, base: int) -> int:
        return base | (os.O_DIRECT if self.direct else 0)

    def preallocate(self, path: str, nbytes: int) -> None:
        """Creates ``path`` with ``round_up(nbytes)`` bytes allocated; on failure (a full disk)
        removes it and raises naming the file, the bytes and the free space."""
        nbytes = round_up(nbytes)
        try:
            fd = os.open(path, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600)
            try:
                try:
                    os.posix_fallocate(fd, 0, nbytes)
                except OSError as error:
                    if error.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
                        raise
                    os.ftruncate(fd, nbytes)  # no reservation on this file system: a sparse file
            finally:
                os.close(fd)
        except OSError as error:
            if os.path.exists(path):
                os.remove(path)
            raise self._error("allocating", path, nbytes, error) from error

    def _error(self, action: str, path: str, nbytes: int, error: OSError) -> SwapIOError:
        free = shutil.disk_usage(self.directory).free
        return SwapIOError(error.errno, f"offload: {action} {nbytes} bytes of {path} failed "
                                        f"({error.strerror or error}); {free} bytes free in {self.directory}")

    def write(self, path: str, buffer: torch.Tensor, nbytes: int) -> Future:
        """Overwrites the first ``round_up(nbytes)`` bytes of ``path`` with aligned ``buffer``."""
        return self._pool.submit(self._timed, "write", self._write, path, buffer, round_up(nbytes))

    def read(self, path: str, buffer: torch.Tensor, nbytes: int) -> Future:
        """Reads ``round_up(nbytes)`` bytes of ``path`` into aligned ``buffer``."""
        return self._pool.submit(self._timed, "read", self._read, path, buffer, round_up(nbytes))

    def _timed(self, kind: str, job, path: str, buffer: torch.Tensor, nbytes: int) -> None:
        with self._stats_lock:
            self.stats.begin(kind)
        try:
            job(path, buffer, nbytes)
        finally:
            with self._stats_lock:
                self.stats.end(kind, nbytes)

    def _transfer(self, fd: int, view: memoryview, nbytes: int, move) -> int:
        """Bytes moved by ``move(fd, view[a:b], a)`` over ``[0, nbytes)`` in requests."""
        size = self.settings.request_bytes
        spans = [(start, min(nbytes, start + size)) for start in range(0, nbytes, size)]
        if self._requests is None or len(spans) == 1:
            return sum(move(fd, view[a:b], a) for a, b in spans)
        futures = [self._requests.submit(move, fd, view[a:b], a) for a, b in spans]
        wait(futures)  # all of them, even after a failure: the caller closes fd next
        return sum(future.result() for future in futures)

    def _write(self, path: str, buffer: torch.Tensor, nbytes: int) -> None:
        view = memoryview(buffer.numpy())
        try:
            fd = os.open(path, self._flags(os.O_CREAT | os.O_WRONLY), 0o600)
            try:
                if self._transfer(fd, view, nbytes, os.pwrite) != nbytes:
                    raise OSError(errno.ENOSPC, "short write")
            finally:
                os.close(fd)
        except OSError as error:
            raise self._error("writing", path, nbytes, error) from error

    def _read(self, path: str, buffer: torch.Tensor, nbytes: int) -> None:
        view = memoryview(buffer.numpy())
        try:
            fd = os.open(path, self._flags(os.O_RDONLY))
            try:
                if self._transfer(fd, view, nbytes, lambda f, v, o: os.preadv(f, [v], o)) != nbytes:
                    raise OSError(errno.EIO, "short read (file truncated?)")
            finally:
                os.close(fd)
        except OSError as error:
            raise SwapIOError(error.errno, f"offload: reading {nbytes} bytes from {path} failed "
                                           f"({error.strerror or error})") from error

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        if self._requests is not None:
            self._requests.shutdown(wait=True)


class SharedFileIO:
    """One :class:`AsyncFileIO` per swap directory, shared by an engine's swappers, so that
    ``aio.thread_count`` bounds the engine's I/O threads and :meth:`stats` covers all its swap
    traffic (optimizer state, gradients, parameter shards)."""

    def __init__(self, settings: AioSettings):
        self.settings = settings
        self._by_directory: dict[str, AsyncFileIO] = {}
        self._users: list = []  # swappers to close with the engine (see close)

    def for_directory(self, directory: str) -> AsyncFileIO:
        key = os.path.realpath(directory)
        if key not in self._by_directory:
            self._by_directory[key] = AsyncFileIO(directory, self.settings)
        return self._by_directory[key]

    def stats(self) -> IOStats:
        """Totals over the directories (busy seconds add up: directories may share a disk)."""
        total = IOStats()
        for io in self._by_directory.values():
            total.bytes_read += io.stats.bytes_read
            total.bytes_written += io.stats.bytes_written
            total.read_seconds += io.stats.read_seconds
            total.write_seconds += io.stats.write_seconds
            total.busy_seconds += io.stats.busy_seconds
        return total

    def file_bytes(self) -> int:
        """Bytes of the swap files of every registered swapper (what the nvme tier holds)."""
        return sum(sum(swapper.group_bytes.values()) for swapper in self._users)

    def register(self, swapper) -> None:
        """``swapper.close()`` runs when :meth:`close` does."""
        self._users.append(swapper)

    def close(self) -> None:
        """Closes every registered swapper (their files are removed, their buffers freed) and the
        I/O threads. The engine calls it when it is garbage-collected: parameter hooks can keep
        the model (and so the stores) alive longer than the engine."""
        for swapper in self._users:
            swapper.close()
        self._users.clear()
        for io in self._by_directory.values():
            io.close()
