"""docs/moe_prefill_frontend.md: every ```python block runs (in order, one namespace; the client
example against a real server on this process), every `zerolib` line of a ```bash block runs (against a
served model directory), and
the `serve` table lists every ServeSettings key."""
import os
import re
import shlex
import signal

import pytest

from support.serving import ServerThread, one_rank_engine, tiny_moe
from zerolib.inference.serve.settings import ServeSettings

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DOC = os.path.join(ROOT, "docs", "moe_prefill_frontend.md")
BLOCK = re.compile(r"```(python|bash)[^\n]*\n(.*?)```", re.S)  # a fence may carry no-run: its reason
DOC_URL = "http://127.0.0.1:8000"


def blocks() -> list[tuple[str, str]]:
    with open(DOC) as file:
        return BLOCK.findall(file.read())


def test_python_snippets_run(capsys):
    pytest.importorskip("httpx", reason="httpx is not installed (pip install zerolib[dev])")
    server = ServerThread(one_rank_engine(tiny_moe()))
    try:
        namespace = {}
        found = [code for language, code in blocks() if language == "python"]
        assert len(found) >= 2
        for code in found:
            exec(compile(code.replace(DOC_URL, server.url), DOC, "exec"), namespace)
        assert "computed on rank 0" in capsys.readouterr().out
    finally:
        assert server.close() == 0


def _run_with_the_engine(words: list[str], tmp_path) -> None:
    """The doc's command on a tiny Qwen3-MoE (paths made absolute, any free port): it must
    serve, then stop cleanly on SIGTERM."""
    from test_server_launch import Job
    from test_server_load import save_tiny_qwen3_moe

    save_tiny_qwen3_moe(tmp_path / "tiny-qwen3-moe")
    argv = list(words[1:])
    for option, value in (("--model", str(tmp_path / "tiny-qwen3-moe")), ("--config", str(tmp_path / "serve.json")),
                          ("--port", "0")):
        argv[argv.index(option) + 1] = value
    job = Job(argv)
    try:
        job.wait_for("serving on", timeout=180)
    finally:
        job.proc.send_signal(signal.SIGTERM)
        code, output = job.finish()
    assert "[rank0] stopped cleanly" in output and code == 128 + signal.SIGTERM, output


def test_zerolib_lines_run(tmp_path, monkeypatch):
    lines = [line for language, code in blocks() if language == "bash" for line in code.splitlines()]
    assert lines and all(line.startswith("zerolib ") for line in lines), lines
    (tmp_path / "tiny-qwen3-moe").mkdir()
    (tmp_path / "serve.json").write_text('{"serve": {"router": "prefix"}}')
    monkeypatch.chdir(tmp_path)
    for line in lines:
        words = shlex.split(line)
        assert words[1] == "serve-prefill", line
        _run_with_the_engine(words, tmp_path)


def test_serve_table_lists_every_key():
    with open(DOC) as file:
        text = file.read()
    for key in ServeSettings.model_fields:
        assert f"| `{key}` |" in text, f"docs/moe_prefill_frontend.md does not document serve.{key}"
