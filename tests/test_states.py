"""The state machines: the database's CHECKs list the Python enums, and the queue's SQL moves
rows only along the transition tables of schema.states, every one of which it uses."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Mapping
from typing import Any

import psycopg
import pytest

from schema import queue
from schema.queue import reductions
from schema.states import (
    CHUNK_TRANSITIONS,
    JOB_TRANSITIONS,
    REDUCE_TRANSITIONS,
    ChunkStatus,
    JobStatus,
    ReduceStatus,
)
from tests.support import (
    CACHED,
    chunk_rows,
    install_audit,
    job_row,
    moves,
    run_until_idle,
    submit,
)
from workerd.providers import PermanentError, RetryableError, SimulatedProvider


def _insert_job(db: psycopg.Connection[Any], status: str) -> uuid.UUID:
    job_id = uuid.uuid4()
    db.execute(
        "INSERT INTO jobs (id, status, chunks_total, max_chunk_chars, text_chars)"
        " VALUES (%s, %s, 1, 10, 1)",
        (job_id, status),
    )
    return job_id


def test_job_check__accepts_every_enum_member(db: psycopg.Connection[Any]) -> None:
    for status in JobStatus:
        _insert_job(db, status.value)


def test_job_check__rejects_anything_else(db: psycopg.Connection[Any]) -> None:
    for bogus in ("DONE", "pending", ""):
        with pytest.raises(psycopg.errors.CheckViolation):
            _insert_job(db, bogus)


def test_chunk_check__accepts_every_enum_member_and_nothing_else(
    db: psycopg.Connection[Any],
) -> None:
    job_id = _insert_job(db, "PENDING")
    for seq, status in enumerate(ChunkStatus):
        db.execute(
            "INSERT INTO chunks (job_id, seq, start_offset, end_offset, text, status)"
            " VALUES (%s, %s, 0, 1, 'x', %s)",
            (job_id, seq, status.value),
        )
    with pytest.raises(psycopg.errors.CheckViolation):
        db.execute(
            "INSERT INTO chunks (job_id, seq, start_offset, end_offset, text, status)"
            " VALUES (%s, 99, 0, 1, 'x', 'RUNNING')",
            (job_id,),
        )


def test_check_constraints__list_exactly_the_enum_values(db: psycopg.Connection[Any]) -> None:
    rows = dict(
        db.execute(
            """SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint
               WHERE conname IN ('jobs_status_check', 'chunks_status_check',
                                 'reductions_status_check')"""
        ).fetchall()
    )
    checks = (
        ("jobs_status_check", JobStatus),
        ("chunks_status_check", ChunkStatus),
        ("reductions_status_check", ReduceStatus),
    )
    for name, enum_cls in checks:
        definition = rows[name]
        quoted = {part.split("'")[1] for part in definition.split("'::text")[:-1]}
        assert quoted == {m.value for m in enum_cls}, definition


# --- the transitions the SQL really makes -------------------------------------------------

TABLES: dict[str, Mapping[Any, frozenset[Any]]] = {
    "jobs": JOB_TRANSITIONS,
    "chunks": CHUNK_TRANSITIONS,
    "reductions": REDUCE_TRANSITIONS,
}
# Where a row starts: web's submit writes PENDING jobs and pending chunks, the finalizer
# pending reductions.
ENTRIES = {("jobs", "PENDING"), ("chunks", "pending"), ("reductions", "pending")}

T0 = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)
TEXT = "\n\n".join(f"Paragraph {i} is about topic {i}." for i in range(4))
merge = queue.merge_with(SimulatedProvider().summarize)


def at(seconds: float) -> dt.datetime:
    return T0 + dt.timedelta(seconds=seconds)


class FirstAttemptFails(SimulatedProvider):
    """Each chunk's first attempt, and the first reduce, fail with a retryable error."""

    def __init__(self) -> None:
        super().__init__()
        self.tried: set[str] = set()
        self.reduces = 0

    def analyze(self, text: str, call: Any = None) -> dict[str, Any]:
        if text not in self.tried:
            self.tried.add(text)
            raise RetryableError("first attempt fails")
        return super().analyze(text, call)

    def reduce(self, analyses: list[dict[str, Any]], call: Any = None) -> dict[str, Any]:
        self.reduces += 1
        if self.reduces == 1:
            raise RetryableError("first reduce fails")
        return super().reduce(analyses, call)


class ReduceRefused(SimulatedProvider):
    def reduce(self, analyses: list[dict[str, Any]], call: Any = None) -> dict[str, Any]:
        raise PermanentError("the model refused the summary")


def _reduce_status(db: psycopg.Connection[Any], job_id: uuid.UUID) -> str | None:
    row = db.execute("SELECT status FROM reductions WHERE job_id = %s", (job_id,)).fetchone()
    return row[0] if row else None


def _drive_every_scenario(database_url: str, db: psycopg.Connection[Any]) -> dict[uuid.UUID, str]:
    """Run each scenario on its own job through the worker or the queue functions, check
    where it ended, and return which job played which scenario."""
    played: dict[uuid.UUID, str] = {}

    def play(name: str, text: str, max_chars: int = 40, **options: Any) -> uuid.UUID:
        job_id = submit(db, text, max_chars, **options)
        played[job_id] = name
        return job_id

    def ended(job_id: uuid.UUID, status: JobStatus, reduce: str | None = None) -> None:
        got = (job_row(db, job_id)["status"], _reduce_status(db, job_id))
        assert got == (status, reduce), f"{played[job_id]} ended {got}"

    job = play("success, then its reduce", TEXT, reduce=True)
    run_until_idle(database_url, SimulatedProvider(), settings=CACHED)  # stores the results
    ended(job, JobStatus.COMPLETED, "succeeded")

    job = play("a retry then success, and a retried reduce", TEXT, reduce=True)
    run_until_idle(database_url, FirstAttemptFails())
    ended(job, JobStatus.COMPLETED, "succeeded")
    assert {r["attempts"] for r in chunk_rows(db, job)} == {2}

    job = play("retries exhausted", TEXT)
    run_until_idle(database_url, SimulatedProvider(fail_rate=1.0))
    ended(job, JobStatus.FAILED)

    # The provider would fail every attempt; the result cache answers instead.
    job = play("answered by the result cache", TEXT)
    run_until_idle(database_url, SimulatedProvider(fail_rate=1.0), settings=CACHED)
    ended(job, JobStatus.COMPLETED)
    assert {(r["attempts"], r["status"]) for r in chunk_rows(db, job)} == {(1, "succeeded")}

    job = play("some chunks fail, and the reduce is refused", TEXT, reduce=True)
    run_until_idle(database_url, ReduceRefused(fail_pattern="topic 2"))
    ended(job, JobStatus.PARTIAL_SUCCESS, "failed")

    job = play("cancelled before any claim", TEXT)
    with db.transaction():
        queue.cancel(db, job, merge)
    ended(job, JobStatus.CANCELLED)

    job = play("cancelled with a chunk running", TEXT)
    with db.transaction():
        assert len(queue.claim(db, "W", 1, lease_s=30, now=at(0))) == 1
    with db.transaction():
        queue.cancel(db, job, merge, now=at(1))
    assert {r["status"] for r in chunk_rows(db, job)} == {"cancelled"}
    ended(job, JobStatus.CANCELLED)

    job = play("handed back on shutdown", "one chunk", 100)
    with db.transaction():
        claimed = queue.claim(db, "W", 1, lease_s=30, now=at(0))
    with db.transaction():
        assert queue.release(db, "W", claimed, now=at(1)) == 1
    with db.transaction():
        [chunk] = queue.claim(db, "W", 1, lease_s=30, now=at(2))
    with db.transaction():
        queue.record(db, "W", [queue.Success(chunk, {"ok": 1})], merge, now=at(3))
    ended(job, JobStatus.COMPLETED)

    # The owner never reports: the first rescue requeues, the second finds the last attempt.
    job = play("lease expired twice: rescued, then failed", "one chunk", 100)
    with db.transaction():
        queue.claim(db, "lost", 1, lease_s=1, now=at(0))
    with db.transaction():
        assert queue.rescue(db, merge, max_attempts=2, backoff_max_s=0, now=at(5))[:2] == (1, 0)
    with db.transaction():
        queue.claim(db, "lost", 1, lease_s=1, now=at(6))
    with db.transaction():
        assert queue.rescue(db, merge, max_attempts=2, now=at(10))[:2] == (0, 1)
    ended(job, JobStatus.FAILED)

    # A reduce whose worker is lost on its last attempt is failed by the next claim; one
    # whose worker shuts down is handed back.
    for name, lost in (("reduce lease expired", True), ("reduce handed back", False)):
        job = play(name, "one chunk", 100, reduce=True)
        with db.transaction():
            [chunk] = queue.claim(db, "W", 1, lease_s=30, now=at(0))
            queue.record(db, "W", [queue.Success(chunk, {"ok": 1})], merge, now=at(1))
        with db.transaction():
            reduction = reductions.claim(db, "W", lease_s=1, max_attempts=1, now=at(2))
        assert reduction is not None and reduction.job_id == job
        with db.transaction():
            if lost:
                assert reductions.claim(db, "W", lease_s=1, max_attempts=1, now=at(9)) is None
            else:
                assert reductions.release(db, "W", [reduction], now=at(3)) == 1
        ended(job, JobStatus.COMPLETED, "failed" if lost else "pending")
    return played


def test_transitions__the_sql_makes_exactly_the_moves_of_the_transition_tables(
    database_url: str, db: psycopg.Connection[Any]
) -> None:
    install_audit(db)
    played = _drive_every_scenario(database_url, db)
    made = [(tbl, *move) for tbl in TABLES for move in moves(db, tbl)]
    assert {job_id for _, job_id, _, _, _ in made} == set(played)

    allowed = {
        (tbl, old.value, new.value)
        for tbl, table in TABLES.items()
        for old, news in table.items()
        for new in news
    }
    seen: dict[tuple[str, str, str], set[str]] = {}
    for tbl, job_id, _seq, old, new in made:
        if old is not None:
            seen.setdefault((tbl, old, new), set()).add(played[job_id])
    illegal = {move: sorted(names) for move, names in seen.items() if move not in allowed}
    assert illegal == {}, "moves the transition tables do not allow (move: scenarios)"
    assert sorted(allowed - set(seen)) == [], "moves in the tables that no scenario made"
    entries = {(tbl, new) for tbl, _, _, old, new in made if old is None}
    assert entries == ENTRIES
