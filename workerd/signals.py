"""SIGTERM/SIGINT for ``python -m workerd``: a handler that takes no lock, and a thread that
stops the worker.

A Python signal handler runs in the main thread between two bytecodes, possibly while that
thread holds a lock: the worker loop holds ``worker.wake``'s lock inside ``clear()`` and
``wait()``. A handler that called ``worker.stop()`` (which sets that Event) could then wait
for a lock its own thread holds, forever. So the handler only writes the signal's number to
a pipe, and a thread of its own reads it and stops the worker.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
from collections.abc import Callable
from types import FrameType
from typing import Protocol

log = logging.getLogger("workerd")

Handler = Callable[[int, FrameType | None], None]


class Stoppable(Protocol):
    def stop(self) -> None: ...


def stop_on_signals(worker: Stoppable) -> Handler:
    """Start the thread that stops ``worker`` for each signal the returned handler notes;
    the caller installs the handler (only the main thread can)."""
    read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, False)

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        # os.write takes no Python lock; a full pipe already holds a stop request.
        with contextlib.suppress(BlockingIOError):
            os.write(write_fd, bytes([signum]))

    def watch() -> None:
        while noted := os.read(read_fd, 64):
            for signum in noted:
                log.info("received %s", signal.Signals(signum).name)
            worker.stop()

    threading.Thread(target=watch, name="chunkq-signals", daemon=True).start()
    return on_signal
