"""Read-only queries behind ``GET /v1/analyze/<job_id>``."""

from __future__ import annotations

import uuid
from typing import Any

import psycopg

from schema import outages


def job_report(conn: psycopg.Connection[Any], job_id: uuid.UUID) -> dict[str, Any] | None:
    """The client's view of one job, or None if there is no such job.

    Two reads without a snapshot across them are fine here: counters only grow and
    attempts are only appended, so a report may be a moment old but never inconsistent with
    itself in a way a client could act on.
    """
    row = conn.execute(
        """SELECT status, chunks_total, chunks_completed, chunks_failed, analysis_result,
                  created_at, updated_at, finished_at, max_chunk_chars, text_chars
           FROM jobs WHERE id = %(id)s""",
        {"id": job_id},
    ).fetchone()
    if row is None:
        return None
    (
        status,
        total,
        completed,
        failed,
        result,
        created,
        updated,
        finished,
        max_chars,
        text_chars,
    ) = row
    errors = [
        {
            "chunk_index": seq,
            "attempt": attempt,
            "error": error,
            "error_class": error_class,
            "at": at.isoformat(),
        }
        for seq, attempt, error_class, error, at in conn.execute(
            """SELECT seq, attempt, error_class, error, at FROM chunk_attempts
               WHERE job_id = %(id)s ORDER BY seq, attempt, id""",
            {"id": job_id},
        )
    ]
    splits = [
        {"chunk_index": seq, "parts": parts}
        for seq, parts in conn.execute(
            """SELECT seq, jsonb_array_length(result->'parts') FROM chunks
               WHERE job_id = %(id)s AND status = 'succeeded' AND result ? 'parts'
               ORDER BY seq""",
            {"id": job_id},
        )
    ]
    return {
        "job_id": str(job_id),
        "status": status,
        "percent": round(100.0 * (completed + failed) / total, 2),
        "chunks_total": total,
        "chunks_completed": completed,
        "chunks_failed": failed,
        "errors": errors,
        # Chunks the model's context could not hold whole, and how many pieces each took.
        "split_chunks": splits,
        # Times the provider could not be reached while this job ran: its chunks waited
        # (the circuit breaker) instead of failing.
        "provider_unavailable": outages.during(conn, created, finished),
        "analysis_result": result,
        "max_chunk_chars": max_chars,
        "text_chars": text_chars,
        "created_at": created.isoformat(),
        "updated_at": updated.isoformat(),
        "finished_at": finished.isoformat() if finished else None,
    }
