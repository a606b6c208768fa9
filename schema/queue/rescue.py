"""Rescue: take back the chunks whose owner stopped heartbeating (crashed, killed, paused
past its lease), retrying them after the backoff or failing the last attempt."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

import psycopg

from schema.queue.finalize import finalize
from schema.queue.outcomes import Finalized, Merge
from schema.queue.record import held_jobs
from schema.queue.sql import NOTIFY_CHANNEL, NOW, RESCUE_LOCK_KEY
from schema.states import ChunkStatus

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
) -> tuple[int, int, dict[uuid.UUID, Finalized]]:
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
    finalized: dict[uuid.UUID, Finalized] = {}
    for job_id in sorted({job_id for job_id, _, all_final in rows if all_final}):
        ended = finalize(conn, job_id, merge, now=now, reduces=reduces)
        if ended is not None:
            finalized[job_id] = ended
    if requeued:
        conn.execute(f"NOTIFY {NOTIFY_CHANNEL}")
    return requeued, len(rows) - requeued, finalized
