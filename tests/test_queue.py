"""Queue transitions on a real PostgreSQL: locking, leases, fencing, retries, finalization."""

from __future__ import annotations

import datetime as dt
import importlib
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
import pytest

from schema import queue
from schema.chunking import split_text
from schema.errors import JobConflict, JobNotFound
from schema.queue import Failure, Success
from tests.support import assert_invariants, chunk_rows, job_row, submit


def summarize(results: list[tuple[int, dict[str, Any]]]) -> dict[str, Any]:
    return {"chunks": len(results), "chars": sum(length for length, _ in results)}


merge = queue.merge_with(summarize)


T0 = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)

# The module (``schema.queue.enqueue`` is the function), for its size bounds.
enqueuing = importlib.import_module("schema.queue.enqueue")


def at(seconds: float) -> dt.datetime:
    return T0 + dt.timedelta(seconds=seconds)


@pytest.fixture
def other(database_url: str) -> Any:
    with psycopg.connect(database_url, autocommit=True) as conn:
        yield conn


def claim(
    conn: psycopg.Connection[Any], me: str, limit: int = 10, now: float = 0.0, lease: float = 30.0
) -> list[queue.ClaimedChunk]:
    with conn.transaction():
        return queue.claim(conn, me, limit, lease_s=lease, now=at(now))


def record(
    conn: psycopg.Connection[Any], me: str, outcomes: list[Any], now: float = 1.0
) -> queue.Recorded:
    with conn.transaction():
        return queue.record(conn, me, outcomes, merge, now=at(now))


@contextmanager
def short_lock_wait(conn: psycopg.Connection[Any]) -> Iterator[None]:
    """A transaction on ``conn`` in which waiting for a lock fails at once (LockNotAvailable)
    instead of waiting for a holder that this same test thread would only release later."""
    with conn.transaction():
        conn.execute("SET LOCAL lock_timeout = '200ms'")
        yield


def test_claim__skips_locked_rows(db: psycopg.Connection[Any], other: Any) -> None:
    submit(db, "aaaa bbbb", 5)
    with db.transaction():
        mine = queue.claim(db, "A", 1, lease_s=30, now=at(0))
        assert len(mine) == 1
        # A still holds its row lock: B must skip that row, not wait for it.
        with short_lock_wait(other):
            theirs = queue.claim(other, "B", 10, lease_s=30, now=at(0))
        assert [c.seq for c in theirs] == [1 - mine[0].seq]
    assert claim(other, "B", 10) == []


def test_claim__moves_job_to_processing_and_counts_the_attempt(
    db: psycopg.Connection[Any],
) -> None:
    job_id = submit(db, "one two three", 5)
    assert job_row(db, job_id)["status"] == "PENDING"
    chunks = claim(db, "A", 1)
    assert job_row(db, job_id)["status"] == "PROCESSING"
    row = chunk_rows(db, job_id)[chunks[0].seq]
    assert (row["status"], row["attempts"], row["worker_id"]) == ("running", 1, "A")
    assert row["lease_expires_at"] == at(30)


def test_claim__waits_for_next_attempt_at(db: psycopg.Connection[Any]) -> None:
    job_id = submit(db, "retry me", 100)
    [chunk] = claim(db, "A")
    record(db, "A", [Failure(chunk, "RetryableError", "boom", retry_in=10.0)], now=5)
    assert chunk_rows(db, job_id)[0]["next_attempt_at"] == at(15)
    assert claim(db, "B", now=14.9) == []
    [again] = claim(db, "B", now=15)
    assert again.attempt == 2


def test_rescue__reclaims_expired_lease_and_late_success_writes_nothing(
    db: psycopg.Connection[Any], other: Any
) -> None:
    job_id = submit(db, "slow chunk", 100)
    [old] = claim(db, "A", lease=10)
    with other.transaction():
        assert queue.rescue(other, merge, max_attempts=3, now=at(9)) == (0, 0, {})
    with other.transaction():
        requeued, failed, _ = queue.rescue(other, merge, max_attempts=3, now=at(11))
    assert (requeued, failed) == (1, 0)
    # Not due at once: the rescued chunk waits the retry backoff (0.5-1 s after attempt 1).
    assert claim(other, "B", now=11.4) == []
    [new] = claim(other, "B", now=12)
    assert new.attempt == 2
    late = record(db, "A", [Success(old, {"from": "A"})], now=12)
    assert late.applied == 0 and late.dropped == [old.key]
    done = record(other, "B", [Success(new, {"from": "B"})], now=13)
    [created] = db.execute("SELECT created_at FROM jobs WHERE id = %s", (job_id,)).fetchone()
    took = pytest.approx((at(13) - created).total_seconds(), abs=1e-3)
    assert done.finalized == {job_id: queue.Finalized(queue.JobStatus.COMPLETED, 1, 0, took)}
    row = chunk_rows(db, job_id)[0]
    assert row["result"] == {"from": "B"} and row["worker_id"] == "B"
    errors = db.execute("SELECT attempt, error_class, worker_id FROM chunk_attempts").fetchall()
    assert errors == [(1, "WorkerLost", "A")]
    assert_invariants(db)


def test_claim__marks_the_chunks_of_the_jobs_it_started(db: psycopg.Connection[Any]) -> None:
    first = submit(db, "one. two. three.", 5)
    taken = claim(db, "A", limit=2)
    assert [(c.job_id, c.started) for c in taken] == [(first, True), (first, True)]
    second = submit(db, "four.", 100)
    # The job already PROCESSING is not started again; the new one is, by this claim.
    rest = claim(db, "B", limit=10)
    assert {(c.job_id, c.started) for c in rest} == {(first, False), (second, True)}


def test_heartbeat__keeps_the_lease(db: psycopg.Connection[Any]) -> None:
    job_id = submit(db, "long call", 100)
    chunks = claim(db, "A", lease=10)
    with db.transaction():
        assert queue.heartbeat(db, "A", chunks, lease_s=10, now=at(8)) == {chunks[0].key}
        assert queue.heartbeat(db, "B", chunks, lease_s=10, now=at(8)) == set()
    with db.transaction():
        assert queue.rescue(db, merge, max_attempts=3, now=at(12)) == (0, 0, {})
    assert chunk_rows(db, job_id)[0]["lease_expires_at"] == at(18)


def test_rescue__fails_a_poison_pill_after_the_attempt_limit(db: psycopg.Connection[Any]) -> None:
    job_id = submit(db, "kills workers. fine chunk.", 14)
    poison, good = claim(db, "W1", limit=2, lease=5)
    record(db, "W1", [Success(good, {"ok": 1})], now=1)
    t = 0.0
    for attempt in range(1, 4):
        if attempt > 1:
            t += 2.0 ** (attempt - 2)  # the rescued chunk waits out the retry backoff
            [poison] = claim(db, f"W{attempt}", now=t, lease=5)
        assert (poison.seq, poison.attempt) == (0, attempt)
        t += 6  # the worker died: no heartbeat, no report
        with db.transaction():
            requeued, failed, finalized = queue.rescue(db, merge, max_attempts=3, now=at(t))
    assert (requeued, failed) == (0, 1)
    [(finalized_id, ended)] = finalized.items()
    assert finalized_id == job_id and ended.status == queue.JobStatus.PARTIAL_SUCCESS
    assert (ended.succeeded, ended.failed) == (1, 1)
    rows = chunk_rows(db, job_id)
    assert rows[0]["status"] == "failed" and queue.WORKER_LOST in rows[0]["error"]
    assert claim(db, "W4", now=t) == []
    logged = db.execute("SELECT seq, attempt FROM chunk_attempts ORDER BY attempt").fetchall()
    assert logged == [(0, 1), (0, 2), (0, 3)]
    assert_invariants(db)


def test_release__hands_back_without_burning_an_attempt(db: psycopg.Connection[Any]) -> None:
    job_id = submit(db, "hand me back", 100)
    chunks = claim(db, "A")
    with db.transaction():
        assert queue.release(db, "A", chunks, now=at(1)) == 1
    row = chunk_rows(db, job_id)[0]
    assert (row["status"], row["attempts"], row["worker_id"]) == ("pending", 0, None)
    assert claim(db, "B", now=1)[0].attempt == 1


def test_record__merges_in_seq_order_when_chunks_finish_in_reverse(
    db: psycopg.Connection[Any],
) -> None:
    text = "alpha. beta. gamma. delta. epsilon."
    job_id = submit(db, text, 7)
    chunks = claim(db, "A", limit=100)
    assert len(chunks) >= 5
    for chunk in reversed(chunks):
        record(db, "A", [Success(chunk, {"text": chunk.text})])
    result = job_row(db, job_id)["analysis_result"]
    entries = result["chunks"]
    assert [e["index"] for e in entries] == list(range(len(chunks)))
    assert "".join(text[e["start"] : e["end"]] for e in entries) == text
    assert [e["result"]["text"] for e in entries] == [text[e["start"] : e["end"]] for e in entries]
    assert result["summary"] == {"chunks": len(chunks), "chars": len(text)}


def test_record__fails_permanently_and_finalizes_failed(db: psycopg.Connection[Any]) -> None:
    job_id = submit(db, "doomed", 100)
    [chunk] = claim(db, "A")
    done = record(db, "A", [Failure(chunk, "PermanentError", "rejected", retry_in=None)])
    [ended] = done.finalized.values()
    assert (ended.status, ended.succeeded, ended.failed) == (queue.JobStatus.FAILED, 0, 1)
    row = job_row(db, job_id)
    assert (row["chunks_failed"], row["chunks_completed"]) == (1, 0)
    assert row["analysis_result"]["chunks"] == [
        {"index": 0, "start": 0, "end": 6, "status": "failed", "error": "rejected"}
    ]


def test_finalize__does_nothing_twice(db: psycopg.Connection[Any]) -> None:
    job_id = submit(db, "once", 100)
    [chunk] = claim(db, "A")
    record(db, "A", [Success(chunk, {})])
    with db.transaction():
        assert queue.finalize(db, job_id, merge) is None


def test_cancel__cancels_pending_drops_late_result_and_conflicts_when_terminal(
    db: psycopg.Connection[Any],
) -> None:
    job_id = submit(db, "first. second. third.", 8)
    first, second = claim(db, "A", limit=2)
    record(db, "A", [Success(first, {"n": 1})])
    with db.transaction():
        assert queue.cancel(db, job_id, merge) == queue.JobStatus.CANCELLED
    statuses = [r["status"] for r in chunk_rows(db, job_id)]
    assert statuses == ["succeeded", "cancelled", "cancelled"]
    late = record(db, "A", [Success(second, {"n": 2})])
    assert late.applied == 0
    row = job_row(db, job_id)
    assert row["status"] == "CANCELLED" and row["chunks_completed"] == 1
    assert row["analysis_result"]["chunks"][0]["result"] == {"n": 1}
    assert row["analysis_result"]["summary"]["chunks"] == 1
    with db.transaction(), pytest.raises(JobConflict):
        queue.cancel(db, job_id, merge)
    with db.transaction(), pytest.raises(JobNotFound):
        queue.cancel(db, uuid.uuid4(), merge)
    assert_invariants(db)


def test_claim__shared_cap_counts_running_chunks_of_every_worker(
    db: psycopg.Connection[Any], other: Any
) -> None:
    submit(db, "x" * 100, 10)
    with db.transaction():
        mine = queue.claim(db, "A", 8, lease_s=30, now=at(0), cap=3)
        assert len(mine) == 3
        # While A's transaction is open, B's capped claim waits on the advisory lock.
        with pytest.raises(psycopg.errors.LockNotAvailable), short_lock_wait(other):
            queue.claim(other, "B", 8, lease_s=30, now=at(0), cap=3)
    # A committed: B takes the lock and sees A's three running.
    with short_lock_wait(other):
        assert queue.claim(other, "B", 8, lease_s=30, now=at(0), cap=3) == []
    record(db, "A", [Success(mine[0], {})])
    with other.transaction():
        assert len(queue.claim(other, "B", 8, lease_s=30, now=at(1), cap=3)) == 1
    with other.transaction():
        assert len(queue.claim(other, "B", 8, lease_s=30, now=at(1), cap=None)) == 8 - 2


def test_integrity__a_chunk_must_name_a_job_and_deleting_a_job_deletes_its_chunks(
    db: psycopg.Connection[Any],
) -> None:
    with pytest.raises(psycopg.errors.ForeignKeyViolation), db.transaction():
        db.execute(
            "INSERT INTO chunks (job_id, seq, start_offset, end_offset, text)"
            " VALUES (%s, 0, 0, 1, 'x')",
            (uuid.uuid4(),),
        )
    job_id = submit(db, "one. two. three.", 5)
    [chunk, *_] = claim(db, "W", limit=3)
    record(db, "W", [Failure(chunk, "E", "boom", retry_in=None)])
    with pytest.raises(psycopg.errors.ForeignKeyViolation), db.transaction():
        db.execute("UPDATE chunks SET job_id = %s WHERE job_id = %s", (uuid.uuid4(), job_id))
    with db.transaction():
        db.execute("DELETE FROM jobs WHERE id = %s", (job_id,))
    left = db.execute(
        "SELECT (SELECT count(*) FROM chunks), (SELECT count(*) FROM chunk_attempts)"
    ).fetchone()
    assert left == (0, 0)


def _written(db: psycopg.Connection[Any], job_id: uuid.UUID) -> list[tuple[Any, ...]]:
    """The job's row and its chunk rows, as enqueue wrote them."""
    job = db.execute(
        """SELECT status, chunks_total, max_chunk_chars, text_chars, options, api_key_id,
                  metadata, webhook_url, priority, created_at, updated_at
           FROM jobs WHERE id = %s""",
        (job_id,),
    ).fetchall()
    chunks = db.execute(
        """SELECT seq, start_offset, end_offset, text, status, attempts, lane, priority, turn,
                  next_attempt_at
           FROM chunks WHERE job_id = %s ORDER BY seq""",
        (job_id,),
    ).fetchall()
    return job + chunks


@pytest.mark.parametrize("now", [at(0), None])
def test_enqueue__one_statement_and_copy_write_the_same_rows(
    db: psycopg.Connection[Any], monkeypatch: pytest.MonkeyPatch, now: dt.datetime | None
) -> None:
    text = "Première phrase, assez longue. Deuxième phrase ici.\n\nUn paragraphe. " * 4
    spans = split_text(text, 30)
    assert 1 < len(spans) <= enqueuing.ONE_STATEMENT_CHUNKS
    written = []
    for one_statement in (True, False):
        if not one_statement:
            monkeypatch.setattr(enqueuing, "ONE_STATEMENT_CHUNKS", 0)
        job_id = uuid.uuid4()
        with db.transaction():
            queue.enqueue(
                db, job_id, text, spans, max_chunk_chars=30, owner="anonymous",
                metadata={"doc": "d"}, priority=3, now=now,
            )  # fmt: skip
        written.append(_written(db, job_id))
    if now is None:  # the clock of each job's own transaction: compare each job with itself
        for rows in written:
            created = rows[0][-2]
            assert {row[-1] for row in rows[1:]} == {created}
        written = [[row[:-1] for row in rows[1:]] for rows in written]
    assert written[0] == written[1]
    assert [(row[1], row[2]) for row in written[0][-len(spans) :]] == spans


def test_enqueue__on_an_autocommit_connection_a_job_is_all_or_nothing(
    db: psycopg.Connection[Any],
) -> None:
    # A NUL is refused by the server only once the job row is in: in the one statement, or
    # in the COPY after the row. Either way nothing is left, and the connection goes on.
    assert db.autocommit
    for chunks in (2, enqueuing.ONE_STATEMENT_CHUNKS + 1):
        text = "word. " * (chunks - 1) + "nul\x00."
        spans = split_text(text, 6)
        assert len(spans) == chunks
        with pytest.raises(psycopg.DataError):
            queue.enqueue(db, uuid.uuid4(), text, spans, max_chunk_chars=6)
        assert db.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        assert db.execute("SELECT count(*) FROM jobs").fetchone() == (0,)
        assert db.execute("SELECT count(*) FROM chunks").fetchone() == (0,)
