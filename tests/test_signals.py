"""Signal handlers that cannot deadlock: they run in the main thread between two bytecodes,
maybe while it holds the very lock that waking the loop needs."""

from __future__ import annotations

import signal
import threading
from typing import Any

from chunkq.supervisor import Supervisor
from workerd.providers import SimulatedProvider
from workerd.settings import Settings
from workerd.signals import stop_on_signals
from workerd.worker import Worker


def no_database() -> Any:
    raise AssertionError("this test needs no database")


def test_worker_signal__stops_the_worker_even_when_it_lands_inside_the_wake_lock() -> None:
    worker = Worker(Settings(), SimulatedProvider(), no_database)
    on_signal = stop_on_signals(worker)
    returned = threading.Event()

    def main_thread_in_wake_clear() -> None:
        # What the loop's thread does inside wake.clear() or wake.wait(): hold the Event's
        # lock. A handler that set the Event right here would wait for itself forever.
        with worker.wake._cond:  # type: ignore[attr-defined]
            on_signal(signal.SIGTERM, None)
        returned.set()

    threading.Thread(target=main_thread_in_wake_clear, daemon=True).start()
    assert returned.wait(10), "the handler blocked on a lock its own thread holds"
    assert worker.stopping.wait(10) and worker.wake.wait(10)


def test_supervisor_signal__counts_and_cuts_the_wait_short_without_taking_a_lock() -> None:
    sup = Supervisor({}, ())
    try:
        sup.on_signal(signal.SIGTERM, None)  # before the wait: the wait must not sleep
        finished = threading.Event()

        def wait() -> None:
            sup.wait(600)
            finished.set()

        threading.Thread(target=wait, daemon=True).start()
        assert finished.wait(10), "a signal noted before the wait did not end it"
        assert sup.signals == 1
    finally:
        sup.close()
