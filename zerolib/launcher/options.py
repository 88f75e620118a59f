"""The launcher's command line: DeepSpeed's and torchrun's option names, checked up front."""
import argparse

from zerolib.launcher.errors import LaunchError

LAUNCHERS = ("local", "ssh", "pdsh", "slurm")
DEFAULT_MASTER_ADDR = "127.0.0.1"
DEFAULT_MASTER_PORT = 29500


def build_parser() -> argparse.ArgumentParser:
    """The parser for ``zerolib [launcher options] script.py args...``."""
    parser = argparse.ArgumentParser(
        prog="zerolib", allow_abbrev=False,
        description="Launch a training script on one or more nodes, one process per rank. "
                    "Also: zerolib report | config check FILE | estimate | export (see docs/launcher.md).")
    sizes = parser.add_argument_group("size of the job")
    sizes.add_argument("--num_procs", "--num_gpus", "--nproc_per_node", "--nproc-per-node", dest="num_procs",
                       type=int, help="ranks per node (default: 1, or the hostfile's slots)")
    sizes.add_argument("--num_nodes", "--nnodes", dest="num_nodes", type=int,
                       help="number of nodes (default: 1, or every host of the hostfile)")
    sizes.add_argument("--hostfile", "-H", help="file of 'hostname slots=N' lines")
    sizes.add_argument("--include", "-i", help="only these hosts/slots, e.g. 'host1:0,1@host2'")
    sizes.add_argument("--exclude", "-e", help="all but these hosts/slots, e.g. 'host1:1@host3'")
    rendezvous = parser.add_argument_group("rendezvous")
    rendezvous.add_argument("--master_addr", "--master-addr", dest="master_addr",
                            help=f"address of rank 0 (default {DEFAULT_MASTER_ADDR}, or the first host)")
    rendezvous.add_argument("--master_port", "--master-port", dest="master_port", type=int,
                            default=DEFAULT_MASTER_PORT, help=f"rank 0's port (default {DEFAULT_MASTER_PORT})")
    rendezvous.add_argument("--node_rank", "--node-rank", dest="node_rank", type=int,
                            help="run the agent of this node only (one agent per node, as torchrun)")
    rendezvous.add_argument("--coord_port", type=int,
                            help="port of the agents' coordination channel on the master (default master_port+1)")
    how = parser.add_argument_group("how to start")
    how.add_argument("--launcher", choices=LAUNCHERS,
                     help="local (default for one host), ssh (default with a hostfile), pdsh or slurm")
    how.add_argument("--module", "-m", action="store_true", help="run the script as 'python -m MODULE'")
    how.add_argument("--no_python", "--no-python", dest="no_python", action="store_true",
                     help="run the script as an executable, without python")
    how.add_argument("--dry_run", "--dry-run", dest="dry_run", action="store_true",
                     help="print the command of each node (or rank) and exit")
    tuning = parser.add_argument_group("failure handling")
    tuning.add_argument("--term_grace", type=float, default=5.0,
                        help="seconds between SIGTERM and SIGKILL when ending ranks (default 5)")
    tuning.add_argument("--heartbeat_timeout", type=float, default=15.0,
                        help="seconds of silence after which an agent counts as dead (default 15)")
    tuning.add_argument("--join_timeout", type=float, default=300.0,
                        help="seconds to wait for all agents to start (default 300)")
    internal = parser.add_argument_group("set by the ssh/pdsh/slurm runners")
    internal.add_argument("--node_rank_from", metavar="ENV_VAR",
                          help="read the node rank from this environment variable (e.g. SLURM_NODEID)")
    internal.add_argument("--node_devices", metavar="SLOTS/SLOTS",
                          help="device slots of each node in node order, e.g. '0,1/0,1,2'")
    internal.add_argument("--exit_on_stdin_eof", action="store_true",
                          help="end the job when stdin closes (how an agent notices its ssh session ended)")
    parser.add_argument("user_script", help="the training script (or module with --module)")
    parser.add_argument("user_args", nargs=argparse.REMAINDER, help="arguments passed on to the script")
    return parser


def parse_node_devices(spec: str) -> list[list[int]]:
    """``'0,1/0,1,2'`` -> ``[[0, 1], [0, 1, 2]]``."""
    nodes = []
    for part in spec.split("/"):
        slots = part.split(",")
        if not part or not all(slot.isdigit() for slot in slots):
            raise LaunchError(f"--node_devices {spec!r}: {part!r} is not a list of slot integers")
        nodes.append([int(slot) for slot in slots])
    return nodes


def format_node_devices(nodes: list[list[int]]) -> str:
    """``[[0, 1], [0, 1, 2]]`` -> ``'0,1/0,1,2'``, the inverse of parse_node_devices."""
    return "/".join(",".join(str(slot) for slot in slots) for slots in nodes)


def _check_positive(opts, name: str) -> None:
    value = getattr(opts, name)
    if value is not None and value < 1:
        raise LaunchError(f"--{name} must be at least 1, got {value}")


def _check_port(option: str, port: int | None) -> None:
    if port is not None and not 1 <= port <= 65535:
        raise LaunchError(f"{option} must be a port in 1..65535, got {port}")


def check_options(opts: argparse.Namespace) -> argparse.Namespace:
    """Reject contradictory or out-of-range options with a message naming them."""
    _check_positive(opts, "num_procs")
    _check_positive(opts, "num_nodes")
    _check_port("--master_port", opts.master_port)
    _check_port("--coord_port", opts.coord_port)
    if opts.coord_port is None and opts.master_port == 65535:
        raise LaunchError("--master_port 65535 leaves no room for the coordination port (master_port+1); "
                          "set --coord_port")
    if opts.module and opts.no_python:
        raise LaunchError("--module and --no_python cannot be used together")
    if opts.include and opts.exclude:
        raise LaunchError("--include and --exclude cannot be used together")
    if opts.node_rank is not None and opts.node_rank_from:
        raise LaunchError("--node_rank and --node_rank_from cannot be used together")
    if opts.node_rank is not None:
        nodes = opts.num_nodes or 1
        if not 0 <= opts.node_rank < nodes:
            raise LaunchError(f"--node_rank {opts.node_rank} is outside 0..{nodes - 1} (--num_nodes {nodes})")
    for name in ("term_grace", "heartbeat_timeout", "join_timeout"):
        if getattr(opts, name) <= 0:
            raise LaunchError(f"--{name} must be positive, got {getattr(opts, name)}")
    return opts


def parse_launch_args(argv: list[str]) -> argparse.Namespace:
    """Parse and check the launch options; argparse itself exits with 2 on unknown options."""
    return check_options(build_parser().parse_args(argv))
