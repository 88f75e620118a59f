"""Fault 1: a rank fails mid-forward, mid-backward, mid-step or mid-save of a ZeRO-3 run under
the launcher (``zerolib --num_procs 2 script.py``), by an exception or by SIGKILL. The launcher
ends every rank within 30 s, exits non-zero and names the rank and its last error; ``latest``
still names the last complete checkpoint, which loads with the values it was saved with.

Each phase runs once, the two ways of dying alternating, to keep the suite short: the launcher
does not tell them apart beyond the exit status it reports.
"""
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest
import torch

import zerolib
from harness import free_port
from zerolib.launcher.procs import ChildProcess
from zerolib.launcher.supervise import OutcomeKind, SignalLatch, supervise
from zerolib.models import GPT, GPTConfig

REPO = Path(__file__).resolve().parents[2]
SCRIPT = Path(__file__).resolve().parent / "scripts" / "train_and_fail.py"
MODEL = {"vocab_size": 64, "block_size": 16, "n_layer": 3, "n_head": 2, "n_embd": 32}
CONFIG = {"train_micro_batch_size_per_gpu": 2, "steps_per_print": None,
          "optimizer": {"type": "AdamW", "params": {"lr": 1e-2}},
          "zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 0}}
# What issue #10 allows between the fault and the end of the last rank; a bound, not a speed claim.
END_WITHIN_SECONDS = 30
HANG_GUARD_SECONDS = 180


def _is_running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False



@pytest.mark.parametrize("phase, mode", [("forward", "raise"), ("backward", "sigkill"), ("step", "raise"),
                                         ("save", "sigkill")])
def test_a_failing_rank_ends_the_job_named_and_the_last_checkpoint_loads(tmp_path, single_rank, phase, mode):
    env = {**os.environ, "PYTHONPATH": str(REPO), "CKPT_DIR": str(tmp_path), "MODEL": json.dumps(MODEL),
           "CONFIG": json.dumps(CONFIG), "FAULT_RANK": "1", "FAULT_PHASE": phase, "FAULT_MODE": mode}
    result = subprocess.run([sys.executable, "-m", "zerolib.launcher", "--num_procs", "2", "--master_port",
                             str(free_port()), str(SCRIPT)], env=env, cwd=REPO, capture_output=True, text=True,
                            timeout=HANG_GUARD_SECONDS)
    ended = time.time()
    assert (tmp_path / "fault_time").exists(), f"no fault was injected:\n{result.stdout}\n{result.stderr}"
    assert ended - float((tmp_path / "fault_time").read_text()) < END_WITHIN_SECONDS

    if mode == "raise":
        # The exception ends the rank with exit code 1. Now and then gloo's threads abort the
        # interpreter's shutdown after it (SIGABRT, "terminate called ..."); the launcher must
        # name the exception either way.
        exits = {1: "exit code 1", 128 + 6: "killed by signal SIGABRT (6)"}
        error = f": InjectedFault: injected {phase} fault on rank 1 at step 2"
    else:
        exits, error = {128 + 9: "killed by signal SIGKILL (9)"}, ""
    assert result.returncode in exits, result.stderr
    summary = [line for line in result.stderr.splitlines() if line.startswith("zerolib launcher: rank")]
    assert summary and summary[0].startswith("zerolib launcher: rank 1 (pid "), result.stderr
    assert summary[0].endswith(f"failed with {exits[result.returncode]}{error}; stopping the other ranks"), summary[0]
    pids = [int((tmp_path / f"pid{rank}").read_text()) for rank in range(2)]
    assert [pid for pid in pids if _is_running(pid)] == [], "a rank outlived the launcher"

    assert (tmp_path / "latest").read_text() == "step1"
    if phase == "save":  # rank 0's new file is complete, rank 1's never got its name, no manifest
        assert sorted(name for name in os.listdir(tmp_path / "step2") if not name.startswith(".")) == ["rank00000.pt"]
    engine = zerolib.initialize(GPT(GPTConfig(**MODEL)), CONFIG)
    path, _ = engine.load_checkpoint(tmp_path)
    expected, loaded = torch.load(tmp_path / "expected.pt"), engine.full_state_dict()
    assert path == str(tmp_path / "step1") and all(torch.equal(loaded[name], expected[name]) for name in expected)


def test_the_rank_that_ended_first_is_named_even_when_both_ended_before_the_launcher_looked():
    """Rank 1 fails at once, rank 0 half a second later (as a peer does in its next collective);
    the launcher looks only after both ended, and must still name rank 1."""
    lock = threading.Lock()
    children = [ChildProcess(f"rank {rank}", f"[rank{rank}] ", ["sh", "-c", f"sleep {delay}; exit 1"], dict(os.environ),
                             lock) for rank, delay in ((0, 0.5), (1, 0))]
    for child in children:
        child.popen.wait()
    time.sleep(0.2)  # both exits are noted
    outcome = supervise(children, SignalLatch())
    assert outcome.kind is OutcomeKind.CHILD_FAILED and outcome.child is children[1]
