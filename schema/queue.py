"""Every statement that moves ``jobs.status`` or ``chunks.status``: the queue's one home.

Each function is one statement or one short transaction on a psycopg connection whose
transaction the caller owns. ``now`` is passed in so tests can move a fake clock; ``None``
means the database's clock, which every worker on every machine shares.

Lock order, to rule out deadlocks between workers: a transaction that changes a job's
counters locks the job rows first (sorted by id), then the chunk rows. The claim locks
pending chunks and then only touches jobs still PENDING, which no other path holds while
waiting on a pending chunk.
"""

from __future__ import annotations

import json
import logging
import re
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import psycopg

from schema.errors import JobConflict, JobNotFound
from schema.states import ChunkStatus, JobStatus

NOTIFY_CHANNEL = "chunkq_work"
# The payload that says a job was cancelled: workers check their leases at once.
CANCEL_NOTICE = "cancel"
# pg_advisory_xact_lock key serialising capped claims (an arbitrary constant: "chunkq").
CAP_LOCK_KEY = 0x6368756E6B71
# pg_try_advisory_xact_lock key: one rescuer at a time across the fleet ("chunkqr").
RESCUE_LOCK_KEY = 0x6368756E6B7172

log = logging.getLogger("chunkq.queue")

# `now` as a parameter, or the database's clock when the caller passes None.
NOW = "COALESCE(%(now)s::timestamptz, now())"

Summarize = Callable[[list[tuple[int, dict[str, Any]]]], dict[str, Any]]
# A provider's merge, looked up by the provider's name (each chunk records the provider
# that produced its result; None for results recorded before names were kept).
Merge = Callable[[str | None], Summarize]


def merge_with(summarize: Summarize) -> Merge:
    """A Merge that merges every result with ``summarize``, whoever produced it."""
    return lambda _provider: summarize


@dataclass(frozen=True, slots=True)
class ClaimedChunk:
    """One chunk this worker now owns for attempt number ``attempt``."""

    job_id: uuid.UUID
    seq: int
    attempt: int
    start: int
    end: int
    text: str
    # Pieces of a split chunk that earlier attempts finished (None when not split).
    parts: list[dict[str, Any]] | None = None

    @property
    def key(self) -> tuple[uuid.UUID, int]:
        return (self.job_id, self.seq)


@dataclass(frozen=True, slots=True)
class Success:
    chunk: ClaimedChunk
    result: dict[str, Any]
    # The result already serialised (by the attempt thread, off the recording path).
    encoded: str | None = None


@dataclass(frozen=True, slots=True)
class Failure:
    """A failed attempt. ``retry_in`` is None when the chunk is out of attempts (or the error
    is permanent) and must fail now; otherwise the seconds until it may run again."""

    chunk: ClaimedChunk
    error_class: str
    error: str
    retry_in: float | None
    # The failure says the provider is down (refused, reset, 5xx): the circuit breaker's input.
    unavailable: bool = False
    # False for a failure while the provider's circuit was open: the chunk goes back to the
    # queue with its attempt handed back, and nothing is logged against it.
    counted: bool = True
    # The finished pieces of a split chunk, kept for the next attempt (None: unchanged).
    parts: list[dict[str, Any]] | None = None


@dataclass(frozen=True, slots=True)
class Recorded:
    """What one ``record`` transaction did."""

    applied: int
    dropped: list[tuple[uuid.UUID, int]]
    finalized: dict[uuid.UUID, JobStatus]
    # Outcomes not written because another transaction holds their job's row: still ours
    # (the lease is untouched), to be recorded by a later transaction.
    deferred: list[tuple[uuid.UUID, int]] = field(default_factory=list)


def jsonb_text(value: Any) -> str:
    """``value`` as JSON text that jsonb accepts, or ValueError: no NaN or infinity, no NUL
    character (U+0000), which PostgreSQL text cannot hold."""
    text = json.dumps(value, allow_nan=False, separators=(",", ":"))
    if _NUL.search(text):
        raise ValueError("a NUL character (U+0000) cannot be stored")
    return text


# json.dumps writes NUL as \u0000; an even run of backslashes before it is escaped text.
_NUL = re.compile(r"(?<!\\)(?:\\\\)*\\u0000")


def enqueue(
    conn: psycopg.Connection[Any],
    job_id: uuid.UUID,
    text: str,
    spans: Sequence[tuple[int, int]],
    *,
    max_chunk_chars: int,
    options: dict[str, Any] | None = None,
    now: datetime | None = None,
) -> None:
    """Write a PENDING job and all its pending chunks, then wake the workers.

    Safe because nothing else can see the rows before the caller commits; the chunks go
    in one COPY, so a job of ten thousand chunks costs one round trip, not ten thousand.
    NOTIFY is delivered at commit, so a worker never wakes for rows it cannot see yet.
    """
    with conn.cursor() as cur:
        # One round trip for the job row and the wake-up; the chunks' next_attempt_at
        # defaults to now() (this transaction's start) unless a test's clock is given.
        cur.execute(
            f"""WITH job AS (
                    INSERT INTO jobs (id, status, chunks_total, max_chunk_chars, text_chars,
                                      options, created_at, updated_at)
                    VALUES (%(id)s, 'PENDING', %(total)s, %(max)s, %(chars)s, %(options)s,
                            {NOW}, {NOW})
                    RETURNING id)
                SELECT pg_notify('{NOTIFY_CHANNEL}', '') FROM job""",
            {
                "id": job_id,
                "total": len(spans),
                "max": max_chunk_chars,
                "chars": len(text),
                "options": json.dumps(options or {}),
                "now": now,
            },
        )
        # Binary COPY: the server parses no uuid, number or escape in text form (a 100,000-row
        # job commits in about a fifth less time than in text COPY), and psycopg packs in C.
        columns = "job_id, seq, start_offset, end_offset, text"
        types = ["uuid", "int4", "int4", "int4", "text"]
        if now is not None:
            columns, types = f"{columns}, next_attempt_at", [*types, "timestamptz"]
        with cur.copy(f"COPY chunks ({columns}) FROM STDIN (FORMAT BINARY)") as copy:
            copy.set_types(types)
            write = copy.write_row
            if now is None:
                for seq, (start, end) in enumerate(spans):
                    write((job_id, seq, start, end, text[start:end]))
            else:
                for seq, (start, end) in enumerate(spans):
                    write((job_id, seq, start, end, text[start:end], now))


_CLAIM = f"""
WITH picked AS (
    SELECT job_id, seq FROM chunks
    WHERE status = 'pending' AND next_attempt_at <= {NOW}
      AND NOT job_id = ANY(%(skip)s::uuid[])
    ORDER BY next_attempt_at, job_id, seq
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
), claimed AS (
    UPDATE chunks c
    SET status = 'running', attempts = c.attempts + 1, worker_id = %(me)s,
        lease_expires_at = {NOW} + make_interval(secs => %(lease)s), finished_at = NULL
    FROM picked
    WHERE c.job_id = picked.job_id AND c.seq = picked.seq
    RETURNING c.job_id, c.seq, c.attempts, c.start_offset, c.end_offset, c.text, c.parts
), started AS (
    -- SKIP LOCKED: a job row locked by another claimer is being moved on by it already.
    UPDATE jobs SET status = 'PROCESSING', updated_at = {NOW}
    WHERE id IN (SELECT id FROM jobs WHERE id IN (SELECT job_id FROM claimed)
                 AND status = 'PENDING' FOR UPDATE SKIP LOCKED)
)
SELECT job_id, seq, attempts, start_offset, end_offset, text, parts FROM claimed
ORDER BY job_id, seq
"""


def claim(
    conn: psycopg.Connection[Any],
    worker_id: str,
    limit: int,
    *,
    lease_s: float,
    now: datetime | None = None,
    cap: int | None = None,
    skip_jobs: Iterable[uuid.UUID] = (),
) -> list[ClaimedChunk]:
    """Take up to ``limit`` due pending chunks: running, one more attempt, leased to us.

    FOR UPDATE SKIP LOCKED lets any number of workers claim at once without waiting on
    each other or taking the same row; the partial index keeps it an index scan however
    many finished rows the table holds. The job moves PENDING -> PROCESSING in the same
    statement, so a client never sees a running chunk under a PENDING job.

    ``cap`` bounds the provider calls running across every worker, chunks and reductions
    (CHUNKQ_PROVIDER_CONCURRENCY); see ``running_calls``. ``skip_jobs`` are jobs whose row
    the caller found held elsewhere: their chunks could not be recorded now either.
    """
    if cap is not None:
        limit = min(limit, cap - running_calls(conn))
    if limit <= 0:
        return []
    rows = conn.execute(
        _CLAIM,
        {
            "limit": limit,
            "me": worker_id,
            "lease": lease_s,
            "now": now,
            "skip": list(skip_jobs),
        },
    ).fetchall()
    return [ClaimedChunk(*row) for row in rows]


def running_calls(conn: psycopg.Connection[Any]) -> int:
    """Provider calls running across the fleet (chunks and reductions), for a capped claim.

    Takes a transaction-scoped advisory lock first, so the count each capped claimer reads
    stays true until it commits: no two workers can both fill the last free slot.
    """
    conn.execute("SELECT pg_advisory_xact_lock(%(key)s)", {"key": CAP_LOCK_KEY})
    # A running chunk with finished_at set has had its answer (its recording waits on a job
    # row held elsewhere, see ``record``): it holds no provider call.
    row = conn.execute(
        """SELECT (SELECT count(*) FROM chunks WHERE status = 'running' AND finished_at IS NULL)
                + (SELECT count(*) FROM reductions WHERE status = 'running')"""
    ).fetchone()
    return int(row[0]) if row else 0


def heartbeat(
    conn: psycopg.Connection[Any],
    worker_id: str,
    chunks: Iterable[ClaimedChunk],
    *,
    lease_s: float,
    now: datetime | None = None,
) -> set[tuple[uuid.UUID, int]]:
    """Extend the lease of the chunks we still own; returns the keys of those we still own.

    Fenced on owner and attempt, so a lease that was already lost (the job cancelled, the
    chunk rescued) is not revived: the caller aborts the attempts missing from the answer.
    """
    job_ids, seqs, attempts = _columns(chunks)
    if not job_ids:
        return set()
    rows = conn.execute(
        f"""UPDATE chunks c SET lease_expires_at = {NOW} + make_interval(secs => %(lease)s)
            FROM unnest(%(job_ids)b::uuid[], %(seqs)b::int[], %(attempts)b::int[])
                 AS i(job_id, seq, attempt)
            WHERE c.job_id = i.job_id AND c.seq = i.seq AND c.attempts = i.attempt
              AND c.status = 'running' AND c.worker_id = %(me)s
            RETURNING c.job_id, c.seq""",
        {
            "lease": lease_s,
            "job_ids": job_ids,
            "seqs": seqs,
            "attempts": attempts,
            "me": worker_id,
            "now": now,
        },
    ).fetchall()
    return {(job_id, seq) for job_id, seq in rows}


def release(
    conn: psycopg.Connection[Any],
    worker_id: str,
    chunks: Iterable[ClaimedChunk],
    *,
    now: datetime | None = None,
) -> int:
    """Hand chunks back on shutdown: pending again, due now, and the attempt not counted.

    Fenced like a completion, so a chunk whose lease was already lost is left alone.
    """
    job_ids, seqs, attempts = _columns(chunks)
    if not job_ids:
        return 0
    cur = conn.execute(
        f"""UPDATE chunks c
            SET status = 'pending', attempts = c.attempts - 1, worker_id = NULL,
                lease_expires_at = NULL, next_attempt_at = {NOW}
            FROM unnest(%(job_ids)b::uuid[], %(seqs)b::int[], %(attempts)b::int[])
                 AS i(job_id, seq, attempt)
            WHERE c.job_id = i.job_id AND c.seq = i.seq AND c.attempts = i.attempt
              AND c.status = 'running' AND c.worker_id = %(me)s""",
        {"job_ids": job_ids, "seqs": seqs, "attempts": attempts, "me": worker_id, "now": now},
    )
    if cur.rowcount:
        conn.execute(f"NOTIFY {NOTIFY_CHANNEL}")
    return cur.rowcount


_SUCCEED = f"""
WITH input AS (
    SELECT * FROM unnest(%(job_ids)b::uuid[], %(seqs)b::int[], %(attempts)b::int[],
                         %(results)b::text[]) AS i(job_id, seq, attempt, result)
), done AS (
    UPDATE chunks c
    SET status = 'succeeded', result = i.result::jsonb, error = NULL, parts = NULL,
        provider = %(provider)s, finished_at = {NOW}, lease_expires_at = NULL
    FROM input i
    WHERE c.job_id = i.job_id AND c.seq = i.seq AND c.attempts = i.attempt
      AND c.status = 'running' AND c.worker_id = %(me)s
    RETURNING c.job_id, c.seq
), counts AS (
    SELECT job_id, count(*)::int AS n FROM done GROUP BY job_id
), counted AS (
    -- PENDING still, when the claim found the job row held elsewhere and left it.
    UPDATE jobs j SET chunks_completed = j.chunks_completed + counts.n, updated_at = {NOW},
                      status = CASE WHEN j.status = 'PENDING' THEN 'PROCESSING' ELSE j.status END
    FROM counts WHERE j.id = counts.job_id
    RETURNING j.id, j.chunks_completed + j.chunks_failed = j.chunks_total AS all_final
)
SELECT d.job_id, d.seq, c.all_final FROM done d JOIN counted c ON c.id = d.job_id
"""

_FAIL = f"""
WITH input AS (
    SELECT * FROM unnest(%(job_ids)b::uuid[], %(seqs)b::int[], %(attempts)b::int[],
                         %(classes)b::text[], %(errors)b::text[])
             AS i(job_id, seq, attempt, error_class, error)
), done AS (
    UPDATE chunks c
    SET status = 'failed', error = i.error, finished_at = {NOW}, lease_expires_at = NULL
    FROM input i
    WHERE c.job_id = i.job_id AND c.seq = i.seq AND c.attempts = i.attempt
      AND c.status = 'running' AND c.worker_id = %(me)s
    RETURNING c.job_id, c.seq, c.attempts, i.error_class, i.error
), logged AS (
    INSERT INTO chunk_attempts (job_id, seq, attempt, error_class, error, worker_id, at)
    SELECT job_id, seq, attempts, error_class, error, %(me)s, {NOW} FROM done
), counts AS (
    SELECT job_id, count(*)::int AS n FROM done GROUP BY job_id
), counted AS (
    -- PENDING still, when the claim found the job row held elsewhere and left it.
    UPDATE jobs j SET chunks_failed = j.chunks_failed + counts.n, updated_at = {NOW},
                      status = CASE WHEN j.status = 'PENDING' THEN 'PROCESSING' ELSE j.status END
    FROM counts WHERE j.id = counts.job_id
    RETURNING j.id, j.chunks_completed + j.chunks_failed = j.chunks_total AS all_final
)
SELECT d.job_id, d.seq, c.all_final FROM done d JOIN counted c ON c.id = d.job_id
"""

# An uncounted failure (the provider's circuit was open) hands its attempt back, like a
# release, and is not logged: it says nothing about the chunk. Finished pieces of a split
# chunk are kept for the next attempt.
_RETRY = f"""
WITH input AS (
    SELECT * FROM unnest(%(job_ids)b::uuid[], %(seqs)b::int[], %(attempts)b::int[],
                         %(classes)b::text[], %(errors)b::text[], %(delays)b::float8[],
                         %(counted)b::bool[], %(parts)b::text[])
             AS i(job_id, seq, attempt, error_class, error, delay, counted, parts)
), done AS (
    UPDATE chunks c
    SET status = 'pending', error = i.error, worker_id = NULL, lease_expires_at = NULL,
        next_attempt_at = {NOW} + make_interval(secs => i.delay),
        attempts = c.attempts - CASE WHEN i.counted THEN 0 ELSE 1 END,
        parts = coalesce(i.parts::jsonb, c.parts)
    FROM input i
    WHERE c.job_id = i.job_id AND c.seq = i.seq AND c.attempts = i.attempt
      AND c.status = 'running' AND c.worker_id = %(me)s
    RETURNING c.job_id, c.seq, i.attempt, i.error_class, i.error, i.counted
), logged AS (
    INSERT INTO chunk_attempts (job_id, seq, attempt, error_class, error, worker_id, at)
    SELECT job_id, seq, attempt, error_class, error, %(me)s, {NOW} FROM done WHERE counted
)
SELECT job_id, seq, false FROM done
"""


def record(
    conn: psycopg.Connection[Any],
    worker_id: str,
    outcomes: Sequence[Success | Failure],
    merge: Merge,
    *,
    provider: str | None = None,
    now: datetime | None = None,
    notify: bool = False,
    reduces: bool = True,
) -> Recorded:
    """Record a batch of attempt outcomes and finalize every job whose last chunk this was.

    Run inside one transaction. Every write is fenced on (status running, attempt, owner):
    an outcome whose lease was lost matches no row and is reported in ``dropped``, never
    written twice. ``provider`` names who produced the successes' results, kept with each
    so the job is merged by its own provider. ``notify`` wakes other workers at commit
    (under a shared cap, a finished chunk frees a slot they may be waiting for). The
    counters move in the same statements as the chunk states, so they equal the row counts
    at every commit; the job rows are locked first, in id order, so the transaction that
    sees completed + failed = total is the only one that can.

    A job row held by another transaction (a paused peer, an operator's open session) is
    skipped, not waited on: its outcomes come back in ``deferred`` and the rest of the
    batch is written, so one held row never stops the other jobs from finishing. A deferred
    chunk stays running (leased to us) with ``finished_at`` set: its provider call is over,
    so it no longer counts against the shared cap.
    """
    if not outcomes:
        return Recorded(0, [], {})
    held = held_jobs(conn, {o.chunk.job_id for o in outcomes if _counts(o)})
    waiting = [o for o in outcomes if _counts(o) and o.chunk.job_id in held]
    deferred = [o.chunk.key for o in waiting]
    outcomes = [o for o in outcomes if not (_counts(o) and o.chunk.job_id in held)]
    if waiting:
        job_ids, seqs, attempts = _columns(o.chunk for o in waiting)
        conn.execute(
            f"""UPDATE chunks c SET finished_at = {NOW}
                FROM unnest(%(job_ids)b::uuid[], %(seqs)b::int[], %(attempts)b::int[])
                     AS i(job_id, seq, attempt)
                WHERE c.job_id = i.job_id AND c.seq = i.seq AND c.attempts = i.attempt
                  AND c.status = 'running' AND c.worker_id = %(me)s
                  AND c.finished_at IS NULL""",
            {"job_ids": job_ids, "seqs": seqs, "attempts": attempts, "me": worker_id, "now": now},
        )
    successes = [o for o in outcomes if isinstance(o, Success)]
    failures = [o for o in outcomes if isinstance(o, Failure) and o.retry_in is None]
    retries = [o for o in outcomes if isinstance(o, Failure) and o.retry_in is not None]
    params: dict[str, Any] = {"me": worker_id, "now": now, "provider": provider}
    rows: list[tuple[uuid.UUID, int, bool]] = []
    if successes:
        job_ids, seqs, attempts = _columns(o.chunk for o in successes)
        results = [o.encoded or json.dumps(o.result, separators=(",", ":")) for o in successes]
        rows += conn.execute(
            _SUCCEED,
            {**params, "job_ids": job_ids, "seqs": seqs, "attempts": attempts, "results": results},
        ).fetchall()
    for statement, batch in ((_FAIL, failures), (_RETRY, retries)):
        if not batch:
            continue
        job_ids, seqs, attempts = _columns(o.chunk for o in batch)
        extra: dict[str, Any] = {
            "classes": [o.error_class for o in batch],
            "errors": [o.error for o in batch],
        }
        if statement is _RETRY:
            extra["delays"] = [o.retry_in for o in batch]
            extra["counted"] = [o.counted for o in batch]
            extra["parts"] = [
                None if o.parts is None else json.dumps(o.parts, separators=(",", ":"))
                for o in batch
            ]
        rows += conn.execute(
            statement, {**params, "job_ids": job_ids, "seqs": seqs, "attempts": attempts, **extra}
        ).fetchall()
    applied = {(job_id, seq) for job_id, seq, _ in rows}
    if notify and applied:
        conn.execute(f"NOTIFY {NOTIFY_CHANNEL}")
    dropped = [o.chunk.key for o in outcomes if o.chunk.key not in applied]
    finalized: dict[uuid.UUID, JobStatus] = {}
    for job_id in sorted({job_id for job_id, _, all_final in rows if all_final}):
        status = finalize(conn, job_id, merge, now=now, reduces=reduces)
        if status is not None:
            finalized[job_id] = status
    return Recorded(len(applied), dropped, finalized, deferred)


def _counts(outcome: Success | Failure) -> bool:
    """Whether recording ``outcome`` moves its job's counters (a retry does not)."""
    return isinstance(outcome, Success) or outcome.retry_in is None


def held_jobs(conn: psycopg.Connection[Any], job_ids: set[uuid.UUID]) -> set[uuid.UUID]:
    """Lock these job rows (id order, SKIP LOCKED); returns the ids another transaction
    holds. A job that no longer exists is not held: its fenced writes simply match nothing."""
    if not job_ids:
        return set()
    ids = sorted(job_ids)
    locked = {
        row[0]
        for row in conn.execute(
            "SELECT id FROM jobs WHERE id = ANY(%(ids)s) ORDER BY id FOR UPDATE SKIP LOCKED",
            {"ids": ids},
        )
    }
    missing = [i for i in ids if i not in locked]
    if not missing:
        return set()
    # A plain read never waits on a row lock: what exists among the rest is held elsewhere.
    return {
        row[0]
        for row in conn.execute("SELECT id FROM jobs WHERE id = ANY(%(ids)s)", {"ids": missing})
    }


# The retry policy's backoff (workerd.retry.backoff) in SQL, for attempt c.attempts: the
# exponential ceiling capped at the maximum, drawn from its upper half ("equal jitter").
_BACKOFF = """(least(%(backoff_max)s::float8,
                     %(backoff_base)s::float8 * power(2, greatest(c.attempts, 1) - 1))
               * (0.5 + random() / 2))"""

_RESCUE = f"""
WITH expired AS (
    SELECT job_id, seq, attempts, worker_id FROM chunks
    WHERE job_id = ANY(%(jobs)s) AND status = 'running' AND lease_expires_at < {NOW}
    FOR UPDATE SKIP LOCKED
), moved AS (
    UPDATE chunks c
    SET status = CASE WHEN c.attempts >= %(max_attempts)s THEN 'failed' ELSE 'pending' END,
        finished_at = CASE WHEN c.attempts >= %(max_attempts)s THEN {NOW} END,
        next_attempt_at = {NOW} + make_interval(secs => {_BACKOFF}),
        worker_id = NULL, lease_expires_at = NULL, error = %(error)s
    FROM expired e
    WHERE c.job_id = e.job_id AND c.seq = e.seq
    RETURNING c.job_id, c.seq, c.attempts, c.status, e.worker_id
), logged AS (
    INSERT INTO chunk_attempts (job_id, seq, attempt, error_class, error, worker_id, at)
    SELECT job_id, seq, attempts, 'WorkerLost', %(error)s, worker_id, {NOW} FROM moved
), counts AS (
    SELECT job_id, count(*)::int AS n FROM moved WHERE status = 'failed' GROUP BY job_id
), counted AS (
    -- PENDING still, when the claim found the job row held elsewhere and left it.
    UPDATE jobs j SET chunks_failed = j.chunks_failed + counts.n, updated_at = {NOW},
                      status = CASE WHEN j.status = 'PENDING' THEN 'PROCESSING' ELSE j.status END
    FROM counts WHERE j.id = counts.job_id
    RETURNING j.id, j.chunks_completed + j.chunks_failed = j.chunks_total AS all_final
)
SELECT m.job_id, m.status, coalesce(c.all_final, false) FROM moved m
LEFT JOIN counted c ON c.id = m.job_id
"""

WORKER_LOST = "worker lost: its lease expired before it reported (crashed, killed or partitioned)"


def rescue(
    conn: psycopg.Connection[Any],
    merge: Merge,
    *,
    max_attempts: int,
    backoff_base_s: float = 1.0,
    backoff_max_s: float = 60.0,
    now: datetime | None = None,
    limit: int = 100,
    reduces: bool = True,
) -> tuple[int, int, dict[uuid.UUID, JobStatus]]:
    """Take back chunks whose owner stopped heartbeating: pending again after the retry
    backoff, or failed when the lost attempt was the last (a chunk that keeps killing its
    workers is not retried forever, nor handed to the whole fleet at once).

    Returns (requeued, failed, finalized). The attempt was counted at claim time, so every
    loss counts. One rescuer runs at a time (a transaction-scoped try-lock: the others skip
    it rather than wait). Job rows are locked first (id order, SKIP LOCKED: a row held
    elsewhere waits for the next round), as in ``record``; the expiry test is re-checked
    under the row lock, so an owner that reported in time wins.
    """
    row = conn.execute(
        "SELECT pg_try_advisory_xact_lock(%(key)s)", {"key": RESCUE_LOCK_KEY}
    ).fetchone()
    if not (row and row[0]):
        return 0, 0, {}
    jobs = [
        row[0]
        for row in conn.execute(
            f"""SELECT DISTINCT job_id FROM chunks
                WHERE status = 'running' AND lease_expires_at < {NOW} LIMIT %(limit)s""",
            {"now": now, "limit": limit},
        )
    ]
    if not jobs:
        return 0, 0, {}
    held = held_jobs(conn, set(jobs))
    rows = conn.execute(
        _RESCUE,
        {
            "jobs": [j for j in jobs if j not in held],
            "max_attempts": max_attempts,
            "backoff_base": backoff_base_s,
            "backoff_max": backoff_max_s,
            "error": WORKER_LOST,
            "now": now,
        },
    ).fetchall()
    requeued = sum(1 for _, status, _ in rows if status == ChunkStatus.PENDING)
    finalized: dict[uuid.UUID, JobStatus] = {}
    for job_id in sorted({job_id for job_id, _, all_final in rows if all_final}):
        status = finalize(conn, job_id, merge, now=now, reduces=reduces)
        if status is not None:
            finalized[job_id] = status
    if requeued:
        conn.execute(f"NOTIFY {NOTIFY_CHANNEL}")
    return requeued, len(rows) - requeued, finalized


def finalize(
    conn: psycopg.Connection[Any],
    job_id: uuid.UUID,
    merge: Merge,
    *,
    now: datetime | None = None,
    reduces: bool = True,
) -> JobStatus | None:
    """Merge a job's chunk results in order and move it to its terminal status.

    Locks the job row (FOR UPDATE) and acts only if every chunk is final and the job is not
    terminal yet, so however many transactions race here, exactly one finalizes. Returns
    the new status, or None when there was nothing to do. A job that asked for the reduce
    step gets it queued here, unless the provider has none (``reduces``). A merge that
    fails ends the job all the same (see ``summary``).
    """
    row = conn.execute(
        "SELECT status, chunks_total, chunks_completed, chunks_failed, options FROM jobs"
        " WHERE id = %(id)s FOR UPDATE",
        {"id": job_id},
    ).fetchone()
    if row is None:
        return None
    status, total, completed, failed, options = row
    if JobStatus(status).terminal or completed + failed < total:
        return None
    if failed == 0:
        new_status = JobStatus.COMPLETED
    elif completed == 0:
        new_status = JobStatus.FAILED
    else:
        new_status = JobStatus.PARTIAL_SUCCESS
    extra: dict[str, Any] = {}
    if options.get("reduce"):
        if not reduces:
            extra["reduce"] = {"status": "skipped", "reason": "the provider has no reduce step"}
        elif completed:
            from schema import reductions

            extra["reduce"] = reductions.schedule(conn, job_id, now=now)
        else:
            extra["reduce"] = {"status": "skipped", "reason": "no chunk succeeded"}
    conn.execute(
        f"""UPDATE jobs SET status = %(status)s, analysis_result = {_MERGED} || %(extra)s::jsonb,
                            finished_at = {NOW}, updated_at = {NOW}
            WHERE id = %(id)s""",
        {
            "status": new_status.value,
            "summary": summary(conn, job_id, merge),
            "extra": json.dumps(extra),
            "id": job_id,
            "now": now,
        },
    )
    return new_status


# A job's ``analysis_result``, built by the server from the job's own rows (primary-key
# range): one entry per chunk in ``seq`` order, and the provider's summary passed in.
_MERGED = """jsonb_build_object(
    'chunks', (SELECT coalesce(jsonb_agg(
                   jsonb_build_object('index', seq, 'start', start_offset, 'end', end_offset,
                                      'status', status)
                   || CASE WHEN status = 'succeeded' THEN jsonb_build_object('result', result)
                           ELSE jsonb_build_object('error', error) END
                   ORDER BY seq), '[]'::jsonb)
               FROM chunks WHERE job_id = %(id)s),
    'summary', %(summary)s::jsonb)"""


def summary(conn: psycopg.Connection[Any], job_id: uuid.UUID, merge: Merge) -> str:
    """The document-level merge of a job's succeeded chunks, as jsonb text.

    Each result is merged by the provider that produced it: when a job's results come from
    several providers (the fleet changed provider mid-job), each provider merges its own
    and the summary lists them, ``{"providers": [{"provider", "chunks", "summary"}, ...]}``
    in order of first appearance. A merge that raises, or returns what jsonb cannot hold,
    does not stop the job: the summary becomes ``{"error": ...}`` saying why, and every
    chunk's own result stays in ``analysis_result.chunks``.
    """
    # One JSON document parsed once: a big job's 50,000 results cost one json.loads
    # instead of a row conversion each (about ten times faster).
    row = conn.execute(
        """SELECT coalesce(json_agg(json_build_array(end_offset - start_offset, result,
                                                     provider) ORDER BY seq), '[]')::text
           FROM chunks WHERE job_id = %(id)s AND status = 'succeeded'""",
        {"id": job_id},
    ).fetchone()
    rows = json.loads(row[0] if row else "[]")
    named = {provider for _, _, provider in rows if provider is not None}
    # Results recorded before providers were named belong to the job's only named provider.
    sole = next(iter(named)) if len(named) == 1 else None
    groups: dict[str | None, list[tuple[int, dict[str, Any]]]] = {}
    for length, result, provider in rows:
        groups.setdefault(provider or sole, []).append((length, result))
    try:
        if len(groups) <= 1:
            provider, results = next(iter(groups.items()), (None, []))
            return jsonb_text(merge(provider)(results))
        return jsonb_text(
            {
                "providers": [
                    {"provider": name, "chunks": len(results), "summary": merge(name)(results)}
                    for name, results in groups.items()
                ]
            }
        )
    except Exception as exc:
        log.warning("merging the results of job %s failed: %r", job_id, exc)
        return jsonb_text(
            {
                "error": f"the merge of the chunk results failed ({type(exc).__name__}: {exc});"
                " each chunk's result is kept in analysis_result.chunks"
            }
        )


# Cancel a job in one statement: its pending and running chunks become cancelled, and its
# analysis_result is built from the rows as they now are, the cancelled ones taken from the
# UPDATE's RETURNING and the rest from the statement's snapshot, so each chunk row is read
# once. The document is _MERGED's, built as json text and cast once (jsonb's builders cost
# about a fifth more on 100,000 entries). Safe under concurrency because the caller holds
# the job row lock, which every write that finishes a chunk takes first; a claim moving a
# chunk to running meanwhile is seen by the UPDATE's recheck of the row it waited for.
_CANCEL = f"""
WITH cancelled AS (
    UPDATE chunks SET status = 'cancelled', finished_at = {NOW}, lease_expires_at = NULL
    WHERE job_id = %(id)s AND status IN ('pending', 'running')
    RETURNING seq, start_offset, end_offset, status, error, NULL::jsonb AS result
), entries AS (
    SELECT * FROM cancelled
    UNION ALL
    SELECT seq, start_offset, end_offset, status, error, result FROM chunks
    WHERE job_id = %(id)s AND status NOT IN ('pending', 'running')
)
UPDATE jobs SET status = 'CANCELLED', finished_at = {NOW}, updated_at = {NOW},
    analysis_result = jsonb_build_object(
        'chunks', (SELECT coalesce(json_agg(
                       json_build_object('index', seq, 'start', start_offset, 'end', end_offset,
                                         'status', status,
                                         CASE WHEN status = 'succeeded' THEN 'result'
                                              ELSE 'error' END,
                                         CASE WHEN status = 'succeeded' THEN result
                                              ELSE to_jsonb(error) END)
                       ORDER BY seq)::jsonb, '[]'::jsonb)
                   FROM entries),
        'summary', %(summary)s::jsonb)
WHERE id = %(id)s
RETURNING pg_notify('{NOTIFY_CHANNEL}', '{CANCEL_NOTICE}')
"""


def cancel(
    conn: psycopg.Connection[Any],
    job_id: uuid.UUID,
    merge: Merge,
    *,
    now: datetime | None = None,
) -> JobStatus:
    """Cancel a job that is not finished: its pending and running chunks become cancelled,
    and ``analysis_result`` keeps what had already succeeded.

    The job row is locked first, as in ``record``, so the succeeded chunks the summary merges
    stay as they are until commit. A running chunk's owner reports later through the fenced
    writes, which no longer match (status is not running), so its late result is dropped.
    The 'cancel' notice tells workers to check their leases at once, so this job's attempts
    stop (and free their slots) rather than at the next heartbeat. Raises JobNotFound, or
    JobConflict for a terminal job.
    """
    row = conn.execute(
        "SELECT status FROM jobs WHERE id = %(id)s FOR UPDATE", {"id": job_id}
    ).fetchone()
    if row is None:
        raise JobNotFound(str(job_id))
    if JobStatus(row[0]).terminal:
        raise JobConflict(f"job {job_id} is already {row[0]}")
    text = summary(conn, job_id, merge)
    # The 100,000 entries are sorted by seq in memory rather than in temporary files.
    conn.execute("SET LOCAL work_mem = '64MB'")
    conn.execute(_CANCEL, {"id": job_id, "now": now, "summary": text})
    return JobStatus.CANCELLED


def next_due(conn: psycopg.Connection[Any]) -> datetime | None:
    """When the earliest pending chunk becomes due (an index lookup), for an idle worker's sleep."""
    row = conn.execute(
        "SELECT min(next_attempt_at) FROM chunks WHERE status = 'pending'"
    ).fetchone()
    return row[0] if row else None


def _columns(
    chunks: Iterable[ClaimedChunk],
) -> tuple[list[uuid.UUID], list[int], list[int]]:
    job_ids: list[uuid.UUID] = []
    seqs: list[int] = []
    attempts: list[int] = []
    for chunk in chunks:
        job_ids.append(chunk.job_id)
        seqs.append(chunk.seq)
        attempts.append(chunk.attempt)
    return job_ids, seqs, attempts
