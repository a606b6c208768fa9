"""Enqueue: a new job and its pending chunks, written in one transaction with the wake-up."""

from __future__ import annotations

import contextlib
import itertools
import json
import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import psycopg
from psycopg import pq

from schema.queue.sql import ANONYMOUS_LANE, FAIR_QUANTUM, NOTIFY_CHANNEL, NOW

# A job of at most this many chunks and characters is written in one statement, its chunks'
# texts passed as one array: one round trip where a job row and a COPY take four (BEGIN, the
# row, the COPY's start and its data). Past these, the server's work on the array (slower
# than a binary COPY of the same rows) cancels what the round trips save: measured against
# gunicorn, the statement answers a 10 KB submission 0.3 ms sooner and a 60 KB one no sooner.
ONE_STATEMENT_CHUNKS = 64
ONE_STATEMENT_CHARS = 64 * 1024

# Where a new job's round robin starts: the turn its lane (tenant) and priority are at now,
# that is the earliest turn of their untried chunks (an index lookup, chunks_fair_idx), or 0
# when there are none. It shares every later turn with the jobs already waiting, and within
# a turn goes before those that have had more (see schema.queue.claim): it never waits
# behind their backlog, and they never wait behind its.
_START_TURN = """coalesce((SELECT turn FROM chunks
                          WHERE lane = %(lane)s AND priority = %(priority)s
                            AND status = 'pending' AND attempts = 0
                          ORDER BY lane, priority DESC, turn LIMIT 1), 0)"""

_INSERT_JOB = f"""INSERT INTO jobs (id, status, chunks_total, max_chunk_chars, text_chars,
                                  options, api_key_id, metadata, webhook_url, priority,
                                  created_at, updated_at)
                VALUES (%(id)s, 'PENDING', %(total)s, %(max)s, %(chars)s, %(options)s,
                        %(owner)s, %(metadata)s, %(webhook)s, %(priority)s, {NOW}, {NOW})
                RETURNING id"""

# The job row and the wake-up, and the start turn for the chunks COPYed after it.
_JOB = f"""WITH job AS ({_INSERT_JOB})
           SELECT pg_notify('{NOTIFY_CHANNEL}', ''), {_START_TURN} FROM job"""

# The job row, its chunks and the wake-up in one statement. The start turn is read in the
# statement's snapshot, which does not hold the chunks it inserts. The chunks tile the text,
# so each one's offsets follow from the lengths of those before it (char_length counts code
# points, as Python's len does); next_attempt_at is the column's default unless a test's
# clock is given.
_JOB_AND_CHUNKS = f"""WITH job AS ({_INSERT_JOB}),
    start AS (SELECT {_START_TURN} AS turn),
    piece AS (
        SELECT t, n - 1 AS seq, %(first)s + sum(char_length(t)) OVER (ORDER BY n) AS stop
        FROM unnest(%(texts)b::text[]) WITH ORDINALITY AS p(t, n)),
    made AS (
        INSERT INTO chunks (job_id, seq, start_offset, end_offset, text, lane, priority,
                            turn, next_attempt_at)
        SELECT job.id, seq, stop - char_length(t), stop, t, %(lane)s, %(priority)s,
               start.turn + seq / {FAIR_QUANTUM}, {NOW}
        FROM job, start, piece)
    SELECT pg_notify('{NOTIFY_CHANNEL}', '') FROM job"""


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

    Safe because nothing else can see the rows before they commit; NOTIFY is delivered at
    commit, so a worker never wakes for rows it cannot see yet. A small job (up to
    ``ONE_STATEMENT_CHUNKS`` chunks and ``ONE_STATEMENT_CHARS`` characters) is one
    statement, so on an autocommit connection it is a transaction of its own in one round
    trip. A bigger one is the job row and one binary COPY of its chunks (ten thousand chunks
    cost one round trip, not ten thousand), in a transaction of their own when ``conn`` is
    in autocommit. ``owner`` is the tenant (an ``api_keys`` id) the job belongs to, and its
    chunks take their turns in that tenant's lane, ``priority`` ordering them among the
    tenant's jobs: chunk ``seq`` gets turn ``start + seq // FAIR_QUANTUM``, so a claim
    interleaves every waiting job of a lane ``FAIR_QUANTUM`` chunks at a time (see
    ``schema.queue.claim``).
    """
    lane = owner or ANONYMOUS_LANE
    job = {
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
    }
    if len(spans) <= ONE_STATEMENT_CHUNKS and len(text) <= ONE_STATEMENT_CHARS and _tiled(spans):
        texts = [text[a:b] for a, b in spans]
        conn.execute(_JOB_AND_CHUNKS, {**job, "first": spans[0][0], "texts": texts})
        return
    alone = conn.autocommit and conn.info.transaction_status == pq.TransactionStatus.IDLE
    with conn.transaction() if alone else contextlib.nullcontext(), conn.cursor() as cur:
        # One round trip for the job row and the wake-up; the chunks' next_attempt_at
        # defaults to now() (this transaction's start) unless a test's clock is given.
        cur.execute(_JOB, job)
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


def _tiled(spans: Sequence[tuple[int, int]]) -> bool:
    """Whether the spans follow one another with no gap (the chunker's always do)."""
    return bool(spans) and all(b == a for (_, b), (a, _) in itertools.pairwise(spans))
