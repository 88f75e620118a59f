"""Watching a set of children until they all succeed, one fails, a signal arrives, or a peer fails."""
import dataclasses
import enum
import signal
import sys
import threading
import time
from typing import Callable

from zerolib.launcher.procs import ChildProcess

# How often the children and the peer channel are checked; a failure is acted on within this.
POLL_SECONDS = 0.1


class OutcomeKind(enum.Enum):
    SUCCEEDED = "succeeded"  # every child exited with 0
    CHILD_FAILED = "child failed"  # a child exited non-zero or was killed by a signal
    SIGNALLED = "signalled"  # the launcher received SIGINT, SIGTERM or SIGHUP (or lost its ssh session)
    PEER_FAILED = "peer failed"  # another node's agent reported a failure


@dataclasses.dataclass
class Outcome:
    kind: OutcomeKind
    child: ChildProcess | None = None  # the failed child, for CHILD_FAILED
    signum: int | None = None  # the signal received, for SIGNALLED
    peer_failure: dict | None = None  # the failure record from the channel, for PEER_FAILED


class SignalLatch:
    """Records SIGINT/SIGTERM/SIGHUP instead of dying on them, so the launcher can end its ranks first.

    Used as a context manager; the previous handlers come back on exit. Outside the main thread
    Python cannot install handlers, and the latch then only records ``trip`` calls.
    """

    def __init__(self, signums=(signal.SIGINT, signal.SIGTERM, signal.SIGHUP)):
        self.signums = signums
        self.received: int | None = None
        self._previous: dict[int, object] = {}

    def _record(self, signum, _frame):
        self.trip(signum)

    def trip(self, signum: int) -> None:
        """Act as if ``signum`` had arrived (the first one wins)."""
        if self.received is None:
            self.received = signum

    def trip_on_stdin_eof(self) -> None:
        """Trip with SIGHUP once stdin ends: an agent started over ssh reads the end of its session.

        Ending the ssh client (Ctrl-C on the launching machine) closes the remote stdin but
        signals no remote process, since ssh without a terminal forwards no signals.
        """
        def watch():
            stdin = sys.stdin.buffer
            while stdin.read(4096):
                pass
            self.trip(signal.SIGHUP)

        threading.Thread(target=watch, daemon=True, name="stdin watcher").start()

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for signum in self.signums:
                self._previous[signum] = signal.signal(signum, self._record)
        return self

    def __exit__(self, *exc_info):
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        return False


def _failed(children: list[ChildProcess]) -> list[ChildProcess]:
    return [child for child in children if child.exited_at is not None and child.popen.returncode != 0]


def supervise(children: list[ChildProcess], latch: SignalLatch,
              peer_failure: Callable[[], dict | None] | None = None) -> Outcome:
    """Block until the children's fate is decided and say how; ends no process itself.

    When several children have failed, the one that ended first is reported: a rank that dies
    makes its peers fail in their next collective, so the first exit is the cause.
    """
    while True:
        if latch.received is not None:
            return Outcome(OutcomeKind.SIGNALLED, signum=latch.received)
        if _failed(children):
            time.sleep(POLL_SECONDS)  # an earlier exit may not have been noted yet
            return Outcome(OutcomeKind.CHILD_FAILED, child=min(_failed(children), key=lambda c: c.exited_at))
        if all(child.exited_at is not None for child in children):
            return Outcome(OutcomeKind.SUCCEEDED)
        failure = peer_failure() if peer_failure is not None else None
        if failure is not None:
            return Outcome(OutcomeKind.PEER_FAILED, peer_failure=failure)
        time.sleep(POLL_SECONDS)
