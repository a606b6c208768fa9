"""The queue's state as ``GET /metrics`` reports it: jobs and chunks by status, how long the
oldest due chunk has waited, the chunks each worker holds, and the providers' circuits.

Read at scrape time, and never by a scan of the finished chunks, which are nearly all of a
busy queue's rows: the pending and running chunks are counted through their partial indexes
(``chunks_fair_idx``, ``chunks_retry_idx``, ``chunks_running_idx``), and the finished ones
follow from the job rows by the contract's invariants (``chunks_completed`` and
``chunks_failed`` are the counts of a job's succeeded and failed chunks; a terminal job has
no pending or running chunk, and only a cancel makes chunks ``cancelled``, all of a job's
unfinished ones at once). So a scrape reads one pass over ``jobs`` and the backlog.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg

from schema.clock import NOW
from schema.states import ChunkStatus, JobStatus

# Per job status: how many jobs, and how many of their chunks succeeded, failed, and are
# neither (pending or running in a job in flight, cancelled in a cancelled job).
_JOBS = """SELECT status, count(*), coalesce(sum(chunks_completed), 0),
                  coalesce(sum(chunks_failed), 0),
                  coalesce(sum(chunks_total - chunks_completed - chunks_failed), 0)
           FROM jobs GROUP BY status"""

# The backlog, each half through its own partial index: never-tried chunks (chunks_fair_idx)
# and retries (chunks_retry_idx), with the earliest due time among those due now.
_BACKLOG = f"""SELECT f.n + r.n,
                      extract(epoch FROM {NOW} - least(f.due, r.due))::float8
               FROM (SELECT count(*) AS n,
                            min(next_attempt_at) FILTER (WHERE next_attempt_at <= {NOW}) AS due
                     FROM chunks WHERE status = 'pending' AND attempts = 0) f,
                    (SELECT count(*) AS n,
                            min(next_attempt_at) FILTER (WHERE next_attempt_at <= {NOW}) AS due
                     FROM chunks WHERE status = 'pending' AND attempts > 0) r"""

# The running chunks by the worker that holds them (chunks_running_idx).
_RUNNING = """SELECT worker_id, count(*) FROM chunks WHERE status = 'running'
              GROUP BY worker_id"""

# Every provider endpoint that has had an outage, and how long its open one has lasted (NULL:
# its circuit is closed). One row per outage ever: a small table.
_CIRCUITS = f"""SELECT provider,
                       max(extract(epoch FROM {NOW} - started_at)::float8)
                           FILTER (WHERE ended_at IS NULL)
                FROM provider_outages GROUP BY provider"""


@dataclass(frozen=True, slots=True)
class QueueState:
    """One scrape's reading; every status of the enums is present, 0 included."""

    chunks: dict[ChunkStatus, int]
    jobs: dict[JobStatus, int]
    # Seconds the oldest chunk that is pending and due now has waited since it became due.
    oldest_due_s: float
    # Running chunks by worker id.
    running: dict[str, int]
    # Provider endpoint -> seconds its circuit has been open, or None when it is closed.
    circuits: dict[str, float | None]


def read(
    conn: psycopg.Connection[Any],
    *,
    now: datetime | None = None,
    timeout_s: float | None = None,
) -> QueueState:
    """Read the queue's state, within ``timeout_s`` in all (QueryCanceled past it; None: no
    bound of its own), so a scrape never outlasts the scraper's patience. Call it inside a
    transaction: the bound is set with SET LOCAL."""
    deadline = None if timeout_s is None else time.monotonic() + timeout_s

    def run(statement: str, params: dict[str, Any] | None = None) -> psycopg.Cursor[Any]:
        if deadline is not None:
            # What is left of the whole read, not a fresh allowance per statement.
            left_ms = int((deadline - time.monotonic()) * 1000)
            if left_ms < 1:
                raise psycopg.errors.QueryCanceled("the read ran past its deadline")
            conn.execute(f"SET LOCAL statement_timeout = {left_ms}")
        return conn.execute(statement, params)

    params = {"now": now}
    jobs = dict.fromkeys(JobStatus, 0)
    chunks = dict.fromkeys(ChunkStatus, 0)
    for status, n, succeeded, failed, unfinished in run(_JOBS).fetchall():
        jobs[JobStatus(status)] = n
        chunks[ChunkStatus.SUCCEEDED] += succeeded
        chunks[ChunkStatus.FAILED] += failed
        if status == JobStatus.CANCELLED:
            chunks[ChunkStatus.CANCELLED] += unfinished
    row = run(_BACKLOG, params).fetchone()
    pending, oldest = row if row is not None else (0, None)
    chunks[ChunkStatus.PENDING] = pending
    running = {worker or "": n for worker, n in run(_RUNNING).fetchall()}
    chunks[ChunkStatus.RUNNING] = sum(running.values())
    circuits = dict(run(_CIRCUITS, params).fetchall())
    return QueueState(
        chunks=chunks,
        jobs=jobs,
        # A clock set back a moment must not make it negative.
        oldest_due_s=max(0.0, oldest or 0.0),
        running=running,
        circuits=circuits,
    )


# The statements, for a test that checks no plan scans the chunks table.
STATEMENTS = (_JOBS, _BACKLOG, _RUNNING, _CIRCUITS)
