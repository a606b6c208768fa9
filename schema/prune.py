"""Pruning finished work, so the tables and their indexes stay the size of the live backlog."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import psycopg

from schema import idempotency
from schema.queue import NOW


def prune(
    conn: psycopg.Connection[Any],
    older_than_s: float,
    *,
    batch: int = 500,
    now: datetime | None = None,
) -> int:
    """Delete jobs that finished more than ``older_than_s`` seconds ago, with their chunks,
    attempt log and reduction; returns how many jobs went.

    A job is terminal while its reduce step is still pending or running; such a job is kept
    (its reduction and the worker finishing it need the row) until the step has ended.
    Works in batches of ``batch`` jobs, one short transaction each (``conn`` must be in
    autocommit mode), so it never holds many locks and can run beside busy workers: only
    terminal jobs are touched, and no worker writes to those. SKIP LOCKED steps over a job a
    client is cancelling or reading FOR UPDATE right now; the next run takes it. Then the
    ``Idempotency-Key`` records older than a day go (a pruned job's went with it).
    """
    deleted = 0
    while True:
        with conn.transaction():
            cur = conn.execute(
                f"""DELETE FROM jobs WHERE id IN (
                        SELECT id FROM jobs
                        WHERE finished_at < {NOW} - make_interval(secs => %(age)s)
                          AND NOT EXISTS (
                              SELECT 1 FROM reductions r
                              WHERE r.job_id = jobs.id AND r.status IN ('pending', 'running'))
                        ORDER BY finished_at LIMIT %(batch)s
                        FOR UPDATE SKIP LOCKED)""",
                {"age": older_than_s, "batch": batch, "now": now},
            )
        deleted += cur.rowcount
        if cur.rowcount < batch:
            break
    with conn.transaction():
        idempotency.prune(conn, now=now)
    return deleted
