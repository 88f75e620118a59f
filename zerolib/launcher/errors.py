"""The one exception type the launcher raises for bad input or an unusable environment."""


class LaunchError(Exception):
    """A launch that cannot start: the message names the option, file, host or port at fault.

    The command line prints it as ``zerolib launcher: error: <message>`` and exits with 2, the
    exit code argparse uses for usage errors, so scripts can tell it from a rank's failure.
    """
