"""Child processes of the launcher: spawning, output forwarding and ending whole process groups.

Each child (a rank, or an ssh/pdsh/srun command) starts in a new session, so it leads its own
process group. Ending it signals the group, which also reaches any grandchildren the rank
started (data-loader workers, compilers), and a Ctrl-C typed in the terminal reaches only the
launcher, which then decides how to end the ranks.
"""
import collections
import ctypes
import os
import signal
import subprocess
import sys
import threading
import time

# How many of a child's last stderr lines are kept to show when it fails.
STDERR_TAIL_LINES = 20


def _parent_death_hook():
    """A preexec function asking Linux to SIGKILL the child if the launcher itself dies.

    Without it, ranks of an agent that was SIGKILLed would outlive it as orphans. The libc
    handle is looked up here, before forking, so the child only makes one system call.
    """
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    set_parent_death_signal = 1  # PR_SET_PDEATHSIG from <sys/prctl.h>

    def hook():
        prctl(set_parent_death_signal, int(signal.SIGKILL), 0, 0, 0)

    return hook


def describe_exit(returncode: int) -> str:
    """``exit code 3`` or ``killed by signal SIGKILL (9)`` for a Popen return code."""
    if returncode >= 0:
        return f"exit code {returncode}"
    try:
        name = signal.Signals(-returncode).name
    except ValueError:
        name = "unknown signal"
    return f"killed by signal {name} ({-returncode})"


def exit_status(returncode: int) -> int:
    """The launcher's own exit status for a failed child: its code, or 128+signal as shells do."""
    return returncode if returncode > 0 else 128 - returncode


class ChildProcess:
    """One child in its own process group whose stdout/stderr lines are forwarded with a prefix.

    ``label`` names the child in messages (``rank 3``); ``prefix`` starts each forwarded line
    (``[rank3] ``). The last STDERR_TAIL_LINES stderr lines are kept in ``stderr_tail``.
    ``stdin_pipe`` gives the child a stdin that stays open until the launcher ends (for ssh,
    whose remote agent takes the end of stdin as the end of the job); otherwise it is /dev/null.
    ``exited_at`` is the monotonic time the child ended (None while it runs): when one failing
    rank makes the others fail, the earliest exit names the cause.
    """

    def __init__(self, label: str, prefix: str, argv: list[str], env: dict[str, str], output_lock: threading.Lock,
                 stdin_pipe: bool = False):
        self.label = label
        self.prefix = prefix
        self.stderr_tail: collections.deque[str] = collections.deque(maxlen=STDERR_TAIL_LINES)
        self._output_lock = output_lock
        try:
            self.popen = subprocess.Popen(
                argv, env=env, stdin=subprocess.PIPE if stdin_pipe else subprocess.DEVNULL,
                stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                start_new_session=True, preexec_fn=_parent_death_hook(),
            )
        except OSError as err:
            raise OSError(err.errno, f"cannot start {label} ({argv[0]}): {err.strerror}") from err
        self._readers = [
            self._start_reader(self.popen.stdout, sys.stdout, keep_tail=False),
            self._start_reader(self.popen.stderr, sys.stderr, keep_tail=True),
        ]
        self.exited_at: float | None = None
        # A thread blocked in wait() notes the exit within milliseconds; a poll loop could not
        # tell which of two ranks that ended between two polls ended first.
        threading.Thread(target=self._note_exit, daemon=True, name=f"wait for {label}").start()

    def _note_exit(self) -> None:
        try:
            self.popen.wait()
        finally:  # never leave supervise() waiting for an exit that was not noted
            self.exited_at = time.monotonic()

    @property
    def pid(self) -> int:
        return self.popen.pid

    def _start_reader(self, pipe, target, keep_tail: bool) -> threading.Thread:
        thread = threading.Thread(target=self._forward, args=(pipe, target, keep_tail), daemon=True,
                                  name=f"forward {self.label}")
        thread.start()
        return thread

    def _forward(self, pipe, target, keep_tail: bool) -> None:
        for raw in iter(pipe.readline, b""):
            line = raw.decode("utf-8", errors="replace").rstrip("\n")
            if keep_tail:
                self.stderr_tail.append(line)
            with self._output_lock:
                target.write(f"{self.prefix}{line}\n")
                target.flush()
        pipe.close()

    def join_output(self, timeout: float) -> None:
        """Wait up to ``timeout`` seconds for the output still in the pipes to be forwarded.

        A grandchild that inherited the pipes can keep them open after the child exits, hence
        the bound.
        """
        deadline = time.monotonic() + timeout
        for reader in self._readers:
            reader.join(max(0.0, deadline - time.monotonic()))

    def signal_group(self, signum: int) -> bool:
        """Send ``signum`` to the child's process group; False when no member is left."""
        try:
            os.killpg(self.popen.pid, signum)
        except (ProcessLookupError, PermissionError):
            return False
        return True

    def group_alive(self) -> bool:
        """Whether any process of the child's group is still running (the child is reaped first)."""
        self.popen.poll()
        return self.signal_group(0)


def end_children(children: list[ChildProcess], signum: int, grace: float) -> None:
    """Send ``signum`` to every child's group, then SIGKILL what is left after ``grace`` seconds."""
    for child in children:
        child.signal_group(signum)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(child.group_alive() for child in children):
        time.sleep(0.05)
    for child in children:
        child.signal_group(signal.SIGKILL)
    for child in children:
        child.popen.wait()
    for child in children:
        child.join_output(timeout=1.0)
