"""Fault 7: a full disk or an unwritable path while saving a checkpoint or swapping optimizer
state to NVMe gives an error naming the path (and the bytes), on every rank, without a hang;
the previous checkpoint stays the one ``latest`` names, and it loads.

A full disk is simulated without root and without patching anything: ``RLIMIT_FSIZE`` makes
every write past the limit fail (EFBIG) in that process only, as ENOSPC would.
"""
import os
import resource
import signal
from pathlib import Path

import pytest
import torch

from fault_cases import tiny_gpt_engine, train_step
from harness import run_ranks
from zerolib.offload import AioSettings, SubGroupSwapper, SwapIOError

SMALL_AIO = AioSettings(block_size=4096, queue_depth=2, thread_count=2)
FILE_SIZE_LIMIT = 4096  # bytes: far below one rank file of the model below


def _engine():
    return tiny_gpt_engine(stage=2, micro_batch=2, n_layer=2, vocab_size=64)


def _error_of(action) -> str | None:
    try:
        action()
    except Exception as error:  # noqa: BLE001 - the test reads the type and the message
        return f"{type(error).__name__}: {error}"
    return None


def _save_with_a_full_disk_on_rank_one(root: str) -> dict:
    rank = int(os.environ["RANK"])
    engine = _engine()
    train_step(engine, 1)
    engine.save_checkpoint(root, tag="good")
    saved = engine.full_state_dict()
    train_step(engine, 2)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    if rank == 1:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # fail the write instead of killing the process
        resource.setrlimit(resource.RLIMIT_FSIZE, (FILE_SIZE_LIMIT, hard))
    try:
        full = _error_of(lambda: engine.save_checkpoint(root, tag="full"))
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    blocker = Path(root) / "a_file"
    if rank == 0:
        blocker.write_text("not a directory")
    engine.comm.barrier()
    unwritable = _error_of(lambda: engine.save_checkpoint(blocker / "checkpoints"))
    fresh = _engine()  # the ranks are still in step: loading is collective
    path, _ = fresh.load_checkpoint(root)
    loaded = fresh.full_state_dict()
    return {"full": full, "unwritable": unwritable, "loaded_path": path,
            "loaded_equals_saved": all(torch.equal(loaded[name], saved[name]) for name in saved),
            "full_dir": sorted(os.listdir(Path(root) / "full")) if (Path(root) / "full").is_dir() else None}


def test_full_disk_or_unwritable_path_during_a_checkpoint_save(tmp_path):
    results = run_ranks(_save_with_a_full_disk_on_rank_one, 2, str(tmp_path), timeout=120)
    full_file = tmp_path / "full" / "rank00001.pt"
    own = results[1]["full"]
    assert own is not None and own.startswith(f"CheckpointError: cannot write checkpoint file {full_file} (about "), own
    assert "bytes of tensors;" in own and "bytes free in" in own, own
    assert own.endswith("): File too large (EFBIG). The previous checkpoint is untouched."), own
    assert results[0]["full"] == f"CheckpointError: saving checkpoint {tmp_path / 'full'} failed on rank 1; see " \
                                 "that rank's error", results[0]["full"]
    for rank, result in enumerate(results):
        assert result["unwritable"] == (f"CheckpointError: cannot create checkpoint directory "
                                        f"{tmp_path / 'a_file' / 'checkpoints' / 'global_step2'}: Not a directory"), \
            (rank, result["unwritable"])
        assert result["loaded_path"] == str(tmp_path / "good") and result["loaded_equals_saved"], (rank, result)
    assert (tmp_path / "latest").read_text() == "good"
    assert results[0]["full_dir"] == ["rank00000.pt"], "no manifest, no partial or temporary file may remain"


def test_unwritable_nvme_path_is_named(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    with pytest.raises(OSError, match="a_file"):
        SubGroupSwapper(str(blocker / "swap"), 0, "t", [1000])


def test_too_little_space_fails_before_training_naming_bytes(tmp_path):
    numel = 10**15  # 8 PB of moments: more than any test disk
    with pytest.raises(OSError, match=rf"{tmp_path}.*the swap files need \d+ bytes"):
        SubGroupSwapper(str(tmp_path), 0, "t", [numel])
    assert os.listdir(tmp_path) == []


def _disk_full_at_start(directory: str) -> dict:
    """Runs in its own process: RLIMIT_FSIZE makes files beyond 64 KiB fail as on a full disk."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, 64 * 1024))
    try:
        SubGroupSwapper(directory, 0, "full", [1024, 64 * 1024], buffer_count=2, aio=SMALL_AIO)
        error = None
    except SwapIOError as caught:
        error = str(caught)
    return {"error": error, "left": os.listdir(directory)}


def test_full_disk_fails_at_construction_naming_file_and_bytes(tmp_path):
    """Every swap file is allocated up front: a disk without room fails before training."""
    result = run_ranks(_disk_full_at_start, 1, str(tmp_path))[0]
    assert result["error"] is not None, "allocating 512 KiB past a 64 KiB limit must fail"
    assert "full_" in result["error"] and "_1.swp" in result["error"] and "524288 bytes" in result["error"], \
        result["error"]
    assert result["left"] == [], "the files allocated before the failure are removed"


def _write_fails_mid_run(directory: str) -> dict:
    """Runs in its own process: group 1's file is truncated behind the swapper's back and the
    file size limit set, so rewriting it fails the way a dying disk would."""
    swapper = SubGroupSwapper(directory, 0, "mid", [1024, 64 * 1024], buffer_count=2, aio=SMALL_AIO)
    for group, value in ((0, 7.0), (1, 1.0)):
        swapper.acquire(group)[0].fill_(value)
        swapper.release(group)
    swapper.flush()
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    os.truncate(swapper.paths[1], 0)
    resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, 64 * 1024))
    swapper.acquire(1, read=False)[0].fill_(2.0)
    swapper.release(1)
    errors = []
    try:
        swapper.flush()
    except SwapIOError as caught:
        errors.append(str(caught))
    try:
        swapper.acquire(1)
    except SwapIOError as caught:
        errors.append(str(caught))
    intact = bool(torch.all(swapper.acquire(0)[0] == 7.0))
    swapper.close()
    return {"errors": errors, "intact": intact, "left": os.listdir(directory)}


def test_failed_write_names_file_and_bytes_and_its_group_is_never_read(tmp_path):
    result = run_ranks(_write_fails_mid_run, 1, str(tmp_path))[0]
    assert len(result["errors"]) == 2, result["errors"]
    flush_error, acquire_error = result["errors"]
    assert "_1.swp" in flush_error and "524288 bytes" in flush_error and "bytes free" in flush_error, flush_error
    assert "was lost when its write failed" in acquire_error, "a half-written group must not be read back"
    assert result["intact"], "the other group reads back unchanged"
    assert result["left"] == []
