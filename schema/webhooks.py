"""The webhook outbox: a job's terminal event, written in the transaction that makes the
job terminal, then claimed, attempted and retried by the workers until it is delivered or
given up.

An event is one ``webhook_events`` row: its ``id`` is the ``webhook-id`` every attempt
sends, its ``body`` the exact text every attempt signs and sends. Each attempt is one
``webhook_deliveries`` row. An event is owned while it is ``running`` under a lease; the
writes that end an attempt are fenced on (worker, attempt), so a worker that lost its lease
(it stalled, another worker took the event) cannot overwrite what the new owner does.
"""

from __future__ import annotations

import json
import logging
import secrets
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import psycopg

from schema.clock import NOW
from schema.reads import RawJSON, encode, exists, report_json
from schema.states import JobStatus
from schema.tenants import ANONYMOUS

log = logging.getLogger("chunkq.webhooks")

# The event type of each terminal status.
EVENT_TYPES = {
    JobStatus.COMPLETED: "job.completed",
    JobStatus.PARTIAL_SUCCESS: "job.partial_success",
    JobStatus.FAILED: "job.failed",
    JobStatus.CANCELLED: "job.cancelled",
}

# The error of an attempt whose worker stopped renewing its lease: it may have landed.
LOST = "lost: the worker delivering this attempt stopped before it recorded the outcome"


def new_event_id() -> str:
    """A ``webhook-id``: ``msg_`` and 128 random bits in hex."""
    return f"msg_{secrets.token_hex(16)}"


def add_event(
    conn: psycopg.Connection[Any], job_id: uuid.UUID, *, now: datetime | None = None
) -> str | None:
    """Write the terminal event of a job that has a ``webhook_url`` into the outbox; returns
    its id, or None when the job has no webhook (or already has its event).

    Called inside the transaction that made the job terminal, with the job row locked, so
    the event commits exactly when the status does. The unique index on ``job_id`` holds a
    job to one event even if a caller slipped: a second call changes nothing.
    """
    row = conn.execute(
        f"""SELECT status, webhook_url, coalesce(api_key_id, '{ANONYMOUS}'),
                   coalesce(finished_at, {NOW})
            FROM jobs WHERE id = %(id)s""",
        {"id": job_id, "now": now},
    ).fetchone()
    if row is None or row[1] is None:
        return None
    status, url, owner, finished = row
    event_type = EVENT_TYPES[JobStatus(status)]
    data = _data(conn, job_id, status)
    body = encode({"type": event_type, "timestamp": _iso_utc(finished), "data": data})
    event_id = new_event_id()
    inserted = conn.execute(
        f"""INSERT INTO webhook_events (id, job_id, api_key_id, url, type, body,
                                        next_attempt_at, created_at)
            VALUES (%(id)s, %(job)s, %(owner)s, %(url)s, %(type)s, %(body)s, {NOW}, {NOW})
            ON CONFLICT (job_id) DO NOTHING
            RETURNING id""",
        {
            "id": event_id,
            "job": job_id,
            "owner": owner,
            "url": url,
            "type": event_type,
            "body": body,
            "now": now,
        },
    ).fetchone()
    return None if inserted is None else event_id


def _data(conn: psycopg.Connection[Any], job_id: uuid.UUID, status: str) -> RawJSON:
    """The event's ``data``: the job's report without analysis_result. Building it never
    holds the job: if it fails (in a savepoint, so the transaction goes on), the event
    carries the job's id and status and says why the rest is missing, as a failed merge
    leaves the job its summary's error."""
    try:
        with conn.transaction():
            report = report_json(conn, job_id, result=False)
        if report is not None:
            return RawJSON(report)
        reason = "the job's report was not found"
    except Exception as exc:
        log.warning(
            "building the webhook report of job %s failed: %r",
            job_id,
            exc,
            extra={"job_id": job_id},
        )
        reason = f"building the job's report failed ({type(exc).__name__}: {exc})"
    fallback = {"job_id": str(job_id), "status": status, "error": reason}
    return RawJSON(json.dumps(fallback))


def _iso_utc(at: datetime) -> str:
    return at.astimezone(UTC).isoformat().replace("+00:00", "Z")


@dataclass(frozen=True, slots=True)
class ClaimedEvent:
    """An event this worker now owns for one attempt, with what it takes to send it."""

    id: str
    url: str
    body: str
    attempt: int
    secret: str


# Take due events, oldest first, skipping those another worker is claiming right now, and
# lease them to this worker for one attempt. SKIP LOCKED: concurrent claims never wait on
# each other nor take the same event.
_CLAIM = f"""
WITH due AS (
    SELECT id FROM webhook_events
    WHERE status = 'pending' AND next_attempt_at <= {NOW}
    ORDER BY next_attempt_at
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
)
UPDATE webhook_events e
SET status = 'running', attempts = e.attempts + 1, worker_id = %(me)s,
    lease_expires_at = {NOW} + make_interval(secs => %(lease_s)s)
FROM due, api_keys k
WHERE e.id = due.id AND k.id = e.api_key_id
RETURNING e.id, e.url, e.body, e.attempts, k.webhook_secret
"""


def claim(
    conn: psycopg.Connection[Any],
    worker_id: str,
    limit: int,
    *,
    lease_s: float,
    now: datetime | None = None,
) -> list[ClaimedEvent]:
    """Lease up to ``limit`` due events to ``worker_id`` for one attempt each."""
    if limit <= 0:
        return []
    rows = conn.execute(
        _CLAIM, {"limit": limit, "me": worker_id, "lease_s": lease_s, "now": now}
    ).fetchall()
    return [ClaimedEvent(*row) for row in rows]


# End one attempt: the event moves on (delivered, pending again at its next time, or failed)
# and the attempt is written to webhook_deliveries, in one statement. Fenced: it applies only
# while this worker still owns this attempt, and writes nothing when the lease was lost.
_RECORD = f"""
WITH ended AS (
    UPDATE webhook_events
    SET status = %(status)s, last_error = %(error)s, worker_id = NULL, lease_expires_at = NULL,
        next_attempt_at = CASE WHEN %(status)s = 'pending'
                               THEN {NOW} + make_interval(secs => %(retry_in_s)s)
                               ELSE next_attempt_at END,
        finished_at = CASE WHEN %(status)s = 'pending' THEN NULL ELSE {NOW} END
    WHERE id = %(id)s AND status = 'running' AND worker_id = %(me)s AND attempts = %(attempt)s
    RETURNING id
)
INSERT INTO webhook_deliveries (event_id, attempt, at, status_code, error, duration_ms,
                                worker_id)
SELECT id, %(attempt)s, {NOW}, %(status_code)s, %(error)s, %(duration_ms)s, %(me)s FROM ended
RETURNING event_id
"""


def record(
    conn: psycopg.Connection[Any],
    event: ClaimedEvent,
    worker_id: str,
    *,
    status_code: int | None,
    error: str | None,
    duration_ms: int,
    retry_in_s: float | None,
    now: datetime | None = None,
) -> bool:
    """Write one attempt's outcome: delivered when there is no ``error``, else pending again
    in ``retry_in_s`` seconds, or failed for good when ``retry_in_s`` is None. Returns False
    when this worker no longer owned the attempt (nothing was written)."""
    retry = "pending" if retry_in_s is not None else "failed"
    status = "delivered" if error is None else retry
    row = conn.execute(
        _RECORD,
        {
            "id": event.id,
            "attempt": event.attempt,
            "me": worker_id,
            "status": status,
            "status_code": status_code,
            "error": error,
            "duration_ms": duration_ms,
            "retry_in_s": retry_in_s or 0.0,
            "now": now,
        },
    ).fetchone()
    return row is not None


# Take back the events whose worker stopped renewing (it died mid-attempt): the lost attempt
# is written as a delivery whose outcome is unknown, and the event is due again at once (or
# failed, when that was its last attempt). SKIP LOCKED: one rescuer per event, and a worker
# recording its late outcome meanwhile is not waited on; its fenced write then finds nothing.
_RESCUE = f"""
WITH lost AS (
    SELECT id FROM webhook_events
    WHERE status = 'running' AND lease_expires_at < {NOW}
    FOR UPDATE SKIP LOCKED
), noted AS (
    INSERT INTO webhook_deliveries (event_id, attempt, at, error, worker_id)
    SELECT e.id, e.attempts, {NOW}, %(lost)s, e.worker_id
    FROM webhook_events e JOIN lost USING (id)
)
UPDATE webhook_events e
SET status = CASE WHEN e.attempts >= %(max_attempts)s THEN 'failed' ELSE 'pending' END,
    finished_at = CASE WHEN e.attempts >= %(max_attempts)s THEN {NOW} END,
    next_attempt_at = {NOW}, worker_id = NULL, lease_expires_at = NULL, last_error = %(lost)s
FROM lost WHERE e.id = lost.id
RETURNING e.id
"""


def rescue(conn: psycopg.Connection[Any], *, max_attempts: int, now: datetime | None = None) -> int:
    """Make the events of lost workers due again; returns how many were taken back."""
    rows = conn.execute(
        _RESCUE, {"lost": LOST, "max_attempts": max_attempts, "now": now}
    ).fetchall()
    return len(rows)


# A job's events, each with every attempt in order, as one JSON document; an event that is
# over (delivered or failed) has no next attempt.
_EVENTS = """
SELECT coalesce(json_agg(json_build_object(
           'id', e.id, 'type', e.type, 'url', e.url, 'status', e.status,
           'attempts', e.attempts,
           'next_attempt_at', CASE WHEN e.status IN ('pending', 'running')
                                   THEN e.next_attempt_at END,
           'created_at', e.created_at, 'finished_at', e.finished_at,
           'last_error', e.last_error,
           'deliveries', (SELECT coalesce(json_agg(json_build_object(
                                     'attempt', d.attempt, 'at', d.at,
                                     'status_code', d.status_code, 'error', d.error,
                                     'duration_ms', d.duration_ms) ORDER BY d.attempt, d.id),
                                 '[]')
                          FROM webhook_deliveries d WHERE d.event_id = e.id))
           ORDER BY e.created_at, e.id), '[]')::text
FROM webhook_events e WHERE e.job_id = %(id)s
"""


def events_json(
    conn: psycopg.Connection[Any], job_id: uuid.UUID, *, owner: str | None = None
) -> str | None:
    """``{"data": [event, ...]}`` for one job as JSON text, or None when there is no such
    job (of ``owner``, when given)."""
    if not exists(conn, job_id, owner=owner):
        return None
    row = conn.execute(_EVENTS, {"id": job_id}).fetchone()
    return encode({"data": RawJSON(row[0] if row else "[]")})


def events(conn: psycopg.Connection[Any], job_id: uuid.UUID) -> list[dict[str, Any]]:
    """A job's events as dicts (``events_json`` parsed), for tests and tools."""
    text = events_json(conn, job_id)
    return [] if text is None else list(json.loads(text)["data"])
