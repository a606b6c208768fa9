"""chunkq behind a real PgBouncer in transaction mode (Debian's ``pgbouncer``, tests/pgbouncer.py).

DATABASE_URL goes through the pooler and DATABASE_DIRECT_URL straight to the server, as the
contract says: no server-side prepared statements or session state on the pooled
connections, LISTEN and migrations on the direct one.

Skipped when pgbouncer is not installed, unless CHUNKQ_REQUIRE_PGBOUNCER=1 (``.ci/run``
sets it) makes that a failure.
"""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from schema.db import connect
from tests.conftest import PgServer
from tests.pgbouncer import PgBouncer, program
from tests.processes import ROOT, environment, gunicorn_process, start_worker, stop, wait_for
from tests.support import FAST, assert_invariants, job_row, submit, terminal
from web.health import migration_heads
from workerd.database import connectors
from workerd.providers.simulated import SimulatedProvider
from workerd.worker import Worker

# Server connections per database: fewer than the clients, so they are really shared.
POOL_SIZE = 4
# What a child's log must never hold after a run through the pooler.
BAD_LOG = re.compile(r"ERROR|CRITICAL|Traceback|prepared statement", re.I)
LISTENING = """SELECT pid FROM pg_stat_activity
               WHERE datname = current_database() AND query ILIKE 'LISTEN %%'"""


@contextmanager
def running_pgbouncer(pg: PgServer, pool_size: int = POOL_SIZE) -> Iterator[PgBouncer]:
    """PgBouncer in transaction mode in front of the tests' server; skipped (or failed,
    with CHUNKQ_REQUIRE_PGBOUNCER=1) when it is not installed."""
    if program() is None:
        if os.environ.get("CHUNKQ_REQUIRE_PGBOUNCER") == "1":
            pytest.fail("CHUNKQ_REQUIRE_PGBOUNCER=1 but pgbouncer is not installed")
        pytest.skip(
            "pgbouncer is not installed (apt-get install pgbouncer);"
            " CHUNKQ_REQUIRE_PGBOUNCER=1 makes this a failure"
        )
    with PgBouncer(pg.url, pool_size=pool_size) as bouncer:
        yield bouncer


@pytest.fixture
def bouncer(pg_server: PgServer) -> Iterator[PgBouncer]:
    with running_pgbouncer(pg_server) as running:
        yield running


def _bad_lines(log: Path) -> list[str]:
    """The lines of a child's log that say something went wrong."""
    return [line for line in log.read_text(errors="replace").splitlines() if BAD_LOG.search(line)]


def _workers(
    pooled: str, direct: str, logs: Path, count: int, *args: str, **env: str
) -> list[subprocess.Popen[bytes]]:
    """``count`` workers on the pooled URL with DATABASE_DIRECT_URL, once each listens."""
    procs = [
        start_worker(pooled, *args, log=logs / f"worker{i}.log", DATABASE_DIRECT_URL=direct, **env)
        for i in range(count)
    ]
    for i in range(count):
        log = logs / f"worker{i}.log"
        wait_for(lambda log=log: "listening for work" in log.read_text(), 30, f"worker {i}")
    return procs


def _text(i: int, words: int) -> str:
    """A text of its own for job ``i``, so the result cache answers none of its chunks."""
    return f"Document {i}. " + " ".join(f"word{i}x{n}." for n in range(words))


# -- end to end ----------------------------------------------------------------------------


@pytest.mark.slow
def test_e2e_through_pgbouncer__every_post_accepted_every_job_completed(
    database_url: str, db: psycopg.Connection[Any], bouncer: PgBouncer, tmp_path: Path
) -> None:
    pooled = bouncer.url(database_url)
    sim = {"CHUNKQ_PROVIDER": "simulated", "CHUNKQ_SIM_LATENCY_MS": "2"}
    workers = _workers(pooled, database_url, tmp_path, 2, "--concurrency", "16", **sim)
    log = tmp_path / "gunicorn.log"
    try:
        env = {"DATABASE_DIRECT_URL": database_url, **sim}
        with gunicorn_process(pooled, workers=2, log=log, env=env) as (base, _master):
            start = threading.Barrier(60)

            def post(i: int) -> httpx.Response:
                with httpx.Client(base_url=base, timeout=30) as http:
                    start.wait(30)
                    body = {"raw_text": _text(i, 400), "max_chunk_chars": 300}
                    return http.post("/v1/analyze", json=body)

            with ThreadPoolExecutor(60) as pool:
                responses = list(pool.map(post, range(60)))
            refused = [r.text for r in responses if r.status_code != 202]
            assert refused == []
            clients = [c for c in bouncer.show("CLIENTS") if c["database"] == db.info.dbname]
            assert len(clients) > POOL_SIZE  # the server connections really were shared
            ids = [r.json()["job_id"] for r in responses]

            def completed() -> bool:
                row = db.execute(
                    "SELECT count(*) FROM jobs WHERE id = ANY(%s) AND status = 'COMPLETED'",
                    (ids,),
                ).fetchone()
                return bool(row and row[0] == len(ids))

            wait_for(completed, 120, "every job to complete", interval=0.1)
    finally:
        for proc in workers:
            stop(proc)
    assert [proc.returncode for proc in workers] == [0, 0]
    for path in [log, *(tmp_path / f"worker{i}.log" for i in range(2))]:
        assert _bad_lines(path) == [], path.name
    assert_invariants(db)


# -- wake-ups ------------------------------------------------------------------------------


@pytest.mark.slow
def test_pickup_through_pgbouncer__by_listen_on_the_direct_url(
    database_url: str, db: psycopg.Connection[Any], bouncer: PgBouncer, tmp_path: Path
) -> None:
    pooled = bouncer.url(database_url)
    # Polling alone would take up to the rescue interval (5 s) to find a job: every pickup
    # within a second, five times running, is the LISTEN.
    env = {"CHUNKQ_PROVIDER": "simulated", "CHUNKQ_POLL_INTERVAL_S": "30"}
    workers = _workers(pooled, database_url, tmp_path, 2, "--concurrency", "4", **env)
    pickups: list[float] = []
    try:
        wait_for(lambda: len(db.execute(LISTENING).fetchall()) == 2, 30, "2 LISTEN sessions")
        listening = {row[0] for row in db.execute(LISTENING)}
        # Both are sessions of their own, not server connections of the pooler's.
        assert listening.isdisjoint(bouncer.server_pids())
        # Submitted as the API does: through the pooler, the NOTIFY inside the transaction.
        with connect(pooled, autocommit=True, pooled=True) as client:
            for i in range(5):
                started = time.monotonic()
                job_id = submit(client, _text(i, 40), 100)
                wait_for(
                    lambda job_id=job_id: job_row(db, job_id)["status"] != "PENDING",
                    10,
                    f"job {i} to be claimed",
                    interval=0.005,
                )
                pickups.append(time.monotonic() - started)
                wait_for(lambda job_id=job_id: terminal(db, job_id), 10, f"job {i} to finish")
        assert {row[0] for row in db.execute(LISTENING)}.isdisjoint(bouncer.server_pids())
    finally:
        for proc in workers:
            stop(proc)
    assert max(pickups) < 1.0, pickups
    for i in range(2):
        assert _bad_lines(tmp_path / f"worker{i}.log") == []


# -- migrations ----------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize(
    "command", [("alembic", "upgrade", "head"), ("chunkq", "migrate")], ids=" ".join
)
def test_migrations_with_pgbouncer__run_on_the_direct_url(
    empty_database_url: str, bouncer: PgBouncer, command: tuple[str, ...]
) -> None:
    pooled = bouncer.url(empty_database_url)
    env = environment(pooled, DATABASE_DIRECT_URL=empty_database_url)
    done = subprocess.run(
        [sys.executable, "-m", *command],
        cwd=ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    with psycopg.connect(empty_database_url) as conn:
        name = conn.info.dbname
        versions = {row[0] for row in conn.execute("SELECT version_num FROM alembic_version")}
    assert versions == migration_heads()
    # The pooler never opened a server connection to this database: nothing went through it.
    assert [s for s in bouncer.show("SERVERS") if s["database"] == name] == []


# -- no prepared statements on pooled connections ------------------------------------------


def test_claims_through_pgbouncer__two_workers_sharing_one_server_connection(
    database_url: str, db: psycopg.Connection[Any], pg_server: PgServer
) -> None:
    """Two workers stepping in turn through a pool of one server connection: psycopg's
    prepared statements (after 5 runs of a query) would collide on it at once."""
    settings = dataclasses.replace(FAST, database_direct_url=database_url)
    jobs = [submit(db, _text(i, 200), 100) for i in range(6)]
    with running_pgbouncer(pg_server, pool_size=1) as bouncer:
        work, _listen = connectors(settings, bouncer.url(database_url))
        workers = [Worker(settings, SimulatedProvider(), work, concurrency=2) for _ in range(2)]
        try:
            for _ in range(200):
                for worker in workers:
                    worker.run_once()
                if all(terminal(db, job_id) for job_id in jobs):
                    break
        finally:
            for worker in workers:
                worker.close()
    assert [job_row(db, job_id)["status"] for job_id in jobs] == ["COMPLETED"] * len(jobs)
    steps = db.execute("SELECT count(*) FROM chunks WHERE attempts > 0").fetchone()
    assert steps is not None and steps[0] > 20  # many claims, each statement run far past 5
    assert_invariants(db)


def test_api_through_pgbouncer__two_apps_sharing_one_server_connection(
    database_url: str, pg_server: PgServer
) -> None:
    """The API's pooled engine prepares nothing either: two apps taking turns on one server
    connection, ten submits each (committed transactions, which keep psycopg's prepared
    statements, where a read's rollback would drop them)."""
    from web import create_app

    with running_pgbouncer(pg_server, pool_size=1) as bouncer:
        config = {
            "DATABASE_URL": bouncer.url(database_url),
            "DATABASE_DIRECT_URL": database_url,
            "PROVIDER": "simulated",
            "AUTH": False,
        }
        apps = [create_app(config), create_app(config)]
        try:
            clients = [app.test_client() for app in apps]
            locations = []
            for i in range(10):
                for n, client in enumerate(clients):
                    body = {"raw_text": _text(i * 2 + n, 20), "max_chunk_chars": 50}
                    posted = client.post("/v1/analyze", json=body)
                    assert posted.status_code == 202, (i, n, posted.get_data(as_text=True))
                    locations.append(posted.headers["Location"])
            for location in locations:
                assert clients[0].get(location).status_code == 200
        finally:
            for app in apps:
                app.extensions["chunkq.engine"].dispose()


def test_connect__pooled_whenever_a_direct_url_is_set(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With DATABASE_DIRECT_URL set, a connection that does not say otherwise is taken to go
    through the pooler (the command line's, the webhook sender's); the direct ones say so."""
    monkeypatch.setenv("DATABASE_DIRECT_URL", database_url)
    with connect(database_url) as pooled, connect(database_url, pooled=False) as direct:
        assert pooled.prepare_threshold is None
        assert b"statement_timeout" not in (pooled.pgconn.options or b"")
        assert direct.prepare_threshold is not None
        assert b"statement_timeout" in (direct.pgconn.options or b"")
    monkeypatch.delenv("DATABASE_DIRECT_URL")
    with connect(database_url) as plain:
        assert plain.prepare_threshold is not None
        assert b"statement_timeout" in (plain.pgconn.options or b"")
