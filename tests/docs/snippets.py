"""The fenced blocks of the docs, and what the doc-snippet test does with each.

A fence's info string is its language and then options:

- ```` ```python ````: run; the python blocks of one doc share a namespace and a temporary
  working directory, in order. ```` ```python ranks=2 ````: a self-contained block run on 2
  spawned ranks (tests/harness.py).
- ```` ```bash ````: every line is a command, run from the same directory: ``zerolib ...`` through
  the CLI, ``python ...`` as a subprocess. ``test-append="ARGS"`` adds ARGS to each command when
  the test runs it (a short run of a long job), ``test-insert="ARGS"`` puts them right after the
  command's first word (``--dry_run`` for the launcher); the doc shows the real command.
- ```` ```json ````: parsed; a block with a ``zero_optimization`` key is loaded as a config.
- ```` ```text ````: output or a layout, shown and not run.
- ``file=NAME`` (any language): the block is also written to NAME before the doc's blocks run.
- ``no-run: REASON``: not run; the test lists it, skipped, with the reason. The reason is part of
  the markdown source, so a reader of the source sees why.
"""
from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

LANGUAGES = ("python", "bash", "json", "text")
FENCE = re.compile(r"^(\s*)```(.*)$")


@dataclass
class Block:
    doc: str
    line: int
    language: str
    code: str
    options: dict = field(default_factory=dict)
    no_run: str | None = None

    @property
    def where(self) -> str:
        return f"docs/{self.doc}:{self.line}"


def _parse_info(info: str, where: str) -> tuple[str, dict, str | None]:
    info, _, reason = info.partition("no-run:")
    words = shlex.split(info)
    if not words:
        raise ValueError(f"{where}: a fence without a language; say what the block is ({', '.join(LANGUAGES)})")
    language, options = words[0], {}
    for word in words[1:]:
        key, equals, value = word.partition("=")
        if not equals:
            raise ValueError(f"{where}: fence option {word!r} is not KEY=VALUE (or 'no-run: reason')")
        options[key] = value
    if "no-run" in info and not reason.strip():
        raise ValueError(f"{where}: 'no-run:' needs a reason")
    return language, options, reason.strip() or None


def parse(path: Path) -> list[Block]:
    """Every fenced block of a markdown file, with its indentation removed."""
    blocks, lines = [], path.read_text().splitlines()
    index = 0
    while index < len(lines):
        opening = FENCE.match(lines[index])
        if not opening:
            index += 1
            continue
        indent, start = len(opening.group(1)), index + 1
        where = f"docs/{path.name}:{start}"
        language, options, no_run = _parse_info(opening.group(2), where)
        if language not in LANGUAGES:
            raise ValueError(f"{where}: unknown fence language {language!r}; use one of {LANGUAGES}")
        index += 1
        body = []
        while index < len(lines) and not re.match(r"^\s*```\s*$", lines[index]):
            body.append(lines[index][indent:] if lines[index][:indent].strip() == "" else lines[index])
            index += 1
        if index == len(lines):
            raise ValueError(f"{where}: the fence is never closed")
        blocks.append(Block(path.name, start, language, "\n".join(body) + "\n", options, no_run))
        index += 1
    return blocks


def commands(block: Block) -> list[list[str]]:
    """The commands of a bash block as argument lists (comments dropped, ``\\`` lines joined),
    with ``test-insert`` and ``test-append`` applied."""
    text = block.code.replace("\\\n", " ")
    insert = shlex.split(block.options.get("test-insert", ""))
    append = shlex.split(block.options.get("test-append", ""))
    result = []
    for line in text.splitlines():
        words = shlex.split(line, comments=True)
        if words:
            result.append(words[:1] + insert + words[1:] + append)
    return result
