"""Dry-run command lines for ssh/pdsh/slurm, option errors, and the zerolib CLI's dispatch."""
import os
import shlex
import sys
import types

import pytest

from zerolib import cli
from zerolib.launcher import main
from zerolib.launcher.options import build_parser

SCRIPT_AND_ARGS = ["train.py", "--lr", "0.1", "two words"]


def _hostfile(tmp_path) -> str:
    path = tmp_path / "hostfile"
    path.write_text("worker-0 slots=4\nworker-1 slots=4\nworker-2 slots=2\n")
    return str(path)


def _dry_run(capsys, *args: str) -> list[tuple[str, list[str]]]:
    """(label, argv) per printed command line."""
    assert main([*args, "--dry_run", *SCRIPT_AND_ARGS]) == 0
    lines = capsys.readouterr().out.splitlines()
    return [(line.split(": ", 1)[0], shlex.split(line.split(": ", 1)[1])) for line in lines]


def _agent_options(agent_argv: list[str]) -> dict[str, object]:
    """The options, other than defaults, that the agent parses from ``python -u -m zerolib.launcher ...``."""
    assert agent_argv[:4] == [sys.executable, "-u", "-m", "zerolib.launcher"]
    parser = build_parser()
    parsed = vars(parser.parse_args(agent_argv[4:]))
    assert [parsed.pop("user_script"), *parsed.pop("user_args")] == SCRIPT_AND_ARGS
    return {name: value for name, value in parsed.items() if value != parser.get_default(name)}


def _remote_agent(shell_line: str) -> list[str]:
    """The agent argv inside ``cd DIR && env K=V ... python ...``."""
    words = shlex.split(shell_line)
    assert words[:3] == ["cd", os.getcwd(), "&&"]
    start = words.index(sys.executable)
    assert words[3] == "env" and all("=" in word for word in words[4:start])
    return words[start:]


def test_ssh_starts_one_agent_per_selected_host(tmp_path, capsys):
    commands = _dry_run(capsys, "--hostfile", _hostfile(tmp_path), "--exclude", "worker-1@worker-0:3",
                        "--launcher", "ssh", "--master_port", "4000")
    assert [label for label, _ in commands] == ["node 0 (worker-0)", "node 1 (worker-2)"]
    for node, (host, (_, argv)) in enumerate(zip(["worker-0", "worker-2"], commands)):
        assert argv[:2] == ["ssh", host] and len(argv) == 3
        assert _agent_options(_remote_agent(argv[2])) == {
            "num_nodes": 2, "node_devices": "0,1,2/0,1", "node_rank": node, "exit_on_stdin_eof": True,
            "master_addr": "worker-0", "master_port": 4000}


def test_pdsh_runs_one_command_with_node_rank_substitution(tmp_path, capsys):
    (label, argv), = _dry_run(capsys, "--hostfile", _hostfile(tmp_path), "--launcher", "pdsh", "--num_procs", "2",
                              "--master_addr", "10.0.0.1")
    assert label == "pdsh" and argv[:6] == ["pdsh", "-S", "-f", "1024", "-w", "worker-0,worker-1,worker-2"]
    assert "--node_rank %n" in argv[6]  # pdsh substitutes the node rank; the agent would refuse '%n' as is
    assert _agent_options(_remote_agent(argv[6].replace("%n", "2"))) == {
        "num_nodes": 3, "node_devices": "0,1/0,1/0,1", "node_rank": 2, "master_addr": "10.0.0.1"}


def test_slurm_runs_srun_with_one_agent_task_per_node(tmp_path, capsys):
    (label, argv), = _dry_run(capsys, "--hostfile", _hostfile(tmp_path), "--include", "worker-1@worker-2",
                              "--launcher", "slurm", "--term_grace", "2")
    assert argv[:5] == ["srun", "--nodes=2", "--ntasks-per-node=1", "--kill-on-bad-exit=1",
                        "--nodelist=worker-1,worker-2"]
    assert _agent_options(argv[5:]) == {
        "num_nodes": 2, "node_devices": "0,1,2,3/0,1", "node_rank_from": "SLURM_NODEID",
        "master_addr": "worker-1", "term_grace": 2.0}


def test_module_flag_reaches_the_agents(tmp_path, capsys):
    (_, argv), = _dry_run(capsys, "--launcher", "slurm", "--num_nodes", "2", "--num_procs", "8",
                          "--master_addr", "n0", "--module")
    assert "--module" in argv and argv.index("--module") < argv.index("train.py")


def test_include_without_hostfile_selects_local_slots(capsys):
    commands = _dry_run(capsys, "--include", "localhost:1,3")
    assert [label for label, _ in commands] == ["rank 0", "rank 1"]
    assert all("CUDA_VISIBLE_DEVICES=1,3" in argv and "WORLD_SIZE=2" in argv for _, argv in commands)
    assert main(["--exclude", "localhost:0", "--dry_run", "train.py"]) == 2  # the one local slot
    assert "--exclude 'localhost:0' leaves no slot to launch on" in capsys.readouterr().err


def test_agent_reads_its_node_rank_from_the_environment(capsys, monkeypatch):
    monkeypatch.setenv("SLURM_NODEID", "1")
    commands = _dry_run(capsys, "--node_rank_from", "SLURM_NODEID", "--node_devices", "0,1/2,3",
                        "--master_addr", "n0")
    assert [label for label, _ in commands] == ["rank 2", "rank 3"]
    assert "CUDA_VISIBLE_DEVICES=2,3" in commands[0][1]


@pytest.mark.parametrize("args, complaint", [
    (["--include", "localhost", "--exclude", "localhost:0"], "--include and --exclude cannot be used together"),
    (["--module", "--no_python"], "--module and --no_python cannot be used together"),
    (["--num_nodes", "2", "--node_rank", "2"], "--node_rank 2 is outside 0..1"),
    (["--num_nodes", "2"], "--num_nodes 2 needs --hostfile"),
    (["--launcher", "ssh"], "--launcher ssh needs --hostfile"),
    (["--launcher", "slurm", "--num_nodes", "2"], "--launcher slurm without --hostfile needs --master_addr"),
    (["--num_procs", "0"], "--num_procs must be at least 1"),
    (["--master_port", "70000"], "--master_port must be a port in 1..65535"),
    (["--hostfile", "/nonexistent/hosts"], "cannot read hostfile /nonexistent/hosts"),
])
def test_bad_options_are_named(capsys, args, complaint):
    assert main([*args, "--dry_run", "train.py"]) == 2
    assert complaint in capsys.readouterr().err


@pytest.mark.parametrize("launcher", ["ssh", "pdsh", "slurm"])
def test_missing_remote_command_is_named(tmp_path, capsys, monkeypatch, launcher):
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty folder: none of ssh, pdsh, srun is found
    binary = {"ssh": "ssh", "pdsh": "pdsh", "slurm": "srun"}[launcher]
    status = main(["--hostfile", _hostfile(tmp_path), "--launcher", launcher, "train.py"])
    assert status == 2
    assert f"needs the '{binary}' command, which is not on PATH" in capsys.readouterr().err


@pytest.mark.parametrize("argv, words", [
    (["report", "--json"], "report"), (["config", "check", "ds.json"], "config check"),
    (["estimate", "--params", "7e9"], "estimate"), (["export", "ckpt"], "export"),
])
def test_cli_subcommands_dispatch_or_say_unavailable(capsys, monkeypatch, argv, words):
    module_name = cli.SUBCOMMANDS[tuple(words.split())]
    if module_name not in sys.modules:
        try:
            __import__(module_name)
        except ModuleNotFoundError:
            assert cli.main(argv) == 2
            assert f"'zerolib {words}' is not available in this version" in capsys.readouterr().err
    received = []
    fake = types.ModuleType(module_name)
    fake.main = lambda args: received.append(args) or 7
    monkeypatch.setitem(sys.modules, module_name, fake)
    assert cli.main(argv) == 7
    assert received == [argv[len(words.split()):]]


def test_cli_launch_word_and_default_both_launch(capsys):
    assert cli.main(["launch", "--num_procs", "2", "--dry_run", "train.py"]) == 0
    launched = capsys.readouterr().out
    assert cli.main(["--num_procs", "2", "--dry_run", "train.py"]) == 0
    assert capsys.readouterr().out == launched
    assert [line.split(":")[0] for line in launched.splitlines()] == ["rank 0", "rank 1"]


def test_cli_unknown_config_subcommand(capsys):
    assert cli.main(["config", "show"]) == 2
    assert "zerolib config check FILE" in capsys.readouterr().err
