"""Files of a checkpoint: atomic writes, digests, safe reads, and where each file lives.

Every file is written to a temporary name in its final directory, flushed and fsynced, then
renamed over the final name and the directory fsynced: a reader sees either the old file or
the complete new one, never a torn one. Tensor files are read with ``weights_only=True`` so a
checkpoint can never run code.
"""
from __future__ import annotations

import hashlib
import json
import os
import pickle
import tempfile
from pathlib import Path
from typing import Callable

import torch

LATEST_FILE = "latest"
MANIFEST_FILE = "manifest.json"
_HASH_CHUNK = 1 << 22


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be written, read or matched to the model; names what is wrong."""


def rank_file_name(rank: int) -> str:
    return f"rank{rank:05d}.pt"


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, write: Callable[[str], None]) -> None:
    """Writes ``path`` through ``write(temporary_path)`` so that it appears whole or not at all."""
    path = Path(path)
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(temporary)
        with open(temporary, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    _fsync_directory(path.parent)


def serialize(obj, path: str) -> None:
    """How a rank's state becomes a file. Written through a Python file object so that a failed
    write (a full disk) keeps its OSError, which torch.save only reports as the context of its
    own RuntimeError."""
    with open(path, "wb") as handle:
        torch.save(obj, handle)


def save_tensors(obj, path: Path) -> None:
    atomic_write(path, lambda temporary: serialize(obj, temporary))


def write_text(text: str, path: Path) -> None:
    atomic_write(path, lambda temporary: Path(temporary).write_text(text))


def write_json(obj, path: Path) -> None:
    write_text(json.dumps(obj, indent=1, sort_keys=True), path)


def file_digest(path: Path) -> tuple[str, int]:
    """(sha256 hex, size in bytes), read in chunks so a large file costs no memory."""
    digest, size = hashlib.sha256(), 0
    with open(path, "rb") as handle:
        while chunk := handle.read(_HASH_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def verify_file(path: Path, expected: dict) -> None:
    """Raises naming ``path`` when it is missing, truncated or not the file the manifest lists."""
    if not path.is_file():
        raise CheckpointError(f"checkpoint file {path} is missing")
    digest, size = file_digest(path)
    if size != expected["bytes"]:
        raise CheckpointError(f"checkpoint file {path} is {size} bytes, the manifest says {expected['bytes']}: "
                              "it is truncated or was replaced")
    if digest != expected["sha256"]:
        raise CheckpointError(f"checkpoint file {path} is corrupt: sha256 {digest} does not match the manifest")


def load_tensors(path: Path, mmap: bool = True):
    """Reads a tensor file without executing code (``weights_only``); memory-maps tensors."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as err:
        raise CheckpointError(f"checkpoint file {path} holds objects other than tensors and plain "
                              f"containers; refusing to unpickle it ({err})") from None
    except (RuntimeError, EOFError, OSError) as err:
        raise CheckpointError(f"checkpoint file {path} cannot be read: {err}") from None


def read_json(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint file {path} is missing") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"checkpoint file {path} is not valid JSON: {err}") from None


def read_latest(directory: Path) -> str:
    """The tag the ``latest`` file of ``directory`` names."""
    path = Path(directory) / LATEST_FILE
    if not path.is_file():
        raise CheckpointError(f"no tag given and {path} does not exist: pass tag= or save a checkpoint first")
    tag = path.read_text().strip()
    if not tag:
        raise CheckpointError(f"{path} is empty")
    return tag


def write_latest(directory: Path, tag: str) -> None:
    write_text(tag, Path(directory) / LATEST_FILE)


def check_tag(tag: str) -> str:
    if not tag or tag in (".", "..") or "/" in tag or os.sep in tag or tag.startswith("."):
        raise CheckpointError(f"checkpoint tag {tag!r} must be a plain directory name")
    return tag
