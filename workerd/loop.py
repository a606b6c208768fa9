"""The worker's loop: step, sleep until there is work (or a wake-up), back off while the
database is away, and on stop finish what is in flight within the grace period."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from workerd.database import DatabaseDown
from workerd.worker import Worker

log = logging.getLogger("workerd")

# How often a burst worker with nothing in flight looks whether the queue is drained.
BURST_POLL_S = 0.1


def run(
    worker: Worker,
    *,
    burst: bool = False,
    listen: Callable[[Worker], None] | None = None,
) -> int:
    """Loop until stopped (or, with ``burst``, until idle); returns the exit code.

    ``listen`` runs in a background thread and sets ``worker.wake`` when work arrives.
    """
    monotonic = worker.monotonic
    worker.start()
    if listen is not None:
        threading.Thread(target=listen, args=(worker,), name="chunkq-listen", daemon=True).start()
    grace_deadline: float | None = None
    db_backoff = 0.0
    try:
        while True:
            if worker.stopping.is_set():
                if grace_deadline is None:
                    grace_deadline = monotonic() + worker.settings.shutdown_grace_s
                    log.info(
                        "stopping: finishing %d in-flight chunks (grace %.0fs)",
                        worker.in_flight,
                        worker.settings.shutdown_grace_s,
                    )
                if not worker.busy:
                    return 0
                if monotonic() >= grace_deadline:
                    return _give_up(worker)
            worker.wake.clear()
            try:
                step = worker.run_once()
                if burst and not step.busy and worker.idle():
                    return 0
                wait = 0.0 if step.claimed else worker.wait_s(grace_deadline)
                if burst and not worker.busy:
                    # About to exit: look again soon, not after a poll interval (others may
                    # still be running chunks that could come back for a retry).
                    wait = 0.0 if step.busy else min(wait, BURST_POLL_S)
                db_backoff = 0.0
            except DatabaseDown as exc:
                db_backoff = min(2.0, max(0.1, db_backoff * 2))
                wait = db_backoff * (0.5 + worker.rng.random() / 2)
                log.warning("database unavailable (%s); retrying in %.1fs", exc, wait)
                if grace_deadline is not None:
                    wait = min(wait, max(0.0, grace_deadline - monotonic()))
            except Exception:
                # A bug must not kill the worker, nor make it retry the same write forever.
                log.exception(
                    "unexpected error in the worker loop; dropping %d outcomes",
                    worker.drop_unrecorded(),
                )
                wait = 1.0
            if wait > 0:
                worker.wake.wait(wait)
    finally:
        worker.close()


def _give_up(worker: Worker) -> int:
    """Grace is over: record what finished, hand back the rest, exit cleanly."""
    try:
        log.info("grace period over: handed back %d chunks", worker.finish_up())
    except DatabaseDown as exc:
        log.warning("could not hand back chunks (%s); their leases will expire", exc)
    return 0
