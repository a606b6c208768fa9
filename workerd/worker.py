"""The worker: claim due chunks, run the provider on them, record outcomes, finalize jobs.

``run_once`` does one step and returns what it did (tests call it with no threads);
``run`` only loops, waits for wake-ups and handles shutdown.
"""

from __future__ import annotations

import functools
import logging
import os
import queue as queue_mod
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
from schema.db import bound, deadline_s, watchdog
from schema.queue import ClaimedChunk, Failure, Success, reductions
from schema.queue.reductions import ClaimedReduction
from workerd.circuit import Circuit
from workerd.pool import AttemptPool
from workerd.providers import (
    AttemptTimeout,
    Call,
    PermanentError,
    Provider,
    ProviderError,
    can_reduce,
    circuit_key,
    merge_by_name,
)
from workerd.retry import retry_delay
from workerd.settings import Settings

log = logging.getLogger("workerd")

Clock = Callable[[], datetime | None]

# How long finished attempts may wait for the rest of their batch before being written.
BATCH_WINDOW_S = 0.005
# How often outcomes deferred by a job row held elsewhere are tried again.
DEFERRED_RETRY_S = 0.25


@dataclass(frozen=True, slots=True)
class ReduceOutcome:
    """One attempt at a job's reduce step: a result, or an error with its retry decision."""

    reduction: ClaimedReduction
    result: dict[str, Any] | None = None
    error: str | None = None
    retry_in: float | None = None
    unavailable: bool = False


Outcome = Success | Failure | ReduceOutcome


class DatabaseDown(Exception):
    """The database could not be reached this step; ``run`` backs off and tries again."""


@dataclass(slots=True)
class Step:
    """What one ``run_once`` did."""

    claimed: int = 0
    recorded: int = 0
    dropped: int = 0
    rescued: int = 0
    # Attempts given up here: past their deadline, or their lease lost (cancel, rescue).
    timed_out: int = 0
    aborted: int = 0
    # Outcomes kept for a later write: another transaction holds their job's row.
    deferred: int = 0
    finalized: dict[uuid.UUID, str] = field(default_factory=dict)

    @property
    def busy(self) -> bool:
        return bool(
            self.claimed
            or self.recorded
            or self.dropped
            or self.rescued
            or self.timed_out
            or self.deferred
        )


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
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self.settings = settings
        self.provider = provider
        self.concurrency = concurrency
        self.worker_id = worker_id or make_worker_id()
        self._connect = connect
        self._clock = clock
        self._rng = rng or random.Random()
        self._monotonic = monotonic
        self._conn: psycopg.Connection[Any] | None = None
        # Chunks we own, until their outcome is recorded (or handed back), and their calls.
        self._inflight: dict[tuple[uuid.UUID, int], ClaimedChunk] = {}
        self._reducing: dict[uuid.UUID, ClaimedReduction] = {}
        self._calls: dict[Any, Call] = {}  # by chunk key, or job id for a reduction
        # Attempts that ran out of time: their failure is recorded, a late result ignored.
        self._timed_out: set[Any] = set()
        self._probes: set[Any] = set()  # our attempts that are the open circuit's probe
        self.circuit = Circuit(
            circuit_key(provider),
            threshold=settings.circuit_threshold,
            max_delay_s=settings.circuit_max_s,
            monotonic=monotonic,
            clock=clock,
        )
        # Outcomes from attempt threads, and outcomes not yet written (kept through outages).
        self._finished: queue_mod.SimpleQueue[Outcome] = queue_mod.SimpleQueue()
        self._unrecorded: list[Outcome] = []
        # Of those, the ones waiting on a job row held elsewhere: their calls are over, so
        # they free their slots, and their jobs' other chunks are not claimed meanwhile.
        self._deferred: set[Any] = set()
        self._held: set[uuid.UUID] = set()
        self._reduces = can_reduce(provider)
        self._deadline_s = deadline_s(settings.lease_s)
        self._merge = merge_by_name(provider)
        self._pool: AttemptPool[Outcome] | None = None
        self.wake = threading.Event()
        self.stopping = threading.Event()
        # Set when a job was cancelled somewhere: check our leases now, not at the heartbeat.
        self.leases_changed = threading.Event()
        # False while a LISTEN connection is being re-established: poll briskly meanwhile.
        self.listening = True
        self._next_heartbeat = 0.0
        self._next_rescue = 0.0
        self._capped = False
        self._batch_opened: float | None = None

    # -- one step ------------------------------------------------------------------------

    def run_once(self) -> Step:
        """Record finished attempts, keep leases alive, rescue lost chunks, claim up to the
        free capacity and start them. Without a thread pool the claimed chunks run here."""
        step = Step()
        self._expire(step)
        self._record(step)
        now = self._monotonic()
        changed = self.leases_changed.is_set()
        if (self._inflight or self._reducing) and (changed or now >= self._next_heartbeat):
            self.leases_changed.clear()
            self._heartbeat(step)
            self._next_heartbeat = now + self.settings.lease_s / 3
        if now >= self._next_rescue:
            self._next_rescue = now + min(5.0, self.settings.lease_s / 2)
            self._rescue(step)
        if self.stopping.is_set():
            return step
        free = self._free()
        if free <= 0:
            return step

        def take(conn: psycopg.Connection[Any]) -> tuple[int, list[ClaimedChunk]]:
            # The circuit decides how many, in the claim's own transaction.
            limit = self.circuit.claim_limit(conn, free)
            if limit <= 0:
                return 0, []
            return limit, queue.claim(
                conn,
                self.worker_id,
                limit,
                lease_s=self.settings.lease_s,
                now=self._clock(),
                cap=self.settings.provider_concurrency,
                skip_jobs=self._held,
            )

        limit, claimed = self._transaction(take)
        probing = self.circuit.open
        step.claimed = len(claimed)
        # Under a shared cap, an empty claim with work due means the cap is full: wait for
        # a NOTIFY from whoever frees a slot instead of polling the claim in a tight loop.
        self._capped = self.settings.provider_concurrency is not None and len(claimed) < limit
        for chunk in claimed:
            self._inflight[chunk.key] = chunk
            call = self._calls[chunk.key] = self._new_call(chunk.parts)
            if probing:
                self._probes.add(chunk.key)
                self.circuit.probing += 1
            self._start(functools.partial(self.attempt, chunk, call))
        # Reductions only take capacity the chunks left free: chunks come first.
        if self._reduces and len(claimed) < limit:
            reduction = self._transaction(
                lambda conn: reductions.claim(
                    conn,
                    self.worker_id,
                    lease_s=self.settings.lease_s,
                    max_attempts=self.settings.max_attempts,
                    now=self._clock(),
                    cap=self.settings.provider_concurrency,
                )
            )
            if reduction is not None:
                step.claimed += 1
                self._reducing[reduction.job_id] = reduction
                call = self._calls[reduction.job_id] = self._new_call(None)
                if probing:
                    self._probes.add(reduction.job_id)
                    self.circuit.probing += 1
                self._start(functools.partial(self.attempt_reduce, reduction, call))
        if step.claimed and self._pool is None:
            self._record(step)
        return step

    def _free(self) -> int:
        """Slots free for new attempts: a deferred outcome's call is over and holds none."""
        return self.concurrency - len(self._inflight) - len(self._reducing) + len(self._deferred)

    def _new_call(self, parts: list[dict[str, Any]] | None) -> Call:
        return Call(self.settings.attempt_timeout_s, parts=parts, monotonic=self._monotonic)

    def _start(self, attempt: Callable[[], Outcome]) -> None:
        """Run an attempt on the pool, or right here when there is no pool (tests)."""
        if self._pool is not None:
            self._pool.submit(attempt)
        else:
            self._finished.put(attempt())

    def attempt_reduce(
        self, reduction: ClaimedReduction, call: Call | None = None
    ) -> ReduceOutcome:
        """Run the provider's reduce step on a job's ordered analyses; never raises."""
        call = call or self._new_call(None)
        try:
            result = self.provider.reduce(reduction.analyses, call)  # type: ignore[attr-defined]
            encode(result)
        except Exception as exc:
            return ReduceOutcome(
                reduction,
                error=f"{type(exc).__name__}: {exc}",
                retry_in=self._retry_in(reduction.attempt, exc),
                unavailable=getattr(exc, "unavailable", False),
            )
        return ReduceOutcome(reduction, result=result)

    def attempt(self, chunk: ClaimedChunk, call: Call | None = None) -> Success | Failure:
        """Run the provider on one chunk; never raises: every error becomes a Failure."""
        call = call or self._new_call(chunk.parts)
        try:
            result = self.provider.analyze(chunk.text, call)
            encoded = encode(result)
        except Exception as exc:
            if not isinstance(exc, ProviderError):
                log.warning("provider raised %s on chunk %s/%s", type(exc).__name__, *chunk.key)
            return Failure(
                chunk,
                type(exc).__name__,
                # PostgreSQL text cannot hold NUL; a server's error body may.
                (str(exc) or type(exc).__name__).replace("\x00", "\\x00"),
                self._retry_in(chunk.attempt, exc),
                unavailable=getattr(exc, "unavailable", False),
                parts=call.parts + call.finished if call.finished else None,
            )
        return Success(chunk, result, encoded)

    def _expire(self, step: Step) -> None:
        """Fail every attempt past its deadline now, as AttemptTimeout, and free its slot.

        The call is aborted (its connection shut, where the provider allows it) and its
        thread is replaced, so a call that never returns costs no capacity. Its result, if
        it ever comes, is ignored here, and the fence would refuse it anyway.
        """
        now = self._monotonic()
        answered = {self._key(o) for o in self._unrecorded}  # over already, awaiting a write
        for key, call in list(self._calls.items()):
            if call.deadline > now or key in self._timed_out or key in answered:
                continue
            self._timed_out.add(key)
            call.abort("deadline")
            if self._pool is not None:
                self._pool.replace_stuck()
            timeout = AttemptTimeout(
                f"attempt exceeded CHUNKQ_ATTEMPT_TIMEOUT_S={self.settings.attempt_timeout_s:g}"
            )
            outcome: Outcome
            if isinstance(key, uuid.UUID):
                reduction = self._reducing[key]
                outcome = ReduceOutcome(
                    reduction,
                    error=f"AttemptTimeout: {timeout}",
                    retry_in=self._retry_in(reduction.attempt, timeout),
                )
            else:
                chunk = self._inflight[key]
                outcome = Failure(
                    chunk,
                    "AttemptTimeout",
                    str(timeout),
                    self._retry_in(chunk.attempt, timeout),
                    parts=call.parts + call.finished if call.finished else None,
                )
            log.warning("attempt at %s timed out; its slot is free again", _label(key))
            self._unrecorded.append(outcome)
            step.timed_out += 1

    def _current(self, outcome: Outcome) -> bool:
        """Whether a finished attempt is still ours to record (not timed out, not abandoned)."""
        if isinstance(outcome, ReduceOutcome):
            key: Any = outcome.reduction.job_id
            ours = self._reducing.get(key) is outcome.reduction
        else:
            key = outcome.chunk.key
            ours = self._inflight.get(key) is outcome.chunk
        return ours and key not in self._timed_out

    def _retry_in(self, attempt: int, exc: Exception) -> float | None:
        """Seconds until the next attempt after ``exc``, or None to fail now. An error that
        is not a ProviderError is unknown and may be transient: retried, within limits."""
        retryable = exc.retryable if isinstance(exc, ProviderError) else True
        hint = exc.retry_after if isinstance(exc, ProviderError) else None
        s = self.settings
        return retry_delay(
            attempt,
            retryable=retryable,
            max_attempts=s.max_attempts,
            base_s=s.backoff_base_s,
            max_s=s.backoff_max_s,
            rng=self._rng,
            hint_s=hint,
            hint_max_s=s.retry_after_max_s,
        )

    def _record(self, step: Step, *, force: bool = False) -> None:
        while True:
            try:
                finished = self._finished.get_nowait()
            except queue_mod.Empty:
                break
            if self._current(finished):
                self._unrecorded.append(finished)
                if isinstance(finished, Success) or (
                    isinstance(finished, ReduceOutcome) and finished.error is None
                ):
                    self.circuit.observe(answered=True)
                elif finished.unavailable:
                    self.circuit.observe(answered=False)
        if not self._unrecorded:
            return
        # Group commit: while attempts of this batch are still running, give them a few
        # milliseconds to finish, so fast providers cost one transaction per batch rather
        # than one per chunk. Slow providers barely notice: the window is tiny beside them.
        now = self._monotonic()
        if self._batch_opened is None:
            self._batch_opened = now
        running = len(self._inflight) + len(self._reducing) - len(self._unrecorded)
        if not force and running > 0 and now - self._batch_opened < BATCH_WINDOW_S:
            return
        self._batch_opened = None
        outcomes = self._unrecorded
        try:
            recorded, waiting = self._write(outcomes)
        except DatabaseDown:
            raise  # kept in _unrecorded, written when the database is back
        except Exception:
            # One bad outcome must not hold the others: write them one by one.
            log.exception("recording %d outcomes failed; recording them one by one", len(outcomes))
            recorded, waiting = self._write_each(outcomes)
        # Written, refused by the fence, or waiting on a job row held elsewhere (kept).
        deferred = set(recorded.deferred) | {o.reduction.job_id for o in waiting}
        self._unrecorded = [o for o in outcomes if self._key(o) in deferred]
        self._deferred = deferred
        held = {k[0] for k in recorded.deferred} | {o.reduction.job_id for o in waiting}
        if held - self._held:
            log.warning(
                "job rows held by another transaction: %s; their outcomes wait, the other"
                " jobs go on",
                ", ".join(str(j) for j in sorted(held - self._held)),
            )
        self._held = held
        for outcome in outcomes:
            key = self._key(outcome)
            if key not in deferred:
                if isinstance(outcome, ReduceOutcome):
                    step.recorded += 1
                self._forget(key)
        for key in recorded.dropped:
            log.warning("lease lost before recording chunk %s/%s; result dropped", *key)
        step.recorded += recorded.applied
        step.dropped += len(recorded.dropped)
        step.deferred += len(deferred)
        step.finalized.update({k: v.value for k, v in recorded.finalized.items()})
        for job_id, status in recorded.finalized.items():
            log.info("job %s finalized: %s", job_id, status.value)

    def _write(self, outcomes: list[Outcome]) -> tuple[queue.Recorded, list[ReduceOutcome]]:
        """Write outcomes in one transaction. Returns what ``queue.record`` did and the
        reduce outcomes left for later because another transaction holds their job's row."""
        batch = [o for o in outcomes if not isinstance(o, ReduceOutcome)]
        reduced = [o for o in outcomes if isinstance(o, ReduceOutcome)]

        def write(conn: psycopg.Connection[Any]) -> tuple[queue.Recorded, list[ReduceOutcome]]:
            held = queue.held_jobs(conn, {o.reduction.job_id for o in reduced})
            for outcome in reduced:
                if outcome.reduction.job_id in held:
                    continue
                counted = self.circuit.settle_reduce(
                    conn, outcome.unavailable, probe=outcome.reduction.job_id in self._probes
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
            recorded = queue.record(
                conn,
                self.worker_id,
                self.circuit.settle(conn, batch, self._probes),
                self._merge,
                provider=self.provider.name,
                now=self._clock(),
                notify=self.settings.provider_concurrency is not None,
                reduces=self._reduces,
            )
            return recorded, [o for o in reduced if o.reduction.job_id in held]

        return self._transaction(write)

    def _write_each(self, outcomes: list[Outcome]) -> tuple[queue.Recorded, list[ReduceOutcome]]:
        """Write outcomes one transaction each, after their batch failed. An outcome that
        cannot be written becomes a failure of its chunk or reduce saying why (the attempt
        is over either way); if even that fails, it is given up here and its lease expires,
        so the rescuer takes the chunk back."""
        applied, dropped, deferred = 0, [], []
        finalized: dict[uuid.UUID, Any] = {}
        waiting: list[ReduceOutcome] = []
        for outcome in outcomes:
            try:
                recorded, held = self._write([outcome])
            except DatabaseDown:
                raise
            except Exception as exc:
                log.warning("could not record %s: %r", _label(self._key(outcome)), exc)
                try:
                    recorded, held = self._write([self._unrecordable(outcome, exc)])
                except DatabaseDown:
                    raise
                except Exception:
                    log.exception(
                        "could not record the failure of %s either; it is given up here",
                        _label(self._key(outcome)),
                    )
                    continue
            applied += recorded.applied
            dropped += recorded.dropped
            deferred += recorded.deferred
            finalized.update(recorded.finalized)
            waiting += held
        return queue.Recorded(applied, dropped, finalized, deferred), waiting

    def _unrecordable(self, outcome: Outcome, exc: Exception) -> Outcome:
        """The failure that replaces an outcome the database refused: counted, retried under
        the usual policy, its message plain text."""
        reason = (str(exc).strip().splitlines() or [""])[0]
        detail = getattr(getattr(exc, "diag", None), "message_detail", None)
        if detail:
            reason = f"{reason} ({detail})"
        reason = reason.replace("\x00", "\\x00")
        error = f"the attempt's outcome could not be recorded: {type(exc).__name__}: {reason}"
        if isinstance(outcome, ReduceOutcome):
            return ReduceOutcome(
                outcome.reduction,
                error=error,
                retry_in=self._retry_in(outcome.reduction.attempt, exc),
            )
        chunk = outcome.chunk
        return Failure(chunk, "RecordFailed", error, self._retry_in(chunk.attempt, exc))

    def _forget(self, key: Any) -> None:
        """Drop everything we hold for a chunk (by key) or a reduction (by job id)."""
        if isinstance(key, uuid.UUID):
            self._reducing.pop(key, None)
        else:
            self._inflight.pop(key, None)
        self._calls.pop(key, None)
        self._timed_out.discard(key)
        if key in self._probes:
            self._probes.discard(key)
            self.circuit.probing -= 1

    def _heartbeat(self, step: Step) -> None:
        """Renew our leases; abort the attempts whose lease we no longer hold (their job was
        cancelled, or a rescuer took them back), freeing their slots now."""
        chunks = [c for c in self._inflight.values() if c.key not in self._timed_out]
        reducing = [r for r in self._reducing.values() if r.job_id not in self._timed_out]

        def beat(conn: psycopg.Connection[Any]) -> tuple[set[Any], set[Any]]:
            lease, now = self.settings.lease_s, self._clock()
            return (
                queue.heartbeat(conn, self.worker_id, chunks, lease_s=lease, now=now),
                reductions.heartbeat(conn, self.worker_id, reducing, lease_s=lease, now=now),
            )

        owned, owned_reductions = self._transaction(beat)
        pending = {self._key(o) for o in self._unrecorded}
        lost: list[Any] = [c.key for c in chunks if c.key not in owned]
        lost += [r.job_id for r in reducing if r.job_id not in owned_reductions]
        for key in lost:
            if key in pending:
                continue  # finished already; the fence refuses its write
            call = self._calls.get(key)
            if call is not None:
                call.abort("lease lost")
            if self._pool is not None:
                self._pool.replace_stuck()
            self._forget(key)
            step.aborted += 1
            log.warning("lease of %s lost (cancelled or rescued); attempt aborted", _label(key))

    @staticmethod
    def _key(outcome: Outcome) -> Any:
        if isinstance(outcome, ReduceOutcome):
            return outcome.reduction.job_id
        return outcome.chunk.key

    def _rescue(self, step: Step) -> None:
        """Take back chunks of lost workers. A rescue that fails is logged and tried again at
        the next round; it never stops this step's claim."""
        s = self.settings
        try:
            requeued, failed, finalized = self._transaction(
                lambda conn: queue.rescue(
                    conn,
                    self._merge,
                    max_attempts=s.max_attempts,
                    backoff_base_s=s.backoff_base_s,
                    backoff_max_s=s.backoff_max_s,
                    now=self._clock(),
                    reduces=self._reduces,
                )
            )
        except DatabaseDown:
            raise
        except Exception:
            log.exception("rescue failed; trying again at the next round")
            return
        if requeued or failed:
            log.warning(
                "rescued %d chunks from lost workers (%d failed for good)",
                requeued + failed,
                failed,
            )
        step.rescued += requeued + failed
        step.finalized.update({k: v.value for k, v in finalized.items()})

    def hand_back(self) -> int:
        """Return everything still in flight to the queue without counting the attempt."""
        chunks = list(self._inflight.values())
        reducing = list(self._reducing.values())
        if not chunks and not reducing:
            return 0

        def release(conn: psycopg.Connection[Any]) -> int:
            now = self._clock()
            return queue.release(conn, self.worker_id, chunks, now=now) + reductions.release(
                conn, self.worker_id, reducing, now=now
            )

        released = self._transaction(release)
        for key in [c.key for c in chunks] + [r.job_id for r in reducing]:
            call = self._calls.get(key)
            if call is not None:
                call.abort("worker stopping")
            self._forget(key)
        return released

    def idle(self) -> bool:
        """True when nothing is due now, nothing is running anywhere, and nothing is in flight."""
        if self._inflight or self._reducing or self._unrecorded:
            return False
        return bool(
            self._transaction(
                lambda conn: conn.execute(
                    f"""SELECT NOT EXISTS (SELECT 1 FROM chunks WHERE status = 'running')
                       AND NOT EXISTS (SELECT 1 FROM chunks WHERE status = 'pending'
                                       AND next_attempt_at <= {queue.NOW})""",
                    {"now": self._clock()},
                ).fetchone()[0]  # type: ignore[index]
            )
        )

    def seconds_until_due(self) -> float | None:
        """Seconds until the earliest pending chunk is due (0 if overdue), None if none."""

        def query(conn: psycopg.Connection[Any]) -> float | None:
            row = conn.execute(
                f"""SELECT extract(epoch FROM min(next_attempt_at) - {queue.NOW})
                    FROM chunks WHERE status = 'pending'""",
                {"now": self._clock()},
            ).fetchone()
            return None if row is None or row[0] is None else max(0.0, float(row[0]))

        return self._transaction(query)

    # -- database access -----------------------------------------------------------------

    def _transaction(self, fn: Callable[[psycopg.Connection[Any]], Any]) -> Any:
        """Run ``fn`` in one transaction on our connection, reconnecting if it was lost."""
        try:
            if self._conn is None or self._conn.closed or self._conn.broken:
                self._conn = self._connect()
            # The session timeouts hold while the server runs; the watchdog when it hangs.
            with watchdog.guard(self._conn, self._deadline_s), self._conn.transaction():
                bound(self._conn, self.settings.lease_s)
                return fn(self._conn)
        # The server ending a session left idle in a transaction (this process was paused,
        # see schema.db.session_timeouts) is a lost connection too, though psycopg files
        # SQLSTATE 25P03 under InternalError.
        except (
            psycopg.OperationalError,
            psycopg.InterfaceError,
            psycopg.errors.IdleInTransactionSessionTimeout,
        ) as exc:
            if self._conn is not None and (self._conn.closed or self._conn.broken):
                self._conn.close()
                self._conn = None
            raise DatabaseDown(str(exc).strip() or type(exc).__name__) from exc

    def close(self) -> None:
        if self._pool is not None:
            self._pool.stop()
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    # -- the loop ------------------------------------------------------------------------

    def run(self, *, burst: bool = False, listen: Callable[[Worker], None] | None = None) -> int:
        """Loop until stopped (or, with ``burst``, until idle); returns the exit code.

        ``listen`` runs in a background thread and sets ``self.wake`` when work arrives.
        """
        self._pool = AttemptPool(self.concurrency, self._done)
        if listen is not None:
            threading.Thread(target=listen, args=(self,), name="chunkq-listen", daemon=True).start()
        grace_deadline: float | None = None
        db_backoff = 0.0
        try:
            while True:
                if self.stopping.is_set():
                    if grace_deadline is None:
                        grace_deadline = self._monotonic() + self.settings.shutdown_grace_s
                        log.info(
                            "stopping: finishing %d in-flight chunks (grace %.0fs)",
                            len(self._inflight),
                            self.settings.shutdown_grace_s,
                        )
                    busy = self._inflight or self._reducing or self._unrecorded
                    if not busy and self._finished.empty():
                        return 0
                    if self._monotonic() >= grace_deadline:
                        return self._give_up()
                self.wake.clear()
                try:
                    step = self.run_once()
                    if burst and not step.busy and self.idle():
                        return 0
                    wait = 0.0 if step.claimed else self._wait_time(grace_deadline)
                    db_backoff = 0.0
                except DatabaseDown as exc:
                    db_backoff = min(2.0, max(0.1, db_backoff * 2))
                    wait = db_backoff * (0.5 + self._rng.random() / 2)
                    log.warning("database unavailable (%s); retrying in %.1fs", exc, wait)
                    if grace_deadline is not None:
                        wait = min(wait, max(0.0, grace_deadline - self._monotonic()))
                except Exception:
                    # A bug must not kill the worker, nor make it retry the same write forever:
                    # forget the unwritten outcomes (their leases expire and the rescuer
                    # re-queues them, attempt counted) and go on after a pause.
                    log.exception(
                        "unexpected error in the worker loop; dropping %d outcomes",
                        len(self._unrecorded),
                    )
                    for outcome in self._unrecorded:
                        self._forget(self._key(outcome))
                    self._unrecorded.clear()
                    wait = 1.0
                if wait > 0:
                    self.wake.wait(wait)
        finally:
            self.close()

    def _wait_time(self, grace_deadline: float | None) -> float:
        now = self._monotonic()
        wait = self.settings.poll_interval_s
        if not self.listening:
            wait = min(wait, 0.5)
        if self._inflight or self._reducing:
            wait = min(wait, max(0.0, self._next_heartbeat - now))
        if self._calls:
            deadline = min(call.deadline for call in self._calls.values())
            wait = min(wait, max(0.0, deadline - now))
        wait = min(wait, max(0.0, self._next_rescue - now))
        if grace_deadline is not None:
            wait = min(wait, max(0.0, grace_deadline - now))
        if self._batch_opened is not None:
            wait = min(wait, max(0.0, self._batch_opened + BATCH_WINDOW_S - now))
        if self._unrecorded:
            wait = min(wait, DEFERRED_RETRY_S)  # waiting on a job row held elsewhere
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

    def _give_up(self) -> int:
        """Grace is over: record what finished and what ran past its deadline (those attempts
        count), hand back the rest, exit cleanly."""
        try:
            self._expire(Step())
            self._record(Step(), force=True)
            released = self.hand_back()
            log.info("grace period over: handed back %d chunks", released)
        except DatabaseDown as exc:
            log.warning("could not hand back chunks (%s); their leases will expire", exc)
        return 0

    def _done(self, outcome: Outcome) -> None:
        """An attempt thread's outcome: queued for recording, and the loop woken."""
        self._finished.put(outcome)
        self.wake.set()

    def stop(self) -> None:
        """Stop claiming; ``run`` finishes in-flight chunks within the grace period."""
        self.stopping.set()
        self.wake.set()


def _label(key: Any) -> str:
    return f"reduce of job {key}" if isinstance(key, uuid.UUID) else f"chunk {key[0]}/{key[1]}"


def encode(result: Any) -> str:
    """Serialise a provider's result for the database, refusing what jsonb cannot hold: a
    non-object, NaN or infinity, or a NUL character. A bad result is the provider's failure,
    not a reason for the worker to fail writing a whole batch."""
    if not isinstance(result, dict):
        raise PermanentError(f"provider returned {type(result).__name__}, not a JSON object")
    try:
        return queue.jsonb_text(result)
    except (TypeError, ValueError) as exc:
        raise PermanentError(f"provider returned a result that jsonb cannot hold: {exc}") from exc
