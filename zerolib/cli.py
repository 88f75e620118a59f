"""The ``zerolib`` command: subcommands, and launching a training script for anything else.

    zerolib report [...]             environment and native-op report   (zerolib.ops.report)
    zerolib config check FILE [...]  validate a DeepSpeed-style config   (zerolib.config.check)
    zerolib estimate [...]           memory estimates                    (zerolib.estimator)
    zerolib export [...]             checkpoint export                   (zerolib.checkpoint.export)
    zerolib plot RUN_DIR [...]       PNG of a csv_monitor run            (zerolib.plot)
    zerolib serve-prefill [...]      MoE-prefill scoring server          (zerolib.inference.serve.cli)
    zerolib [launch] [launcher options] script.py args...   (docs/launcher.md)

Each subcommand's module is imported only when asked for, so a missing or broken optional
piece never stops a launch.
"""
import importlib
import sys

# words on the command line -> module whose main(argv) implements them
SUBCOMMANDS = {
    ("report",): "zerolib.ops.report",
    ("config", "check"): "zerolib.config.check",
    ("estimate",): "zerolib.estimator",
    ("export",): "zerolib.checkpoint.export",
    ("plot",): "zerolib.plot",
    ("serve-prefill",): "zerolib.inference.serve.cli",
}
NOT_AVAILABLE_STATUS = 2


def _load_subcommand(module_name: str):
    """The subcommand's ``main``, or None when this installation does not have the module."""
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        # Only the module itself (or a package above it) missing means "not available"; a
        # dependency missing inside it is a real error and must surface as one.
        if err.name is None or not (module_name == err.name or module_name.startswith(err.name + ".")):
            raise
        return None
    return getattr(module, "main", None)


def _run_subcommand(words: tuple[str, ...], module_name: str, argv: list[str]) -> int:
    entry = _load_subcommand(module_name)
    if entry is None:
        print(f"'zerolib {' '.join(words)}' is not available in this version", file=sys.stderr)
        return NOT_AVAILABLE_STATUS
    status = entry(argv)
    return 0 if status is None else int(status)


def main(argv: list[str] | None = None) -> int:
    """Run ``zerolib`` with ``argv`` (default: sys.argv[1:]) and return the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    for words, module_name in SUBCOMMANDS.items():
        if tuple(argv[: len(words)]) == words:
            return _run_subcommand(words, module_name, argv[len(words):])
    if argv[:1] == ["config"]:
        print("usage: zerolib config check FILE  ('check' is the only config subcommand)", file=sys.stderr)
        return NOT_AVAILABLE_STATUS
    if argv[:1] == ["launch"]:
        argv = argv[1:]
    from zerolib.launcher import main as launch_main  # imported here: subcommands do not need it

    return launch_main(argv)


if __name__ == "__main__":
    sys.exit(main())
