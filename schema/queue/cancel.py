"""Cancel: a job that is not finished stops, keeping what had already succeeded."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

import psycopg

from schema import webhooks
from schema.errors import JobConflict, JobNotFound
from schema.queue.finalize import summary
from schema.queue.outcomes import Merge
from schema.queue.sql import CANCEL_NOTICE, NOTIFY_CHANNEL, NOW
from schema.states import JobStatus

# Its pending and running chunks become cancelled (a running one keeps its last error) and
# the job keeps the summary of what had succeeded; the report lists every chunk from its row.
_CANCEL = f"""
WITH cancelled AS (
    UPDATE chunks SET status = 'cancelled', finished_at = {NOW}, lease_expires_at = NULL
    WHERE job_id = %(id)s AND status IN ('pending', 'running')
)
UPDATE jobs SET status = 'CANCELLED', finished_at = {NOW}, updated_at = {NOW},
    analysis_result = jsonb_build_object('summary', %(summary)s::jsonb)
WHERE id = %(id)s
RETURNING pg_notify('{NOTIFY_CHANNEL}', '{CANCEL_NOTICE}')
"""


def cancel(
    conn: psycopg.Connection[Any],
    job_id: uuid.UUID,
    merge: Merge,
    *,
    owner: str | None = None,
    now: datetime | None = None,
) -> JobStatus:
    """Cancel a job that is not finished: its pending and running chunks become cancelled,
    and ``analysis_result`` keeps the summary of what had already succeeded.

    The job row is locked first, as in ``record``, so the succeeded chunks the summary merges
    stay as they are until commit. A running chunk's owner reports later through the fenced
    writes, which no longer match (status is not running), so its late result is dropped.
    The 'cancel' notice tells workers to check their leases at once, so this job's attempts
    stop (and free their slots) rather than at the next heartbeat. Raises JobNotFound, or
    JobConflict for a terminal job. With ``owner``, another tenant's job is not found. The
    job's webhook event, if it has a webhook, is written to the outbox in this transaction.
    """
    row = conn.execute(
        """SELECT status FROM jobs
           WHERE id = %(id)s AND (%(owner)s::text IS NULL OR api_key_id = %(owner)s)
           FOR UPDATE""",
        {"id": job_id, "owner": owner},
    ).fetchone()
    if row is None:
        raise JobNotFound(str(job_id))
    if JobStatus(row[0]).terminal:
        raise JobConflict(f"job {job_id} is already {row[0]}")
    text = summary(conn, job_id, merge)
    conn.execute(_CANCEL, {"id": job_id, "now": now, "summary": text})
    webhooks.add_event(conn, job_id, now=now)
    return JobStatus.CANCELLED
