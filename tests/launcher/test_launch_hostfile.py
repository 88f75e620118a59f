"""Hostfile parsing and DeepSpeed's --include/--exclude syntax, errors included."""
import pytest

from zerolib.launcher import LaunchError, apply_filters, parse_filter, parse_hostfile
from zerolib.launcher.hostfile import limit_resources


def _hostfile(tmp_path, text: str) -> str:
    path = tmp_path / "hostfile"
    path.write_text(text)
    return str(path)


def test_hosts_slots_comments_and_blank_lines(tmp_path):
    path = _hostfile(tmp_path, "# my cluster\n\nworker-0 slots=2\n  worker-1   slots = 3  # fat node\n")
    assert parse_hostfile(path) == {"worker-0": [0, 1], "worker-1": [0, 1, 2]}


@pytest.mark.parametrize("bad_line, complaint", [
    ("worker-1", "expected 'hostname slots=N'"),
    ("worker-1 gpus=2", "expected 'hostname slots=N'"),
    ("worker-1 slots=two", "slots must be a positive integer, got 'two'"),
    ("worker-1 slots=0", "slots must be a positive integer, got '0'"),
    ("worker-0 slots=4", "host 'worker-0' is listed twice"),
])
def test_malformed_lines_name_the_file_and_line(tmp_path, bad_line, complaint):
    path = _hostfile(tmp_path, f"worker-0 slots=2\n# comment\n{bad_line}\n")
    with pytest.raises(LaunchError) as error:
        parse_hostfile(path)
    assert f"hostfile {path}, line 3: {complaint}" in str(error.value)


def test_missing_and_empty_hostfiles(tmp_path):
    with pytest.raises(LaunchError, match="cannot read hostfile .*nope"):
        parse_hostfile(str(tmp_path / "nope"))
    with pytest.raises(LaunchError, match="lists no hosts"):
        parse_hostfile(_hostfile(tmp_path, "# nothing\n\n"))


RESOURCES = {"a": [0, 1, 2, 3], "b": [0, 1, 2, 3], "c": [0, 1]}


@pytest.mark.parametrize("include, exclude, expected", [
    ("a:0,2@c", None, {"a": [0, 2], "c": [0, 1]}),
    ("b", None, {"b": [0, 1, 2, 3]}),
    (None, "a:1@b", {"a": [0, 2, 3], "c": [0, 1]}),
    (None, "c:0,1", {"a": [0, 1, 2, 3], "b": [0, 1, 2, 3]}),
    (None, None, RESOURCES),
])
def test_include_and_exclude(include, exclude, expected):
    assert apply_filters(RESOURCES, include, exclude) == expected


@pytest.mark.parametrize("include, exclude, complaint", [
    ("a", "b", "cannot be used together"),
    ("z:0", None, "--include: host 'z' is not among the hosts"),
    ("a:7", None, "--include: host 'a' has no slot(s) [7]"),
    (None, "a@b@c", "--exclude 'a@b@c' leaves no slot"),
    ("a:", None, "is not 'host' or 'host:slot,slot'"),
    ("a:x", None, "slots of 'a' must be integers"),
    ("a@a:1", None, "host 'a' appears twice"),
])
def test_filter_errors_name_the_option_and_what_is_wrong(include, exclude, complaint):
    with pytest.raises(LaunchError) as error:
        apply_filters(RESOURCES, include, exclude)
    assert complaint in str(error.value)


def test_filter_syntax_keeps_order_free_slot_lists():
    assert parse_filter("h1:3,1,1@h2", "--include") == {"h1": [1, 3], "h2": None}


def test_num_nodes_and_num_procs_take_the_first_hosts_and_slots():
    assert limit_resources(RESOURCES, 2, 3) == {"a": [0, 1, 2], "b": [0, 1, 2]}
    with pytest.raises(LaunchError, match="--num_nodes 4 asks for more nodes than the 3 available"):
        limit_resources(RESOURCES, 4, None)
    with pytest.raises(LaunchError, match="--num_procs 3 exceeds the 2 slot.* of host 'c'"):
        limit_resources(RESOURCES, None, 3)
