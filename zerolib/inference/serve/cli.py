"""``zerolib serve-prefill --model PATH --num_procs N --port P [--host H] [--config F]``.

Checks what it can on this process (the model path, the config file's serve and moe_prefill
blocks), then starts N ranks of
zerolib.inference.serve.worker through zerolib's own launcher, which prefixes each rank's
output and ends the whole job when any rank fails.
"""
from __future__ import annotations

import argparse
import socket
import sys
from pathlib import Path

from zerolib.config.errors import ConfigError
from zerolib.inference.serve.settings import load_config_file
from zerolib.inference.settings import load_prefill_config


def _free_port(host: str) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="zerolib serve-prefill", allow_abbrev=False,
                                     description="Serve prefill-only scoring of an MoE model over HTTP "
                                                 "(docs/moe_prefill_frontend.md).")
    parser.add_argument("--model", required=True, help="transformers model directory or zerolib checkpoint")
    parser.add_argument("--num_procs", "--num_gpus", dest="num_procs", type=int, default=1, help="ranks (default 1)")
    parser.add_argument("--port", type=int, required=True, help="HTTP port (0: any free port, printed at start)")
    parser.add_argument("--host", default="127.0.0.1", help="HTTP address (default 127.0.0.1: this machine only)")
    parser.add_argument("--config", help="JSON: the engine's config (moe_prefill block) and a serve block")
    parser.add_argument("--master_port", type=int, help="rank 0's rendezvous port (default: a free one)")
    return parser


def launcher_argv(args: argparse.Namespace) -> list[str]:
    """The ``zerolib launch`` command line that runs the worker on every rank."""
    worker = ["--model", str(Path(args.model).resolve()), "--port", str(args.port), "--host", args.host]
    if args.config:
        worker += ["--config", str(Path(args.config).resolve())]
    master_port = args.master_port or _free_port("127.0.0.1")
    return ["--num_procs", str(args.num_procs), "--master_port", str(master_port),
            "--module", "zerolib.inference.serve.worker", *worker]


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.num_procs < 1:
            raise ValueError(f"--num_procs must be at least 1, got {args.num_procs}")
        if not 0 <= args.port <= 65535:
            raise ValueError(f"--port must be in 0..65535, got {args.port}")
        if not Path(args.model).exists():
            raise ValueError(f"--model {args.model}: no such file or directory")
        _, engine_config = load_config_file(args.config)
        load_prefill_config(engine_config)  # before starting N ranks that would each fail on it
    except (ConfigError, ValueError) as err:
        print(f"zerolib serve-prefill: error: {err}", file=sys.stderr)
        return 2
    from zerolib.launcher import main as launch_main

    return launch_main(launcher_argv(args))
