"""The worker: claim due chunks, run the provider on them, record outcomes, finalize jobs.

``run_once`` does one step and returns what it did (tests call it with no threads);
``workerd.loop.run`` only loops, waits for wake-ups and handles shutdown.
"""

from __future__ import annotations

import functools
import logging
import os
import random
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import psycopg

from schema import queue
from schema.queue import ClaimedChunk, Success, reductions
from workerd import lifecycle
from workerd.attempts import Attempts, Outcome, fields, key_of, label
from workerd.cache import ResultCache
from workerd.circuit import Circuit
from workerd.database import Database, DatabaseDown
from workerd.inflight import InFlight
from workerd.leases import Leases
from workerd.metrics import Metrics
from workerd.pool import AttemptPool
from workerd.providers import (
    Provider,
    cache_identity,
    can_reduce,
    circuit_key,
    merge_by_name,
)
from workerd.recorder import Recorder
from workerd.settings import Settings
from workerd.step import Step
from workerd.webhooks import Webhooks

log = logging.getLogger("workerd")

Clock = Callable[[], datetime | None]


@dataclass(frozen=True, slots=True)
class Claimed:
    """What one claim took: up to ``limit`` chunks, those the result cache answered, and a
    reduction when the chunks left room."""

    limit: int = 0
    chunks: list[ClaimedChunk] = field(default_factory=list)
    hits: list[Success] = field(default_factory=list)
    reduction: reductions.ClaimedReduction | None = None


def make_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class Worker:
    """One worker process's engine. Provider, clock, random source and connection factory are
    passed in, so tests swap any of them."""

    def __init__(
        self,
        settings: Settings,
        provider: Provider,
        connect: Callable[[], psycopg.Connection[Any]],
        *,
        concurrency: int = 1,
        worker_id: str | None = None,
        clock: Clock = lambda: None,
        rng: random.Random | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        metrics: Metrics | None = None,
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self.settings = settings
        self.provider = provider
        self.concurrency = concurrency
        self.worker_id = worker_id or make_worker_id()
        self._clock = clock
        self.rng = rng or random.Random()
        self.monotonic = monotonic
        self._db = Database(connect, lease_s=settings.lease_s)
        # Counted into a registry of this worker's own unless one is passed in; served by
        # __main__ when CHUNKQ_METRICS_PORT is set.
        self.metrics = metrics if metrics is not None else Metrics()
        self._attempts = Attempts(
            settings, provider, rng=self.rng, monotonic=monotonic, metrics=self.metrics
        )
        self.circuit = Circuit(
            circuit_key(provider),
            threshold=settings.circuit_threshold,
            max_delay_s=settings.circuit_max_s,
            monotonic=monotonic,
            clock=clock,
        )
        self._inflight = InFlight(self.circuit)
        self._reduces = can_reduce(provider)
        self._merge = merge_by_name(provider)
        self._cache = ResultCache(settings.result_cache, cache_identity(provider))
        self._recorder = Recorder(
            self.worker_id,
            self._db,
            self._attempts,
            self.circuit,
            self._merge,
            reduces=self._reduces,
            clock=clock,
            monotonic=monotonic,
            metrics=self.metrics,
        )
        self._pool: AttemptPool[Outcome] | None = None
        self._leases = Leases(
            self.worker_id,
            settings,
            self._db,
            self._inflight,
            self._recorder,
            self._merge,
            reduces=self._reduces,
            clock=clock,
            replace_stuck=self._replace_stuck,
            metrics=self.metrics,
        )
        self.metrics.identify(self.worker_id, lambda: len(self._inflight))
        self.wake = threading.Event()
        # Attempts handed to the pool, outcomes it handed back, and how many of those the
        # loop had taken at its last step: the pool wakes the loop for the first outcome of a
        # batch (which opens its group-commit window) and for the last, not for each one.
        self._flow = threading.Lock()
        self._started = self._finished = self._seen = 0
        self.stopping = threading.Event()
        # Delivers the outbox's webhook events on threads and a connection of its own.
        self.webhooks = Webhooks(settings, connect, self.worker_id, stopping=self.stopping)
        # Set when a job was cancelled somewhere: check our leases now, not at the heartbeat.
        self.leases_changed = threading.Event()
        # False while a LISTEN connection is being re-established: poll briskly meanwhile.
        self.listening = True
        self._next_heartbeat = 0.0
        self._next_rescue = 0.0
        self._capped = False

    # -- one step ------------------------------------------------------------------------

    def run_once(self) -> Step:
        """Record finished attempts and claim up to the free capacity, in one transaction;
        keep leases alive and rescue lost chunks. Without a thread pool the claimed chunks
        run here, and their outcomes are recorded before returning."""
        step = Step()
        self._expire(step)
        with self._flow:
            self._seen = self._finished
        self._recorder.collect(self._inflight.current)
        now = self.monotonic()
        changed = self.leases_changed.is_set()
        if self._inflight and (changed or now >= self._next_heartbeat):
            self.leases_changed.clear()
            self._leases.renew(step)
            self._next_heartbeat = now + self.settings.lease_s / 3
        if now >= self._next_rescue:
            self._next_rescue = now + min(5.0, self.settings.lease_s / 2)
            self._leases.rescue(step)
        batch = self._recorder.batch(running=len(self._inflight))
        # The batch's calls are over: their slots are free once it is written.
        free = self._free() + len([o for o in batch if key_of(o) not in self._recorder.deferred])
        if self.stopping.is_set():
            free = 0
        if not batch and free <= 0:
            return step
        probes = set(self._inflight.probes)

        def work(conn: psycopg.Connection[Any]) -> tuple[Any, Claimed]:
            # The claim first, the record last: the job rows the record locks are held for
            # the least time, and a claim never waits on a lock (SKIP LOCKED throughout).
            claimed = self._claim(conn, free)
            written = self._recorder.write_in(conn, batch, probes) if batch else None
            return written, claimed

        try:
            written, claimed = self._transaction(work)
        except DatabaseDown:
            raise
        except Exception:
            if not batch:
                raise
            # One bad outcome must not hold the others, nor the claim: each on its own,
            # settled before the claim runs alone (which may fail in turn).
            written = self._recorder.recover(batch, probes)
            self._recorder.settle(step, batch, written, self._inflight.forget)
            batch = []
            claimed = self._transaction(lambda conn: self._claim(conn, free))
        if batch:
            self._recorder.settle(step, batch, written, self._inflight.forget)
        self._start_claimed(step, claimed)
        if step.claimed and self._pool is None:
            self._record(step)
        return step

    def _claim(self, conn: psycopg.Connection[Any], free: int) -> Claimed:
        """Claim up to ``free`` chunks (and a reduction, with what the chunks leave), in the
        caller's transaction, and what the result cache answers of them."""
        if free <= 0:
            return Claimed()
        # The circuit decides how many, in the claim's own transaction.
        limit = self.circuit.claim_limit(conn, free)
        if limit <= 0:
            return Claimed()
        chunks = queue.claim(
            conn,
            self.worker_id,
            limit,
            lease_s=self.settings.lease_s,
            now=self._clock(),
            cap=self.settings.provider_concurrency,
            skip_jobs=self._recorder.held,
            cache=self._cache.lookup,
        )
        reduction = None
        # Reductions only take capacity the chunks left free: chunks come first.
        if self._reduces and len(chunks) < limit:
            reduction = reductions.claim(
                conn,
                self.worker_id,
                lease_s=self.settings.lease_s,
                max_attempts=self.settings.max_attempts,
                now=self._clock(),
                cap=self.settings.provider_concurrency,
            )
        return Claimed(limit, chunks, self._cache.answered(chunks), reduction)

    def _start_claimed(self, step: Step, claimed: Claimed) -> None:
        """Hold what was claimed and start its attempts; the cache's answers are finished
        attempts already, recorded with the next batch."""
        probing = self.circuit.open
        step.claimed = len(claimed.chunks) + (claimed.reduction is not None)
        # Under a shared cap, an empty claim with work due means the cap is full: wait for
        # a NOTIFY from whoever frees a slot instead of polling the claim in a tight loop.
        self._capped = (
            self.settings.provider_concurrency is not None and len(claimed.chunks) < claimed.limit
        )
        lifecycle.first_claims(claimed.chunks)
        answered = {hit.chunk.key: hit for hit in claimed.hits}
        if claimed.chunks:
            self.metrics.claims.labels("chunk").inc(len(claimed.chunks))
        if claimed.hits:
            self.metrics.cache_hits.inc(len(claimed.hits))
        if claimed.reduction is not None:
            self.metrics.claims.labels("reduce").inc()
        for chunk in claimed.chunks:
            call = self._attempts.new_call(chunk.parts)
            hit = answered.get(chunk.key)
            self._inflight.add(chunk, call, probe=probing and hit is None)
            if hit is not None:
                self._recorder.finished.put(hit)
                continue
            self._start(functools.partial(self._attempts.chunk, chunk, call))
        if claimed.reduction is not None:
            call = self._attempts.new_call(None)
            self._inflight.add(claimed.reduction, call, probe=probing)
            self._start(functools.partial(self._attempts.reduce, claimed.reduction, call))

    def _free(self) -> int:
        """Slots free for new attempts: a deferred outcome's call is over and holds none."""
        return self.concurrency - len(self._inflight) + len(self._recorder.deferred)

    def _replace_stuck(self) -> None:
        """A fresh attempt thread beside one whose call was abandoned (no pool: nothing).
        The abandoned attempt is no longer awaited: the last of the others wakes the loop."""
        if self._pool is not None:
            with self._flow:
                self._started -= 1
            self._pool.replace_stuck()

    def _start(self, attempt: Callable[[], Outcome]) -> None:
        """Run an attempt on the pool, or right here when there is no pool (tests)."""
        if self._pool is not None:
            with self._flow:
                self._started += 1
            self._pool.submit(attempt)
        else:
            self._recorder.finished.put(attempt())

    def _expire(self, step: Step) -> None:
        """Fail every attempt past its deadline now, as AttemptTimeout, and free its slot.

        The call is aborted (its connection shut, where the provider allows it) and its
        thread is replaced, so a call that never returns costs no capacity. Its result, if
        it ever comes, is ignored here, and the fence would refuse it anyway.
        """
        now = self.monotonic()
        answered = {key_of(o) for o in self._recorder.unrecorded}  # over already, awaiting a write
        for key, call in list(self._inflight.calls.items()):
            if call.deadline > now or key in self._inflight.timed_out or key in answered:
                continue
            self._inflight.timed_out.add(key)
            call.abort("deadline")
            self._replace_stuck()
            outcome = self._attempts.timed_out(self._inflight.claimed(key), call)
            log.warning(
                "attempt at %s timed out; its slot is free again", label(key), extra=fields(key)
            )
            self._recorder.unrecorded.append(outcome)
            step.timed_out += 1

    def _record(self, step: Step, *, force: bool = False) -> None:
        """Take the finished attempts still ours, and write them (see ``Recorder.flush``)."""
        with self._flow:
            self._seen = self._finished
        self._recorder.collect(self._inflight.current)
        self._recorder.flush(
            step,
            running=len(self._inflight),
            probes=self._inflight.probes,
            forget=self._inflight.forget,
            force=force,
        )

    def hand_back(self) -> int:
        """Return everything still in flight to the queue without counting the attempt."""
        return self._leases.hand_back()

    def idle(self) -> bool:
        """True when nothing is due now, nothing is running anywhere, and nothing is in flight."""
        if self._inflight or self._recorder.unrecorded:
            return False
        return bool(self._transaction(lambda conn: queue.drained(conn, now=self._clock())))

    def seconds_until_due(self) -> float | None:
        """Seconds until the earliest pending chunk is due (0 if overdue), None if none."""
        due: float | None = self._transaction(
            lambda conn: queue.seconds_until_due(conn, now=self._clock())
        )
        return due

    # -- database access -----------------------------------------------------------------

    def _transaction(self, fn: Callable[[psycopg.Connection[Any]], Any]) -> Any:
        """Run ``fn`` in one transaction on our connection, reconnecting if it was lost."""
        return self._db.transaction(fn)

    def close(self) -> None:
        self.webhooks.stop()
        if self._pool is not None:
            self._pool.stop()
        self._db.close()

    # -- what the loop asks ------------------------------------------------------------

    def start(self) -> None:
        """Run attempts on a pool of threads from now on (``run_once`` alone runs them inline),
        and start delivering webhooks."""
        self._pool = AttemptPool(self.concurrency, self._done)
        self.webhooks.start()

    @property
    def busy(self) -> bool:
        """Whether attempts are in flight or outcomes wait to be written."""
        return bool(
            self._inflight or self._recorder.unrecorded or not self._recorder.finished.empty()
        )

    @property
    def in_flight(self) -> int:
        return len(self._inflight)

    def drop_unrecorded(self) -> int:
        """Forget the outcomes not written yet: their leases expire and the rescuer re-queues
        them, attempt counted. For a bug in a step, so it is not retried forever."""
        dropped = self._recorder.unrecorded
        for outcome in dropped:
            self._inflight.forget(key_of(outcome))
        self._recorder.unrecorded = []
        return len(dropped)

    def wait_s(self, grace_deadline: float | None) -> float:
        """How long the loop may sleep: until the next heartbeat, rescue, deadline or due
        chunk, whichever comes first (a wake-up cuts it short)."""
        now = self.monotonic()
        wait = self.settings.poll_interval_s
        if not self.listening:
            wait = min(wait, 0.5)
        if self._inflight:
            wait = min(wait, max(0.0, self._next_heartbeat - now))
        if self._inflight.calls:
            deadline = min(call.deadline for call in self._inflight.calls.values())
            wait = min(wait, max(0.0, deadline - now))
        wait = min(wait, max(0.0, self._next_rescue - now))
        if grace_deadline is not None:
            wait = min(wait, max(0.0, grace_deadline - now))
        wait = min(wait, self._recorder.wait_s(now))
        if self._capped:
            wait = min(wait, 1.0)
        elif self.circuit.open:
            # Work is due but the circuit holds it: sleep until the next probe (a finished
            # probe wakes us sooner), not until the due work, which is now.
            wait = min(wait, max(0.05, self.circuit.probe_in_s))
        elif self._free() > 0 and not self.stopping.is_set():
            due = self.seconds_until_due()
            if due is not None:
                wait = min(wait, due)
        return wait

    def finish_up(self) -> int:
        """Grace is over: record what finished and what ran past its deadline (those attempts
        count), and hand back the rest; returns how many were handed back."""
        self._expire(Step())
        self._record(Step(), force=True)
        return self.hand_back()

    def _done(self, outcome: Outcome) -> None:
        """An attempt thread's outcome: queued for recording; the loop is woken for the first
        outcome since its last step and once every attempt it started has finished (the
        group-commit window's timeout wakes it in between)."""
        self._recorder.finished.put(outcome)
        with self._flow:
            self._finished += 1
            wake = self._finished == self._seen + 1 or self._finished >= self._started
        if wake:
            self.wake.set()

    def stop(self) -> None:
        """Stop claiming; the loop finishes in-flight chunks within the grace period."""
        self.stopping.set()
        self.wake.set()
