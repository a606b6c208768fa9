"""The optional reduce step: one more provider call per finished job, turning its ordered
chunk analyses into a document-level result.

It is a unit of work of its own (table ``reductions``), claimed, leased, retried and fenced
like a chunk, and never part of the finalizing transaction: its outcome lands in
``jobs.analysis_result.reduce`` and never touches the job's status or its chunk results.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg

from schema.queue.claim import running_calls
from schema.queue.sql import NOTIFY_CHANNEL, NOW


@dataclass(frozen=True, slots=True)
class ClaimedReduction:
    """A reduction this worker owns for attempt ``attempt``, with the job's succeeded chunk
    analyses in order (index, start, end, result)."""

    job_id: uuid.UUID
    attempt: int
    analyses: list[dict[str, Any]]


def schedule(
    conn: psycopg.Connection[Any], job_id: uuid.UUID, *, now: datetime | None = None
) -> dict[str, Any]:
    """Queue the reduce step of a job being finalized; returns the placeholder that goes in
    ``analysis_result.reduce``. Called inside the finalizing transaction, so the reduction
    exists exactly when the job is terminal; its NOTIFY, sent at that commit, wakes an idle
    worker for it at once rather than at its next poll."""
    conn.execute(
        f"""INSERT INTO reductions (job_id, next_attempt_at, created_at)
            VALUES (%(id)s, {NOW}, {NOW}) ON CONFLICT (job_id) DO NOTHING""",
        {"id": job_id, "now": now},
    )
    conn.execute(f"NOTIFY {NOTIFY_CHANNEL}")
    return {"status": "pending", "attempts": 0}


_CLAIM = f"""
WITH picked AS (
    SELECT job_id FROM reductions
    WHERE (status = 'pending' AND next_attempt_at <= {NOW})
       OR (status = 'running' AND lease_expires_at < {NOW})
    ORDER BY next_attempt_at
    LIMIT 1
    FOR UPDATE SKIP LOCKED
)
UPDATE reductions r
SET status = 'running', attempts = r.attempts + 1, worker_id = %(me)s,
    lease_expires_at = {NOW} + make_interval(secs => %(lease)s)
FROM picked WHERE r.job_id = picked.job_id
RETURNING r.job_id, r.attempts
"""


def claim(
    conn: psycopg.Connection[Any],
    worker_id: str,
    *,
    lease_s: float,
    max_attempts: int,
    now: datetime | None = None,
    cap: int | None = None,
) -> ClaimedReduction | None:
    """Take one due reduction (or one whose owner's lease ran out), with its inputs.

    SKIP LOCKED as for chunks. A reduction whose lost attempts already reached the limit is
    failed here instead of being claimed again, so a reduce that kills workers ends. A
    reduction is a provider call like a chunk: under ``cap`` (CHUNKQ_PROVIDER_CONCURRENCY)
    it is claimed only into a free slot.
    """
    conn.execute(
        f"""WITH lost AS (
                UPDATE reductions SET status = 'failed', finished_at = {NOW},
                       lease_expires_at = NULL,
                       error = 'worker lost: its lease expired before it reported'
                WHERE status = 'running' AND lease_expires_at < {NOW}
                  AND attempts >= %(max)s
                RETURNING job_id, error, attempts)
            UPDATE jobs j SET analysis_result = jsonb_set(j.analysis_result, '{{reduce}}',
                   jsonb_build_object('status', 'failed', 'error', lost.error,
                                      'attempts', lost.attempts)),
                   updated_at = {NOW}
            FROM lost WHERE j.id = lost.job_id""",
        {"max": max_attempts, "now": now},
    )
    if cap is not None and running_calls(conn) >= cap:
        return None
    row = conn.execute(_CLAIM, {"me": worker_id, "lease": lease_s, "now": now}).fetchone()
    if row is None:
        return None
    job_id, attempt = row
    analyses = [
        {"index": seq, "start": start, "end": end, "result": result}
        for seq, start, end, result in conn.execute(
            """SELECT seq, start_offset, end_offset, result FROM chunks
               WHERE job_id = %(id)s AND status = 'succeeded' ORDER BY seq""",
            {"id": job_id},
        )
    ]
    return ClaimedReduction(job_id, attempt, analyses)


def heartbeat(
    conn: psycopg.Connection[Any],
    worker_id: str,
    reductions: list[ClaimedReduction],
    *,
    lease_s: float,
    now: datetime | None = None,
) -> set[uuid.UUID]:
    """Extend the leases of reductions we still own (fenced on owner and attempt); returns
    the job ids of those we still own."""
    if not reductions:
        return set()
    rows = conn.execute(
        f"""UPDATE reductions r SET lease_expires_at = {NOW} + make_interval(secs => %(lease)s)
            FROM unnest(%(ids)b::uuid[], %(attempts)b::int[]) AS i(job_id, attempt)
            WHERE r.job_id = i.job_id AND r.attempts = i.attempt
              AND r.status = 'running' AND r.worker_id = %(me)s
            RETURNING r.job_id""",
        {
            "lease": lease_s,
            "ids": [r.job_id for r in reductions],
            "attempts": [r.attempt for r in reductions],
            "me": worker_id,
            "now": now,
        },
    ).fetchall()
    return {row[0] for row in rows}


def finish(
    conn: psycopg.Connection[Any],
    worker_id: str,
    reduction: ClaimedReduction,
    *,
    result: dict[str, Any] | None = None,
    error: str | None = None,
    retry_in: float | None = None,
    counted: bool = True,
    now: datetime | None = None,
) -> bool:
    """Record one attempt's outcome: succeeded with ``result``, or ``error`` and either a
    retry after ``retry_in`` seconds or (None) failed for good; an uncounted retry (the
    provider's circuit was open) hands its attempt back. Fenced on owner and attempt;
    returns False when the lease was lost and nothing was written. The job's
    ``analysis_result.reduce`` is updated in the same statement."""
    report: dict[str, Any]
    if result is not None:
        status, report = "succeeded", {"status": "succeeded", "result": result}
    elif retry_in is not None:
        status, report = "pending", {"status": "pending", "last_error": error}
    else:
        status, report = "failed", {"status": "failed", "error": error}
    uncount = 0 if counted or status != "pending" else 1
    report["attempts"] = reduction.attempt - uncount
    row = conn.execute(
        f"""WITH done AS (
                UPDATE reductions SET status = %(status)s, error = %(error)s,
                       attempts = attempts - %(uncount)s,
                       worker_id = CASE WHEN %(status)s = 'pending' THEN NULL ELSE worker_id END,
                       lease_expires_at = NULL,
                       next_attempt_at = {NOW} + make_interval(secs => %(delay)s),
                       finished_at = CASE WHEN %(status)s = 'pending' THEN NULL ELSE {NOW} END
                WHERE job_id = %(id)s AND attempts = %(attempt)s AND status = 'running'
                  AND worker_id = %(me)s
                RETURNING job_id)
            UPDATE jobs j SET analysis_result = jsonb_set(j.analysis_result, '{{reduce}}',
                                                          %(report)s::jsonb),
                   updated_at = {NOW}
            FROM done WHERE j.id = done.job_id
            RETURNING j.id""",
        {
            "status": status,
            "error": error,
            "delay": retry_in or 0.0,
            "uncount": uncount,
            "id": reduction.job_id,
            "attempt": reduction.attempt,
            "me": worker_id,
            "report": json.dumps(report),
            "now": now,
        },
    ).fetchone()
    return row is not None


def release(
    conn: psycopg.Connection[Any],
    worker_id: str,
    reductions: list[ClaimedReduction],
    *,
    now: datetime | None = None,
) -> int:
    """Hand reductions back on shutdown: pending again, due now, the attempt not counted."""
    if not reductions:
        return 0
    cur = conn.execute(
        f"""UPDATE reductions r SET status = 'pending', attempts = r.attempts - 1,
                   worker_id = NULL, lease_expires_at = NULL, next_attempt_at = {NOW}
            FROM unnest(%(ids)b::uuid[], %(attempts)b::int[]) AS i(job_id, attempt)
            WHERE r.job_id = i.job_id AND r.attempts = i.attempt
              AND r.status = 'running' AND r.worker_id = %(me)s""",
        {
            "ids": [r.job_id for r in reductions],
            "attempts": [r.attempt for r in reductions],
            "me": worker_id,
            "now": now,
        },
    )
    return cur.rowcount
