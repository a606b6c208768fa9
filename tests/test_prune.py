"""Pruning finished work: old terminal jobs go with all their rows, nothing else is touched."""

from __future__ import annotations

import datetime as dt
from typing import Any

import psycopg

from schema import idempotency, queue
from schema.prune import prune
from schema.queue import Success, reductions
from tests.support import submit


def test_prune__deletes_only_old_finished_jobs_with_their_rows(
    db: psycopg.Connection[Any],
) -> None:
    t0 = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)

    def finished(text: str, at: dt.datetime) -> Any:
        job_id = submit(db, text, 8)
        with db.transaction():
            chunks = queue.claim(db, "W", 100, lease_s=30, now=at)
            queue.record(
                db, "W", [Success(c, {}) for c in chunks], queue.merge_with(lambda r: {}), now=at
            )
        return job_id

    old = finished("old job. more text.", t0)
    recent = finished("recent job. more text.", t0 + dt.timedelta(days=6))
    running = submit(db, "running job. more text.", 8)
    with db.transaction():
        queue.claim(db, "X", 1, lease_s=30, now=t0)
    now = t0 + dt.timedelta(days=7, seconds=1)
    assert prune(db, 7 * 86400, batch=1, now=now) == 1
    remaining = {r[0] for r in db.execute("SELECT id FROM jobs")}
    assert remaining == {recent, running}
    assert db.execute("SELECT count(*) FROM chunks WHERE job_id = %s", (old,)).fetchone()[0] == 0  # type: ignore[index]
    assert prune(db, 0, now=now) == 1
    assert {r[0] for r in db.execute("SELECT id FROM jobs")} == {running}


def test_prune__forgets_idempotency_keys_after_a_day(db: psycopg.Connection[Any]) -> None:
    t0 = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)
    running = submit(db, "running job. more text.", 8)
    with db.transaction():
        for key, age_h in (("old", 24.5), ("fresh", 23)):
            assert idempotency.claim(db, "anonymous", key, "h", running, {}) is None
            db.execute(
                "UPDATE idempotency_keys SET created_at = %s WHERE key = %s",
                (t0 - dt.timedelta(hours=age_h), key),
            )
    assert prune(db, 7 * 86400, now=t0) == 0
    assert [r[0] for r in db.execute("SELECT key FROM idempotency_keys")] == ["fresh"]
    # The job still runs: only the record of the key went.
    assert [r[0] for r in db.execute("SELECT id FROM jobs")] == [running]


def test_prune__keeps_a_finished_job_until_its_reduce_step_ends(
    db: psycopg.Connection[Any],
) -> None:
    t0 = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)
    job_id = submit(db, "a job with a reduce step. more text.", 8, reduce=True)
    with db.transaction():
        chunks = queue.claim(db, "W", 100, lease_s=30, now=t0)
        queue.record(db, "W", [Success(c, {}) for c in chunks], lambda r: {}, now=t0)
    later = t0 + dt.timedelta(days=30)

    def reduce_status() -> Any:
        return db.execute("SELECT status FROM reductions WHERE job_id = %s", (job_id,)).fetchone()

    assert reduce_status() == ("pending",)
    assert prune(db, 0, now=later) == 0

    with db.transaction():
        claimed = reductions.claim(db, "W", lease_s=30, max_attempts=3, now=later)
    assert claimed is not None and reduce_status() == ("running",)
    assert prune(db, 0, now=later) == 0

    with db.transaction():
        assert reductions.finish(db, "W", claimed, result={"summary": "done"}, now=later)
    assert reduce_status() == ("succeeded",)
    assert prune(db, 0, now=later) == 1
    assert db.execute("SELECT count(*) FROM jobs").fetchone() == (0,)
