"""Every snippet of every doc under docs/ runs (tests/docs/snippets.py says how each kind of
fenced block is run). A doc added to docs/ is picked up without changing this file. Blocks
marked ``no-run: REASON`` are listed as skipped tests with their reason."""
import json
import os
import shlex
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from harness import free_port, run_ranks
from snippets import commands, parse
from zerolib.cli import main as cli_main
from zerolib.config import ZeroConfigWarning, load_config

ROOT = Path(__file__).resolve().parents[2]
DOCS = sorted((ROOT / "docs").glob("*.md"))


def _parse_all() -> tuple[dict, dict]:
    blocks, errors = {}, {}
    for path in DOCS:
        try:
            blocks[path.name] = parse(path)
        except ValueError as error:  # fails that doc's test, not the collection of all the others
            blocks[path.name], errors[path.name] = [], str(error)
    return blocks, errors


BLOCKS, PARSE_ERRORS = _parse_all()
LINKED = ("examples", "benchmarks")  # so that a doc's relative paths work from the temporary directory


def run_snippet(code: str, where: str, cwd: str) -> None:
    """Runs one python block on a spawned rank (importable, for tests/harness.py)."""
    os.chdir(cwd)
    exec(compile(code, where, "exec"), {"__name__": "docsnippet"})


SUBCOMMANDS = ("report", "config", "estimate", "export", "plot")


def run_command(words: list[str], where: str, capsys) -> None:
    if words[0] == "zerolib":
        args = words[1:]
        if args[0] not in SUBCOMMANDS and "--dry_run" not in args and "--master_port" not in args:
            args = ["--master_port", str(free_port()), *args]  # a launch: 29500 may be taken on a shared machine
        status = cli_main(args)
        assert status == 0, f"{where}: {shlex.join(words)} exited {status}:\n{capsys.readouterr().out[-3000:]}"
    elif words[0] == "python":
        done = subprocess.run([sys.executable, *words[1:]], capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, f"{where}: {shlex.join(words)} failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    else:
        raise AssertionError(f"{where}: {words[0]!r} is not a command this test runs (zerolib, python); "
                             "mark the block 'no-run: REASON' if it cannot run in a test")


def run_block(block, namespace: dict, cwd: Path, capsys) -> None:
    if block.language == "python" and "ranks" in block.options:
        run_ranks(run_snippet, int(block.options["ranks"]), block.code, block.where, str(cwd))
    elif block.language == "python":
        exec(compile(block.code, block.where, "exec"), namespace)
    elif block.language == "bash":
        for words in commands(block):
            run_command(words, block.where, capsys)
    elif block.language == "json":
        data = json.loads(block.code)
        if isinstance(data, dict) and "zero_optimization" in data:
            with warnings.catch_warnings():  # a doc's config may show "auto" or an old spelling
                warnings.simplefilter("ignore", ZeroConfigWarning)
                load_config(data, world_size=int(block.options.get("world_size", 1)))


@pytest.mark.parametrize("doc", sorted(BLOCKS))
def test_doc_snippets_run(doc, tmp_path, monkeypatch, capsys):
    assert doc not in PARSE_ERRORS, PARSE_ERRORS.get(doc)
    monkeypatch.chdir(tmp_path)
    # Ranks started by the launcher, and python subprocesses, must import this checkout.
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # launched ranks: one thread each, as the harness's
    for name in LINKED:
        (tmp_path / name).symlink_to(ROOT / name)
    runnable = [b for b in BLOCKS[doc] if b.no_run is None]
    for block in BLOCKS[doc]:
        if "file" in block.options:
            (tmp_path / block.options["file"]).write_text(block.code)
    namespace = {"__name__": "docsnippet"}
    for block in runnable:
        run_block(block, namespace, tmp_path, capsys)


NO_RUN = [b for blocks in BLOCKS.values() for b in blocks if b.no_run is not None]


@pytest.mark.parametrize("block", NO_RUN, ids=[b.where for b in NO_RUN])
def test_blocks_that_do_not_run_say_why(block):
    pytest.skip(f"{block.where} not run: {block.no_run}")


def test_estimator_doc_shows_the_cli_output_it_prints(capsys):
    command = next(b for b in BLOCKS["estimator.md"] if b.language == "bash")
    assert cli_main(commands(command)[0][1:]) == 0
    printed = capsys.readouterr().out.strip()
    assert printed in (ROOT / "docs" / "estimator.md").read_text()


def test_readme_first_command_trains_with_zero3_shortened(tmp_path, monkeypatch, capsys):
    """The README's command 1 after its install steps (CI has installed), for 3 steps; its
    command 2 is `bash .ci/run`, which is CI itself."""
    blocks = [b for b in parse(ROOT / "README.md") if b.language == "bash"]
    assert [b.code.strip() for b in blocks][1:] == ["bash .ci/run"]
    words = shlex.split(blocks[0].code.split("&&")[-1])
    assert words[0] == "zerolib" and "examples/configs/zero3.json" in words
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    (tmp_path / "examples").symlink_to(ROOT / "examples")
    run_command(words + ["--steps", "3", "--no_progress"], "README.md", capsys)
    assert "final loss" in capsys.readouterr().out
