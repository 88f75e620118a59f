"""`zerolib config check FILE [--world_size N]`: validate a config without training.

Prints every warning (stderr), then the resolved config as JSON (stdout); on a bad config
prints the error and exits non-zero. Also runnable as `python -m zerolib.config.check FILE`.
"""
import argparse
import json
import sys
import warnings

from .errors import ConfigError
from .loader import load_config


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="zerolib config check",
        description="Validate a DeepSpeed-style JSON config and print it resolved.")
    parser.add_argument("file", help="path to the JSON config")
    parser.add_argument("--world_size", "--world-size", type=int, default=1,
                        help="data-parallel ranks to resolve the batch triple for (default 1)")
    parser.add_argument("--allow_unimplemented", action="store_true",
                        help="do not reject settings this version does not implement yet")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the check; returns the process exit code (0 valid, 1 rejected, 2 bad arguments)."""
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exit_:  # argparse exits on --help and on bad arguments
        return int(exit_.code or 0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            cfg = load_config(args.file, world_size=args.world_size,
                              check_implemented=not args.allow_unimplemented)
        except ConfigError as exc:
            error = exc
        else:
            error = None
    for warning in caught:
        print(f"warning: {warning.message}", file=sys.stderr)
    if error is not None:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(json.dumps(cfg.to_dict(), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
