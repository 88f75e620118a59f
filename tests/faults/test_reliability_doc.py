"""docs/reliability.md's table names, for each fault of issue #10, the test that proves it; a
renamed or deleted test must not leave the table pointing at nothing."""
import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
REFERENCE = re.compile(r"`(tests/[\w/]+\.py)::(\w+)`")


def _rows() -> list[list[str]]:
    lines = (ROOT / "docs" / "reliability.md").read_text().splitlines()
    start = lines.index("| # | fault | what zerolib does | the test that proves it |")
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows


def _test_names(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    return {node.name for node in tree.body if isinstance(node, ast.FunctionDef) and node.name.startswith("test_")}


def test_every_fault_has_a_row_and_every_named_test_exists():
    rows = _rows()
    assert sorted({int(row[0]) for row in rows}) == list(range(1, 9)), "a fault of issue #10 has no row"
    for row in rows:
        references = REFERENCE.findall(row[3])
        assert references, f"fault {row[0]} ({row[1]}) names no test"
        for path, name in references:
            assert (ROOT / path).is_file(), f"{path} does not exist"
            assert name in _test_names(ROOT / path), f"{path} has no test named {name}"
