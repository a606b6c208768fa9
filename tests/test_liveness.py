"""Liveness: no held lock, paused process, bad merge or bad outcome stalls the others."""

from __future__ import annotations

import datetime as dt
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest

from schema import queue
from schema.db import bound, connect, make_engine, session_timeouts
from schema.queue import Success, reductions
from tests.processes import ROOT, start_worker, stop, wait_for
from tests.support import (
    assert_invariants,
    chunk_rows,
    install_audit,
    job_row,
    make_worker,
    moves,
    step_until,
    submit,
    terminal,
)
from workerd.providers import BuiltinProvider, SimulatedProvider
from workerd.settings import Settings

TEXT = "\n\n".join(f"Paragraph {i} is about topic {i}." for i in range(6))


class MergeFails(SimulatedProvider):
    def summarize(self, results: list[Any]) -> dict[str, Any]:
        raise RuntimeError("merge exploded")


# --- 1. a merge that raises -------------------------------------------------------------


def test_merge_that_raises__ends_the_job_with_an_error_summary_and_the_worker_goes_on(
    database_url: str, db: psycopg.Connection[Any]
) -> None:
    first, second = submit(db, TEXT, 40), submit(db, TEXT, 40)
    worker = make_worker(database_url, MergeFails(), concurrency=2)
    try:
        step_until(worker, lambda: terminal(db, first) and terminal(db, second))
    finally:
        worker.close()
    for job_id in (first, second):
        row = job_row(db, job_id)
        assert row["status"] == "COMPLETED"
        summary = row["analysis_result"]["summary"]
        assert "merge exploded" in summary["error"] and "RuntimeError" in summary["error"]
        chunks = row["analysis_result"]["chunks"]
        assert len(chunks) == row["chunks_total"] and all("result" in c for c in chunks)
    assert_invariants(db)


def test_merge_that_raises_in_rescue__the_rescue_still_ends_the_job(
    db: psycopg.Connection[Any],
) -> None:
    job_id = submit(db, "one chunk", 100)
    t0 = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)
    with db.transaction():
        queue.claim(db, "lost", 1, lease_s=1, now=t0)

    def explode(_results: Any) -> dict[str, Any]:
        raise ValueError("no merge today")

    later = t0 + dt.timedelta(seconds=5)
    with db.transaction():
        requeued, failed, finalized = queue.rescue(
            db, queue.merge_with(explode), max_attempts=1, now=later
        )
    assert (requeued, failed) == (0, 1) and finalized[job_id].status == queue.JobStatus.FAILED
    assert "no merge today" in job_row(db, job_id)["analysis_result"]["summary"]["error"]


def test_provider_switch_mid_job__each_result_is_merged_by_its_own_provider(
    database_url: str, db: psycopg.Connection[Any]
) -> None:
    job_id = submit(db, TEXT, 40)
    total = job_row(db, job_id)["chunks_total"]
    before = make_worker(database_url, SimulatedProvider(), concurrency=2)
    try:
        before.run_once()  # two chunks by the simulated provider
    finally:
        before.close()
    after = make_worker(database_url, BuiltinProvider(), concurrency=total)
    try:
        step_until(after, lambda: terminal(db, job_id))
    finally:
        after.close()
    row = job_row(db, job_id)
    assert row["status"] == "COMPLETED"
    providers = [p for (p,) in db.execute("SELECT provider FROM chunks ORDER BY seq")]
    assert providers == ["simulated"] * 2 + ["builtin"] * (total - 2)
    parts = row["analysis_result"]["summary"]["providers"]
    assert [(p["provider"], p["chunks"]) for p in parts] == [
        ("simulated", 2),
        ("builtin", total - 2),
    ]
    chunks = row["analysis_result"]["chunks"]
    merged = [(c["end"] - c["start"], c["result"]) for c in chunks]
    assert parts[0]["summary"] == SimulatedProvider().summarize(merged[:2])
    assert parts[1]["summary"] == BuiltinProvider().summarize(merged[2:])


# --- 2. held job rows and paused lock holders ---------------------------------------------


def test_job_row_held_elsewhere__other_jobs_finish_and_it_finishes_after_release(
    database_url: str, db: psycopg.Connection[Any]
) -> None:
    held, free = submit(db, TEXT, 40), submit(db, TEXT, 40)
    worker = make_worker(database_url, SimulatedProvider(), concurrency=16)
    # An operator's session (no timeouts of ours) holds one job row.
    holder = psycopg.connect(database_url)
    # Should the worker wait on the held row, this lets it go on (and the checks fail)
    # instead of hanging the suite.
    release = threading.Timer(15, holder.commit)
    try:
        holder.execute("SELECT id FROM jobs WHERE id = %s FOR UPDATE", (held,))
        release.start()
        step_until(worker, lambda: terminal(db, free), steps=50)
        assert job_row(db, free)["status"] == "COMPLETED"
        assert not terminal(db, held)
        # The held job's outcomes are kept, their leases renewed, waiting for the row.
        assert worker.run_once().deferred > 0
        release.cancel()
        holder.commit()
        step_until(worker, lambda: terminal(db, held), steps=50, pause=0.01)
    finally:
        release.cancel()
        holder.close()
        worker.close()
    assert job_row(db, held)["status"] == "COMPLETED"
    assert_invariants(db)


@pytest.mark.parametrize("cap", [None, 2])
def test_job_row_held_elsewhere__its_chunks_give_back_their_slots_and_are_not_claimed(
    database_url: str, db: psycopg.Connection[Any], cap: int | None
) -> None:
    held = submit(db, TEXT, 40, priority=1)  # first in the claim order
    free = submit(db, TEXT, 40)
    settings = Settings(
        backoff_base_s=0.0, backoff_max_s=0.0, max_attempts=3, provider_concurrency=cap
    )
    worker = make_worker(database_url, SimulatedProvider(), settings, concurrency=2)
    holder = psycopg.connect(database_url)
    release = threading.Timer(15, holder.commit)
    try:
        holder.execute("SELECT id FROM jobs WHERE id = %s FOR UPDATE", (held,))
        release.start()
        first = worker.run_once()
        assert first.claimed == 2 and first.deferred == 2  # the held job's two first chunks
        step_until(worker, lambda: terminal(db, free), steps=100)
        rows = chunk_rows(db, held)
        # Its finished two wait, leased, their calls over; none of its others was claimed.
        assert [r["status"] for r in rows[:2]] == ["running", "running"]
        assert {r["status"] for r in rows[2:]} == {"pending"}
        marked = db.execute(
            "SELECT count(*) FROM chunks WHERE job_id = %s AND finished_at IS NOT NULL", (held,)
        ).fetchone()
        assert marked == (2,)
        release.cancel()
        holder.commit()
        step_until(worker, lambda: terminal(db, held), steps=100, pause=0.01)
    finally:
        release.cancel()
        holder.close()
        worker.close()
    assert job_row(db, held)["status"] == job_row(db, free)["status"] == "COMPLETED"
    assert_invariants(db)


def test_pending_job_row_held_at_its_first_claim__it_still_goes_through_processing(
    database_url: str, db: psycopg.Connection[Any]
) -> None:
    install_audit(db)
    job_id = submit(db, TEXT, 40)
    worker = make_worker(database_url, SimulatedProvider(), concurrency=16)
    try:
        with psycopg.connect(database_url) as holder:
            holder.execute("SELECT id FROM jobs WHERE id = %s FOR UPDATE", (job_id,))
            assert worker.run_once().deferred == job_row(db, job_id)["chunks_total"]
            assert job_row(db, job_id)["status"] == "PENDING"  # the claim could not move it
        step_until(worker, lambda: terminal(db, job_id), steps=100, pause=0.01)
    finally:
        worker.close()
    made = [(old, new) for _, _, old, new in moves(db, "jobs")]
    assert made == [(None, "PENDING"), ("PENDING", "PROCESSING"), ("PROCESSING", "COMPLETED")]


def test_held_jobs__waits_a_moment_for_a_peer_s_step_but_not_for_a_held_row(
    database_url: str, db: psycopg.Connection[Any]
) -> None:
    brief, long = submit(db, "brief", 100), submit(db, "long", 100)
    with psycopg.connect(database_url) as peer, psycopg.connect(database_url) as holder:
        holder.execute("SELECT id FROM jobs WHERE id = %s FOR UPDATE", (long,))
        peer.execute("SELECT id FROM jobs WHERE id = %s FOR UPDATE", (brief,))
        threading.Timer(0.1, peer.commit).start()  # a step that ends 0.1 s from now
        with db.transaction():
            db.execute("SET LOCAL lock_timeout = '4s'")
            t0 = time.monotonic()
            held = queue.held_jobs(db, {brief, long}, patience_s=1.0)
            waited = time.monotonic() - t0
            # The brief one was waited for and is ours; the long one was given up on after
            # the patience, not after lock_timeout; lock_timeout is as it was.
            assert held == {long}
            assert 0.9 <= waited < 3.0
            assert db.execute("SHOW lock_timeout").fetchone() == ("4s",)
        with db.transaction():
            t0 = time.monotonic()
            # A row found held last time is not waited for again.
            assert queue.held_jobs(db, {long}, patience_s=1.0, impatient={long}) == {long}
            assert time.monotonic() - t0 < 0.5
        holder.commit()


def test_rescue__skips_a_held_job_row_instead_of_waiting_on_it(
    database_url: str, db: psycopg.Connection[Any]
) -> None:
    t0 = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)
    held, free = submit(db, "held job", 100), submit(db, "free job", 100)
    with db.transaction():
        queue.claim(db, "lost", 2, lease_s=1, now=t0)
    with psycopg.connect(database_url) as holder:
        holder.execute("SELECT id FROM jobs WHERE id = %s FOR UPDATE", (held,))
        with db.transaction():
            db.execute("SET LOCAL lock_timeout = '2s'")  # waiting would be an error here
            requeued, failed, _ = queue.rescue(
                db, queue.merge_with(dict), max_attempts=3, now=t0 + dt.timedelta(seconds=5)
            )
        assert (requeued, failed) == (1, 0)
        assert chunk_rows(db, free)[0]["status"] == "pending"
        assert chunk_rows(db, held)[0]["status"] == "running"


def test_paused_process_holding_a_job_row__the_server_ends_its_session_and_the_job_finishes(
    database_url: str, db: psycopg.Connection[Any]
) -> None:
    held, free = submit(db, TEXT, 40), submit(db, TEXT, 40)
    # A chunkq connection (lease 3 s: idle in transaction for 1.5 s at most) that locks a
    # job row and then stops, as a paused VM would, in the middle of its transaction.
    script = (
        "import os, signal, sys\n"
        "from schema.db import connect\n"
        f"conn = connect({database_url!r}, lease_s=3)\n"
        f"conn.execute(\"SELECT id FROM jobs WHERE id = '{held}' FOR UPDATE\")\n"
        "print('locked', flush=True)\n"
        "os.kill(os.getpid(), signal.SIGSTOP)\n"
    )
    paused = subprocess.Popen(
        [sys.executable, "-c", script], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    worker = make_worker(database_url, SimulatedProvider(), concurrency=16)
    try:
        assert paused.stdout is not None and paused.stdout.readline() == "locked\n"
        wait_for(lambda: paused_state(paused.pid) == "T", 10, "the lock holder to stop")
        done = threading.Event()

        def run() -> None:
            try:
                step_until(worker, lambda: terminal(db_two, held) and terminal(db_two, free),
                           steps=2000, pause=0.01)  # fmt: skip
            finally:
                done.set()

        with psycopg.connect(database_url, autocommit=True) as db_two:
            thread = threading.Thread(target=run, daemon=True)
            thread.start()
            assert done.wait(20), "the jobs did not finish while the lock holder was paused"
            thread.join(5)
            assert not thread.is_alive(), "the stepping thread did not end after setting done"
        assert paused_state(paused.pid) == "T"  # still stopped: the server freed its lock
        assert job_row(db, held)["status"] == "COMPLETED"
        assert job_row(db, free)["status"] == "COMPLETED"
    finally:
        worker.close()
        paused.kill()
        paused.wait()
        if paused.stdout is not None:
            paused.stdout.close()
    assert_invariants(db)


def paused_state(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().rsplit(")", 1)[1].split()[0]


def test_sigstopped_worker__the_other_worker_keeps_going_and_its_late_results_are_fenced(
    database_url: str, db: psycopg.Connection[Any], tmp_path: Path
) -> None:
    env = {
        "CHUNKQ_PROVIDER": "simulated",
        "CHUNKQ_SIM_LATENCY_MS": "150",
        "CHUNKQ_LEASE_S": "2",
        "CHUNKQ_BACKOFF_BASE_S": "0.1",
        "CHUNKQ_BACKOFF_MAX_S": "0.2",
        "CHUNKQ_MAX_ATTEMPTS": "5",
    }
    jobs = [submit(db, "sentence number one. " * 80, 60) for _ in range(4)]
    total = sum(job_row(db, j)["chunks_total"] for j in jobs)
    a, b = (
        start_worker(database_url, "--concurrency", "4", log=tmp_path / f"{n}.log", **env)
        for n in "ab"
    )
    try:

        def owners() -> set[str]:
            rows = db.execute("SELECT DISTINCT worker_id FROM chunks WHERE status = 'running'")
            return {r[0].split(":")[1] for r in rows}

        wait_for(lambda: {str(a.pid), str(b.pid)} <= owners(), 30, "both workers to claim")
        a.send_signal(signal.SIGSTOP)
        try:

            def succeeded() -> int:
                row = db.execute("SELECT count(*) FROM chunks WHERE status = 'succeeded'")
                return int(row.fetchone()[0])  # type: ignore[index]

            # Longer than a lease: a's chunks are rescued and b finishes everything alone.
            wait_for(lambda: all(terminal(db, j) for j in jobs), 60, "b to finish every job")
            assert succeeded() == total
        finally:
            a.send_signal(signal.SIGCONT)
        wait_for(
            lambda: (
                "result dropped" in (tmp_path / "a.log").read_text()
                or "lease of" in (tmp_path / "a.log").read_text()
            ),
            30,
            "the resumed worker to find its leases gone",
        )
        assert a.poll() is None, "the resumed worker died"
    finally:
        codes = [stop(w) for w in (a, b)]
    assert codes == [0, 0]
    for job_id in jobs:
        assert job_row(db, job_id)["status"] == "COMPLETED"
    once = db.execute(
        "SELECT count(*) FROM chunks WHERE status = 'succeeded' AND result IS NOT NULL"
    ).fetchone()
    assert once == (total,)
    assert_invariants(db)


def test_every_chunkq_connection_bounds_its_waits_sized_to_the_lease(database_url: str) -> None:
    expected = {"lock_timeout": "5s", "statement_timeout": "15s",
                "idle_in_transaction_session_timeout": "15s"}  # fmt: skip
    assert session_timeouts(30) == {k: f"{int(v[:-1]) * 1000}ms" for k, v in expected.items()}

    def shown(conn: Any) -> dict[str, str]:
        return {name: conn.execute(f"SHOW {name}").fetchone()[0] for name in expected}

    with connect(database_url, autocommit=True) as conn:
        assert shown(conn) == expected
    with connect(database_url, autocommit=True, lease_s=6) as conn:
        assert shown(conn) == {"lock_timeout": "1s", "statement_timeout": "3s",
                               "idle_in_transaction_session_timeout": "3s"}  # fmt: skip
    engine = make_engine(database_url)
    try:
        with engine.connect() as conn:
            assert shown(conn.connection.driver_connection) == expected
    finally:
        engine.dispose()


def test_through_a_transaction_pooler__the_same_limits_hold_per_transaction_only(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # DATABASE_DIRECT_URL says DATABASE_URL goes through PgBouncer: no startup parameter
    # (PgBouncer refuses it) and no session state; each transaction sets its own limits.
    monkeypatch.setenv("DATABASE_DIRECT_URL", database_url)
    with connect(database_url) as conn:
        assert "options" not in conn.info.get_parameters()
        with conn.transaction():
            bound(conn, 6)
            assert conn.execute("SHOW lock_timeout").fetchone() == ("1s",)
            assert conn.execute("SHOW idle_in_transaction_session_timeout").fetchone() == ("3s",)
        assert conn.execute("SHOW lock_timeout").fetchone() == ("0",)  # nothing left behind


# --- 3. rescue and the shared cap ---------------------------------------------------------


def test_rescue__one_rescuer_at_a_time_the_others_skip_without_waiting(
    database_url: str, db: psycopg.Connection[Any]
) -> None:
    t0 = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)
    job_id = submit(db, "lost chunk", 100)
    with db.transaction():
        queue.claim(db, "lost", 1, lease_s=1, now=t0)
    with psycopg.connect(database_url) as rescuer:
        rescuer.execute("SELECT pg_advisory_xact_lock(%s)", (queue.RESCUE_LOCK_KEY,))
        with db.transaction():
            assert queue.rescue(
                db, queue.merge_with(dict), max_attempts=3, now=t0 + dt.timedelta(seconds=5)
            ) == (0, 0, {})
    assert chunk_rows(db, job_id)[0]["status"] == "running"


def test_rescue__the_rescued_chunk_waits_out_the_retry_backoff(
    db: psycopg.Connection[Any],
) -> None:
    t0 = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)
    job_id = submit(db, "\n\n".join(["lost chunk"] * 40), 12)
    with db.transaction():
        queue.claim(db, "lost", 40, lease_s=1, now=t0)
    at = t0 + dt.timedelta(seconds=5)
    with db.transaction():
        queue.rescue(
            db, queue.merge_with(dict), max_attempts=3, backoff_base_s=4, backoff_max_s=60, now=at
        )
    delays = [(r["next_attempt_at"] - at).total_seconds() for r in chunk_rows(db, job_id)]
    assert all(2.0 <= d <= 4.0 for d in delays), delays  # equal jitter over attempt 1's 4 s
    assert len(set(delays)) > 1  # spread out, not the whole fleet at once


def test_a_failing_rescue_never_blocks_claiming(
    database_url: str, db: psycopg.Connection[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*_args: Any, **_kwargs: Any) -> Any:
        raise RuntimeError("rescue is broken")

    monkeypatch.setattr(queue, "rescue", broken)
    job_id = submit(db, TEXT, 40)
    worker = make_worker(database_url, SimulatedProvider(), concurrency=16)
    try:
        step = worker.run_once()
    finally:
        worker.close()
    assert step.claimed == job_row(db, job_id)["chunks_total"]
    assert job_row(db, job_id)["status"] == "COMPLETED"


def test_reductions_count_against_the_shared_cap(db: psycopg.Connection[Any]) -> None:
    reduced = submit(db, "reduce me", 100, reduce=True)
    with db.transaction():
        [chunk] = queue.claim(db, "W", 1, lease_s=30)
        queue.record(db, "W", [Success(chunk, {"ok": 1})], queue.merge_with(dict))
    other = submit(db, "another job", 100)
    with db.transaction():
        assert reductions.claim(db, "W", lease_s=30, max_attempts=3, cap=1) is not None
    # The running reduction holds the only slot: no chunk may start.
    with db.transaction():
        assert queue.claim(db, "W", 1, lease_s=30, cap=1) == []
    assert chunk_rows(db, other)[0]["status"] == "pending"
    with db.transaction():
        assert len(queue.claim(db, "W", 1, lease_s=30, cap=2)) == 1
    # And a running chunk holds a slot against a reduction.
    third = submit(db, "third", 100, reduce=True)
    with db.transaction():
        [c3] = queue.claim(db, "W", 1, lease_s=30)
        queue.record(db, "W", [Success(c3, {"ok": 1})], queue.merge_with(dict))
    with db.transaction():
        assert reductions.claim(db, "W", lease_s=30, max_attempts=3, cap=2) is None
    assert job_row(db, reduced)["analysis_result"]["reduce"]["status"] == "pending"
    assert job_row(db, third)["status"] == "COMPLETED"


# --- one bad outcome ---------------------------------------------------------------------


class SurrogateOnTopic3(SimulatedProvider):
    """A result jsonb refuses (a lone surrogate) for one chunk; the others are fine."""

    def analyze(self, text: str, call: Any = None) -> dict[str, Any]:
        result = super().analyze(text, call)
        return {**result, "note": "\ud800"} if "topic 3" in text else result


def test_one_unstorable_outcome__the_rest_of_its_batch_is_recorded(
    database_url: str, db: psycopg.Connection[Any]
) -> None:
    job_id = submit(db, TEXT, 40)
    total = job_row(db, job_id)["chunks_total"]
    worker = make_worker(database_url, SurrogateOnTopic3(), concurrency=total)
    try:
        first = worker.run_once()  # one batch holding every chunk
        assert first.claimed == total and first.recorded == total
        step_until(worker, lambda: terminal(db, job_id))
    finally:
        worker.close()
    row = job_row(db, job_id)
    assert row["status"] == "PARTIAL_SUCCESS"
    assert (row["chunks_completed"], row["chunks_failed"]) == (total - 1, 1)
    errors = db.execute("SELECT error_class, error FROM chunk_attempts").fetchall()
    assert len(errors) == 3 and {e[0] for e in errors} == {"RecordFailed"}
    assert "surrogate" in errors[0][1]
    assert_invariants(db)


def test_one_unstorable_outcome_in_a_step_that_also_claims__the_batch_and_the_claim_go_on(
    database_url: str, db: psycopg.Connection[Any]
) -> None:
    # On a thread pool, a step writes the outcomes that came back and claims for the slots
    # they free in one transaction; the database refusing one outcome must cost neither.
    job_id = submit(db, TEXT, 40)
    total = job_row(db, job_id)["chunks_total"]
    assert total > 4
    worker = make_worker(database_url, SurrogateOnTopic3(), concurrency=2)
    worker.start()
    try:
        step_until(worker, lambda: terminal(db, job_id), steps=400, pause=0.01)
    finally:
        worker.stop()
        worker.close()
    row = job_row(db, job_id)
    assert row["status"] == "PARTIAL_SUCCESS"
    assert (row["chunks_completed"], row["chunks_failed"]) == (total - 1, 1)
    errors = db.execute("SELECT error_class FROM chunk_attempts").fetchall()
    assert errors == [("RecordFailed",)] * 3
    assert_invariants(db)


# --- 4. a database that hangs -------------------------------------------------------------


def test_hung_database__the_api_answers_503_within_seconds_and_recovers(
    pg_server: Any, database_url: str
) -> None:
    if not pg_server.controllable:
        pytest.skip("needs the test's own PostgreSQL (TEST_DATABASE_URL is set)")
    import httpx
    import psutil

    from tests.processes import gunicorn

    with gunicorn(database_url, workers=1) as base, httpx.Client(base_url=base) as http:
        job = http.post("/v1/analyze", json={"raw_text": "hello there", "max_chunk_chars": 50})
        assert job.status_code == 202
        url = job.headers["Location"]
        assert http.get(url).status_code == 200  # a pooled connection exists now
        postmaster = psutil.Process(pg_server.embedded._postmaster()[0])
        stopped = [postmaster, *postmaster.children(recursive=True)]
        for proc in stopped:
            proc.suspend()  # SIGSTOP: the server hangs, its sockets stay open
        try:
            # Bounded by the client: a hang would fail here, not stall the suite.
            during = http.get(url, timeout=20)
            assert during.status_code == 503
            assert during.headers["Content-Type"] == "application/problem+json"
            assert int(during.headers["Retry-After"]) > 0
            refused = http.post(
                "/v1/analyze", json={"raw_text": "x", "max_chunk_chars": 5}, timeout=20
            )
            assert refused.status_code == 503
        finally:
            for proc in stopped:
                proc.resume()
        wait_for(lambda: http.get(url, timeout=20).status_code == 200, 30, "the API to recover")


def test_session_ended_for_idling_in_a_transaction__is_a_lost_connection_not_a_bug(
    database_url: str,
) -> None:
    from workerd.database import DatabaseDown

    settings = Settings(lease_s=1.2)  # idle in a transaction for 0.6 s at most
    worker = make_worker(database_url, SimulatedProvider(), settings)

    def paused(conn: psycopg.Connection[Any]) -> None:
        conn.execute("SELECT 1")
        time.sleep(1.5)  # as a stopped process would, inside the transaction
        conn.execute("SELECT 1")

    try:
        with pytest.raises(DatabaseDown):
            worker._transaction(paused)
        assert worker._transaction(lambda conn: conn.execute("SELECT 1").fetchone()) == (1,)
    finally:
        worker.close()
