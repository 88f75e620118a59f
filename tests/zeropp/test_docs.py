"""Every ```python block of docs/zeropp.md runs (blocks share a namespace, in order), and the
doc has no shell line that a test would not run."""
import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BLOCK = re.compile(r"```(\w*)\n(.*?)```", re.S)


def test_zeropp_doc_snippets_run():
    with open(os.path.join(ROOT, "docs", "zeropp.md")) as file:
        blocks = BLOCK.findall(file.read())
    python = [code for language, code in blocks if language == "python"]
    assert len(python) >= 2, "docs/zeropp.md lost its snippets"
    assert not [code for language, code in blocks if language == "bash"], "bash blocks need a runner"
    namespace = {}
    for code in python:
        exec(compile(code, "docs/zeropp.md", "exec"), namespace)
