"""Starting one agent per node over ssh, pdsh or slurm's srun, from one command on any machine.

Every remote agent gets the same options plus its node rank, and they coordinate failures among
themselves (coordination.py); this side only starts them, forwards their output and returns the
worst exit status.
"""
import os
import shlex
import shutil
import signal
import sys
import threading
import time

from zerolib.launcher.errors import LaunchError
from zerolib.launcher.options import build_parser, format_node_devices
from zerolib.launcher.procs import ChildProcess, describe_exit, end_children, exit_status
from zerolib.launcher.supervise import OutcomeKind, SignalLatch, supervise

# Variables a remote shell would not otherwise have that change how training runs; the rest of
# the environment stays the remote node's own.
FORWARDED_ENV_PREFIXES = ("PYTHON", "NCCL_", "GLOO_", "UCX_", "CUDA_", "TORCH_", "ZEROLIB_", "OMP_", "MKL_", "HF_")
# Options passed to the agents only when they differ from the defaults, to keep commands short.
_TUNING_OPTIONS = ("coord_port", "term_grace", "heartbeat_timeout", "join_timeout")


def agent_argv(opts, node_slots: list[list[int]], master_addr: str, node_rank_args: list[str]) -> list[str]:
    """The ``python -m zerolib.launcher`` command that runs one node's agent."""
    argv = [sys.executable, "-u", "-m", "zerolib.launcher", "--num_nodes", str(len(node_slots)),
            "--node_devices", format_node_devices(node_slots), *node_rank_args,
            "--master_addr", master_addr, "--master_port", str(opts.master_port)]
    parser = build_parser()
    for name in _TUNING_OPTIONS:
        value = getattr(opts, name)
        if value is not None and value != parser.get_default(name):
            argv += [f"--{name}", str(value)]
    if opts.module:
        argv.append("--module")
    if opts.no_python:
        argv.append("--no_python")
    return argv + [opts.user_script, *opts.user_args]


def _forwarded_env() -> str:
    pairs = sorted((key, value) for key, value in os.environ.items() if key.startswith(FORWARDED_ENV_PREFIXES))
    return " ".join(["env", *(f"{key}={shlex.quote(value)}" for key, value in pairs)]) if pairs else ""


def _remote_shell_line(argv: list[str]) -> str:
    """``cd CWD && env K=V ... python -m zerolib.launcher ...``, run by the remote login shell."""
    parts = [f"cd {shlex.quote(os.getcwd())} &&", _forwarded_env(), shlex.join(argv)]
    return " ".join(part for part in parts if part)


def node_commands(opts, launcher: str, hosts: list[str], node_slots: list[list[int]],
                  master_addr: str) -> list[tuple[str, list[str]]]:
    """``(label, argv)`` of each process to start here: one per node for ssh, one in all otherwise.

    ``launcher`` is ssh, pdsh or slurm; ``hosts`` may be empty for slurm (srun picks the nodes).
    """
    if launcher == "ssh":
        return [(f"node {rank} ({host})", ["ssh", host, _remote_shell_line(agent_argv(
            opts, node_slots, master_addr, ["--node_rank", str(rank), "--exit_on_stdin_eof"]))])
                for rank, host in enumerate(hosts)]
    if launcher == "pdsh":
        # pdsh replaces %n with each host's index in the -w list, which is its node rank.
        line = _remote_shell_line(agent_argv(opts, node_slots, master_addr, ["--node_rank", "%n"]))
        return [("pdsh", ["pdsh", "-S", "-f", "1024", "-w", ",".join(hosts), line])]
    srun = ["srun", f"--nodes={len(node_slots)}", "--ntasks-per-node=1", "--kill-on-bad-exit=1"]
    if hosts:
        srun.append(f"--nodelist={','.join(hosts)}")
    return [("srun", srun + agent_argv(opts, node_slots, master_addr, ["--node_rank_from", "SLURM_NODEID"]))]


def run_remote(commands: list[tuple[str, list[str]]], term_grace: float, settle_seconds: float) -> int:
    """Start the commands, forward their output, and return 0 or the first failure's status.

    After a failure the remote agents stop each other through their channel; they get
    ``settle_seconds`` to do so and report before the local ssh/pdsh/srun processes are ended.
    """
    for _label, argv in commands:
        if shutil.which(argv[0]) is None:
            raise LaunchError(f"--launcher needs the '{argv[0]}' command, which is not on PATH")
    env = {**os.environ, "PDSH_RCMD_TYPE": os.environ.get("PDSH_RCMD_TYPE", "ssh")}
    output_lock = threading.Lock()
    with SignalLatch() as latch:
        children = [ChildProcess(label, f"[{label}] " if len(commands) > 1 else "", argv, env, output_lock,
                                 stdin_pipe=argv[0] == "ssh") for label, argv in commands]
        outcome = supervise(children, latch)
        if outcome.kind is OutcomeKind.SUCCEEDED:
            return 0
        if outcome.kind is OutcomeKind.SIGNALLED:
            end_children(children, outcome.signum, term_grace)
            return 128 + outcome.signum
        failed = outcome.child
        print(f"zerolib launcher: {failed.label} failed with {describe_exit(failed.popen.returncode)}",
              file=sys.stderr, flush=True)
        deadline = time.monotonic() + settle_seconds
        while time.monotonic() < deadline and any(child.popen.poll() is None for child in children):
            time.sleep(0.1)
        end_children(children, signal.SIGTERM, term_grace)
        return exit_status(failed.popen.returncode)
