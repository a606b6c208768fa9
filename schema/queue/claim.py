"""The lease: claim due chunks (SKIP LOCKED), extend it while working, hand it back on
shutdown; and the count of running provider calls that a capped claim reads."""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from datetime import datetime
from typing import Any

import psycopg

from schema.cache import SHARED, Lookup
from schema.queue.outcomes import ClaimedChunk
from schema.queue.sql import (
    CAP_LOCK_KEY,
    FAIR_QUANTUM,
    FENCED_KEYS,
    NOTIFY_CHANNEL,
    NOW,
    key_columns,
)

# The claim, one statement. Due retries come first (chunks_retry_idx, soonest due first:
# they have waited already). The rest of the limit is shared among the lanes (tenants) with
# untried chunks, found by a skip scan of chunks_fair_idx (one index probe per lane): each
# lane takes an equal share, the remainder going to lanes in a random order, and within a
# lane chunks come by priority, then turn, so every waiting job of the lane gets its turn;
# within a turn, the jobs that have had fewer turns first (a job just submitted before one
# well under way), each job's chunks together and in order.
# Every part is an index scan that stops after what it takes, whatever the backlog, and
# locks what it takes with SKIP LOCKED, so concurrent claimers pass each other. With the
# result cache on, each claimed chunk's key is made here (schema.cache) and its cached
# result, if any, comes back with it: a primary-key lookup each, no statement of its own.
_CLAIM = f"""
WITH RECURSIVE lanes AS (
    (SELECT lane FROM chunks WHERE status = 'pending' AND attempts = 0
     ORDER BY lane LIMIT 1)
    UNION ALL
    SELECT (SELECT c.lane FROM chunks c
            WHERE c.status = 'pending' AND c.attempts = 0 AND c.lane > l.lane
            ORDER BY c.lane LIMIT 1)
    FROM lanes l WHERE l.lane IS NOT NULL
), retries AS (
    SELECT ctid FROM chunks
    WHERE status = 'pending' AND attempts > 0 AND next_attempt_at <= {NOW}
      AND NOT job_id = ANY(%(skip)s::uuid[])
    ORDER BY next_attempt_at, job_id, seq
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
), shares AS (
    SELECT lane, (%(limit)s - (SELECT count(*) FROM retries)) AS free,
           count(*) OVER () AS n, row_number() OVER (ORDER BY random()) - 1 AS i
    FROM lanes WHERE lane IS NOT NULL
), fresh AS (
    SELECT f.ctid FROM shares s CROSS JOIN LATERAL (
        SELECT ctid FROM chunks
        WHERE lane = s.lane AND status = 'pending' AND attempts = 0
          AND next_attempt_at <= {NOW} AND NOT job_id = ANY(%(skip)s::uuid[])
        ORDER BY priority DESC, turn, seq / {FAIR_QUANTUM}, job_id, seq
        LIMIT s.free / s.n + CASE WHEN s.i < s.free %% s.n THEN 1 ELSE 0 END
        FOR UPDATE SKIP LOCKED
    ) f
    WHERE s.free > 0
), claimed AS (
    -- By the locked rows' ctids (stable while we hold their locks): a TID scan, whatever
    -- plan the statement gets, never a join against the whole table.
    UPDATE chunks c
    SET status = 'running', attempts = c.attempts + 1, worker_id = %(me)s,
        lease_expires_at = {NOW} + make_interval(secs => %(lease)s), finished_at = NULL
    WHERE c.ctid = ANY(ARRAY(SELECT ctid FROM retries UNION ALL SELECT ctid FROM fresh))
    RETURNING c.job_id, c.seq, c.attempts, c.start_offset, c.end_offset, c.text, c.parts,
              c.lane
), started AS (
    -- SKIP LOCKED: a job row locked by another claimer is being moved on by it already.
    UPDATE jobs SET status = 'PROCESSING', updated_at = {NOW}
    WHERE id IN (SELECT id FROM jobs
                 WHERE id = ANY(ARRAY(SELECT DISTINCT job_id FROM claimed))
                   AND status = 'PENDING' FOR UPDATE SKIP LOCKED)
    RETURNING id
)
-- The last column: this claim started the chunk's job (its first claim, for the log).
SELECT c.job_id, c.seq, c.attempts, c.start_offset, c.end_offset, c.text, c.parts, c.lane,
       k.scope, k.key, r.result::text, c.job_id = ANY(ARRAY(SELECT id FROM started))
FROM claimed c
CROSS JOIN LATERAL (
    SELECT CASE WHEN %(shared)s THEN '{SHARED}' ELSE c.lane END AS scope,
           sha256(%(prefix)b::bytea || convert_to(c.text, 'UTF8')) AS key
) k
LEFT JOIN LATERAL (
    SELECT result FROM result_cache WHERE scope = k.scope AND key = k.key LIMIT 1
) r ON true
ORDER BY c.job_id, c.seq
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
    cache: Lookup | None = None,
) -> list[ClaimedChunk]:
    """Take up to ``limit`` due pending chunks: running, one more attempt, leased to us.

    Fair: due retries first, then the lanes (tenants) with waiting chunks share the rest,
    and within a lane its jobs take turns by priority (see ``_CLAIM``), so a small job
    never waits behind another's backlog. FOR UPDATE SKIP LOCKED lets any number of
    workers claim at once without waiting on each other or taking the same row; the
    partial indexes keep every part an index scan however many finished rows the table
    holds. The job moves PENDING -> PROCESSING in the same statement, so a client never
    sees a running chunk under a PENDING job; the chunks of a job it moved say ``started``.

    ``cap`` bounds the provider calls running across every worker, chunks and reductions
    (CHUNKQ_PROVIDER_CONCURRENCY); see ``running_calls``. ``skip_jobs`` are jobs whose row
    the caller found held elsewhere: their chunks could not be recorded now either.
    ``cache``: each chunk comes with its result-cache scope and key, and its cached result
    when there is one (None: the cache is off).
    """
    if cap is not None:
        limit = min(limit, cap - running_calls(conn))
    if limit <= 0:
        return []
    rows = conn.execute(
        *claim_statement(
            worker_id, limit, lease_s=lease_s, now=now, skip_jobs=skip_jobs, cache=cache
        )
    ).fetchall()
    if cache is None:  # the key and lookup columns mean nothing
        return [_uncached(*row) for row in rows]
    return [ClaimedChunk(*row) for row in rows]


def _uncached(*row: Any) -> ClaimedChunk:
    """A claimed row as a chunk when the result cache is off: no scope, key or answer."""
    job_id, seq, attempt, start, end, text, parts, lane, _scope, _key, _found, started = row
    return ClaimedChunk(job_id, seq, attempt, start, end, text, parts, lane, started=started)


def claim_statement(
    worker_id: str,
    limit: int,
    *,
    lease_s: float,
    now: datetime | None = None,
    skip_jobs: Iterable[uuid.UUID] = (),
    cache: Lookup | None = None,
) -> tuple[str, dict[str, Any]]:
    """The claim's statement and parameters as ``claim`` sends them (what a test or a
    benchmark EXPLAINs)."""
    return _CLAIM, {
        "limit": limit,
        "me": worker_id,
        "lease": lease_s,
        "now": now,
        "skip": list(skip_jobs),
        "prefix": None if cache is None else cache.prefix,
        "shared": cache is not None and cache.shared,
    }


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
    job_ids, seqs, attempts = key_columns(chunks)
    if not job_ids:
        return set()
    rows = conn.execute(
        f"""{FENCED_KEYS}
            UPDATE chunks c SET lease_expires_at = {NOW} + make_interval(secs => %(lease)s)
            FROM mine m WHERE c.ctid = m.tid
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
    job_ids, seqs, attempts = key_columns(chunks)
    if not job_ids:
        return 0
    cur = conn.execute(
        f"""{FENCED_KEYS}
            UPDATE chunks c
            SET status = 'pending', attempts = c.attempts - 1, worker_id = NULL,
                lease_expires_at = NULL, next_attempt_at = {NOW}
            FROM mine m WHERE c.ctid = m.tid""",
        {"job_ids": job_ids, "seqs": seqs, "attempts": attempts, "me": worker_id, "now": now},
    )
    if cur.rowcount:
        conn.execute(f"NOTIFY {NOTIFY_CHANNEL}")
    return cur.rowcount


def seconds_until_due(
    conn: psycopg.Connection[Any], *, now: datetime | None = None
) -> float | None:
    """Seconds until the earliest pending chunk is due (0 if overdue), None if none: how long
    an idle worker may sleep. Index lookups: an untried chunk is due from its submit on, so
    any one of them says 0 (or, under a test's clock, when), and the retries' index gives
    the soonest retry."""
    row = conn.execute(
        f"""SELECT extract(epoch FROM least(
                   (SELECT next_attempt_at FROM chunks
                    WHERE status = 'pending' AND attempts = 0 LIMIT 1),
                   (SELECT min(next_attempt_at) FROM chunks
                    WHERE status = 'pending' AND attempts > 0)) - {NOW})""",
        {"now": now},
    ).fetchone()
    return None if row is None or row[0] is None else max(0.0, float(row[0]))


def drained(conn: psycopg.Connection[Any], *, now: datetime | None = None) -> bool:
    """Whether no chunk is running anywhere and none is due: a burst worker's cue to exit."""
    row = conn.execute(
        f"""SELECT NOT EXISTS (SELECT 1 FROM chunks WHERE status = 'running')
               AND NOT EXISTS (SELECT 1 FROM chunks WHERE status = 'pending' AND attempts = 0
                               AND next_attempt_at <= {NOW})
               AND NOT EXISTS (SELECT 1 FROM chunks WHERE status = 'pending' AND attempts > 0
                               AND next_attempt_at <= {NOW})""",
        {"now": now},
    ).fetchone()
    return bool(row and row[0])
