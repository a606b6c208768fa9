"""Fair share: the claim interleaves the jobs with due work, so none waits behind another's
backlog; tenants share each claim; a job's priority orders it among its tenant's jobs only;
due retries come first. Claims run on a real PostgreSQL, in order, with real workers for the
end-to-end case."""

from __future__ import annotations

import collections
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

from schema import queue, tenants
from schema.chunking import split_text
from schema.queue import FAIR_QUANTUM, ClaimedChunk, Failure
from tests.processes import start_worker, stop, wait_for
from tests.support import assert_invariants, job_row

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def words(n: int, tag: str) -> str:
    """``n`` chunks' worth of text at max_chunk_chars=20: one sentence of 15 characters each."""
    return " ".join(f"{tag[:8]:8} {i:05d}." for i in range(n))


def enqueue(
    db: psycopg.Connection[Any],
    chunks: int,
    *,
    owner: str | None = None,
    priority: int = 0,
    tag: str = "job",
) -> uuid.UUID:
    text = words(chunks, tag)
    spans = split_text(text, 20)
    assert len(spans) == chunks
    job_id = uuid.uuid4()
    with db.transaction():
        queue.enqueue(
            db, job_id, text, spans, max_chunk_chars=20, owner=owner, priority=priority, now=at(0)
        )
    return job_id


def claim(db: psycopg.Connection[Any], limit: int, now: float = 1) -> list[ClaimedChunk]:
    with db.transaction():
        return queue.claim(db, "W", limit, lease_s=30, now=at(now))


def per_job(claimed: list[ClaimedChunk]) -> collections.Counter[uuid.UUID]:
    return collections.Counter(c.job_id for c in claimed)


def test_claim__a_small_job_goes_in_the_next_claim_behind_a_big_backlog(
    db: psycopg.Connection[Any],
) -> None:
    big = enqueue(db, 4000, tag="big")
    for _ in range(3):
        assert set(per_job(claim(db, 40))) == {big}
    small = enqueue(db, 1, tag="small")
    claimed = claim(db, 40)
    assert per_job(claimed)[small] == 1
    # The big job goes on in order from where it was.
    assert [c.seq for c in claimed if c.job_id == big] == list(range(120, 120 + 39))


def test_claim__jobs_of_a_lane_take_turns_a_quantum_at_a_time(
    db: psycopg.Connection[Any],
) -> None:
    jobs = [enqueue(db, 6 * FAIR_QUANTUM, tag=f"j{i}") for i in range(3)]
    seen: dict[uuid.UUID, list[int]] = collections.defaultdict(list)
    for _ in range(5):
        claimed = claim(db, 3 * FAIR_QUANTUM)
        assert per_job(claimed) == {job: FAIR_QUANTUM for job in jobs}
        for chunk in claimed:
            seen[chunk.job_id].append(chunk.seq)
    # Each job in its own order, without gaps.
    assert all(seqs == list(range(5 * FAIR_QUANTUM)) for seqs in seen.values())


def test_claim__a_late_job_takes_its_first_turn_first_then_shares_the_turns(
    db: psycopg.Connection[Any],
) -> None:
    early = enqueue(db, 8 * FAIR_QUANTUM, tag="early")
    claim(db, 2 * FAIR_QUANTUM)
    late = enqueue(db, 8 * FAIR_QUANTUM, tag="late")
    first = claim(db, FAIR_QUANTUM)
    assert per_job(first) == {late: FAIR_QUANTUM}
    # From then on, a turn each: the early job's current one, then one of each per round.
    assert per_job(claim(db, 3 * FAIR_QUANTUM)) == {
        early: 2 * FAIR_QUANTUM,
        late: FAIR_QUANTUM,
    }
    assert per_job(claim(db, 4 * FAIR_QUANTUM)) == {
        early: 2 * FAIR_QUANTUM,
        late: 2 * FAIR_QUANTUM,
    }


def test_claim__jobs_submitted_together_are_not_served_last_in_first_out(
    db: psycopg.Connection[Any],
) -> None:
    busy = enqueue(db, 8 * FAIR_QUANTUM, tag="busy")
    claim(db, FAIR_QUANTUM)
    burst = [enqueue(db, 2 * FAIR_QUANTUM, tag=f"b{i}") for i in range(4)]
    # One claim as big as their first turns takes exactly those, one turn each, whatever
    # order they came in; the busy job's current turn comes after them.
    counts = per_job(claim(db, 4 * FAIR_QUANTUM))
    assert counts == {job: FAIR_QUANTUM for job in burst}
    assert per_job(claim(db, FAIR_QUANTUM)) == {busy: FAIR_QUANTUM}


def test_claim__tenants_share_a_claim_however_many_jobs_each_has(
    db: psycopg.Connection[Any],
) -> None:
    busy = tenants.create_key(db, "busy").id
    quiet = tenants.create_key(db, "quiet").id
    busy_jobs = {enqueue(db, 100, owner=busy, tag=f"b{i}") for i in range(4)}
    quiet_job = enqueue(db, 100, owner=quiet, tag="q")
    claimed = claim(db, 64)
    counts = per_job(claimed)
    assert counts[quiet_job] == 32
    assert sum(counts[job] for job in busy_jobs) == 32
    assert {c.lane for c in claimed} == {busy, quiet}


def test_claim__priority_orders_a_tenant_s_own_jobs_and_no_one_else_s(
    db: psycopg.Connection[Any],
) -> None:
    a = tenants.create_key(db, "a").id
    b = tenants.create_key(db, "b").id
    a_low = enqueue(db, 100, owner=a, priority=-5, tag="alow")
    a_high = enqueue(db, 100, owner=a, priority=5, tag="ahigh")
    b_plain = enqueue(db, 100, owner=b, tag="b")
    counts = per_job(claim(db, 64))
    # A's share goes to its urgent job; B's share is untouched by A's priorities.
    assert counts == {a_high: 32, b_plain: 32}
    assert a_low not in counts
    with db.transaction():
        assert db.execute("SELECT priority FROM jobs WHERE id = %s", (a_high,)).fetchone() == (5,)


def test_claim__due_retries_come_before_untried_chunks_and_waiting_ones_stay(
    db: psycopg.Connection[Any],
) -> None:
    job = enqueue(db, 100, tag="r")
    first = claim(db, 2)
    with db.transaction():
        queue.record(
            db,
            "W",
            [
                Failure(first[0], "Retryable", "soon", retry_in=5.0),
                Failure(first[1], "Retryable", "later", retry_in=3600.0),
            ],
            queue.merge_with(lambda results: {}),
            now=at(1),
        )
    # Before the first retry is due, untried chunks come.
    assert [c.seq for c in claim(db, 2, now=2)] == [2, 3]
    # Once it is due, it comes first; the one still waiting does not.
    claimed = claim(db, 3, now=10)
    assert [(c.seq, c.attempt) for c in claimed][:1] == [(0, 2)]
    assert 1 not in [c.seq for c in claimed]
    assert job_row(db, job)["status"] == "PROCESSING"


def test_enqueue__a_job_starts_at_its_lane_s_current_turn(db: psycopg.Connection[Any]) -> None:
    early = enqueue(db, 8 * FAIR_QUANTUM, tag="early")
    for _ in range(4):
        claim(db, FAIR_QUANTUM)
    late = enqueue(db, 20, tag="late")
    turns = dict(
        db.execute(
            "SELECT job_id, min(turn) FROM chunks WHERE status = 'pending' GROUP BY job_id"
        ).fetchall()
    )
    assert turns[late] == turns[early] == 4


@pytest.mark.slow
def test_workers__a_one_chunk_job_finishes_while_a_big_job_is_still_draining(
    database_url: str, db: psycopg.Connection[Any]
) -> None:
    big = enqueue(db, 4000, tag="big")
    env = {"CHUNKQ_PROVIDER": "simulated", "CHUNKQ_SIM_LATENCY_MS": "50"}
    workers = [start_worker(database_url, "--concurrency", "8", **env) for _ in range(2)]
    try:
        wait_for(lambda: job_row(db, big)["chunks_completed"] >= 100, 60, "the big job to run")
        small = enqueue(db, 1, tag="small")
        wait_for(lambda: job_row(db, small)["status"] == "COMPLETED", 30, "the small job")
        # 16 slots at 50 ms drain 4000 chunks in 12.5 s: the small job did not wait for them.
        assert job_row(db, big)["chunks_completed"] < 2000
    finally:
        for worker in workers:
            stop(worker)
    assert_invariants(db)
