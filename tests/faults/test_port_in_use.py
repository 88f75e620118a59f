"""Fault 8: a port already in use at start-up. The launcher refuses before it spawns any rank,
with exit status 2 and a message naming the port and the option that sets it; the agents'
coordination channel (several nodes) does the same for its port."""
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from zerolib.launcher import LaunchError
from zerolib.launcher.coordination import CoordinationServer

REPO = Path(__file__).resolve().parents[2]
RANK_SCRIPT = Path(__file__).resolve().parent / "scripts" / "train_and_fail.py"  # never started here


@pytest.mark.parametrize("held_on", ["127.0.0.1", "0.0.0.0"])
def test_busy_master_port_is_refused_before_spawning(held_on):
    with socket.socket() as holder:
        holder.bind((held_on, 0))
        holder.listen()
        port = holder.getsockname()[1]
        result = subprocess.run([sys.executable, "-m", "zerolib.launcher", "--num_procs", "2", "--master_port",
                                 str(port), str(RANK_SCRIPT)], env={**os.environ, "PYTHONPATH": str(REPO)}, cwd=REPO,
                                capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip() == (f"zerolib launcher: error: port {port} on 127.0.0.1 is already in use; "
                                     "choose a free one with --master_port"), result.stderr
    assert "[rank0]" not in result.stdout


def test_busy_coordination_port_is_named():
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        with pytest.raises(LaunchError, match=f"coordination channel on port {port}.*--coord_port"):
            CoordinationServer("127.0.0.1", port, num_nodes=2, heartbeat_timeout=1.0)
