"""Every ```python block and every `zerolib ...` line of a ```bash block in the monitoring,
activation checkpointing and estimator docs runs (blocks of one doc share a namespace, in a
temporary working directory, in order)."""
import os
import re
import shlex

import pytest

from zerolib.cli import main as cli_main

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DOCS = ("monitoring.md", "activation_checkpointing.md", "estimator.md")
BLOCK = re.compile(r"```(python|bash)\n(.*?)```", re.S)


def blocks(doc: str) -> list[tuple[str, str]]:
    with open(os.path.join(ROOT, "docs", doc)) as file:
        return BLOCK.findall(file.read())


@pytest.mark.parametrize("doc", DOCS)
def test_doc_snippets_run(doc, tmp_path, monkeypatch, capsys):
    pytest.importorskip("matplotlib", reason="matplotlib is not installed (pip install zerolib[plot])")
    monkeypatch.chdir(tmp_path)
    found = blocks(doc)
    assert found, f"docs/{doc} has no snippet"
    namespace = {}
    for language, code in found:
        if language == "python":
            exec(compile(code, f"docs/{doc}", "exec"), namespace)
            continue
        for line in code.splitlines():
            words = shlex.split(line)
            assert words[:1] == ["zerolib"], f"docs/{doc}: unexpected shell line {line!r}"
            assert cli_main(words[1:]) == 0, f"docs/{doc}: {line!r} failed:\n{capsys.readouterr().out}"


def test_estimator_doc_shows_the_cli_output_it_prints(capsys):
    doc = dict(enumerate(blocks("estimator.md")))
    command = next(code for lang, code in doc.values() if lang == "bash").strip()
    assert cli_main(shlex.split(command)[1:]) == 0
    printed = capsys.readouterr().out.strip()
    with open(os.path.join(ROOT, "docs", "estimator.md")) as file:
        assert printed in file.read()
