"""LISTEN/NOTIFY wake-ups: a worker learns of new work the moment a submit commits."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import psycopg

from schema.queue import CANCEL_NOTICE, NOTIFY_CHANNEL

if TYPE_CHECKING:
    from workerd.worker import Worker

log = logging.getLogger("workerd.listen")


def listener(connect: Callable[[], psycopg.Connection[Any]]) -> Callable[[Worker], None]:
    """A thread body that LISTENs on its own connection and sets ``worker.wake`` per notice
    (and ``worker.leases_changed`` when a job was cancelled).

    A lost connection is re-established with backoff; meanwhile ``worker.listening`` is
    False so the loop polls briskly instead of silently waiting a whole poll interval.
    """

    def listen(worker: Worker) -> None:
        delay = 0.2
        first = True
        while not worker.stopping.is_set():
            try:
                with connect() as conn:
                    conn.execute(f"LISTEN {NOTIFY_CHANNEL}")
                    if not worker.listening:
                        log.info("LISTEN re-established")
                    elif first:
                        log.info("listening for work")
                    first = False
                    worker.listening = True
                    delay = 0.2
                    worker.wake.set()  # work may have arrived while we were not listening
                    while not worker.stopping.is_set():
                        for notice in conn.notifies(timeout=1.0):
                            if notice.payload == CANCEL_NOTICE:
                                worker.leases_changed.set()
                            worker.wake.set()
            except psycopg.Error as exc:
                worker.listening = False
                log.warning(
                    "LISTEN connection lost (%s); polling until it is back",
                    str(exc).strip() or type(exc).__name__,
                )
                worker.wake.set()
                time.sleep(delay)
                delay = min(delay * 2, 5.0)

    return listen
