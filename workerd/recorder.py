"""Writing attempt outcomes: finished attempts gathered into batches (a group commit), each
batch in one transaction through ``schema.queue``, and, when the database refuses a batch,
each outcome on its own so one bad outcome holds no other. Outcomes wait here through a
database outage, and while another transaction holds their job's row."""

from __future__ import annotations

import logging
import queue as queue_mod
import time
import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Any

import psycopg

from schema import queue
from schema.queue import Success, reductions
from workerd import lifecycle
from workerd.attempts import Attempts, Key, Outcome, ReduceOutcome, fields, key_of, label
from workerd.circuit import Circuit
from workerd.database import Database, DatabaseDown
from workerd.metrics import Metrics
from workerd.step import Step

log = logging.getLogger("workerd")

Written = tuple[queue.Recorded, list[ReduceOutcome]]

# How long finished attempts may wait for the rest of their batch before being written.
BATCH_WINDOW_S = 0.005
# How often outcomes deferred by a job row held elsewhere are tried again (one statement
# that skips the rows still held: cheap enough to ask often).
DEFERRED_RETRY_S = 0.05
# How long a record waits for a job row another worker's step holds (two workers finishing
# chunks of one job) before deferring its outcomes; rows found held last time are not
# waited for (see schema.queue.held_jobs).
HELD_PATIENCE_S = 0.05


class Recorder:
    """Writes one worker's outcomes, fenced on its leases, finalizing the jobs they finish."""

    def __init__(
        self,
        worker_id: str,
        db: Database,
        attempts: Attempts,
        circuit: Circuit,
        merge: queue.Merge,
        *,
        reduces: bool,
        clock: Callable[[], datetime | None],
        monotonic: Callable[[], float] = time.monotonic,
        metrics: Metrics | None = None,
    ) -> None:
        self.worker_id = worker_id
        self._metrics = metrics if metrics is not None else Metrics()
        # The chunk outcomes as the circuit breaker settled them (a failure while its
        # circuit was open is handed back), by key, for the records counter.
        self._settled: dict[Key, Outcome] = {}
        self._db = db
        self._attempts = attempts
        self._circuit = circuit
        self._merge = merge
        self._reduces = reduces
        self._clock = clock
        self._monotonic = monotonic
        # Outcomes from attempt threads, and outcomes not yet written (kept through outages).
        self.finished: queue_mod.SimpleQueue[Outcome] = queue_mod.SimpleQueue()
        self.unrecorded: list[Outcome] = []
        # Of those, the ones waiting on a job row held elsewhere: their calls are over, so
        # they free their slots, and their jobs' other chunks are not claimed meanwhile.
        self.deferred: set[Key] = set()
        self.held: set[uuid.UUID] = set()
        self.batch_opened: float | None = None

    def collect(self, current: Callable[[Outcome], bool]) -> None:
        """Take the attempts finished since the last step that are still ours to record
        (``current``), telling the circuit breaker whether the provider answered."""
        while True:
            try:
                finished = self.finished.get_nowait()
            except queue_mod.Empty:
                break
            if current(finished):
                self.unrecorded.append(finished)
                if isinstance(finished, Success) and finished.cached:
                    continue  # the cache answered: says nothing about the provider
                if isinstance(finished, Success) or (
                    isinstance(finished, ReduceOutcome) and finished.error is None
                ):
                    self._circuit.observe(answered=True)
                elif finished.unavailable:
                    self._circuit.observe(answered=False)

    def batch(self, *, running: int, force: bool = False) -> list[Outcome]:
        """The outcomes to write now, or [] while attempts of this batch (of ``running`` in
        flight) may still join it.

        Group commit: while attempts of this batch are still running, give them a few
        milliseconds to finish, so fast providers cost one transaction per batch rather
        than one per chunk. Slow providers barely notice: the window is tiny beside them.
        """
        if not self.unrecorded:
            return []
        now = self._monotonic()
        if self.batch_opened is None:
            self.batch_opened = now
        if (
            not force
            and running > len(self.unrecorded)
            and now - self.batch_opened < BATCH_WINDOW_S
        ):
            return []
        self.batch_opened = None
        return self.unrecorded

    def flush(
        self,
        step: Step,
        *,
        running: int,
        probes: set[Key],
        forget: Callable[[Key], None],
        force: bool = False,
    ) -> None:
        """Write the unrecorded outcomes in a transaction of their own, unless their batch
        is still open (see ``batch``); ``forget`` each attempt once it is written or
        refused. Counts what was done in ``step``."""
        outcomes = self.batch(running=running, force=force)
        if outcomes:
            self.settle(step, outcomes, self.write(outcomes, probes), forget)

    def write(self, outcomes: list[Outcome], probes: set[Key]) -> Written:
        """Write outcomes in one transaction of their own; when the database refuses the
        batch, each on its own (``write_each``). DatabaseDown keeps them for later."""
        try:
            return self._write_alone(outcomes, probes)
        except DatabaseDown:
            raise  # kept in unrecorded, written when the database is back
        except Exception:
            return self.recover(outcomes, probes)

    def recover(self, outcomes: list[Outcome], probes: set[Key]) -> Written:
        """The batch's transaction failed: one bad outcome must not hold the others, so
        write them one by one."""
        log.exception("recording %d outcomes failed; recording them one by one", len(outcomes))
        return self.write_each(outcomes, probes)

    def settle(
        self,
        step: Step,
        outcomes: list[Outcome],
        written: Written,
        forget: Callable[[Key], None],
    ) -> None:
        """After ``outcomes`` were written (``written``): keep those deferred by a job row
        held elsewhere, ``forget`` the rest, and count what was done in ``step``."""
        recorded, waiting = written
        # Written, refused by the fence, or waiting on a job row held elsewhere (kept).
        deferred = set(recorded.deferred) | {o.reduction.job_id for o in waiting}
        self.unrecorded = [o for o in outcomes if key_of(o) in deferred]
        self.deferred = deferred
        held = {k[0] for k in recorded.deferred} | {o.reduction.job_id for o in waiting}
        if held - self.held:
            log.warning(
                "job rows held by another transaction: %s; their outcomes wait, the other"
                " jobs go on",
                ", ".join(str(j) for j in sorted(held - self.held)),
            )
        self.held = held
        lost = set(recorded.dropped)
        for outcome in outcomes:
            key = key_of(outcome)
            if key not in deferred:
                if isinstance(outcome, ReduceOutcome):
                    step.recorded += 1
                else:
                    final = self._settled.get(key, outcome)
                    if not isinstance(final, ReduceOutcome):
                        self._metrics.recorded(final, lost=key in lost)
                forget(key)
        self._settled.clear()
        for key in recorded.dropped:
            log.warning(
                "lease lost before recording %s; result dropped", label(key), extra=fields(key)
            )
        step.recorded += recorded.applied
        step.dropped += len(recorded.dropped)
        step.deferred += len(deferred)
        step.finalized.update({k: v.status.value for k, v in recorded.finalized.items()})
        lifecycle.finalized(recorded.finalized)

    def wait_s(self, now: float) -> float:
        """How long the loop may sleep before this recorder has work: the open batch's
        window, or the retry of outcomes waiting on a held job row (inf: no limit)."""
        wait = float("inf")
        if self.batch_opened is not None:
            wait = max(0.0, self.batch_opened + BATCH_WINDOW_S - now)
        if self.unrecorded:
            wait = min(wait, DEFERRED_RETRY_S)
        return wait

    def write_in(
        self, conn: psycopg.Connection[Any], outcomes: list[Outcome], probes: set[Key]
    ) -> Written:
        """Write outcomes in the caller's transaction. Returns what ``queue.record`` did and
        the reduce outcomes left for later because another transaction holds their job's
        row. ``probes`` are the attempts that were the open circuit's probe."""
        batch = [o for o in outcomes if not isinstance(o, ReduceOutcome)]
        reduced = [o for o in outcomes if isinstance(o, ReduceOutcome)]
        settings = self._attempts.settings
        held = queue.held_jobs(conn, {o.reduction.job_id for o in reduced})
        for outcome in reduced:
            if outcome.reduction.job_id in held:
                continue
            counted = self._circuit.settle_reduce(
                conn, outcome.unavailable, probe=outcome.reduction.job_id in probes
            )
            if not reductions.finish(
                conn,
                self.worker_id,
                outcome.reduction,
                result=outcome.result,
                error=outcome.error,
                retry_in=outcome.retry_in if counted else 0.0,
                counted=counted,
                now=self._clock(),
            ):
                log.warning(
                    "lease lost before recording reduce of job %s", outcome.reduction.job_id
                )
        settled = self._circuit.settle(conn, batch, probes)
        self._settled.update((o.chunk.key, o) for o in settled)
        recorded = queue.record(
            conn,
            self.worker_id,
            settled,
            self._merge,
            provider=self._attempts.provider.name,
            now=self._clock(),
            notify=settings.provider_concurrency is not None,
            reduces=self._reduces,
            patience_s=HELD_PATIENCE_S,
            impatient=self.held,
        )
        return recorded, [o for o in reduced if o.reduction.job_id in held]

    def write_each(self, outcomes: list[Outcome], probes: set[Key]) -> Written:
        """Write outcomes one transaction each, after their batch failed. An outcome that
        cannot be written becomes a failure of its chunk or reduce saying why (the attempt
        is over either way); if even that fails, it is given up here and its lease expires,
        so the rescuer takes the chunk back."""
        applied, dropped, deferred = 0, [], []
        finalized: dict[uuid.UUID, queue.Finalized] = {}
        waiting: list[ReduceOutcome] = []
        for outcome in outcomes:
            try:
                recorded, held = self._write_alone([outcome], probes)
            except DatabaseDown:
                raise
            except Exception as exc:
                log.warning(
                    "could not record %s: %r",
                    label(key_of(outcome)),
                    exc,
                    extra=fields(key_of(outcome)),
                )
                try:
                    recorded, held = self._write_alone(
                        [self._attempts.unrecordable(outcome, exc)], probes
                    )
                except DatabaseDown:
                    raise
                except Exception:
                    log.exception(
                        "could not record the failure of %s either; it is given up here",
                        label(key_of(outcome)),
                    )
                    continue
            applied += recorded.applied
            dropped += recorded.dropped
            deferred += recorded.deferred
            finalized.update(recorded.finalized)
            waiting += held
        return queue.Recorded(applied, dropped, finalized, deferred), waiting

    def _write_alone(self, outcomes: list[Outcome], probes: set[Key]) -> Written:
        """``write_in`` in a transaction of its own."""
        written: Written = self._db.transaction(lambda conn: self.write_in(conn, outcomes, probes))
        return written
