"""Enqueue: a new job and its pending chunks, written in one transaction with the wake-up."""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import psycopg

from schema.queue.sql import ANONYMOUS_LANE, FAIR_QUANTUM, NOTIFY_CHANNEL, NOW

# Where a new job's round robin starts: the turn its lane (tenant) and priority are at now,
# that is the earliest turn of their untried chunks (an index lookup, chunks_fair_idx), or 0
# when there are none. It shares every later turn with the jobs already waiting, and within
# a turn goes before those that have had more (see schema.queue.claim): it never waits
# behind their backlog, and they never wait behind its.
_START_TURN = """coalesce((SELECT turn FROM chunks
                          WHERE lane = %(lane)s AND priority = %(priority)s
                            AND status = 'pending' AND attempts = 0
                          ORDER BY lane, priority DESC, turn LIMIT 1), 0)"""


def enqueue(
    conn: psycopg.Connection[Any],
    job_id: uuid.UUID,
    text: str,
    spans: Sequence[tuple[int, int]],
    *,
    max_chunk_chars: int,
    options: dict[str, Any] | None = None,
    owner: str | None = None,
    metadata: dict[str, str] | None = None,
    webhook_url: str | None = None,
    priority: int = 0,
    now: datetime | None = None,
) -> None:
    """Write a PENDING job and all its pending chunks, then wake the workers.

    Safe because nothing else can see the rows before the caller commits; the chunks go
    in one COPY, so a job of ten thousand chunks costs one round trip, not ten thousand.
    NOTIFY is delivered at commit, so a worker never wakes for rows it cannot see yet.
    ``owner`` is the tenant (an ``api_keys`` id) the job belongs to, and its chunks take
    their turns in that tenant's lane, ``priority`` ordering them among the tenant's jobs:
    chunk ``seq`` gets turn ``start + seq // FAIR_QUANTUM``, so a claim interleaves every
    waiting job of a lane a few chunks at a time (see ``schema.queue.claim``).
    """
    lane = owner or ANONYMOUS_LANE
    with conn.cursor() as cur:
        # One round trip for the job row and the wake-up; the chunks' next_attempt_at
        # defaults to now() (this transaction's start) unless a test's clock is given.
        cur.execute(
            f"""WITH job AS (
                    INSERT INTO jobs (id, status, chunks_total, max_chunk_chars, text_chars,
                                      options, api_key_id, metadata, webhook_url, priority,
                                      created_at, updated_at)
                    VALUES (%(id)s, 'PENDING', %(total)s, %(max)s, %(chars)s, %(options)s,
                            %(owner)s, %(metadata)s, %(webhook)s, %(priority)s, {NOW}, {NOW})
                    RETURNING id)
                SELECT pg_notify('{NOTIFY_CHANNEL}', ''), {_START_TURN} FROM job""",
            {
                "id": job_id,
                "total": len(spans),
                "max": max_chunk_chars,
                "chars": len(text),
                "options": json.dumps(options or {}),
                "owner": owner,
                "metadata": json.dumps(metadata or {}),
                "webhook": webhook_url,
                "priority": priority,
                "lane": lane,
                "now": now,
            },
        )
        row = cur.fetchone()
        start = int(row[1]) if row else 0
        # Binary COPY: the server parses no uuid, number or escape in text form (a 100,000-row
        # job commits in about a fifth less time than in text COPY), and psycopg packs in C.
        columns = "job_id, seq, start_offset, end_offset, text, lane, priority, turn"
        types = ["uuid", "int4", "int4", "int4", "text", "text", "int2", "int8"]
        if now is not None:
            columns, types = f"{columns}, next_attempt_at", [*types, "timestamptz"]
        q = FAIR_QUANTUM
        with cur.copy(f"COPY chunks ({columns}) FROM STDIN (FORMAT BINARY)") as copy:
            copy.set_types(types)
            write = copy.write_row
            if now is None:
                for seq, (a, b) in enumerate(spans):
                    write((job_id, seq, a, b, text[a:b], lane, priority, start + seq // q))
            else:
                for seq, (a, b) in enumerate(spans):
                    write((job_id, seq, a, b, text[a:b], lane, priority, start + seq // q, now))
