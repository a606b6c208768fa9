"""Attempt deadlines and lost leases: a call that never ends costs its chunk one attempt
and its slot nothing; cancelling a job stops its calls at once."""

from __future__ import annotations

import functools
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
import pytest

from schema import queue
from schema.db import connect
from tests.mock_openai import MockOpenAI, Reply, analysis_reply, mock_openai_fixture  # noqa: F401
from tests.processes import start_worker, stop, wait_for
from tests.support import assert_invariants, chunk_rows, job_row, submit
from workerd import loop
from workerd.listen import listener
from workerd.pool import AttemptPool
from workerd.providers import Call, OpenAIProvider, SimulatedProvider
from workerd.settings import Settings
from workerd.worker import Worker


@contextmanager
def running(worker: Worker, *, listen: bool = False, url: str = "") -> Iterator[Worker]:
    """``loop.run(worker)`` in a thread, stopped and joined on exit."""
    wake = listener(functools.partial(connect, url, autocommit=True)) if listen else None
    thread = threading.Thread(target=loop.run, args=(worker,), kwargs={"listen": wake}, daemon=True)
    thread.start()
    try:
        yield worker
    finally:
        worker.stop()
        thread.join(30)
        assert not thread.is_alive(), "the worker did not stop"


def make_worker(url: str, provider: Any, settings: Settings, concurrency: int) -> Worker:
    return Worker(
        settings,
        provider,
        functools.partial(connect, url, autocommit=True),
        concurrency=concurrency,
    )


class Hangs(SimulatedProvider):
    """Blocks forever on chunks that say HANG, ignoring its Call: only the worker can end it."""

    def __init__(self) -> None:
        super().__init__()
        self.released = threading.Event()
        self.calls = 0

    def analyze(self, text: str, call: Call | None = None) -> dict[str, Any]:
        if "HANG" in text:
            self.calls += 1
            self.released.wait()
        return super().analyze(text, call)


def counting_steps(worker: Worker) -> list[int]:
    """Count the worker's finished ``run_once`` steps (in a one-item list the test reads)."""
    steps = [0]
    step_once = worker.run_once

    def counted() -> Any:
        try:
            return step_once()
        finally:
            steps[0] += 1

    worker.run_once = counted  # type: ignore[method-assign]
    return steps


def logged(db: psycopg.Connection[Any], job_id: Any) -> list[tuple[Any, ...]]:
    return db.execute(
        "SELECT seq, attempt, error_class FROM chunk_attempts WHERE job_id = %s ORDER BY id",
        (job_id,),
    ).fetchall()


def test_call_that_never_returns__fails_as_attempt_timeout_and_frees_its_slot(
    database_url: str, db: psycopg.Connection[Any]
) -> None:
    provider = Hangs()
    settings = Settings(
        attempt_timeout_s=0.5, backoff_base_s=0.01, backoff_max_s=0.02, poll_interval_s=0.05
    )
    stuck = submit(db, "HANG here", 100)
    with running(make_worker(database_url, provider, settings, concurrency=1)):
        wait_for(lambda: provider.calls >= 1, 10, "the hanging call to start")
        other = submit(db, "an ordinary text", 100)
        # One slot, taken by a call that never returns: the other job still runs.
        wait_for(lambda: job_row(db, other)["status"] == "COMPLETED", 10, "the other job")
        wait_for(lambda: job_row(db, stuck)["status"] == "FAILED", 10, "the stuck job to fail")
    provider.released.set()
    assert logged(db, stuck) == [(0, n, "AttemptTimeout") for n in (1, 2, 3)]
    [chunk] = chunk_rows(db, stuck)
    assert chunk["status"] == "failed" and "CHUNKQ_ATTEMPT_TIMEOUT_S=0.5" in chunk["error"]
    assert_invariants(db)


def test_trickling_server__attempt_ends_within_the_timeout_and_the_server_sees_it_leave(
    database_url: str, db: psycopg.Connection[Any], mock_openai: MockOpenAI
) -> None:
    def respond(request: Any) -> Reply:
        reply = analysis_reply(request)
        if "TRICKLE" in request.user_text:
            reply.trickle_s = 1.0  # one byte a second: httpx's per-read timeout never fires
        return reply

    mock_openai.fallback = respond
    provider = OpenAIProvider(mock_openai.base_url, None, "m")
    settings = Settings(
        attempt_timeout_s=2.0, backoff_base_s=30, backoff_max_s=60, poll_interval_s=0.05
    )
    stuck = submit(db, "TRICKLE: a reply that never quite ends", 100)
    try:
        with running(make_worker(database_url, provider, settings, concurrency=2)):
            # The reply would take minutes at a byte a second: an attempt that ends within
            # this wait, as AttemptTimeout, was cut off by its deadline.
            wait_for(lambda: logged(db, stuck), 10, "the attempt to end")
            others = [submit(db, f"ordinary text {i}", 100) for i in range(3)]
            for job_id in others:
                wait_for(lambda j=job_id: job_row(db, j)["status"] == "COMPLETED", 10, "jobs")
            # The client hung up on the trickle: the server's send loop saw it.
            assert mock_openai.wait_for(lambda m: m.finished >= 4, timeout=5)
    finally:
        provider.close()
    assert logged(db, stuck) == [(0, 1, "AttemptTimeout")]
    assert chunk_rows(db, stuck)[0]["status"] == "pending"  # retried later, not lost


def test_cancelling_a_job_whose_calls_hang__lets_the_next_job_run_at_once(
    database_url: str, db: psycopg.Connection[Any], mock_openai: MockOpenAI
) -> None:
    def respond(request: Any) -> Reply:
        reply = analysis_reply(request)
        if "HANG" in request.user_text:
            reply.latency_s = 120.0
        return reply

    mock_openai.fallback = respond
    provider = OpenAIProvider(mock_openai.base_url, None, "m")
    # The lease (heartbeat every 200 s), the poll and the calls (120 s) all outlast the waits
    # below: only the cancel notice can free the slots before they time out.
    settings = Settings(lease_s=600, poll_interval_s=600)
    hung = submit(db, "HANG one.\n\nHANG two.", 10)
    try:
        worker = make_worker(database_url, provider, settings, concurrency=2)
        steps = counting_steps(worker)
        with running(worker, listen=True, url=database_url):
            assert mock_openai.wait_for(lambda m: m.in_flight == 2, timeout=10)
            before = steps[0]
            waiting = submit(db, "the next job", 100)
            # Its notice wakes the worker; two more steps ended means one ran wholly after
            # the submit, and with both slots busy it must not have started the job.
            wait_for(lambda: steps[0] >= before + 2, 10, "the worker to see the next job")
            assert job_row(db, waiting)["status"] == "PENDING"
            with db.transaction():
                queue.cancel(db, hung, queue.merge_with(lambda results: {}))
            wait_for(lambda: job_row(db, waiting)["status"] == "COMPLETED", 30, "the next job")
            # Both hanging calls were cut off: the server saw each client leave.
            assert mock_openai.wait_for(lambda m: m.abandoned == 2, timeout=10)
    finally:
        provider.close()
    assert [c["status"] for c in chunk_rows(db, hung)] == ["cancelled", "cancelled"]
    assert logged(db, hung) == []  # an aborted attempt is no failure of the chunk
    assert_invariants(db)


@pytest.mark.slow
def test_sigterm__an_attempt_already_past_its_deadline_counts(
    database_url: str, db: psycopg.Connection[Any], mock_openai: MockOpenAI, tmp_path: Path
) -> None:
    mock_openai.latency_s = 60.0
    job_id = submit(db, "a chunk whose call never returns", 100)
    worker = start_worker(
        database_url,
        log=tmp_path / "worker.log",
        CHUNKQ_PROVIDER="openai",
        OPENAI_BASE_URL=mock_openai.base_url,
        CHUNKQ_ATTEMPT_TIMEOUT_S="1",
        CHUNKQ_SHUTDOWN_GRACE_S="10",
        CHUNKQ_BACKOFF_BASE_S="30",
    )
    try:
        assert mock_openai.wait_for(lambda m: m.in_flight == 1, timeout=30)
        worker.send_signal(signal.SIGTERM)  # during the grace period the deadline passes
        assert worker.wait(15) == 0
    finally:
        stop(worker)
    [chunk] = chunk_rows(db, job_id)
    assert (chunk["status"], chunk["attempts"]) == ("pending", 1)
    assert logged(db, job_id) == [(0, 1, "AttemptTimeout")]


def test_sigterm__an_attempt_within_its_deadline_is_handed_back_uncounted(
    database_url: str, db: psycopg.Connection[Any]
) -> None:
    provider = Hangs()
    settings = Settings(attempt_timeout_s=60, shutdown_grace_s=0.2, poll_interval_s=0.05)
    job_id = submit(db, "HANG until stopped", 100)
    worker = make_worker(database_url, provider, settings, concurrency=1)
    with running(worker):
        wait_for(lambda: provider.calls == 1, 10, "the call to start")
    provider.released.set()
    [chunk] = chunk_rows(db, job_id)
    assert (chunk["status"], chunk["attempts"]) == ("pending", 0)
    assert logged(db, job_id) == []


def test_attempt_pool__a_stuck_thread_is_replaced_and_retires_when_its_call_returns() -> None:
    done: list[str] = []
    finished = threading.Event()

    def record(outcome: str) -> None:
        done.append(outcome)
        finished.set()

    pool: AttemptPool[str] = AttemptPool(1, record)
    release = threading.Event()
    pool.submit(lambda: (release.wait(30), "stuck")[1])
    pool.replace_stuck()
    pool.submit(lambda: "next")
    assert finished.wait(5) and done == ["next"]  # ran while the first call still hangs
    assert pool.threads == 2
    release.set()
    wait_for(lambda: pool.threads == 1, 5, "the surplus thread to retire")
    assert done == ["next", "stuck"]
    pool.stop()
    wait_for(lambda: pool.threads == 0, 5, "the pool to stop")
