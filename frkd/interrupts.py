"""Graceful stops: Ctrl-C / SIGTERM become a flag the training loop checks between iterations."""
from __future__ import annotations

import signal
import threading


class StopSignal:
    """Turns SIGINT/SIGTERM into a flag checked between iterations; a second Ctrl-C aborts at once."""

    def __init__(self):
        self.requested = None
        self._previous = {}

    def _handler(self, signum, frame):
        if self.requested is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = "interrupted" if signum == signal.SIGINT else "terminated"

    def __enter__(self):
        if _in_main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def ignore_sigint_in_worker(_worker_id: int) -> None:
    """Data workers leave Ctrl-C to the main process, which saves a checkpoint first."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
