"""The worker's webhook sender: a thread of its own that claims due outbox events, delivers
each on a thread of its own, and records every attempt, with retries on a schedule.

It has its own database connection and its own threads, so chunk work never waits on a
webhook target, and each delivery has its own thread, so one slow target never holds up
another. Each attempt has a deadline: one still running past it is recorded as a timeout
and left behind (its late answer is ignored), so a target that never answers costs a
thread for a while and nothing else.
"""

from __future__ import annotations

import logging
import queue
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psycopg

from schema import webhooks
from schema.webhooks import ClaimedEvent
from workerd.database import Database, DatabaseDown
from workerd.delivery import Attempt, deliver
from workerd.settings import Settings

log = logging.getLogger("workerd.webhooks")

Send = Callable[[ClaimedEvent], Attempt]
# How often (at most) a worker looks for events whose sender died.
RESCUE_EVERY_S = 5.0


def retry_in(attempt: int, delays: tuple[float, ...], rng: random.Random) -> float | None:
    """Seconds until the attempt after ``attempt`` (from 1), ±10 % jitter so the retries
    of many events spread out; None when the schedule is spent."""
    if attempt > len(delays):
        return None
    return delays[attempt - 1] * (0.9 + 0.2 * rng.random())


@dataclass(slots=True)
class _Flight:
    event: ClaimedEvent
    deadline: float


class Webhooks:
    """One worker process's webhook sender; ``run_once`` is one step (tests call it)."""

    def __init__(
        self,
        settings: Settings,
        connect: Callable[[], psycopg.Connection[Any]],
        worker_id: str,
        *,
        stopping: threading.Event,
        rng: random.Random | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        send: Send | None = None,
    ) -> None:
        self.settings = settings
        self.worker_id = worker_id
        self._db = Database(connect, lease_s=settings.lease_s)
        self._stopping = stopping
        self._rng = rng or random.Random()
        self._monotonic = monotonic
        self._delays = settings.webhook_delays
        timeout = settings.webhook_timeout_s
        self._send: Send = send or (
            lambda event: deliver(
                event, timeout_s=timeout, allow_private=settings.webhook_allow_private
            )
        )
        # The hard deadline of an attempt: its own timeout, and a little for the thread.
        self._deadline_s = timeout + 1.0
        # Past the deadline and the write of the outcome (bounded by the session timeouts,
        # sized to the lease): only a dead or stalled worker lets it expire.
        self.lease_s = self._deadline_s + settings.lease_s
        self._rescue_every_s = min(RESCUE_EVERY_S, self.lease_s / 2)
        self._flights: dict[str, _Flight] = {}
        self._finished: queue.SimpleQueue[tuple[ClaimedEvent, Attempt]] = queue.SimpleQueue()
        self._unrecorded: list[tuple[ClaimedEvent, Attempt]] = []
        self._next_rescue = 0.0
        # When the soonest retry this sender scheduled is due (a short delay, in tests).
        self._next_retry: float | None = None
        self.wake = threading.Event()
        # Set by ``stop``: the worker is closing, whether or not it was asked to stop.
        self._closing = threading.Event()
        self._thread: threading.Thread | None = None

    # -- one step ------------------------------------------------------------------------

    def run_once(self) -> int:
        """Record finished and overdue attempts, take back events of dead workers, claim due
        events up to the free threads and start them; returns how many were claimed."""
        self._collect()
        self._write()
        if self.stopped:
            return 0
        now = self._monotonic()
        if now >= self._next_rescue:
            self._next_rescue = now + self._rescue_every_s
            rescued = self._db.transaction(
                lambda conn: webhooks.rescue(conn, max_attempts=len(self._delays) + 1)
            )
            if rescued:
                log.warning("took back %d webhook events from lost workers", rescued)
        free = self.settings.webhook_concurrency - len(self._flights)
        if free <= 0:
            return 0
        claimed: list[ClaimedEvent] = self._db.transaction(
            lambda conn: webhooks.claim(conn, self.worker_id, free, lease_s=self.lease_s)
        )
        for event in claimed:
            self._flights[event.id] = _Flight(event, self._monotonic() + self._deadline_s)
            threading.Thread(
                target=self._attempt, args=(event,), name="chunkq-webhook", daemon=True
            ).start()
        return len(claimed)

    def _attempt(self, event: ClaimedEvent) -> None:
        """A delivery thread: one attempt, whatever it raises becomes its outcome."""
        started = self._monotonic()
        try:
            outcome = self._send(event)
        except Exception as exc:
            log.exception("delivering webhook %s failed unexpectedly", event.id)
            took = round((self._monotonic() - started) * 1000)
            outcome = Attempt(None, f"internal error: {type(exc).__name__}: {exc}", took)
        self._finished.put((event, outcome))
        self.wake.set()

    def _collect(self) -> None:
        """Take the finished attempts still ours, and fail the overdue ones as timeouts."""
        while True:
            try:
                event, outcome = self._finished.get_nowait()
            except queue.Empty:
                break
            flight = self._flights.get(event.id)
            if flight is not None and flight.event.attempt == event.attempt:
                del self._flights[event.id]
                self._unrecorded.append((event, outcome))
        now = self._monotonic()
        for event_id, flight in list(self._flights.items()):
            if flight.deadline <= now:
                del self._flights[event_id]
                timeout = self.settings.webhook_timeout_s
                took = round(self._deadline_s * 1000)
                error = f"timeout: no answer within {timeout:g}s"
                log.warning("webhook %s: %s; abandoning the attempt", event_id, error)
                self._unrecorded.append((flight.event, Attempt(None, error, took)))

    def _write(self) -> None:
        """Record the attempts that ended, in one transaction (kept for later when the
        database is away)."""
        if not self._unrecorded:
            return
        pending = list(self._unrecorded)

        def write(conn: psycopg.Connection[Any]) -> None:
            for event, outcome in pending:
                failed = outcome.error is not None
                wait = None
                if failed and outcome.retry:
                    wait = retry_in(event.attempt, self._delays, self._rng)
                kept = webhooks.record(
                    conn,
                    event,
                    self.worker_id,
                    status_code=outcome.status_code,
                    error=outcome.error,
                    duration_ms=outcome.duration_ms,
                    retry_in_s=wait,
                )
                if not kept:
                    log.warning("webhook %s: lease lost, attempt not recorded", event.id)
                elif not failed:
                    log.info("webhook %s delivered (attempt %d)", event.id, event.attempt)
                else:
                    then = "giving up" if wait is None else f"retry in {wait:.1f}s"
                    log.warning(
                        "webhook %s attempt %d: %s; %s",
                        event.id,
                        event.attempt,
                        outcome.error,
                        then,
                    )
                    if wait is not None:
                        due = self._monotonic() + wait
                        self._next_retry = min(due, self._next_retry or due)

        self._db.transaction(write)
        del self._unrecorded[: len(pending)]

    # -- the thread ----------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self.run, name="chunkq-webhooks", daemon=True)
        self._thread.start()

    def run(self) -> None:
        """Step until stopped and drained: on stop, no new claims; the attempts in flight
        end (each has a deadline) and are recorded. A lost database is retried with backoff;
        an unexpected error is logged and the sender goes on."""
        backoff = 0.0
        give_up_at: float | None = None
        while True:
            self.wake.clear()
            wait = self.settings.webhook_poll_s
            try:
                if self.run_once():
                    wait = 0.0
                backoff = 0.0
            except DatabaseDown as exc:
                backoff = min(5.0, max(0.2, backoff * 2))
                wait = backoff * (0.5 + self._rng.random() / 2)
                log.warning("webhooks: database unavailable (%s); retrying in %.1fs", exc, wait)
            except Exception:
                # Not retried forever: the leases of what was not recorded expire, and the
                # events are delivered again.
                log.exception(
                    "unexpected error in the webhook sender; dropping %d outcomes",
                    len(self._unrecorded),
                )
                self._unrecorded.clear()
                wait = 1.0
            if self.stopped:
                now = self._monotonic()
                if give_up_at is None:
                    give_up_at = now + self._deadline_s + 2.0
                if not self._flights and not self._unrecorded:
                    return
                if now >= give_up_at:
                    # Their leases expire and another worker delivers them again.
                    log.warning(
                        "webhooks: stopping with %d attempts unrecorded",
                        len(self._flights) + len(self._unrecorded),
                    )
                    return
                wait = min(wait, 0.2)
            now = self._monotonic()
            if self._flights:
                nearest = min(f.deadline for f in self._flights.values())
                wait = min(wait, max(0.0, nearest - now))
            if self._next_retry is not None:
                if self._next_retry <= now:
                    self._next_retry = None
                else:
                    wait = min(wait, self._next_retry - now)
            if wait > 0:
                self.wake.wait(wait)

    @property
    def stopped(self) -> bool:
        return self._stopping.is_set() or self._closing.is_set()

    def stop(self, timeout: float | None = None) -> None:
        """Stop claiming, and wait (bounded) for the attempts in flight to be recorded."""
        self._closing.set()
        self.wake.set()
        if self._thread is not None:
            self._thread.join(self._deadline_s + 3.0 if timeout is None else timeout)
            if self._thread.is_alive():
                return  # still writing: its connection goes with the process
        self._db.close()
