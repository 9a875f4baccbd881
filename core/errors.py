"""User-facing errors: one line on stderr naming the file and the problem, exit status 2.

A user's mistake (missing file, bad json, unknown config key, a checkpoint from another
skeleton) raises `UserError`; the command-line entry points run under `run_cli`, which turns
it into one line and exit status 2 with no traceback. A `Fault` (a lost rank) is one line too,
with exit status 1. Bugs still raise with a traceback.
"""
import argparse
import sys


class UserError(Exception):
    """A mistake the user can fix; its message is the whole story, shown on one line."""


class Fault(Exception):
    """A failure that is not the user's mistake but is fully explained by one line (a rank lost
    in a collective, say): one line on stderr and exit status 1, which torchrun's --max-restarts
    and schedulers treat as worth a restart."""


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
    except Fault as e:
        sys.stderr.write(f"error: {e}\n")
        sys.exit(1)
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        sys.exit(130)
    sys.exit(status or 0)
