"""Running the launcher as a real command, and checking that processes really ended."""
import os
import pathlib
import socket
import subprocess
import sys

import psutil

REPO = pathlib.Path(__file__).resolve().parents[2]
SCRIPTS = pathlib.Path(__file__).resolve().parent / "scripts"
# A bound on how long a launcher may run before the test calls it hung; never a speed claim.
HANG_GUARD_SECONDS = 60


def launcher_env(**extra: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), **extra}


def launcher_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "zerolib.launcher", *args]


def run_launcher(*args: str, **extra_env: str) -> subprocess.CompletedProcess:
    """Run ``python -m zerolib.launcher ARGS`` to the end and capture its output."""
    return subprocess.run(launcher_argv(*args), env=launcher_env(**extra_env), cwd=REPO, capture_output=True,
                          text=True, timeout=HANG_GUARD_SECONDS)


def start_launcher(*args: str, **extra_env: str) -> subprocess.Popen:
    """Start the launcher with pipes for stdin (closing it is how ssh ends a session), stdout and stderr."""
    return subprocess.Popen(launcher_argv(*args), env=launcher_env(**extra_env), cwd=REPO, text=True,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def free_port() -> int:
    """A port nothing listens on, and whose successor is free too (the coordination port)."""
    while True:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        if port < 65535 and _is_free(port + 1):
            return port


def _is_free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def is_running(pid: int) -> bool:
    """True while ``pid`` is a live process (a zombie waiting to be reaped counts as ended)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def ready_pids(ready_dir: pathlib.Path) -> list[int]:
    """Pids of the sleeping ranks of fail_or_sleep.py and of their grandchildren."""
    pids = []
    for path in ready_dir.glob("rank[0-9]"):
        pids += [int(pid) for pid in path.read_text().split()]
    return pids


def rank_lines(output: str, rank: int) -> list[str]:
    prefix = f"[rank{rank}] "
    return [line[len(prefix):] for line in output.splitlines() if line.startswith(prefix)]
