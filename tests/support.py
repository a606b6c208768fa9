"""Helpers shared by the tests: submitting jobs straight into the queue, reading state."""

from __future__ import annotations

import uuid
from typing import Any

import psycopg

from schema import queue
from schema.chunking import split_text


def submit(db: psycopg.Connection[Any], text: str, max_chars: int, **options: Any) -> uuid.UUID:
    """Enqueue a job the way the API does, in one transaction; returns its id."""
    job_id = uuid.uuid4()
    spans = split_text(text, max_chars)
    with db.transaction():
        queue.enqueue(db, job_id, text, spans, max_chunk_chars=max_chars, options=options)
    return job_id


def job_row(db: psycopg.Connection[Any], job_id: uuid.UUID) -> dict[str, Any]:
    cur = db.execute(
        "SELECT status, chunks_total, chunks_completed, chunks_failed, analysis_result"
        " FROM jobs WHERE id = %s",
        (job_id,),
    )
    row = cur.fetchone()
    assert row is not None
    return dict(zip([c.name for c in cur.description or []], row, strict=True))


def chunk_rows(db: psycopg.Connection[Any], job_id: uuid.UUID) -> list[dict[str, Any]]:
    cur = db.execute(
        "SELECT seq, status, attempts, worker_id, result, error, next_attempt_at,"
        " lease_expires_at FROM chunks WHERE job_id = %s ORDER BY seq",
        (job_id,),
    )
    names = [c.name for c in cur.description or []]
    return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]


def assert_invariants(db: psycopg.Connection[Any]) -> None:
    """The contract's invariants, checked in SQL over the whole database."""
    bad_counters = db.execute(
        """SELECT j.id FROM jobs j
           WHERE j.chunks_completed <> (SELECT count(*) FROM chunks c
                                        WHERE c.job_id = j.id AND c.status = 'succeeded')
              OR j.chunks_failed <> (SELECT count(*) FROM chunks c
                                     WHERE c.job_id = j.id AND c.status = 'failed')"""
    ).fetchall()
    assert bad_counters == [], f"counters differ from row counts: {bad_counters}"
    unfinished = db.execute(
        """SELECT j.id FROM jobs j JOIN chunks c ON c.job_id = j.id
           WHERE j.status IN ('COMPLETED', 'PARTIAL_SUCCESS', 'FAILED', 'CANCELLED')
             AND c.status IN ('pending', 'running')"""
    ).fetchall()
    assert unfinished == [], f"terminal jobs with unfinished chunks: {unfinished}"
