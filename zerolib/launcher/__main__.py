"""``python -m zerolib.launcher [options] script.py args``: the launcher without the CLI's subcommands."""
import sys

from zerolib.launcher.launch import main

if __name__ == "__main__":
    sys.exit(main())
