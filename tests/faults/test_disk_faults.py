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


def _write_past_file_size_limit(directory: str) -> dict:
    """Runs in its own process: RLIMIT_FSIZE makes writes beyond 64 KiB fail as on a full disk."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, 64 * 1024))
    swapper = SubGroupSwapper(directory, 0, "full", [1024, 64 * 1024], buffer_count=2, aio=SMALL_AIO)
    swapper.acquire(0)[0].fill_(7.0)
    swapper.release(0)
    swapper.flush()  # 8 KiB: fits
    swapper.acquire(1)[0].fill_(1.0)
    swapper.release(1)
    try:
        swapper.flush()  # 512 KiB: the "disk" is full
        error = None
    except SwapIOError as caught:
        error = str(caught)
    files = sorted(os.listdir(directory))
    intact = bool(torch.all(swapper.acquire(0)[0] == 7.0))
    swapper.close()
    return {"error": error, "files": files, "intact": intact, "left": os.listdir(directory)}


def test_full_disk_during_an_nvme_swap_write_names_file_and_bytes_and_corrupts_nothing(tmp_path):
    result = run_ranks(_write_past_file_size_limit, 1, str(tmp_path))[0]
    assert result["error"] is not None, "the write past the limit must fail"
    assert "full_" in result["error"] and "_1.swp" in result["error"] and "524288 bytes" in result["error"]
    assert not any(name.endswith(".tmp") for name in result["files"]), result["files"]
    assert not any(name.endswith("_1.swp") for name in result["files"]), "no half-written file"
    assert result["intact"], "the sub-group written before the failure reads back unchanged"
    assert result["left"] == []
