"""Prometheus metrics: the API's gauges equal the database's counts."""

from __future__ import annotations

import datetime as dt
import socket
import time
from typing import Any

import psycopg
from prometheus_client.parser import text_string_to_metric_families

from schema import metrics, outages, queue
from schema.merging import by_name
from tests.support import make_worker, run_until_idle, submit
from web import create_app
from workerd.providers import SimulatedProvider

# Chunks of 20 characters; every chunk of a sentence holding "broken" fails on each attempt.
GOOD = "A calm sentence here. "
BAD = "A broken one, alas.. "


def samples(text: str) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """A scrape's samples: sample name -> sorted label pairs -> value."""
    found: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return found


def by_label(scraped: dict[str, Any], name: str, label: str) -> dict[str, float]:
    """One metric's values keyed by one label's value."""
    return {dict(labels)[label]: value for labels, value in scraped.get(name, {}).items()}


def scrape_app(app: Any) -> dict[str, Any]:
    response = app.test_client().get("/metrics")
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.mimetype == "text/plain"
    return samples(response.get_data(as_text=True))


def counts(db: psycopg.Connection[Any], table: str) -> dict[str, int]:
    """The ground truth the gauges must equal: a plain count by status."""
    return dict(db.execute(f"SELECT status, count(*) FROM {table} GROUP BY status").fetchall())


def test_gauges__equal_the_tables_counts_with_every_status_present(
    app: Any, database_url: str, db: psycopg.Connection[Any]
) -> None:
    # Finished jobs, through a real worker: completed, partial success and failed.
    provider = SimulatedProvider(fail_pattern="broken")
    for text in (GOOD * 6, GOOD * 4 + BAD * 2, BAD * 3):
        submit(db, text, 25)
    run_until_idle(database_url, provider)
    # A cancelled job with one chunk succeeded and one running when it was cancelled.
    cancelled = submit(db, GOOD * 5, 25)
    ghost = make_worker(database_url, provider, concurrency=1)
    try:
        ghost.run_once()
    finally:
        ghost.close()
    assert len(queue.claim(db, "ghost-c", 1, lease_s=60)) == 1
    with db.transaction():
        queue.cancel(db, cancelled, by_name("simulated"))
    # A job in flight: chunks held by two workers, a retry due 42 s ago, one not due yet.
    flying = submit(db, GOOD * 10, 25)
    assert len(queue.claim(db, "ghost-a", 2, lease_s=60)) == 2
    assert len(queue.claim(db, "ghost-b", 3, lease_s=60)) == 3
    db.execute(
        """UPDATE chunks SET attempts = 1, next_attempt_at = now() - make_interval(secs => 42)
           WHERE job_id = %s AND seq = 7""",
        (flying,),
    )
    db.execute(
        """UPDATE chunks SET attempts = 1, next_attempt_at = now() + make_interval(mins => 5)
           WHERE job_id = %s AND seq = 8""",
        (flying,),
    )
    submit(db, GOOD * 3, 25)  # a job no worker has seen
    # Circuits: one open 30 s ago, one that opened and closed again.
    t0 = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=30)
    outages.open_circuit(db, "openai@http://down", "refused", failures=3, probe_in_s=1, now=t0)
    outages.open_circuit(db, "openai@http://back", "refused", failures=3, probe_in_s=1, now=t0)
    outages.close_circuit(db, "openai@http://back")

    chunks, jobs = counts(db, "chunks"), counts(db, "jobs")
    # The case this test is for: every status in the tables, and all in one database.
    assert set(chunks) == {"pending", "running", "succeeded", "failed", "cancelled"}, chunks
    assert set(jobs) == {
        "PENDING",
        "PROCESSING",
        "COMPLETED",
        "PARTIAL_SUCCESS",
        "FAILED",
        "CANCELLED",
    }, jobs
    before = time.monotonic()
    scraped = scrape_app(app)
    took = time.monotonic() - before

    assert by_label(scraped, "chunkq_chunks", "status") == chunks
    assert by_label(scraped, "chunkq_jobs", "status") == jobs
    assert by_label(scraped, "chunkq_running_chunks", "worker") == {"ghost-a": 2, "ghost-b": 3}
    oldest = scraped["chunkq_queue_oldest_due_seconds"][()]
    assert 42 <= oldest <= 42 + took + 1, oldest
    assert by_label(scraped, "chunkq_circuit_open", "provider") == {
        "openai@http://down": 1,
        "openai@http://back": 0,
    }
    open_s = by_label(scraped, "chunkq_circuit_open_seconds", "provider")
    assert open_s["openai@http://back"] == 0 and 30 <= open_s["openai@http://down"] <= 32


def test_gauges__every_status_reported_as_0_on_an_empty_queue(app: Any) -> None:
    scraped = scrape_app(app)
    assert by_label(scraped, "chunkq_chunks", "status") == dict.fromkeys(
        ["pending", "running", "succeeded", "failed", "cancelled"], 0
    )
    assert set(by_label(scraped, "chunkq_jobs", "status").values()) == {0}
    assert len(by_label(scraped, "chunkq_jobs", "status")) == 6
    assert scraped["chunkq_queue_oldest_due_seconds"][()] == 0


def test_gauges__only_due_pending_chunks_age_the_queue(
    app: Any, db: psycopg.Connection[Any]
) -> None:
    job = submit(db, GOOD * 2, 25)
    db.execute(
        "UPDATE chunks SET next_attempt_at = now() + make_interval(mins => 1) WHERE job_id = %s",
        (job,),
    )
    assert scrape_app(app)["chunkq_queue_oldest_due_seconds"][()] == 0


# The partial indexes that hold only the unfinished chunks (schema.models).
PARTIAL_INDEXES = {"chunks_fair_idx", "chunks_retry_idx", "chunks_running_idx"}


def test_gauges__no_statement_scans_the_chunks_table(db: psycopg.Connection[Any]) -> None:
    # With sequential scans priced out, a statement that still scans chunks has no index
    # to go by: on a table of millions of finished chunks it would read them all.
    with db.transaction(force_rollback=True):
        db.execute("SET LOCAL enable_seqscan = off")
        for statement in metrics.STATEMENTS:
            plan = db.execute(f"EXPLAIN (FORMAT JSON) {statement}", {"now": None}).fetchone()
            assert plan is not None
            nodes, todo = [], [plan[0][0]["Plan"]]
            while todo:
                node = todo.pop()
                nodes.append(node)
                todo.extend(node.get("Plans", []))
            on_chunks = [n for n in nodes if n.get("Relation Name") == "chunks"]
            assert all(n["Node Type"] != "Seq Scan" for n in on_chunks), statement
            # And not a walk of the whole primary key either: only the backlog's indexes.
            indexes = {
                n["Index Name"] for n in nodes if n.get("Index Name", "").startswith("chunks")
            }
            assert indexes <= PARTIAL_INDEXES, (indexes, statement)


def test_metrics__needs_no_key_when_auth_is_on(database_url: str) -> None:
    app = create_app({"DATABASE_URL": database_url, "TESTING": True, "AUTH": True})
    try:
        assert app.test_client().get("/metrics").status_code == 200
        assert app.test_client().get("/v1/analyze").status_code == 401
    finally:
        app.extensions["chunkq.engine"].dispose()


def test_metrics__unreachable_database_is_a_prompt_503() -> None:
    with socket.socket() as sock:  # bound, never listening: connections are refused
        sock.bind(("127.0.0.1", 0))
        url = f"postgresql://nobody@127.0.0.1:{sock.getsockname()[1]}/none"
        app = create_app({"DATABASE_URL": url, "TESTING": True})
        try:
            started = time.monotonic()
            response = app.test_client().get("/metrics")
            took = time.monotonic() - started
        finally:
            app.extensions["chunkq.engine"].dispose()
    assert response.status_code == 503 and took < 5, (response.status_code, took)
    assert response.mimetype == "application/problem+json" and "Retry-After" in response.headers


def test_metrics__statement_timeout_answers_503_instead_of_hanging(database_url: str) -> None:
    app = create_app({"DATABASE_URL": database_url, "TESTING": True, "METRICS_TIMEOUT_S": 0.3})
    try:
        with psycopg.connect(database_url) as locker:
            # An operator's session holding the table: every read of it waits.
            locker.execute("LOCK TABLE jobs IN ACCESS EXCLUSIVE MODE")
            started = time.monotonic()
            response = app.test_client().get("/metrics")
            took = time.monotonic() - started
            locker.rollback()
        assert response.status_code == 503 and took < 3, (response.status_code, took)
        body = response.get_json()
        assert body["type"] == "urn:chunkq:problem:metrics-timeout", body
        assert "0.3 s" in body["detail"]
        assert app.test_client().get("/metrics").status_code == 200  # and then it answers
    finally:
        app.extensions["chunkq.engine"].dispose()
