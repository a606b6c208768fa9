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
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
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

# `now` as a parameter, or the database's clock when the caller passes None.
NOW = "COALESCE(%(now)s::timestamptz, now())"

Summarize = Callable[[list[tuple[int, dict[str, Any]]]], dict[str, Any]]


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
    ORDER BY next_attempt_at, job_id, seq
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
), claimed AS (
    UPDATE chunks c
    SET status = 'running', attempts = c.attempts + 1, worker_id = %(me)s,
        lease_expires_at = {NOW} + make_interval(secs => %(lease)s)
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
) -> list[ClaimedChunk]:
    """Take up to ``limit`` due pending chunks: running, one more attempt, leased to us.

    FOR UPDATE SKIP LOCKED lets any number of workers claim at once without waiting on
    each other or taking the same row; the partial index keeps it an index scan however
    many finished rows the table holds. The job moves PENDING -> PROCESSING in the same
    statement, so a client never sees a running chunk under a PENDING job.

    ``cap`` bounds the chunks running across every worker (CHUNKQ_PROVIDER_CONCURRENCY).
    Capped claims take a transaction-scoped advisory lock first, so the count of running
    chunks each one reads stays true until it commits: no two workers can both fill the
    last free slot.
    """
    if cap is not None:
        conn.execute("SELECT pg_advisory_xact_lock(%(key)s)", {"key": CAP_LOCK_KEY})
        row = conn.execute("SELECT count(*) FROM chunks WHERE status = 'running'").fetchone()
        limit = min(limit, cap - (row[0] if row else 0))
    if limit <= 0:
        return []
    rows = conn.execute(
        _CLAIM, {"limit": limit, "me": worker_id, "lease": lease_s, "now": now}
    ).fetchall()
    return [ClaimedChunk(*row) for row in rows]


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
        finished_at = {NOW}, lease_expires_at = NULL
    FROM input i
    WHERE c.job_id = i.job_id AND c.seq = i.seq AND c.attempts = i.attempt
      AND c.status = 'running' AND c.worker_id = %(me)s
    RETURNING c.job_id, c.seq
), counts AS (
    SELECT job_id, count(*)::int AS n FROM done GROUP BY job_id
), counted AS (
    UPDATE jobs j SET chunks_completed = j.chunks_completed + counts.n, updated_at = {NOW}
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
    UPDATE jobs j SET chunks_failed = j.chunks_failed + counts.n, updated_at = {NOW}
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
    summarize: Summarize,
    *,
    now: datetime | None = None,
    notify: bool = False,
    reduces: bool = True,
) -> Recorded:
    """Record a batch of attempt outcomes and finalize every job whose last chunk this was.

    Run inside one transaction. Every write is fenced on (status running, attempt, owner):
    an outcome whose lease was lost matches no row and is reported in ``dropped``, never
    written twice. ``notify`` wakes other workers at commit (under a shared cap, a finished
    chunk frees a slot they may be waiting for). The counters move in the same statements
    as the chunk states, so they equal the row counts at every commit; the job rows are
    locked first, in id order, so the transaction that sees completed + failed = total is
    the only one that can.
    """
    if not outcomes:
        return Recorded(0, [], {})
    successes = [o for o in outcomes if isinstance(o, Success)]
    failures = [o for o in outcomes if isinstance(o, Failure) and o.retry_in is None]
    retries = [o for o in outcomes if isinstance(o, Failure) and o.retry_in is not None]
    params: dict[str, Any] = {"me": worker_id, "now": now}
    touched = sorted({o.chunk.job_id for o in successes + failures})
    if touched:
        conn.execute(
            "SELECT id FROM jobs WHERE id = ANY(%(ids)s) ORDER BY id FOR UPDATE",
            {"ids": touched},
        )
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
        status = finalize(conn, job_id, summarize, now=now, reduces=reduces)
        if status is not None:
            finalized[job_id] = status
    return Recorded(len(applied), dropped, finalized)


_RESCUE = f"""
WITH expired AS (
    SELECT job_id, seq, attempts, worker_id FROM chunks
    WHERE job_id = ANY(%(jobs)s) AND status = 'running' AND lease_expires_at < {NOW}
    FOR UPDATE SKIP LOCKED
), moved AS (
    UPDATE chunks c
    SET status = CASE WHEN c.attempts >= %(max_attempts)s THEN 'failed' ELSE 'pending' END,
        finished_at = CASE WHEN c.attempts >= %(max_attempts)s THEN {NOW} END,
        next_attempt_at = {NOW}, worker_id = NULL, lease_expires_at = NULL,
        error = %(error)s
    FROM expired e
    WHERE c.job_id = e.job_id AND c.seq = e.seq
    RETURNING c.job_id, c.seq, c.attempts, c.status, e.worker_id
), logged AS (
    INSERT INTO chunk_attempts (job_id, seq, attempt, error_class, error, worker_id, at)
    SELECT job_id, seq, attempts, 'WorkerLost', %(error)s, worker_id, {NOW} FROM moved
), counts AS (
    SELECT job_id, count(*)::int AS n FROM moved WHERE status = 'failed' GROUP BY job_id
), counted AS (
    UPDATE jobs j SET chunks_failed = j.chunks_failed + counts.n, updated_at = {NOW}
    FROM counts WHERE j.id = counts.job_id
    RETURNING j.id, j.chunks_completed + j.chunks_failed = j.chunks_total AS all_final
)
SELECT m.job_id, m.status, coalesce(c.all_final, false) FROM moved m
LEFT JOIN counted c ON c.id = m.job_id
"""

WORKER_LOST = "worker lost: its lease expired before it reported (crashed, killed or partitioned)"


def rescue(
    conn: psycopg.Connection[Any],
    summarize: Summarize,
    *,
    max_attempts: int,
    now: datetime | None = None,
    limit: int = 100,
    reduces: bool = True,
) -> tuple[int, int, dict[uuid.UUID, JobStatus]]:
    """Take back chunks whose owner stopped heartbeating: pending again, or failed when the
    lost attempt was the last (a chunk that keeps killing its workers is not retried forever).

    Returns (requeued, failed, finalized). The attempt was counted at claim time, so every
    loss counts. Job rows are locked first (id order), as in ``record``; SKIP LOCKED lets
    two rescuers split the work, and the expiry test is re-checked under the row lock, so
    an owner that reported in time wins.
    """
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
    jobs.sort()
    conn.execute(
        "SELECT id FROM jobs WHERE id = ANY(%(ids)s) ORDER BY id FOR UPDATE", {"ids": jobs}
    )
    rows = conn.execute(
        _RESCUE, {"jobs": jobs, "max_attempts": max_attempts, "error": WORKER_LOST, "now": now}
    ).fetchall()
    requeued = sum(1 for _, status, _ in rows if status == ChunkStatus.PENDING)
    finalized: dict[uuid.UUID, JobStatus] = {}
    for job_id in sorted({job_id for job_id, _, all_final in rows if all_final}):
        status = finalize(conn, job_id, summarize, now=now, reduces=reduces)
        if status is not None:
            finalized[job_id] = status
    if requeued:
        conn.execute(f"NOTIFY {NOTIFY_CHANNEL}")
    return requeued, len(rows) - requeued, finalized


def finalize(
    conn: psycopg.Connection[Any],
    job_id: uuid.UUID,
    summarize: Summarize,
    *,
    now: datetime | None = None,
    reduces: bool = True,
) -> JobStatus | None:
    """Merge a job's chunk results in order and move it to its terminal status.

    Locks the job row (FOR UPDATE) and acts only if every chunk is final and the job is not
    terminal yet, so however many transactions race here, exactly one finalizes. Returns
    the new status, or None when there was nothing to do. A job that asked for the reduce
    step gets it queued here, unless the provider has none (``reduces``).
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
            "summary": json.dumps(summarize(succeeded_results(conn, job_id))),
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


def succeeded_results(
    conn: psycopg.Connection[Any], job_id: uuid.UUID
) -> list[tuple[int, dict[str, Any]]]:
    """(length, result) of a job's succeeded chunks in ``seq`` order: what ``summarize`` takes."""
    return conn.execute(
        """SELECT end_offset - start_offset, result FROM chunks
           WHERE job_id = %(id)s AND status = 'succeeded' ORDER BY seq""",
        {"id": job_id},
    ).fetchall()


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
    summarize: Summarize,
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
    summary = json.dumps(summarize(_succeeded_at_once(conn, job_id)))
    # The 100,000 entries are sorted by seq in memory rather than in temporary files.
    conn.execute("SET LOCAL work_mem = '64MB'")
    conn.execute(_CANCEL, {"id": job_id, "now": now, "summary": summary})
    return JobStatus.CANCELLED


def _succeeded_at_once(
    conn: psycopg.Connection[Any], job_id: uuid.UUID
) -> list[tuple[int, dict[str, Any]]]:
    """``succeeded_results`` as one JSON document, parsed once: a big job's 50,000 results
    cost one json.loads instead of a row conversion each (about ten times faster)."""
    row = conn.execute(
        """SELECT coalesce(json_agg(json_build_array(end_offset - start_offset, result)
                                    ORDER BY seq), '[]')::text
           FROM chunks WHERE job_id = %(id)s AND status = 'succeeded'""",
        {"id": job_id},
    ).fetchone()
    return [(size, result) for size, result in json.loads(row[0] if row else "[]")]


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
