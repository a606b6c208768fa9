"""Prometheus metrics: the API's gauges equal the database's counts, and a worker process's
counters move with the chunks it processes, on its own port."""

from __future__ import annotations

import datetime as dt
import json
import re
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from chunkq.up import _metrics_ports
from schema import metrics, outages, queue
from schema.merging import by_name
from tests.processes import ROOT, environment, free_port, start_worker, stop, wait_for
from tests.support import FAST, make_worker, run_until_idle, submit, terminal
from tests.test_cli import chunkq_up, cli_env
from web import create_app
from workerd.metrics import Metrics
from workerd.providers import ProviderUnavailable, SimulatedProvider

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


def test_metrics_read__bounds_the_whole_read_not_each_statement(
    db: psycopg.Connection[Any],
) -> None:
    # Each statement gets what is left of one deadline: four statements that each took
    # nearly the timeout must not add up to four times it.
    with db.transaction():
        metrics.read(db, timeout_s=5.0)
        [(left,)] = db.execute("SELECT current_setting('statement_timeout')").fetchall()
    assert left.endswith("ms") or left.endswith("s"), left
    left_ms = int(left[:-2]) if left.endswith("ms") else int(left[:-1]) * 1000
    assert 0 < left_ms < 5000, left
    with db.transaction(), pytest.raises(psycopg.errors.QueryCanceled):
        metrics.read(db, timeout_s=0.0)  # past the deadline: not one more statement


# -- the worker's own metrics ----------------------------------------------------------------


def test_worker_metrics__series_exist_at_zero_before_anything_happens() -> None:
    # A series that appears only at its first increment has no start for rate() to see.
    found = samples(generate_latest(Metrics().registry).decode())
    assert found["chunkq_worker_tokens_total"] == {
        (("type", "prompt"),): 0,
        (("type", "completion"),): 0,
    }
    assert found["chunkq_worker_claims_total"] == {
        (("kind", "chunk"),): 0,
        (("kind", "reduce"),): 0,
    }


def test_worker_metrics__count_tokens_claims_records_and_calls_in_run_once(
    database_url: str, db: psycopg.Connection[Any]
) -> None:
    class Reporting:
        """A provider that reports its token use, as OpenAI-compatible servers do."""

        name = "simulated"

        def analyze(self, text: str, call: Any = None) -> dict[str, Any]:
            return {"chars": len(text), "usage": {"prompt_tokens": 7, "completion_tokens": 3}}

        def summarize(self, results: list[Any]) -> dict[str, Any]:
            return {}

    job = submit(db, GOOD * 4, 25)
    counted = Metrics()
    worker = make_worker(database_url, Reporting(), FAST, concurrency=8, metrics=counted)
    try:
        worker.run_once()
    finally:
        worker.close()
    assert terminal(db, job)
    value = counted.registry.get_sample_value
    assert value("chunkq_worker_tokens_total", {"type": "prompt"}) == 4 * 7
    assert value("chunkq_worker_tokens_total", {"type": "completion"}) == 4 * 3
    assert value("chunkq_worker_claims_total", {"kind": "chunk"}) == 4
    assert value("chunkq_worker_records_total", {"outcome": "succeeded"}) == 4
    labels = {"kind": "chunk", "outcome": "success", "error_class": ""}
    assert value("chunkq_worker_provider_calls_total", labels) == 4
    assert value("chunkq_worker_provider_call_seconds_count", {"kind": "chunk"}) == 4
    assert value("chunkq_worker_in_flight") == 0
    assert value("chunkq_worker_info", {"worker_id": worker.worker_id}) == 1


def test_worker_metrics__a_failure_the_open_circuit_hands_back_is_counted_as_such(
    database_url: str, db: psycopg.Connection[Any]
) -> None:
    class Down:
        """A provider whose server cannot be reached."""

        name = "simulated"

        def analyze(self, text: str, call: Any = None) -> dict[str, Any]:
            raise ProviderUnavailable("connection refused")

        def summarize(self, results: list[Any]) -> dict[str, Any]:
            return {}

    job = submit(db, GOOD, 25)
    # The circuit is open already, its probe due: the worker's one call is the probe.
    outages.open_circuit(db, "simulated", "refused", failures=3, probe_in_s=0)
    counted = Metrics()
    worker = make_worker(database_url, Down(), FAST, concurrency=2, metrics=counted)
    try:
        assert worker.run_once().claimed == 1
    finally:
        worker.close()
    row = db.execute("SELECT status, attempts FROM chunks WHERE job_id = %s", (job,)).fetchone()
    assert row == ("pending", 0)  # back in the queue, the attempt not counted
    value = counted.registry.get_sample_value
    assert value("chunkq_worker_records_total", {"outcome": "handed_back"}) == 1
    assert value("chunkq_worker_records_total", {"outcome": "retried"}) == 0
    labels = {"kind": "chunk", "outcome": "error", "error_class": "ProviderUnavailable"}
    assert value("chunkq_worker_provider_calls_total", labels) == 1


def scrape_worker(port: int) -> dict[str, Any] | None:
    try:
        response = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2)
    except httpx.TransportError:
        return None
    return samples(response.text) if response.status_code == 200 else None


@pytest.mark.slow
def test_worker_process__counters_move_with_the_chunks_it_processes(
    database_url: str, db: psycopg.Connection[Any], tmp_path: Path
) -> None:
    port = free_port()
    log = tmp_path / "worker.log"
    proc = start_worker(
        database_url,
        "--metrics-port",
        str(port),
        log=log,
        CHUNKQ_PROVIDER="simulated",
        CHUNKQ_SIM_FAIL_PATTERN="broken",
        CHUNKQ_MAX_ATTEMPTS="3",
        CHUNKQ_BACKOFF_BASE_S="0",
        CHUNKQ_BACKOFF_MAX_S="0",
    )
    try:

        def up() -> dict[str, Any] | None:
            assert proc.poll() is None, log.read_text()
            return scrape_worker(port)

        before = wait_for(up, 30, "the worker's metrics port")
        assert set(by_label(before, "chunkq_worker_records_total", "outcome").values()) == {0}
        assert set(before["chunkq_worker_provider_calls_total"].values()) == {0}
        assert before["chunkq_worker_in_flight"][()] == 0
        # Distinct texts (a number each), so the result cache answers none of them.
        text = "".join(f"{i:03d} {BAD if i % 4 == 1 else GOOD}" for i in range(12))
        job = submit(db, text, 30)
        wait_for(lambda: terminal(db, job), 60, "the job to finish", interval=0.05)
        rows = db.execute(
            "SELECT status, count(*), sum(attempts) FROM chunks WHERE job_id = %s GROUP BY status",
            (job,),
        ).fetchall()
        done = {status: (int(n), int(attempts)) for status, n, attempts in rows}
        assert set(done) == {"succeeded", "failed"}, done
        attempts = sum(a for _, a in done.values())
        failed_attempts = done["failed"][1]
        assert failed_attempts == 3 * done["failed"][0]

        def settled() -> dict[str, Any] | None:
            after = scrape_worker(port)
            records = by_label(after or {}, "chunkq_worker_records_total", "outcome")
            return after if sum(records.values()) == attempts else None

        after = wait_for(settled, 10, "every outcome counted")
    finally:
        assert stop(proc) == 0, log.read_text()
    records = by_label(after, "chunkq_worker_records_total", "outcome")
    assert records["succeeded"] == done["succeeded"][0]
    assert records["failed"] == done["failed"][0]
    assert records["retried"] == 2 * done["failed"][0]
    assert by_label(after, "chunkq_worker_claims_total", "kind") == {"chunk": attempts, "reduce": 0}
    calls = after["chunkq_worker_provider_calls_total"]
    assert calls == {
        (("error_class", ""), ("kind", "chunk"), ("outcome", "success")): done["succeeded"][0],
        (("error_class", "RetryableError"), ("kind", "chunk"), ("outcome", "error")): (
            failed_attempts
        ),
    }
    assert after["chunkq_worker_provider_call_seconds_count"] == {(("kind", "chunk"),): attempts}
    assert after["chunkq_worker_in_flight"][()] == 0
    assert after.get("chunkq_worker_rescues_total", {(): 0}) == {(): 0}
    assert after.get("chunkq_worker_cache_hits_total", {(): 0}) == {(): 0}


def run_workerd(database_url: str, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """``python -m workerd ARGS`` expected to exit at once (a bad setting)."""
    return subprocess.run(
        [sys.executable, "-m", "workerd", *args],
        cwd=ROOT,
        env=environment(database_url, CHUNKQ_PROVIDER="simulated", **env),
        capture_output=True,
        text=True,
        timeout=30,
    )


@pytest.mark.parametrize(
    ("args", "env", "says"),
    [
        ((), {"CHUNKQ_METRICS_PORT": "70000"}, "CHUNKQ_METRICS_PORT=70000 is not a port"),
        ((), {"CHUNKQ_METRICS_PORT": "nine"}, "CHUNKQ_METRICS_PORT='nine' is not a valid"),
        (("--metrics-port", "0"), {}, "CHUNKQ_METRICS_PORT=0 is not a port"),
        (("--metrics-port", "x"), {}, "--metrics-port: invalid int value"),
    ],
)
def test_worker_process__bad_metrics_port_is_a_clear_error_exit_2(
    database_url: str, args: tuple[str, ...], env: dict[str, str], says: str
) -> None:
    done = run_workerd(database_url, *args, **env)
    assert done.returncode == 2 and says in done.stderr, done.stderr


def test_worker_process__metrics_port_in_use_is_a_clear_error_exit_2(database_url: str) -> None:
    with socket.create_server(("0.0.0.0", 0)) as taken:
        port = taken.getsockname()[1]
        done = run_workerd(database_url, "--metrics-port", str(port))
    assert done.returncode == 2, done.stderr
    assert f"cannot serve metrics on 0.0.0.0:{port}" in done.stderr, done.stderr
    assert "Address already in use" in done.stderr


def test_up__gives_each_worker_its_own_metrics_port() -> None:
    assert _metrics_ports(None, 3) == []
    assert _metrics_ports(9100, 3) == [9100, 9101, 9102]
    with pytest.raises(ValueError, match="no room for 2 workers"):
        _metrics_ports(65535, 2)


@pytest.mark.slow
def test_up__each_worker_serves_its_metrics_on_the_next_port(
    database_url: str, tmp_path: Path
) -> None:
    base_port = free_port()
    env = cli_env(
        DATABASE_URL=database_url,
        CHUNKQ_PROVIDER="simulated",
        CHUNKQ_HOME=str(tmp_path),
        CHUNKQ_METRICS_PORT=str(base_port),
    )
    with chunkq_up(env, "--workers", "2", "--web-workers", "1") as (_up, base, log):
        ids = []
        for port in (base_port, base_port + 1):
            scraped = wait_for(lambda p=port: scrape_worker(p), 30, f"metrics on port {port}")
            ids += [dict(labels)["worker_id"] for labels in scraped["chunkq_worker_info"]]
        assert len(set(ids)) == 2, ids  # two workers, one port each
        api = samples(httpx.get(f"{base}/metrics", timeout=10).text)
        assert len(by_label(api, "chunkq_jobs", "status")) == 6, "".join(log)


def test_grafana_dashboard__uses_only_metrics_that_exist(app: Any) -> None:
    dashboard = json.loads((ROOT / "grafana-dashboard.json").read_text())
    used = {
        name
        for panel in dashboard["panels"]
        for target in panel.get("targets", [])
        for name in re.findall(r"chunkq_[a-z_]+", target["expr"])
    }
    response = app.test_client().get("/metrics")
    known = {family.name for family in text_string_to_metric_families(response.text)}
    for family in Metrics().registry.collect():
        known |= {family.name + suffix for suffix in ("", "_total", "_bucket", "_count", "_sum")}
    assert used and used <= known, used - known


def test_worker_metrics__two_workers_in_one_process_count_apart() -> None:
    one, two = Metrics(), Metrics()
    one.claims.labels("chunk").inc(3)
    assert one.registry.get_sample_value("chunkq_worker_claims_total", {"kind": "chunk"}) == 3
    assert two.registry.get_sample_value("chunkq_worker_claims_total", {"kind": "chunk"}) == 0
