"""User-facing errors: one line on stderr naming the file and the problem, exit status 2.

A user's mistake (missing file, bad json, unknown config key, a checkpoint from another
skeleton) raises `UserError`; the command-line entry points run under `run_cli`, which turns
it into one line and exit status 2 with no traceback. Bugs still raise with a traceback.
"""
import argparse
import sys


class UserError(Exception):
    """A mistake the user can fix; its message is the whole story, shown on one line."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose errors are one line on stderr and exit status 2 (not usage + error)."""

    def error(self, message):
        sys.stderr.write(f"{self.prog}: error: {message} (see --help)\n")
        sys.exit(2)


def run_cli(main, argv=None):
    """Call `main(argv)`; a UserError becomes one line on stderr and exit status 2."""
    try:
        status = main(argv)
    except UserError as e:
        sys.stderr.write(f"error: {e}\n")
        sys.exit(2)
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        sys.exit(130)
    sys.exit(status or 0)
