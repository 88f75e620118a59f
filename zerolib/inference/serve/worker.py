"""One rank of ``zerolib serve-prefill``: build the engine, then serve (rank 0) or follow.

The launcher runs ``python -m zerolib.inference.serve.worker --model PATH --port P ...`` on
every rank with RANK/WORLD_SIZE/MASTER_* set.
"""
from __future__ import annotations

import argparse
import sys

from zerolib.comm import CommContext
from zerolib.config.errors import ConfigError
from zerolib.inference.serve.load import build_engine
from zerolib.inference.serve.server import serve
from zerolib.inference.serve.settings import load_config_file


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="zerolib.inference.serve.worker")
    parser.add_argument("--model", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--config")
    args = parser.parse_args(argv)
    try:
        settings, engine_config = load_config_file(args.config)
        comm = CommContext.from_environment(timeout_seconds=settings.collective_timeout_seconds)
        engine, tokenizer, max_positions = build_engine(args.model, engine_config, settings, comm=comm)
    except (ConfigError, FileNotFoundError, ValueError) as err:
        print(f"zerolib serve-prefill: error: {err}", file=sys.stderr, flush=True)
        return 2
    return serve(engine, settings, comm=comm, host=args.host, port=args.port, tokenizer=tokenizer,
                 max_positions=max_positions, announce=lambda line: print(line, flush=True))


if __name__ == "__main__":
    sys.exit(main())
