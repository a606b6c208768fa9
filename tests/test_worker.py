"""The worker loop on a real PostgreSQL: outcomes, retries with backoff, finalization, races."""

from __future__ import annotations

import datetime as dt
import random
import threading
import time
import uuid
from collections import Counter
from typing import Any

import psycopg
import pytest

from tests.support import (
    assert_invariants,
    chunk_rows,
    drain,
    install_audit,
    job_row,
    make_worker,
    moves,
    submit,
)
from workerd import loop
from workerd.providers import RetryableError, SimulatedProvider
from workerd.retry import backoff
from workerd.settings import Settings

PARAGRAPHS = "\n\n".join(f"Paragraph {i} talks about topic {i}." for i in range(8))


def test_one_chunk_always_failing__gives_partial_success_with_every_attempt_listed(
    database_url: str, db: psycopg.Connection[Any], client: Any
) -> None:
    job_id = submit(db, PARAGRAPHS, 40)
    total = job_row(db, job_id)["chunks_total"]
    provider = SimulatedProvider(fail_pattern="topic 3")
    worker = make_worker(database_url, provider, concurrency=4)
    try:
        row = drain(worker, db, job_id)
    finally:
        worker.close()
    assert row["status"] == "PARTIAL_SUCCESS"
    assert (row["chunks_completed"], row["chunks_failed"]) == (total - 1, 1)
    entries = row["analysis_result"]["chunks"]
    assert [e["index"] for e in entries] == list(range(total))
    assert "".join(PARAGRAPHS[e["start"] : e["end"]] for e in entries) == PARAGRAPHS
    [bad] = [e for e in entries if "topic 3" in PARAGRAPHS[e["start"] : e["end"]]]
    assert bad["status"] == "failed" and "result" not in bad and bad["error"]
    for entry in entries:
        if entry is not bad:
            text = PARAGRAPHS[entry["start"] : entry["end"]]
            assert entry["status"] == "succeeded"
            assert entry["result"] == provider.analyze(text)
    logged = db.execute(
        "SELECT seq, attempt, error_class FROM chunk_attempts WHERE job_id = %s ORDER BY attempt",
        (job_id,),
    ).fetchall()
    assert logged == [(bad["index"], n, "RetryableError") for n in (1, 2, 3)]
    report = client.get(f"/v1/analyze/{job_id}").get_json()
    assert report["status"] == "PARTIAL_SUCCESS" and report["percent"] == 100.0
    assert [(e["chunk_index"], e["attempt"]) for e in report["errors"]] == [
        (bad["index"], n) for n in (1, 2, 3)
    ]
    assert report["analysis_result"] == row["analysis_result"]
    assert_invariants(db)


def test_every_chunk_failing__gives_failed(database_url: str, db: psycopg.Connection[Any]) -> None:
    job_id = submit(db, PARAGRAPHS, 40)
    worker = make_worker(database_url, SimulatedProvider(fail_rate=1.0), concurrency=8)
    try:
        row = drain(worker, db, job_id)
    finally:
        worker.close()
    assert row["status"] == "FAILED"
    assert row["chunks_failed"] == row["chunks_total"] and row["chunks_completed"] == 0
    assert all(e["status"] == "failed" for e in row["analysis_result"]["chunks"])
    assert_invariants(db)


class FakeClock:
    def __init__(self) -> None:
        self.now = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)

    def __call__(self) -> dt.datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += dt.timedelta(seconds=seconds)


def test_backoff__grows_exponentially_within_jitter_band_and_cap() -> None:
    rng = random.Random(7)
    for attempt in range(1, 12):
        ceiling = min(30.0, 2.0 * 2 ** (attempt - 1))
        delays = [backoff(attempt, base_s=2.0, max_s=30.0, rng=rng) for _ in range(200)]
        assert all(ceiling / 2 <= d <= ceiling for d in delays)
        assert max(delays) - min(delays) > ceiling / 4  # jitter is really there
    low = random.Random()
    low.random = lambda: 0.0  # type: ignore[method-assign]
    assert [backoff(a, base_s=1.0, max_s=60.0, rng=low) for a in (1, 2, 3, 4)] == [
        0.5,
        1.0,
        2.0,
        4.0,
    ]


def test_retry__waits_for_next_attempt_at_on_an_injected_clock(
    database_url: str, db: psycopg.Connection[Any]
) -> None:
    job_id = submit(db, "flaky chunk", 100)
    clock = FakeClock()
    settings = Settings(backoff_base_s=4.0, backoff_max_s=60.0, max_attempts=5)
    calls: list[int] = []

    class FailTwice:
        name = "fail-twice"

        def analyze(self, text: str, call: Any = None) -> dict[str, Any]:
            calls.append(1)
            if len(calls) <= 2:
                raise RetryableError("not yet")
            return {"ok": True}

        def summarize(self, results: list[Any]) -> dict[str, Any]:
            return {}

    rng = random.Random(3)
    expected = random.Random(3)
    worker = make_worker(database_url, FailTwice(), settings, clock=clock, rng=rng)
    try:
        failed_at = clock()
        assert worker.run_once().claimed == 1
        delay = backoff(1, base_s=4.0, max_s=60.0, rng=expected)
        assert 2.0 <= delay <= 4.0
        due = chunk_rows(db, job_id)[0]["next_attempt_at"]
        assert due == failed_at + dt.timedelta(seconds=delay)
        clock.advance(delay - 0.01)
        assert worker.run_once().claimed == 0
        clock.advance(0.01)
        assert worker.run_once().claimed == 1
        second = backoff(2, base_s=4.0, max_s=60.0, rng=expected)
        assert 4.0 <= second <= 8.0
        assert chunk_rows(db, job_id)[0]["next_attempt_at"] == clock() + dt.timedelta(
            seconds=second
        )
        clock.advance(second)
        step = worker.run_once()
        assert step.claimed == 1 and step.finalized == {job_id: "COMPLETED"}
    finally:
        worker.close()
    assert len(calls) == 3


def test_race__many_threads_drain_many_jobs_each_chunk_and_job_finished_once(
    database_url: str, db: psycopg.Connection[Any]
) -> None:
    # Count every transition to succeeded with a trigger: an exactly-once claim must be
    # observed, not inferred from the final state.
    install_audit(db)
    jobs = [submit(db, f"job {j}: " + "lorem ipsum dolor sit amet " * 40, 50) for j in range(12)]
    total = db.execute("SELECT count(*) FROM chunks").fetchone()[0]  # type: ignore[index]
    finalized: Counter[uuid.UUID] = Counter()
    lock = threading.Lock()
    errors: list[BaseException] = []

    def run() -> None:
        worker = make_worker(database_url, SimulatedProvider(), concurrency=5)
        try:
            idle = 0
            while idle < 3:
                step = worker.run_once()
                with lock:
                    finalized.update(step.finalized.keys())
                idle = 0 if step.busy else idle + 1
        except BaseException as exc:
            errors.append(exc)
        finally:
            worker.close()

    # Daemon threads: one that never ends fails the assertion below instead of hanging pytest.
    threads = [threading.Thread(target=run, daemon=True) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    stuck = [thread.name for thread in threads if thread.is_alive()]
    assert stuck == [], f"worker threads still running after 120 s: {stuck}"
    assert errors == []
    assert sorted(finalized) == sorted(jobs) and set(finalized.values()) == {1}
    succeeded = [(job_id, seq) for job_id, seq, _, new in moves(db, "chunks") if new == "succeeded"]
    assert (len(succeeded), len(set(succeeded))) == (total, total)
    assert (
        db.execute(
            "SELECT count(*) FROM chunks WHERE status <> 'succeeded' OR attempts <> 1"
        ).fetchone()[0]
        == 0
    )  # type: ignore[index]
    assert {job_row(db, j)["status"] for j in jobs} == {"COMPLETED"}
    assert_invariants(db)


def test_submit__goes_through_while_every_worker_slot_is_stuck_in_a_provider_call(
    database_url: str, db: psycopg.Connection[Any], app: Any
) -> None:
    # The calls are held until the end of the test, so if a worker kept a transaction or a
    # lock across a call, the submit would wait for it forever and the join below fail.
    class Held(SimulatedProvider):
        def __init__(self) -> None:
            super().__init__()
            self.release = threading.Event()
            self.calls = 0

        def analyze(self, text: str, call: Any = None) -> Any:
            self.calls += 1
            self.release.wait(60)
            return super().analyze(text)

    provider = Held()
    submit(db, "busy " * 200, 50)
    slow = make_worker(database_url, provider, concurrency=4)
    thread = threading.Thread(target=loop.run, args=(slow,), daemon=True)
    thread.start()
    answers: list[Any] = []
    try:
        deadline = time.monotonic() + 10
        while provider.calls < 4:
            assert time.monotonic() < deadline, "the worker never filled its 4 slots"
            time.sleep(0.01)
        poster = threading.Thread(
            target=lambda: answers.append(
                app.test_client().post(
                    "/v1/analyze", json={"raw_text": "new work " * 500, "max_chunk_chars": 200}
                )
            ),
            daemon=True,
        )
        poster.start()
        poster.join(30)
        assert not poster.is_alive(), "the submit waited for the workers' provider calls"
        assert provider.calls == 4 and not provider.release.is_set()  # still stuck meanwhile
        [response] = answers
        assert response.status_code == 202
        job_id = response.get_json()["job_id"]
        # Nothing slow in the request: the job and all its chunks in one transaction.
        written = db.execute(
            """SELECT count(*), count(DISTINCT c.xmin::text), bool_and(c.xmin = j.xmin)
               FROM chunks c JOIN jobs j ON j.id = c.job_id WHERE c.job_id = %s""",
            (job_id,),
        ).fetchone()
        assert written == (response.get_json()["chunks_total"], 1, True)
    finally:
        slow.settings = Settings(shutdown_grace_s=0)
        slow.stop()
        provider.release.set()
        thread.join(timeout=10)
    assert not thread.is_alive(), "Worker.run did not return within 10 s of stop()"


@pytest.mark.parametrize(
    "result",
    [
        {"text": "nul \x00 inside"},
        {"score": float("nan")},
        ["not", "an", "object"],
        {"k": object()},
    ],
)
def test_unstorable_result__fails_the_chunk_not_the_worker(
    database_url: str, db: psycopg.Connection[Any], result: Any
) -> None:
    job_id = submit(db, "one. two. three.", 6)

    class Bad(SimulatedProvider):
        def analyze(self, text: str, call: Any = None) -> Any:
            return result if text.startswith("two") else super().analyze(text)

    worker = make_worker(database_url, Bad(), concurrency=4)
    try:
        row = drain(worker, db, job_id)
    finally:
        worker.close()
    assert row["status"] == "PARTIAL_SUCCESS"
    logged = db.execute("SELECT error_class, error FROM chunk_attempts").fetchall()
    assert len(logged) == 1 and logged[0][0] == "PermanentError"
    assert_invariants(db)


def test_encode__accepts_a_literal_backslash_u0000_and_refuses_a_real_nul() -> None:
    from workerd.attempts import encode
    from workerd.providers import PermanentError

    assert encode({"text": "a \\u0000 b"}) == '{"text":"a \\\\u0000 b"}'
    for bad in ({"text": "a \x00 b"}, {"k\x00": 1}, {"text": "\\\x00"}):
        with pytest.raises(PermanentError, match="NUL"):
            encode(bad)
