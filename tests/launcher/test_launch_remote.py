"""The runner behind ssh/pdsh/slurm, driven with local stand-ins for the remote commands."""
import signal

from launch_helpers import is_running
from zerolib.launcher.remote import run_remote


def test_a_failed_node_command_ends_the_others_and_sets_the_status(tmp_path, capfd):
    pid_file = tmp_path / "sleeper.pid"
    commands = [
        ("node 0 (a)", ["sh", "-c", f"echo $$ > {pid_file}; echo started; exec sleep 300"]),
        ("node 1 (b)", ["sh", "-c", f"while [ ! -s {pid_file} ]; do sleep 0.02; done; echo agent failed >&2; exit 3"]),
    ]
    assert run_remote(commands, term_grace=1.0, settle_seconds=0.5) == 3
    out, err = capfd.readouterr()
    assert "[node 0 (a)] started" in out
    assert "[node 1 (b)] agent failed" in err and "zerolib launcher: node 1 (b) failed with exit code 3" in err
    assert not is_running(int(pid_file.read_text()))


def test_all_node_commands_succeeding_is_success(capfd):
    commands = [(f"node {n}", ["sh", "-c", f"echo hello from {n}"]) for n in range(2)]
    assert run_remote(commands, term_grace=1.0, settle_seconds=0.5) == 0
    out = capfd.readouterr().out.splitlines()
    assert sorted(out) == ["[node 0] hello from 0", "[node 1] hello from 1"]


def test_a_single_command_is_not_prefixed_and_a_signal_status_is_128_plus(capfd):
    commands = [("pdsh", ["sh", "-c", "echo one line; kill -TERM $$"])]
    assert run_remote(commands, term_grace=1.0, settle_seconds=0.5) == 128 + signal.SIGTERM
    assert capfd.readouterr().out == "one line\n"
