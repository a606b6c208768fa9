"""Helpers shared by the tests: submitting jobs straight into the queue, reading state,
auditing status changes, and stepping a worker (``run_once``, no threads) until something
holds."""

from __future__ import annotations

import functools
import time
import uuid
from collections.abc import Callable
from typing import Any

import psycopg

from schema import queue, reads
from schema.chunking import split_text
from schema.db import connect
from workerd.settings import Settings
from workerd.worker import Worker

# Retries at once (no backoff), three attempts: a failing chunk ends within a few steps. The
# result cache is off: these tests watch what the provider does with each chunk, and many
# submit the same text again (tests/test_cache.py turns it on).
FAST = Settings(backoff_base_s=0.0, backoff_max_s=0.0, max_attempts=3, result_cache="off")
CACHED = Settings(backoff_base_s=0.0, backoff_max_s=0.0, max_attempts=3, result_cache="on")


def submit(
    db: psycopg.Connection[Any], text: str, max_chars: int, *, priority: int = 0, **options: Any
) -> uuid.UUID:
    """Enqueue a job the way the API does, in one transaction; returns its id."""
    job_id = uuid.uuid4()
    spans = split_text(text, max_chars)
    with db.transaction():
        queue.enqueue(
            db, job_id, text, spans, max_chunk_chars=max_chars, options=options, priority=priority
        )
    return job_id


def job_row(db: psycopg.Connection[Any], job_id: uuid.UUID) -> dict[str, Any]:
    """The job's row, its ``analysis_result`` as a report gives it: each chunk's result is
    stored once, in its own row, and listed from there (``schema.reads``)."""
    cur = db.execute(
        "SELECT status, chunks_total, chunks_completed, chunks_failed FROM jobs WHERE id = %s",
        (job_id,),
    )
    row = cur.fetchone()
    assert row is not None
    job = dict(zip([c.name for c in cur.description or []], row, strict=True))
    job["analysis_result"] = reads.analysis_result(db, job_id)
    return job


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


def terminal(db: psycopg.Connection[Any], job_id: uuid.UUID) -> bool:
    """Whether the job has reached one of its terminal statuses."""
    return job_row(db, job_id)["status"] not in ("PENDING", "PROCESSING")


def make_worker(url: str, provider: Any, settings: Settings = FAST, **kwargs: Any) -> Worker:
    """A Worker on this database, its connections' timeouts sized to its lease."""
    connect_ = functools.partial(connect, url, autocommit=True, lease_s=settings.lease_s)
    return Worker(settings, provider, connect_, **kwargs)


def step_until(
    worker: Worker, done: Callable[[], Any], steps: int = 200, pause: float = 0.0
) -> None:
    """Call ``worker.run_once()`` until ``done()`` holds; fail after ``steps`` steps."""
    for _ in range(steps):
        worker.run_once()
        if done():
            return
        time.sleep(pause)
    raise AssertionError(f"condition not reached in {steps} steps")


def run_until_idle(
    url: str,
    provider: Any,
    *,
    concurrency: int = 4,
    steps: int = 100,
    settings: Settings = FAST,
) -> None:
    """Step a fresh worker (no threads) until a step finds nothing to do: chunks claimed and
    recorded, jobs finalized, reductions run; fail after ``steps`` steps."""
    worker = make_worker(url, provider, settings, concurrency=concurrency)
    try:
        for _ in range(steps):
            if not worker.run_once().busy:
                return
        raise AssertionError(f"the worker was still busy after {steps} steps")
    finally:
        worker.close()


def drain(
    worker: Worker, db: psycopg.Connection[Any], job_id: uuid.UUID, steps: int = 200
) -> dict[str, Any]:
    """Step the worker until the job is terminal; returns its row."""
    try:
        step_until(worker, lambda: terminal(db, job_id), steps)
    except AssertionError:
        raise AssertionError(
            f"job {job_id} not terminal after {steps} steps: {job_row(db, job_id)}"
        ) from None
    return job_row(db, job_id)


# Every row written to jobs, chunks and reductions and every change of its status, recorded
# by triggers: what the SQL really did, not what the final state suggests. ``seq`` is the
# chunk's (NULL for jobs and reductions); ``old_status`` is NULL for an insert.
AUDIT = """
CREATE SCHEMA audit;
CREATE TABLE audit.moves (id bigserial PRIMARY KEY, tbl text NOT NULL, job_id uuid NOT NULL,
                          seq int, old_status text, new_status text NOT NULL);
CREATE FUNCTION audit.log_move() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE old_status text; BEGIN
    IF TG_OP = 'UPDATE' THEN old_status := OLD.status; END IF;
    INSERT INTO audit.moves (tbl, job_id, seq, old_status, new_status)
    VALUES (TG_TABLE_NAME, (to_jsonb(NEW) ->> TG_ARGV[0])::uuid, (to_jsonb(NEW) ->> 'seq')::int,
            old_status, NEW.status);
    RETURN NULL;
END $$;
"""
_AUDITED = {"jobs": "id", "chunks": "job_id", "reductions": "job_id"}


def install_audit(db: psycopg.Connection[Any]) -> None:
    """Start recording status changes in ``audit.moves`` (see ``moves``)."""
    with db.transaction():
        db.execute(AUDIT)
        for table, key in _AUDITED.items():
            db.execute(
                f"""CREATE TRIGGER audit_insert AFTER INSERT ON {table} FOR EACH ROW
                    EXECUTE FUNCTION audit.log_move('{key}');
                    CREATE TRIGGER audit_update AFTER UPDATE ON {table} FOR EACH ROW
                    WHEN (OLD.status IS DISTINCT FROM NEW.status)
                    EXECUTE FUNCTION audit.log_move('{key}')"""
            )


def moves(
    db: psycopg.Connection[Any], table: str
) -> list[tuple[uuid.UUID, int | None, str | None, str]]:
    """What ``install_audit`` recorded on ``table`` so far, in order:
    (job id, seq, old status, new status)."""
    return db.execute(
        "SELECT job_id, seq, old_status, new_status FROM audit.moves WHERE tbl = %s ORDER BY id",
        (table,),
    ).fetchall()


def explain_claim(
    conn: psycopg.Connection[Any], limit: int, *, generic: bool, fmt: str = "JSON"
) -> Any:
    """EXPLAIN (ANALYZE, BUFFERS) of the claim as a worker sends it (the database's clock,
    no skips), executed and rolled back, with a custom plan or the generic one a prepared
    statement gets once the server stops planning it per call: the plan as JSON, or the
    text lines joined."""
    query, params = queue.claim_statement("explained", limit, lease_s=30)
    mode = "force_generic_plan" if generic else "force_custom_plan"
    with conn.transaction(force_rollback=True):
        conn.execute(f"SET LOCAL plan_cache_mode = {mode}")
        rows = conn.execute(
            f"EXPLAIN (ANALYZE, BUFFERS, FORMAT {fmt}) {query}", params, prepare=True
        ).fetchall()
    return rows[0][0][0] if fmt == "JSON" else "\n".join(row[0] for row in rows)


def plan_nodes(plan: dict[str, Any]) -> list[dict[str, Any]]:
    """Every node of an EXPLAIN (FORMAT JSON) plan."""
    nodes, todo = [], [plan["Plan"]]
    while todo:
        node = todo.pop()
        nodes.append(node)
        todo.extend(node.get("Plans", []))
    return nodes
