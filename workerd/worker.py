"""The worker: claim due chunks, run the provider on them, record outcomes, finalize jobs.

``run_once`` does one step and returns what it did (tests call it with no threads);
``run`` only loops, waits for wake-ups and handles shutdown.
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
from datetime import datetime
from typing import Any

import psycopg

from schema import queue
from schema.queue import ClaimedChunk, Failure, Success, reductions
from schema.queue.reductions import ClaimedReduction
from workerd.attempts import Attempts, Outcome, ReduceOutcome, key_of, label
from workerd.circuit import Circuit
from workerd.database import Database, DatabaseDown
from workerd.pool import AttemptPool
from workerd.providers import Call, Provider, can_reduce, circuit_key, merge_by_name
from workerd.recorder import Recorder
from workerd.settings import Settings
from workerd.step import Step

log = logging.getLogger("workerd")

Clock = Callable[[], datetime | None]


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
        self._clock = clock
        self._rng = rng or random.Random()
        self._monotonic = monotonic
        self._db = Database(connect, lease_s=settings.lease_s)
        self._attempts = Attempts(settings, provider, rng=self._rng, monotonic=monotonic)
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
        self._reduces = can_reduce(provider)
        self._merge = merge_by_name(provider)
        self._recorder = Recorder(
            self.worker_id,
            self._db,
            self._attempts,
            self.circuit,
            self._merge,
            reduces=self._reduces,
            clock=clock,
            monotonic=monotonic,
        )
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
                skip_jobs=self._recorder.held,
            )

        limit, claimed = self._transaction(take)
        probing = self.circuit.open
        step.claimed = len(claimed)
        # Under a shared cap, an empty claim with work due means the cap is full: wait for
        # a NOTIFY from whoever frees a slot instead of polling the claim in a tight loop.
        self._capped = self.settings.provider_concurrency is not None and len(claimed) < limit
        for chunk in claimed:
            self._inflight[chunk.key] = chunk
            call = self._calls[chunk.key] = self._attempts.new_call(chunk.parts)
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
                call = self._calls[reduction.job_id] = self._attempts.new_call(None)
                if probing:
                    self._probes.add(reduction.job_id)
                    self.circuit.probing += 1
                self._start(functools.partial(self.attempt_reduce, reduction, call))
        if step.claimed and self._pool is None:
            self._record(step)
        return step

    def _free(self) -> int:
        """Slots free for new attempts: a deferred outcome's call is over and holds none."""
        return (
            self.concurrency
            - len(self._inflight)
            - len(self._reducing)
            + len(self._recorder.deferred)
        )

    def _start(self, attempt: Callable[[], Outcome]) -> None:
        """Run an attempt on the pool, or right here when there is no pool (tests)."""
        if self._pool is not None:
            self._pool.submit(attempt)
        else:
            self._recorder.finished.put(attempt())

    def attempt(self, chunk: ClaimedChunk, call: Call | None = None) -> Success | Failure:
        """Run the provider on one chunk; never raises: every error becomes a Failure."""
        return self._attempts.chunk(chunk, call)

    def attempt_reduce(
        self, reduction: ClaimedReduction, call: Call | None = None
    ) -> ReduceOutcome:
        """Run the provider's reduce step on a job's ordered analyses; never raises."""
        return self._attempts.reduce(reduction, call)

    def _expire(self, step: Step) -> None:
        """Fail every attempt past its deadline now, as AttemptTimeout, and free its slot.

        The call is aborted (its connection shut, where the provider allows it) and its
        thread is replaced, so a call that never returns costs no capacity. Its result, if
        it ever comes, is ignored here, and the fence would refuse it anyway.
        """
        now = self._monotonic()
        answered = {key_of(o) for o in self._recorder.unrecorded}  # over already, awaiting a write
        for key, call in list(self._calls.items()):
            if call.deadline > now or key in self._timed_out or key in answered:
                continue
            self._timed_out.add(key)
            call.abort("deadline")
            if self._pool is not None:
                self._pool.replace_stuck()
            claimed = self._reducing[key] if isinstance(key, uuid.UUID) else self._inflight[key]
            outcome = self._attempts.timed_out(claimed, call)
            log.warning("attempt at %s timed out; its slot is free again", label(key))
            self._recorder.unrecorded.append(outcome)
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

    def _record(self, step: Step, *, force: bool = False) -> None:
        """Take the finished attempts still ours, and write them (see ``Recorder.flush``)."""
        self._recorder.collect(self._current)
        self._recorder.flush(
            step,
            running=len(self._inflight) + len(self._reducing),
            probes=self._probes,
            forget=self._forget,
            force=force,
        )

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
        pending = {key_of(o) for o in self._recorder.unrecorded}
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
            log.warning("lease of %s lost (cancelled or rescued); attempt aborted", label(key))

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
        if self._inflight or self._reducing or self._recorder.unrecorded:
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
        if self._pool is not None:
            self._pool.stop()
        self._db.close()

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
                    busy = self._inflight or self._reducing or self._recorder.unrecorded
                    if not busy and self._recorder.finished.empty():
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
                        len(self._recorder.unrecorded),
                    )
                    for outcome in self._recorder.unrecorded:
                        self._forget(key_of(outcome))
                    self._recorder.unrecorded.clear()
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
        self._recorder.finished.put(outcome)
        self.wake.set()

    def stop(self) -> None:
        """Stop claiming; ``run`` finishes in-flight chunks within the grace period."""
        self.stopping.set()
        self.wake.set()
