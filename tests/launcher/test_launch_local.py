"""One node: rank environment, output prefixes, and ending every rank when one fails or on a signal
(a busy master port is tested with the other faults in tests/faults/test_port_in_use.py)."""
import json
import signal

import pytest

from launch_helpers import (HANG_GUARD_SECONDS, SCRIPTS, free_port, is_running, rank_lines, ready_pids, run_launcher,
                     start_launcher)


def test_each_rank_gets_its_environment_and_arguments():
    port = free_port()
    result = run_launcher("--num_procs", "3", "--master_port", str(port), str(SCRIPTS / "report_env.py"),
                          "--lr", "0.5", "x y")
    assert result.returncode == 0, result.stderr
    for rank in range(3):
        (line,) = rank_lines(result.stdout, rank)
        report = json.loads(line)
        assert report["argv"] == ["--lr", "0.5", "x y"]
        assert report["env"] == {
            "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "3", "LOCAL_WORLD_SIZE": "3",
            "NODE_RANK": "0", "GROUP_RANK": "0", "CROSS_RANK": "0", "CROSS_SIZE": "1",
            "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "CUDA_VISIBLE_DEVICES": None}
        assert rank_lines(result.stderr, rank) == [f"stderr line of rank {rank}"]


def test_included_slots_become_cuda_visible_devices():
    result = run_launcher("--include", "localhost:1,3", "--num_procs", "4", "--master_port", str(free_port()),
                          str(SCRIPTS / "report_env.py"))
    assert result.returncode == 0, result.stderr
    reports = [json.loads(rank_lines(result.stdout, rank)[0])["env"] for rank in range(2)]
    assert [report["CUDA_VISIBLE_DEVICES"] for report in reports] == ["1,3", "1,3"]
    assert [report["WORLD_SIZE"] for report in reports] == ["2", "2"]
    assert rank_lines(result.stdout, 2) == []


def test_module_and_no_python_modes():
    module = run_launcher("--num_procs", "2", "--master_port", str(free_port()), "--module", "platform")
    assert module.returncode == 0, module.stderr
    assert rank_lines(module.stdout, 1) and rank_lines(module.stdout, 1)[0].startswith("Linux")
    executable = run_launcher("--master_port", str(free_port()), "--no_python", "/bin/echo", "plain", "words")
    assert executable.returncode == 0, executable.stderr
    assert rank_lines(executable.stdout, 0) == ["plain words"]


def test_a_missing_executable_is_named():
    result = run_launcher("--master_port", str(free_port()), "--no_python", "/nonexistent/trainer")
    assert result.returncode == 2
    assert "cannot start rank 0 (/nonexistent/trainer): No such file or directory" in result.stderr


@pytest.mark.parametrize("mode, expected_status, expected_text", [
    ("raise", 1, ["rank 1", "exit code 1", "ValueError: deliberate failure of rank 1"]),
    ("sigkill", 128 + 9, ["rank 1", "killed by signal SIGKILL (9)"]),
])
def test_a_failing_rank_ends_the_others_and_is_named(tmp_path, mode, expected_status, expected_text):
    result = run_launcher("--num_procs", "3", "--master_port", str(free_port()), str(SCRIPTS / "fail_or_sleep.py"),
                          READY_DIR=str(tmp_path), FAIL_RANK="1", FAIL_MODE=mode)
    assert result.returncode == expected_status, result.stderr
    summary = [line for line in result.stderr.splitlines() if line.startswith("zerolib launcher")]
    for text in expected_text:
        assert text in result.stderr.split("[rank1]")[-1], summary
    pids = ready_pids(tmp_path)
    assert len(pids) == 4  # ranks 0 and 2 and one grandchild each
    assert [pid for pid in pids if is_running(pid)] == []


def test_ranks_ignoring_sigterm_are_killed_after_the_grace_period(tmp_path):
    result = run_launcher("--num_procs", "2", "--master_port", str(free_port()), "--term_grace", "0.5",
                          str(SCRIPTS / "fail_or_sleep.py"), READY_DIR=str(tmp_path), FAIL_RANK="1",
                          IGNORE_SIGTERM="1")
    assert result.returncode == 1, result.stderr
    pids = ready_pids(tmp_path)
    assert len(pids) == 2 and [pid for pid in pids if is_running(pid)] == []


@pytest.mark.parametrize("stop", ["SIGINT", "SIGTERM", "stdin closed"])
def test_a_signal_or_the_end_of_the_ssh_session_ends_all_ranks(tmp_path, stop):
    # Only the stdin case watches stdin: communicate() closes it, which must not race the signal.
    watch_stdin = ["--exit_on_stdin_eof"] if stop == "stdin closed" else []
    launcher = start_launcher("--num_procs", "2", "--master_port", str(free_port()), *watch_stdin,
                              str(SCRIPTS / "fail_or_sleep.py"), READY_DIR=str(tmp_path))
    try:
        ready = [launcher.stdout.readline() for _ in range(2)]
        assert all("ready rank" in line for line in ready), ready
        if stop == "stdin closed":  # what an agent started over ssh sees when the ssh client ends
            signum = signal.SIGHUP  # communicate() below closes the launcher's stdin
        else:
            signum = signal.Signals[stop]
            launcher.send_signal(signum)
        _, stderr = launcher.communicate(timeout=HANG_GUARD_SECONDS)
    finally:
        launcher.kill()
    assert launcher.returncode == 128 + signum, stderr
    assert f"received {signal.Signals(signum).name}" in stderr
    pids = ready_pids(tmp_path)
    assert len(pids) == 4
    assert [pid for pid in pids if is_running(pid)] == []
