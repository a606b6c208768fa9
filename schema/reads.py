"""Read-only queries behind ``GET /v1/analyze/<job_id>``: the job report, as JSON text.

A report's bulk (``analysis_result.chunks`` with one entry per chunk, the list of failed
attempts) can run to megabytes for a job of 100,000 chunks. Each chunk's result is stored
once, in its row; the server builds the entries as JSON text in ``seq`` order (one scan of
the job's primary-key range), and the text is spliced into the report unparsed: no Python
object per chunk is built, nor encoded again.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import psycopg

from schema import outages

# The provider's token counts summed over the results that report them (NULL when none
# does); a result the cache answered cost no tokens.
_TOKENS = """sum(CASE WHEN status = 'succeeded' AND NOT cached
                       AND jsonb_typeof(result->'usage'->'{name}') = 'number'
                  THEN (result->'usage'->>'{name}')::bigint END)"""

# The report's chunk entries, in order: a succeeded chunk's result (and whether it came
# from the result cache), or the last error of any other. Built as json text and cast
# once (jsonb's builders cost about a fifth more on 100,000 entries).
_ENTRIES = """coalesce(json_agg(
    CASE WHEN status = 'succeeded'
         THEN json_build_object('index', seq, 'start', start_offset, 'end', end_offset,
                                'status', status, 'result', result, 'cached', cached)
         ELSE json_build_object('index', seq, 'start', start_offset, 'end', end_offset,
                                'status', status, 'error', error)
    END ORDER BY seq) FILTER (WHERE %(entries)s), '[]')::text"""

# One pass over a job's chunks: their entries (only when asked for: the FILTER skips the
# work otherwise), the final error of each failed one, the ones split to fit the model's
# context, and the token counts.
_CHUNK_FACTS = f"""
SELECT {_ENTRIES},
       coalesce(json_agg(json_build_object('chunk_index', seq, 'error', error) ORDER BY seq)
                FILTER (WHERE status = 'failed'), '[]')::text,
       coalesce(json_agg(json_build_object('chunk_index', seq,
                                           'parts', jsonb_array_length(result->'parts'))
                         ORDER BY seq)
                FILTER (WHERE status = 'succeeded' AND result ? 'parts'), '[]')::text,
       CASE WHEN bool_or(status = 'succeeded' AND NOT cached
                         AND jsonb_typeof(result->'usage') = 'object')
            THEN json_build_object(
                'prompt_tokens', coalesce({_TOKENS.format(name="prompt_tokens")}, 0),
                'completion_tokens', coalesce({_TOKENS.format(name="completion_tokens")}, 0)
            )::text
       END
FROM chunks WHERE job_id = %(id)s
"""


class RawJSON(str):
    """A JSON document already encoded, to be written into a report as it is."""


def report_json(
    conn: psycopg.Connection[Any],
    job_id: uuid.UUID,
    *,
    chunks: bool = True,
    result: bool = True,
    owner: str | None = None,
) -> str | None:
    """The client's view of one job as JSON text, or None if there is no such job.

    With ``chunks=False``, ``analysis_result`` is given without its per-chunk ``chunks`` list
    (the summary and anything else stay); with ``result=False`` it is left out altogether
    (lists and webhooks). ``owner``: only a job of this tenant is found (None: any job).
    Several reads without a snapshot across them are fine here: counters only grow and
    attempts are only appended, so a report may be a moment old but never inconsistent with
    itself in a way a client could act on.
    """
    row = conn.execute(
        """SELECT status, chunks_total, chunks_completed, chunks_failed,
                  (CASE WHEN %(result)s THEN analysis_result - 'chunks' END)::text,
                  created_at, updated_at, finished_at, max_chunk_chars, text_chars,
                  metadata::text, webhook_url, priority
           FROM jobs WHERE id = %(id)s AND (%(owner)s::text IS NULL OR api_key_id = %(owner)s)""",
        {"id": job_id, "result": result, "owner": owner},
    ).fetchone()
    if row is None:
        return None
    (
        status,
        total,
        completed,
        failed,
        analysis,
        created,
        updated,
        finished,
        max_chars,
        text_chars,
        metadata,
        webhook_url,
        priority,
    ) = row
    errors = conn.execute(
        """SELECT coalesce(json_agg(json_build_object(
                      'chunk_index', seq, 'attempt', attempt, 'error', error,
                      'error_class', error_class, 'at', at) ORDER BY seq, attempt, id), '[]')::text
           FROM chunk_attempts WHERE job_id = %(id)s""",
        {"id": job_id},
    ).fetchone()
    # One pass over the job's chunks: their entries (a finished job's full report), the
    # final error of each failed one, the split ones, and the provider's token counts (only
    # results that report them, and not those the cache answered, count).
    want = chunks and analysis is not None
    entries, failed_, splits, usage = conn.execute(
        _CHUNK_FACTS, {"id": job_id, "entries": want}
    ).fetchone() or ("[]", "[]", "[]", None)
    progress = round(100.0 * (completed + failed) / total, 2)
    fields: dict[str, Any] = {
        "job_id": str(job_id),
        "status": status,
        "percent": progress,
        "progress_pct": progress,
        "chunks_total": total,
        "total_chunks": total,
        "chunks_completed": completed,
        "chunks_failed": failed,
        "errors": RawJSON(errors[0] if errors else "[]"),
        # The final error of each failed chunk, in index order.
        "chunk_errors": RawJSON(failed_),
        # Chunks the model's context could not hold whole, and how many pieces each took.
        "split_chunks": RawJSON(splits),
        # Times the provider could not be reached while this job ran: its chunks waited
        # (the circuit breaker) instead of failing.
        "provider_unavailable": outages.during(conn, created, finished),
        "usage": RawJSON(usage) if usage is not None else None,
        "metadata": RawJSON(metadata),
        "webhook_url": webhook_url,
        "priority": priority,
        "max_chunk_chars": max_chars,
        "text_chars": text_chars,
        "created_at": created.isoformat(),
        "updated_at": updated.isoformat(),
        "finished_at": finished.isoformat() if finished else None,
    }
    if result:
        # Last, so a client reading the stream has the rest before the bulk.
        fields["analysis_result"] = (
            None if analysis is None else RawJSON(with_entries(analysis, entries if want else None))
        )
    return encode(fields)


def with_entries(analysis: str, entries: str | None) -> str:
    """A job's stored ``analysis_result`` (JSON text of an object, without chunk entries)
    with ``"chunks": entries`` first; as it is when ``entries`` is None."""
    if entries is None:
        return analysis
    rest = analysis.strip()[1:].strip()
    return f'{{"chunks": {entries}, {rest}' if rest != "}" else f'{{"chunks": {entries}}}'


def analysis_result(conn: psycopg.Connection[Any], job_id: uuid.UUID) -> dict[str, Any] | None:
    """A job's ``analysis_result`` as a report gives it (chunk entries included), parsed;
    None until the job is terminal (or when there is no such job)."""
    report = job_report(conn, job_id)
    return None if report is None else report["analysis_result"]


def exists(conn: psycopg.Connection[Any], job_id: uuid.UUID, *, owner: str | None) -> bool:
    """Whether there is such a job (of ``owner``, unless None)."""
    row = conn.execute(
        """SELECT 1 FROM jobs
           WHERE id = %(id)s AND (%(owner)s::text IS NULL OR api_key_id = %(owner)s)""",
        {"id": job_id, "owner": owner},
    ).fetchone()
    return row is not None


def job_report(
    conn: psycopg.Connection[Any], job_id: uuid.UUID, **options: Any
) -> dict[str, Any] | None:
    """The client's view of one job as a dict (``report_json`` parsed), or None."""
    text = report_json(conn, job_id, **options)
    return None if text is None else dict(json.loads(text))


def encode(fields: dict[str, Any]) -> str:
    """A JSON object of ``fields`` in their order; RawJSON values are written as they are."""
    members = (
        f"{json.dumps(name)}: {value if isinstance(value, RawJSON) else json.dumps(value)}"
        for name, value in fields.items()
    )
    return "{" + ", ".join(members) + "}"
