"""Finalize: the one transaction that moves a job whose chunks are all final to COMPLETED,
PARTIAL_SUCCESS or FAILED, with its chunk results merged into the document's summary.

Each chunk's result is kept once, in its own row: ``jobs.analysis_result`` holds what is
the job's own (the summary, the reduce step), and a report lists the chunks' results in
order from the chunk rows when it is read (``schema.reads``)."""

from __future__ import annotations

import json
import logging
import uuid
from datetime import datetime
from typing import Any

import psycopg

from schema import webhooks
from schema.queue import reductions
from schema.queue.outcomes import Finalized, Merge
from schema.queue.sql import NOW, jsonb_text
from schema.states import JobStatus

log = logging.getLogger("chunkq.queue")


def finalize(
    conn: psycopg.Connection[Any],
    job_id: uuid.UUID,
    merge: Merge,
    *,
    now: datetime | None = None,
    reduces: bool = True,
) -> Finalized | None:
    """Merge a job's chunk results into its summary and move it to its terminal status.

    Locks the job row (FOR UPDATE) and acts only if every chunk is final and the job is not
    terminal yet, so however many transactions race here, exactly one finalizes. Returns
    the new status with the job's counts and duration, or None when there was nothing to
    do. A job that asked for the reduce step gets it queued here, unless the provider has
    none (``reduces``). A merge that fails ends the job all the same (see ``summary``). The
    job's webhook event, if it has a webhook, is written to the outbox in this same
    transaction.
    """
    row = conn.execute(
        "SELECT status, chunks_total, chunks_completed, chunks_failed, options FROM jobs"
        " WHERE id = %(id)s FOR UPDATE",
        {"id": job_id},
    ).fetchone()
    if row is None:
        return None
    status, total, completed, failed, options = row
    if JobStatus(status).terminal or completed + failed < total:
        return None
    if failed == 0:
        new_status = JobStatus.COMPLETED
    elif completed == 0:
        new_status = JobStatus.FAILED
    else:
        new_status = JobStatus.PARTIAL_SUCCESS
    extra: dict[str, Any] = {}
    if options.get("reduce"):
        if not reduces:
            extra["reduce"] = {"status": "skipped", "reason": "the provider has no reduce step"}
        elif completed:
            extra["reduce"] = reductions.schedule(conn, job_id, now=now)
        else:
            extra["reduce"] = {"status": "skipped", "reason": "no chunk succeeded"}
    ended = conn.execute(
        f"""UPDATE jobs SET status = %(status)s,
                            analysis_result = jsonb_build_object('summary', %(summary)s::jsonb)
                                              || %(extra)s::jsonb,
                            finished_at = {NOW}, updated_at = {NOW}
            WHERE id = %(id)s
            RETURNING extract(epoch FROM finished_at - created_at)::float8""",
        {
            "status": new_status.value,
            "summary": summary(conn, job_id, merge),
            "extra": json.dumps(extra),
            "id": job_id,
            "now": now,
        },
    ).fetchone()
    webhooks.add_event(conn, job_id, now=now)
    return Finalized(new_status, completed, failed, ended[0] if ended else 0.0)


def summary(conn: psycopg.Connection[Any], job_id: uuid.UUID, merge: Merge) -> str:
    """The document-level merge of a job's succeeded chunks, as jsonb text.

    Each result is merged by the provider that produced it: when a job's results come from
    several providers (the fleet changed provider mid-job), each provider merges its own
    and the summary lists them, ``{"providers": [{"provider", "chunks", "summary"}, ...]}``
    in order of first appearance. A merge that raises, or returns what jsonb cannot hold,
    does not stop the job: the summary becomes ``{"error": ...}`` saying why, and every
    chunk's own result stays in its row, and in the report's ``analysis_result.chunks``.
    """
    # One JSON document parsed once: a big job's 50,000 results cost one json.loads
    # instead of a row conversion each (about ten times faster).
    row = conn.execute(
        """SELECT coalesce(json_agg(json_build_array(end_offset - start_offset, result,
                                                     provider) ORDER BY seq), '[]')::text
           FROM chunks WHERE job_id = %(id)s AND status = 'succeeded'""",
        {"id": job_id},
    ).fetchone()
    rows = json.loads(row[0] if row else "[]")
    named = {provider for _, _, provider in rows if provider is not None}
    # Results recorded before providers were named belong to the job's only named provider.
    sole = next(iter(named)) if len(named) == 1 else None
    groups: dict[str | None, list[tuple[int, dict[str, Any]]]] = {}
    for length, result, provider in rows:
        groups.setdefault(provider or sole, []).append((length, result))
    try:
        if len(groups) <= 1:
            provider, results = next(iter(groups.items()), (None, []))
            return jsonb_text(merge(provider)(results))
        return jsonb_text(
            {
                "providers": [
                    {"provider": name, "chunks": len(results), "summary": merge(name)(results)}
                    for name, results in groups.items()
                ]
            }
        )
    except Exception as exc:
        log.warning(
            "merging the results of job %s failed: %r", job_id, exc, extra={"job_id": job_id}
        )
        return jsonb_text(
            {
                "error": f"the merge of the chunk results failed ({type(exc).__name__}: {exc});"
                " each chunk's result is kept in analysis_result.chunks"
            }
        )
