"""Graceful stop on SIGTERM / SIGINT: the handler only sets a flag; the loop saves and exits.

Schedulers (SLURM, Kubernetes) and torchrun send SIGTERM and wait a grace period before
SIGKILL; Ctrl-C sends SIGINT. Saving inside a handler could interrupt a collective or a
half-taken optimizer step, so the loop checks `requested` once per step (agreed over ranks,
so every rank stops after the same step) and checkpoints there. A second signal exits at once.
"""
import signal
import sys


class StopRequest:
    def __init__(self, signals=(signal.SIGTERM, signal.SIGINT)):
        self.requested = None  # the signal's name once one arrives
        self._previous = {s: signal.signal(s, self._handle) for s in signals}

    def _handle(self, signum, frame):
        if self.requested:  # second signal: the user means it
            sys.stderr.write(f"{signal.Signals(signum).name} again: exiting without a checkpoint\n")
            sys.exit(128 + signum)
        self.requested = signal.Signals(signum).name
        sys.stderr.write(f"{self.requested}: will save a checkpoint and stop after this step\n")

    def restore(self):
        for s, handler in self._previous.items():
            signal.signal(s, handler)
