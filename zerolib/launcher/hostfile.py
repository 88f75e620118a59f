"""Hostfiles and DeepSpeed's ``--include``/``--exclude`` filters.

A hostfile lists one node per line as ``hostname slots=N``; ``#`` starts a comment. The filters
use DeepSpeed's syntax, ``host1:0,1@host2``: nodes separated by ``@``, each optionally followed
by ``:`` and the slot (device) indices to keep or drop.
"""
import re

from zerolib.launcher.errors import LaunchError

_HOST_LINE = re.compile(r"^(?P<host>\S+)\s+slots\s*=\s*(?P<slots>\S+)$")

# Resources map a hostname to the slot indices in use on it, in hostfile order.
Resources = dict[str, list[int]]


def parse_hostfile(path: str) -> Resources:
    """Read ``path`` into ``{host: [0, ..., slots-1]}``, keeping the file's host order.

    Raises LaunchError naming the file and line for a malformed line, a slot count that is not a
    positive integer, or a host listed twice, and when the file is missing or lists no host.
    """
    try:
        with open(path, encoding="utf-8") as handle:
            lines = handle.readlines()
    except OSError as err:
        raise LaunchError(f"cannot read hostfile {path}: {err.strerror}") from err
    resources: Resources = {}
    for number, raw in enumerate(lines, start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        where = f"hostfile {path}, line {number}"
        match = _HOST_LINE.match(line)
        if match is None:
            raise LaunchError(f"{where}: expected 'hostname slots=N', got {raw.strip()!r}")
        host, slots = match.group("host"), match.group("slots")
        if not slots.isdigit() or int(slots) < 1:
            raise LaunchError(f"{where}: slots must be a positive integer, got {slots!r}")
        if host in resources:
            raise LaunchError(f"{where}: host {host!r} is listed twice")
        resources[host] = list(range(int(slots)))
    if not resources:
        raise LaunchError(f"hostfile {path} lists no hosts")
    return resources


def parse_filter(spec: str, option: str) -> dict[str, list[int] | None]:
    """Parse ``host1:0,1@host2`` into ``{"host1": [0, 1], "host2": None}`` (None: every slot).

    ``option`` (``--include`` or ``--exclude``) is named in the error for a malformed spec.
    """
    selected: dict[str, list[int] | None] = {}
    for part in spec.split("@"):
        host, sep, slot_text = part.partition(":")
        if not host or (sep and not slot_text):
            raise LaunchError(f"{option} {spec!r}: {part!r} is not 'host' or 'host:slot,slot'")
        if host in selected:
            raise LaunchError(f"{option} {spec!r}: host {host!r} appears twice")
        if not sep:
            selected[host] = None
            continue
        slots = slot_text.split(",")
        if not all(slot.isdigit() for slot in slots):
            raise LaunchError(f"{option} {spec!r}: slots of {host!r} must be integers, got {slot_text!r}")
        selected[host] = sorted({int(slot) for slot in slots})
    return selected


def apply_filters(resources: Resources, include: str | None, exclude: str | None) -> Resources:
    """Keep what ``include`` names, or drop what ``exclude`` names; at most one may be given.

    Naming a host or slot that ``resources`` does not have is an error, as in DeepSpeed, so a
    typo cannot silently launch on the wrong devices. Hosts left with no slot are dropped.
    """
    if include and exclude:
        raise LaunchError("--include and --exclude cannot be used together")
    spec, option = (include, "--include") if include else (exclude, "--exclude")
    if not spec:
        return {host: list(slots) for host, slots in resources.items()}
    chosen = parse_filter(spec, option)
    for host, slots in chosen.items():
        if host not in resources:
            raise LaunchError(f"{option}: host {host!r} is not among the hosts {list(resources)}")
        missing = sorted(set(slots or []) - set(resources[host]))
        if missing:
            raise LaunchError(f"{option}: host {host!r} has no slot(s) {missing}; it has {resources[host]}")
    kept: Resources = {}
    for host, slots in resources.items():
        named = host in chosen
        picked = chosen.get(host) or slots
        if include:
            remaining = [slot for slot in slots if named and slot in picked]
        else:
            remaining = [slot for slot in slots if not (named and slot in picked)]
        if remaining:
            kept[host] = remaining
    if not kept:
        raise LaunchError(f"{option} {spec!r} leaves no slot to launch on")
    return kept


def limit_resources(resources: Resources, num_nodes: int | None, num_procs: int | None) -> Resources:
    """Take the first ``num_nodes`` hosts and the first ``num_procs`` slots of each, as DeepSpeed does."""
    hosts = list(resources)
    if num_nodes is not None:
        if num_nodes > len(hosts):
            raise LaunchError(f"--num_nodes {num_nodes} asks for more nodes than the {len(hosts)} available: {hosts}")
        hosts = hosts[:num_nodes]
    limited: Resources = {}
    for host in hosts:
        slots = resources[host]
        if num_procs is not None:
            if num_procs > len(slots):
                raise LaunchError(f"--num_procs {num_procs} exceeds the {len(slots)} slot(s) of host {host!r}")
            slots = slots[:num_procs]
        limited[host] = slots
    return limited
