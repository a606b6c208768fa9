"""Read-only queries behind ``GET /v1/analyze/<job_id>``: the job report, as JSON text.

A report's bulk (``analysis_result`` with one entry per chunk, the list of failed attempts)
can run to megabytes for a job of 100,000 chunks. The database already holds it as JSON, so
it leaves the database as text and is spliced into the report unparsed: no Python object per
chunk is built, nor encoded again.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import psycopg

from schema import outages


class RawJSON(str):
    """A JSON document already encoded, to be written into a report as it is."""


def report_json(
    conn: psycopg.Connection[Any], job_id: uuid.UUID, *, chunks: bool = True
) -> str | None:
    """The client's view of one job as JSON text, or None if there is no such job.

    With ``chunks=False``, ``analysis_result`` is given without its per-chunk ``chunks`` list
    (the summary and anything else stay). Two reads without a snapshot across them are fine
    here: counters only grow and attempts are only appended, so a report may be a moment old
    but never inconsistent with itself in a way a client could act on.
    """
    row = conn.execute(
        """SELECT status, chunks_total, chunks_completed, chunks_failed,
                  (CASE WHEN %(chunks)s THEN analysis_result
                        ELSE analysis_result - 'chunks' END)::text,
                  created_at, updated_at, finished_at, max_chunk_chars, text_chars
           FROM jobs WHERE id = %(id)s""",
        {"id": job_id, "chunks": chunks},
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
    errors = conn.execute(
        """SELECT coalesce(json_agg(json_build_object(
                      'chunk_index', seq, 'attempt', attempt, 'error', error,
                      'error_class', error_class, 'at', at) ORDER BY seq, attempt, id), '[]')::text
           FROM chunk_attempts WHERE job_id = %(id)s""",
        {"id": job_id},
    ).fetchone()
    splits = conn.execute(
        """SELECT coalesce(json_agg(json_build_object(
                      'chunk_index', seq, 'parts', jsonb_array_length(result->'parts'))
                      ORDER BY seq), '[]')::text
           FROM chunks
           WHERE job_id = %(id)s AND status = 'succeeded' AND result ? 'parts'""",
        {"id": job_id},
    ).fetchone()
    return encode(
        {
            "job_id": str(job_id),
            "status": status,
            "percent": round(100.0 * (completed + failed) / total, 2),
            "chunks_total": total,
            "chunks_completed": completed,
            "chunks_failed": failed,
            "errors": RawJSON(errors[0] if errors else "[]"),
            # Chunks the model's context could not hold whole, and how many pieces each took.
            "split_chunks": RawJSON(splits[0] if splits else "[]"),
            # Times the provider could not be reached while this job ran: its chunks waited
            # (the circuit breaker) instead of failing.
            "provider_unavailable": outages.during(conn, created, finished),
            "max_chunk_chars": max_chars,
            "text_chars": text_chars,
            "created_at": created.isoformat(),
            "updated_at": updated.isoformat(),
            "finished_at": finished.isoformat() if finished else None,
            # Last, so a client reading the stream has the rest before the bulk.
            "analysis_result": RawJSON(result) if result is not None else None,
        }
    )


def job_report(
    conn: psycopg.Connection[Any], job_id: uuid.UUID, *, chunks: bool = True
) -> dict[str, Any] | None:
    """The client's view of one job as a dict (``report_json`` parsed), or None."""
    text = report_json(conn, job_id, chunks=chunks)
    return None if text is None else dict(json.loads(text))


def encode(fields: dict[str, Any]) -> str:
    """A JSON object of ``fields`` in their order; RawJSON values are written as they are."""
    members = (
        f"{json.dumps(name)}: {value if isinstance(value, RawJSON) else json.dumps(value)}"
        for name, value in fields.items()
    )
    return "{" + ", ".join(members) + "}"
