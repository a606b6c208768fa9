"""Provider outages: the circuit breaker pauses the queue instead of failing its chunks."""

from __future__ import annotations

import datetime as dt
import time
from typing import Any

import psycopg
import pytest
from flask.testing import FlaskClient

from schema import outages
from tests.mock_openai import MockOpenAI
from tests.processes import holding, wait_for
from tests.support import assert_invariants, chunk_rows, job_row, submit
from tests.test_deadlines import make_worker, running
from workerd.providers import OpenAIProvider
from workerd.settings import Settings

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def at(seconds: float) -> dt.datetime:
    return T0 + dt.timedelta(seconds=seconds)


def test_outages__one_open_row_per_provider_probes_when_due_and_closes(
    db: psycopg.Connection[Any],
) -> None:
    with db.transaction():
        assert outages.open_circuit(db, "p", "refused", failures=3, probe_in_s=1, now=at(0))
        assert not outages.open_circuit(db, "p", "reset", failures=2, probe_in_s=1, now=at(0.5))
        assert outages.open_circuit(db, "other", "down", failures=1, probe_in_s=1, now=at(0))
    with db.transaction():
        assert outages.take_probe(db, "p", max_delay_s=4, now=at(0.9)) is None  # not due yet
        assert outages.take_probe(db, "p", max_delay_s=4, now=at(1.0)) == 2.0
        assert outages.take_probe(db, "p", max_delay_s=4, now=at(1.5)) is None  # one at a time
        assert outages.take_probe(db, "p", max_delay_s=4, now=at(3.0)) == 4.0  # doubled
        assert outages.take_probe(db, "p", max_delay_s=4, now=at(6.9)) is None
        assert outages.take_probe(db, "p", max_delay_s=4, now=at(7.0)) == 4.0  # capped
        assert outages.current(db, "p", now=at(8)) is not None
        assert outages.close_circuit(db, "p", now=at(10)) == 10.0
        assert outages.close_circuit(db, "p", now=at(11)) is None
        assert outages.current(db, "p", now=at(11)) is None
    row = db.execute(
        "SELECT failures, last_error, probes FROM provider_outages WHERE provider = 'p'"
    ).fetchone()
    assert row == (5, "reset", 3)
    [seen] = [o for o in outages.during(db, at(5), at(6)) if o["provider"] == "p"]
    assert (seen["seconds"], seen["failed_calls"], seen["probes"]) == (10.0, 5, 3)
    assert [o["provider"] for o in outages.during(db, at(11), at(12))] == ["other"]


@pytest.mark.slow
def test_provider_outage__pauses_the_queue_and_the_job_completes_with_nothing_failed(
    database_url: str, db: psycopg.Connection[Any], client: FlaskClient
) -> None:
    mock = MockOpenAI(latency_s=0.05).start()
    port = int(mock.base_url.rsplit(":", 1)[1].split("/")[0])
    text = "\n\n".join(f"Paragraph {i} of a long report." for i in range(40))
    job_id = submit(db, text, 40)
    total = job_row(db, job_id)["chunks_total"]
    # Default attempts and backoff; a short probe cap only to keep the test short.
    settings = Settings(poll_interval_s=0.1, circuit_max_s=2.0)
    providers = [OpenAIProvider(mock.base_url, None, "m") for _ in range(2)]
    workers = [make_worker(database_url, p, settings, concurrency=3) for p in providers]
    steps = [0, 0]
    for i, worker in enumerate(workers):
        step_once = worker.run_once

        def counted(i: int = i, step_once: Any = step_once) -> Any:
            steps[i] += 1
            return step_once()

        worker.run_once = counted  # type: ignore[method-assign]
    try:
        with running(workers[0]), running(workers[1]):
            wait_for(lambda: job_row(db, job_id)["chunks_completed"] >= 5, 20, "some progress")
            mock.close()  # the provider goes away mid-job
            with holding(port):  # refusing connections, and ours to come back on
                wait_for(
                    lambda: outages.current(db, providers[0].endpoint), 10, "the circuit to open"
                )
                outage_s = 6.0
                deadline = time.monotonic() + outage_s
                before = sum(steps)
                while time.monotonic() < deadline:  # the outage itself: nothing may fail
                    assert job_row(db, job_id)["chunks_failed"] == 0
                    time.sleep(0.2)
                # While the circuit holds the due work, workers sleep until the next probe
                # rather than spin on it (a spin starves a model server on the same machine).
                # Each worker polls every 0.1 s here (poll_interval_s), plus a wake per probe.
                assert sum(steps) - before < 2 * outage_s * 15
            mock = MockOpenAI(port=port, latency_s=0.05).start()  # back on the same port
            wait_for(lambda: job_row(db, job_id)["status"] == "COMPLETED", 30, "the job")
    finally:
        mock.close()
        for provider in providers:
            provider.close()
    row = job_row(db, job_id)
    assert (row["chunks_completed"], row["chunks_failed"]) == (total, 0)
    # Only the failures that opened the circuit counted: no chunk lost more than one attempt.
    assert max(c["attempts"] for c in chunk_rows(db, job_id)) <= 2
    counted = db.execute("SELECT count(*) FROM chunk_attempts").fetchone()[0]  # type: ignore[index]
    # Before the circuit opens, each worker may count up to its threshold of failures in a
    # row plus the calls it had in flight: 2 workers x (3 + 3).
    assert counted <= 2 * (3 + 3)
    [outage] = client.get(f"/v1/analyze/{job_id}").get_json()["provider_unavailable"]
    assert outage["ended_at"] is not None and outage["seconds"] >= outage_s
    # One probe at a time, backing off to the 2 s cap: a handful, not a flood.
    assert 1 <= outage["probes"] <= outage["seconds"] / 2 + 4
    assert_invariants(db)
