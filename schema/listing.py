"""Pages of a tenant's jobs and of a job's chunks, with keyset cursors.

A cursor names the last row a page gave, not an offset, so it stays valid while rows are
added: a job list runs newest first on (created_at, id), and jobs made after the first page
are newer than any cursor, so a client paging on neither skips nor repeats a job. Cursors
are opaque to clients (base64url of the key) and checked on the way back in.
"""

from __future__ import annotations

import base64
import binascii
import json
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg

from schema.reads import RawJSON, encode, report_json

MAX_JOBS_PAGE = 100
MAX_CHUNKS_PAGE = 1000


class BadCursor(ValueError):
    """A cursor this service did not make (or not for this list)."""


@dataclass(frozen=True, slots=True)
class Page:
    """One page of a list, as JSON text per item, and the cursor of the next (None: last)."""

    items: list[str]
    next_cursor: str | None

    def json(self) -> str:
        return encode(
            {"data": RawJSON("[" + ", ".join(self.items) + "]"), "next_cursor": self.next_cursor}
        )


def jobs(
    conn: psycopg.Connection[Any],
    *,
    owner: str | None,
    statuses: list[str] | None = None,
    metadata: dict[str, str] | None = None,
    limit: int = 20,
    cursor: str | None = None,
) -> Page:
    """A page of jobs, newest first: ``owner``'s (None: everyone's), filtered by status and
    by metadata (every given key with that value), each a report without analysis_result."""
    at: datetime | None = None
    last: uuid.UUID | None = None
    if cursor:
        after = _decode(cursor, "jobs")
        try:
            at, last = datetime.fromisoformat(after[0]), uuid.UUID(after[1])
        except (ValueError, TypeError, IndexError, AttributeError) as exc:
            raise BadCursor("is not a cursor of this list") from exc
    rows = conn.execute(
        """SELECT id, created_at FROM jobs
           WHERE (%(owner)s::text IS NULL OR api_key_id = %(owner)s)
             AND (%(statuses)s::text[] IS NULL OR status = ANY(%(statuses)s))
             AND (%(metadata)s::jsonb IS NULL OR metadata @> %(metadata)s::jsonb)
             AND (%(at)s::timestamptz IS NULL OR (created_at, id) < (%(at)s, %(last)s))
           ORDER BY created_at DESC, id DESC
           LIMIT %(limit)s""",
        {
            "owner": owner,
            "statuses": statuses,
            "metadata": json.dumps(metadata) if metadata else None,
            "at": at,
            "last": last,
            "limit": limit + 1,
        },
    ).fetchall()
    items = [report_json(conn, job_id, result=False, owner=owner) for job_id, _ in rows[:limit]]
    next_cursor = None
    if len(rows) > limit:
        job_id, created = rows[limit - 1]
        next_cursor = _encode("jobs", [created.isoformat(), str(job_id)])
    # A job pruned between the two reads is left out.
    return Page([item for item in items if item is not None], next_cursor)


def chunks(
    conn: psycopg.Connection[Any],
    job_id: uuid.UUID,
    *,
    limit: int = 100,
    cursor: str | None = None,
    first: int = 0,
    text: bool = False,
) -> Page:
    """A page of a job's chunks in order, each with its result or its last error: from
    ``cursor`` on, or else from index ``first`` (a page picked by number); with ``text``,
    each chunk's text too (the dashboard's document view)."""
    after = _decode(cursor, "chunks") if cursor else None
    if after is not None and (not isinstance(after[0], int) or isinstance(after[0], bool)):
        raise BadCursor("is not a cursor of this list")
    start = after[0] + 1 if after is not None else first
    rows = conn.execute(
        """SELECT seq, (jsonb_build_object(
                           'index', seq, 'start', start_offset, 'end', end_offset,
                           'status', status, 'attempts', attempts, 'provider', provider)
                       || CASE WHEN status = 'succeeded' THEN jsonb_build_object('result', result)
                               WHEN error IS NOT NULL THEN jsonb_build_object('error', error)
                               ELSE '{}'::jsonb END
                       || CASE WHEN %(text)s THEN jsonb_build_object('text', text)
                               ELSE '{}'::jsonb END)::text
           FROM chunks WHERE job_id = %(id)s AND seq >= %(start)s
           ORDER BY seq LIMIT %(limit)s""",
        {"id": job_id, "start": start, "limit": limit + 1, "text": text},
    ).fetchall()
    more = len(rows) > limit
    next_cursor = _encode("chunks", [rows[limit - 1][0]]) if more else None
    return Page([text for _, text in rows[:limit]], next_cursor)


# A succeeded chunk's sentiment as one number from -1 to 1, whichever provider made it: the
# builtin analyzer's VADER compound score, or a model's sentiment_score (schema.merging).
_SCORE = """CASE WHEN status <> 'succeeded' THEN NULL
                 WHEN jsonb_typeof(result->'sentiment'->'compound') = 'number'
                 THEN (result->'sentiment'->'compound')::numeric
                 WHEN jsonb_typeof(result->'sentiment_score') = 'number'
                 THEN (result->'sentiment_score')::numeric END"""


def chunk_states(conn: psycopg.Connection[Any], job_id: uuid.UUID) -> str:
    """Every chunk of a job at a glance, as JSON text of parallel arrays in chunk order
    (status, attempts, sentiment score) and the last error of each chunk that has one: what
    a dashboard's chunk grid and sentiment chart need, a few bytes a chunk, in one read."""
    row = conn.execute(
        f"""SELECT json_build_object(
                'status', coalesce(json_agg(status ORDER BY seq), '[]'),
                'attempts', coalesce(json_agg(attempts ORDER BY seq), '[]'),
                'score', coalesce(json_agg({_SCORE} ORDER BY seq), '[]'),
                'errors', coalesce(json_agg(json_build_object('index', seq, 'error', error)
                                            ORDER BY seq) FILTER (WHERE error IS NOT NULL),
                                   '[]'))::text
            FROM chunks WHERE job_id = %(id)s""",
        {"id": job_id},
    ).fetchone()
    assert row is not None  # an aggregate always gives a row
    return str(row[0])


def _encode(kind: str, key: list[Any]) -> str:
    raw = json.dumps([kind, *key], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode(cursor: str, kind: str) -> list[Any]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        value = json.loads(raw)
    except (binascii.Error, ValueError) as exc:
        raise BadCursor("is not a cursor of this list") from exc
    if not isinstance(value, list) or len(value) < 2 or value[0] != kind:
        raise BadCursor("is not a cursor of this list")
    return value[1:]
