"""Record attempt outcomes: succeeded, failed for good, or pending again after a backoff;
fenced on the lease, batched, and finalizing the jobs whose last chunk this was."""

from __future__ import annotations

import json
import uuid
from collections.abc import Collection, Sequence
from datetime import datetime
from typing import Any

import psycopg

from schema.queue.finalize import finalize
from schema.queue.outcomes import Failure, Finalized, Merge, Recorded, Success
from schema.queue.sql import COUNTED_JOBS, FENCED, FENCED_KEYS, NOTIFY_CHANNEL, NOW, key_columns

# A success that did not come from the cache and has a cache key (scope, key) is stored in
# the result cache in the same statement; an entry someone stored first is kept. Keys go in
# key order: two workers storing the same texts at once wait on each other's entries in the
# same order, never in a cycle.
_SUCCEED = f"""
WITH input AS (
    SELECT * FROM unnest(%(job_ids)b::uuid[], %(seqs)b::int[], %(attempts)b::int[],
                         %(results)b::text[], %(cached)b::bool[], %(scopes)b::text[],
                         %(keys)b::bytea[])
             AS i(job_id, seq, attempt, result, cached, scope, key)
), mine AS ({FENCED}
), done AS (
    UPDATE chunks c
    SET status = 'succeeded', result = m.result::jsonb, error = NULL, parts = NULL,
        provider = %(provider)s, finished_at = {NOW}, lease_expires_at = NULL,
        cached = m.cached
    FROM mine m WHERE c.ctid = m.tid
    RETURNING c.job_id, c.seq, c.result, m.cached, m.scope, m.key
), stored AS (
    INSERT INTO result_cache (scope, key, result, provider, created_at)
    SELECT scope, key, result, %(provider)s, {NOW} FROM done
    WHERE NOT cached AND key IS NOT NULL
    ORDER BY scope, key
    ON CONFLICT (scope, key) DO NOTHING
), counts AS (
    SELECT job_id, count(*)::int AS n FROM done GROUP BY job_id
), counted AS (
    -- PENDING still, when the claim found the job row held elsewhere and left it.
    UPDATE jobs j SET chunks_completed = j.chunks_completed + k.n, updated_at = {NOW},
                      status = CASE WHEN j.status = 'PENDING' THEN 'PROCESSING' ELSE j.status END
    FROM ({COUNTED_JOBS}) k WHERE j.ctid = k.tid
    RETURNING j.id, j.chunks_completed + j.chunks_failed = j.chunks_total AS all_final
)
SELECT d.job_id, d.seq, c.all_final FROM done d JOIN counted c ON c.id = d.job_id
"""

_FAIL = f"""
WITH input AS (
    SELECT * FROM unnest(%(job_ids)b::uuid[], %(seqs)b::int[], %(attempts)b::int[],
                         %(classes)b::text[], %(errors)b::text[])
             AS i(job_id, seq, attempt, error_class, error)
), mine AS ({FENCED}
), done AS (
    UPDATE chunks c
    SET status = 'failed', error = m.error, finished_at = {NOW}, lease_expires_at = NULL
    FROM mine m WHERE c.ctid = m.tid
    RETURNING c.job_id, c.seq, c.attempts, m.error_class, m.error
), logged AS (
    INSERT INTO chunk_attempts (job_id, seq, attempt, error_class, error, worker_id, at)
    SELECT job_id, seq, attempts, error_class, error, %(me)s, {NOW} FROM done
), counts AS (
    SELECT job_id, count(*)::int AS n FROM done GROUP BY job_id
), counted AS (
    -- PENDING still, when the claim found the job row held elsewhere and left it.
    UPDATE jobs j SET chunks_failed = j.chunks_failed + k.n, updated_at = {NOW},
                      status = CASE WHEN j.status = 'PENDING' THEN 'PROCESSING' ELSE j.status END
    FROM ({COUNTED_JOBS}) k WHERE j.ctid = k.tid
    RETURNING j.id, j.chunks_completed + j.chunks_failed = j.chunks_total AS all_final
)
SELECT d.job_id, d.seq, c.all_final FROM done d JOIN counted c ON c.id = d.job_id
"""

# An uncounted failure (the provider's circuit was open) hands its attempt back, like a
# release, and is not logged: it says nothing about the chunk. Finished pieces of a split
# chunk are kept for the next attempt.
_RETRY = f"""
WITH input AS (
    SELECT * FROM unnest(%(job_ids)b::uuid[], %(seqs)b::int[], %(attempts)b::int[],
                         %(classes)b::text[], %(errors)b::text[], %(delays)b::float8[],
                         %(counted)b::bool[], %(parts)b::text[])
             AS i(job_id, seq, attempt, error_class, error, delay, counted, parts)
), mine AS ({FENCED}
), done AS (
    UPDATE chunks c
    SET status = 'pending', error = m.error, worker_id = NULL, lease_expires_at = NULL,
        next_attempt_at = {NOW} + make_interval(secs => m.delay),
        attempts = c.attempts - CASE WHEN m.counted THEN 0 ELSE 1 END,
        parts = coalesce(m.parts::jsonb, c.parts)
    FROM mine m WHERE c.ctid = m.tid
    RETURNING c.job_id, c.seq, m.attempt, m.error_class, m.error, m.counted
), logged AS (
    INSERT INTO chunk_attempts (job_id, seq, attempt, error_class, error, worker_id, at)
    SELECT job_id, seq, attempt, error_class, error, %(me)s, {NOW} FROM done WHERE counted
)
SELECT job_id, seq, false FROM done
"""


def record(
    conn: psycopg.Connection[Any],
    worker_id: str,
    outcomes: Sequence[Success | Failure],
    merge: Merge,
    *,
    provider: str | None = None,
    now: datetime | None = None,
    notify: bool = False,
    reduces: bool = True,
    patience_s: float = 0.0,
    impatient: Collection[uuid.UUID] = (),
) -> Recorded:
    """Record a batch of attempt outcomes and finalize every job whose last chunk this was.

    Run inside one transaction. Every write is fenced on (status running, attempt, owner):
    an outcome whose lease was lost matches no row and is reported in ``dropped``, never
    written twice. ``provider`` names who produced the successes' results, kept with each
    so the job is merged by its own provider. ``notify`` wakes other workers at commit
    (under a shared cap, a finished chunk frees a slot they may be waiting for). The
    counters move in the same statements as the chunk states, so they equal the row counts
    at every commit; the job rows are locked first, in id order, so the transaction that
    sees completed + failed = total is the only one that can.

    A job row held by another transaction (a paused peer, an operator's open session) is
    skipped, not waited on (beyond ``patience_s``, see ``held_jobs``): its outcomes come
    back in ``deferred`` and the rest of the batch is written, so one held row never stops
    the other jobs from finishing. A deferred chunk stays running (leased to us) with
    ``finished_at`` set: its provider call is over, so it no longer counts against the
    shared cap.
    """
    if not outcomes:
        return Recorded(0, [], {})
    held = held_jobs(
        conn,
        {o.chunk.job_id for o in outcomes if _counts(o)},
        patience_s=patience_s,
        impatient=impatient,
    )
    waiting = [o for o in outcomes if _counts(o) and o.chunk.job_id in held]
    deferred = [o.chunk.key for o in waiting]
    outcomes = [o for o in outcomes if not (_counts(o) and o.chunk.job_id in held)]
    if waiting:
        job_ids, seqs, attempts = key_columns(o.chunk for o in waiting)
        conn.execute(
            f"""{FENCED_KEYS}
                UPDATE chunks c SET finished_at = {NOW}
                FROM mine m WHERE c.ctid = m.tid AND c.finished_at IS NULL""",
            {"job_ids": job_ids, "seqs": seqs, "attempts": attempts, "me": worker_id, "now": now},
        )
    successes = [o for o in outcomes if isinstance(o, Success)]
    failures = [o for o in outcomes if isinstance(o, Failure) and o.retry_in is None]
    retries = [o for o in outcomes if isinstance(o, Failure) and o.retry_in is not None]
    params: dict[str, Any] = {"me": worker_id, "now": now, "provider": provider}
    rows: list[tuple[uuid.UUID, int, bool]] = []
    if successes:
        job_ids, seqs, attempts = key_columns(o.chunk for o in successes)
        results = [o.encoded or json.dumps(o.result, separators=(",", ":")) for o in successes]
        rows += conn.execute(
            _SUCCEED,
            {
                **params,
                "job_ids": job_ids,
                "seqs": seqs,
                "attempts": attempts,
                "results": results,
                "cached": [o.cached for o in successes],
                "scopes": [o.cache_scope for o in successes],
                "keys": [o.cache_key for o in successes],
            },
        ).fetchall()
    for statement, batch in ((_FAIL, failures), (_RETRY, retries)):
        if not batch:
            continue
        job_ids, seqs, attempts = key_columns(o.chunk for o in batch)
        extra: dict[str, Any] = {
            "classes": [o.error_class for o in batch],
            "errors": [o.error for o in batch],
        }
        if statement is _RETRY:
            extra["delays"] = [o.retry_in for o in batch]
            extra["counted"] = [o.counted for o in batch]
            extra["parts"] = [
                None if o.parts is None else json.dumps(o.parts, separators=(",", ":"))
                for o in batch
            ]
        rows += conn.execute(
            statement,
            {**params, "job_ids": job_ids, "seqs": seqs, "attempts": attempts, **extra},
        ).fetchall()
    applied = {(job_id, seq) for job_id, seq, _ in rows}
    if notify and applied:
        conn.execute(f"NOTIFY {NOTIFY_CHANNEL}")
    dropped = [o.chunk.key for o in outcomes if o.chunk.key not in applied]
    finalized: dict[uuid.UUID, Finalized] = {}
    for job_id in sorted({job_id for job_id, _, all_final in rows if all_final}):
        ended = finalize(conn, job_id, merge, now=now, reduces=reduces)
        if ended is not None:
            finalized[job_id] = ended
    return Recorded(len(applied), dropped, finalized, deferred)


def _counts(outcome: Success | Failure) -> bool:
    """Whether recording ``outcome`` moves its job's counters (a retry does not)."""
    return isinstance(outcome, Success) or outcome.retry_in is None


def held_jobs(
    conn: psycopg.Connection[Any],
    job_ids: set[uuid.UUID],
    *,
    patience_s: float = 0.0,
    impatient: Collection[uuid.UUID] = (),
) -> set[uuid.UUID]:
    """Lock these job rows (id order); returns the ids another transaction holds. A job that
    no longer exists is not held: its fenced writes simply match nothing.

    A row held by a peer's step (two workers recording chunks of one job) is free a few
    milliseconds later, so each row is waited for up to ``patience_s`` (the function
    chunkq_lock_jobs, migration 0007), then what is still held is skipped (SKIP LOCKED).
    When a row in ``impatient`` is among them (found held last time: a paused peer, an
    operator's open session), none is waited for.
    """
    if not job_ids:
        return set()
    ids = sorted(job_ids)
    if patience_s > 0 and not any(i in impatient for i in ids):
        row = conn.execute(
            "SELECT chunkq_lock_jobs(%(ids)s, %(ms)s)",
            {"ids": ids, "ms": max(1, round(patience_s * 1000))},
        ).fetchone()
        locked = set(row[0]) if row else set()
    else:
        locked = {
            row[0]
            for row in conn.execute(
                "SELECT id FROM jobs WHERE id = ANY(%(ids)s) ORDER BY id FOR UPDATE SKIP LOCKED",
                {"ids": ids},
            )
        }
    missing = [i for i in ids if i not in locked]
    if not missing:
        return set()
    # A plain read never waits on a row lock: what exists among the rest is held elsewhere.
    return {
        row[0]
        for row in conn.execute("SELECT id FROM jobs WHERE id = ANY(%(ids)s)", {"ids": missing})
    }
