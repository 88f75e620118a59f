"""``zerolib [options] script.py args``: decide between one local node, one agent of many, and
a remote launch, then hand over to agent.py or remote.py."""
import os
import shlex
import socket
import sys

from zerolib.launcher.agent import NodePlan, dry_run_lines, run_node
from zerolib.launcher.errors import LaunchError
from zerolib.launcher.hostfile import Resources, apply_filters, limit_resources, parse_filter, parse_hostfile
from zerolib.launcher.options import DEFAULT_MASTER_ADDR, parse_launch_args, parse_node_devices
from zerolib.launcher.remote import node_commands, run_remote


def rank_command(opts) -> tuple[str, ...]:
    """What each rank runs: ``python -u script args``, ``python -u -m module args`` or the executable."""
    if opts.no_python:
        return (opts.user_script, *opts.user_args)
    module = ("-m",) if opts.module else ()
    return (sys.executable, "-u", *module, opts.user_script, *opts.user_args)


def _devices_or_none(slots: list[int]) -> tuple[int, ...] | None:
    """Slots to export as CUDA_VISIBLE_DEVICES, or None when they are simply 0..n-1."""
    return None if slots == list(range(len(slots))) else tuple(slots)


def _node_plan(opts, node_rank: int, node_slots: list[list[int]], master_addr: str) -> NodePlan:
    return NodePlan(
        node_rank=node_rank, node_sizes=tuple(len(slots) for slots in node_slots), command=rank_command(opts),
        master_addr=master_addr, master_port=opts.master_port,
        coord_port=opts.coord_port or opts.master_port + 1, devices=_devices_or_none(node_slots[node_rank]),
        term_grace=opts.term_grace, heartbeat_timeout=opts.heartbeat_timeout, join_timeout=opts.join_timeout,
        exit_on_stdin_eof=opts.exit_on_stdin_eof)


def _agent_node_rank(opts) -> int:
    if opts.node_rank is not None:
        return opts.node_rank
    value = os.environ.get(opts.node_rank_from)
    if value is None or not value.isdigit():
        raise LaunchError(f"--node_rank_from {opts.node_rank_from}: that variable is {value!r}, not a node rank")
    return int(value)


def _agent_plan(opts) -> NodePlan:
    """The plan of one agent of a multi-node job started per node (torchrun style)."""
    if opts.node_devices:
        node_slots = parse_node_devices(opts.node_devices)
        if opts.num_nodes is not None and opts.num_nodes != len(node_slots):
            raise LaunchError(f"--num_nodes {opts.num_nodes} disagrees with --node_devices, "
                              f"which lists {len(node_slots)} nodes")
    else:
        node_slots = [list(range(opts.num_procs or 1))] * (opts.num_nodes or 1)
    node_rank = _agent_node_rank(opts)
    if not 0 <= node_rank < len(node_slots):
        raise LaunchError(f"node rank {node_rank} is outside 0..{len(node_slots) - 1}")
    return _node_plan(opts, node_rank, node_slots, opts.master_addr or DEFAULT_MASTER_ADDR)


def _is_this_machine(host: str) -> bool:
    return host in ("localhost", "127.0.0.1", "::1", socket.gethostname(), socket.getfqdn())


def _slots_named(include: str | None) -> int:
    """Local slot count implied by ``--include localhost:1,3`` without --num_procs (4: slots 0..3)."""
    if not include:
        return 1
    named = [slot for slots in parse_filter(include, "--include").values() for slot in slots or []]
    return max(named, default=0) + 1


def _resources(opts) -> Resources | None:
    """Hosts and slots from the hostfile and filters, or None when neither was given."""
    if not (opts.hostfile or opts.include or opts.exclude):
        return None
    if opts.hostfile:
        resources = parse_hostfile(opts.hostfile)
    else:  # DeepSpeed filters the local slots when there is no hostfile
        resources = {"localhost": list(range(opts.num_procs or _slots_named(opts.include)))}
    resources = apply_filters(resources, opts.include, opts.exclude)
    num_procs = opts.num_procs if opts.hostfile else None
    return limit_resources(resources, opts.num_nodes, num_procs)


def _run_or_print_node(opts, plan: NodePlan) -> int:
    if opts.dry_run:
        print("\n".join(dry_run_lines(plan)))
        return 0
    return run_node(plan)


def _run_or_print_remote(opts, launcher: str, hosts: list[str], node_slots: list[list[int]]) -> int:
    master_addr = opts.master_addr or (hosts[0] if hosts else None)
    if master_addr is None:
        raise LaunchError("--launcher slurm without --hostfile needs --master_addr (the first node's address)")
    commands = node_commands(opts, launcher, hosts, node_slots, master_addr)
    if opts.dry_run:
        for label, argv in commands:
            print(f"{label}: {shlex.join(argv)}")
        return 0
    return run_remote(commands, opts.term_grace, settle_seconds=opts.heartbeat_timeout + opts.term_grace)


def launch(opts) -> int:
    """Run the launch described by parsed options; return the exit status."""
    if opts.node_rank is not None or opts.node_rank_from:
        return _run_or_print_node(opts, _agent_plan(opts))
    resources = _resources(opts)
    if resources is None:
        if opts.launcher == "slurm":
            num_nodes = opts.num_nodes or 1
            return _run_or_print_remote(opts, "slurm", [], [list(range(opts.num_procs or 1))] * num_nodes)
        if opts.launcher in ("ssh", "pdsh"):
            raise LaunchError(f"--launcher {opts.launcher} needs --hostfile to know the hosts")
        if (opts.num_nodes or 1) > 1:
            raise LaunchError(f"--num_nodes {opts.num_nodes} needs --hostfile (to start the nodes over "
                              f"ssh/pdsh/slurm) or --node_rank (to run this node's agent, one per node)")
        resources = {"localhost": list(range(opts.num_procs or 1))}
    hosts, node_slots = list(resources), list(resources.values())
    if opts.launcher in (None, "local") and len(hosts) == 1 and _is_this_machine(hosts[0]):
        return _run_or_print_node(opts, _node_plan(opts, 0, node_slots, opts.master_addr or DEFAULT_MASTER_ADDR))
    if opts.launcher == "local":
        raise LaunchError(f"--launcher local runs this machine only, but the hosts are {hosts}; "
                          f"use ssh/pdsh/slurm, or start one agent per node with --node_rank")
    return _run_or_print_remote(opts, opts.launcher or "ssh", hosts, node_slots)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``zerolib [launch]`` and ``python -m zerolib.launcher``; returns the exit status."""
    try:
        return launch(parse_launch_args(sys.argv[1:] if argv is None else argv))
    except SystemExit as usage_exit:  # argparse already printed the usage error or the help
        return usage_exit.code if isinstance(usage_exit.code, int) else 2
    except LaunchError as err:
        print(f"zerolib launcher: error: {err}", file=sys.stderr, flush=True)
        return 2
