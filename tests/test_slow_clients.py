"""The default deployment (``gunicorn 'web:create_app()'``) under slow and idle clients, and
with requests waiting on PostgreSQL: neither may hold up the others."""

from __future__ import annotations

import functools
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import psycopg
import pytest

from tests.processes import ROOT, environment, free_port, gunicorn, stop, wait_for
from tests.slowloris import SlowClients

pytestmark = pytest.mark.slow


def _answer_within(seconds: float, request: Any) -> httpx.Response:
    """``request()``, failing the test if it takes longer than ``seconds``."""
    start = time.monotonic()
    try:
        response = request()
    except httpx.TimeoutException as exc:
        raise AssertionError(f"no answer within {seconds}s") from exc
    took = time.monotonic() - start
    assert took < seconds, f"answered after {took:.2f}s"
    return response


def test_api__answers_within_a_second_while_50_slow_clients_hold_connections(
    database_url: str, db: psycopg.Connection[Any]
) -> None:
    with gunicorn(database_url) as base:
        port = urlsplit(base).port
        assert port is not None
        # 40 trickling their headers a byte a second and 10 sending nothing: with gthread's
        # 2 workers x 4 threads this left /healthz answering about 1 time in 12.
        with SlowClients(port, trickling=40, idle=10) as slow:
            time.sleep(2)  # every slow connection accepted and a byte or two in
            deadline = time.monotonic() + 6
            answered = 0
            while time.monotonic() < deadline:
                # A fresh connection each time: a new client is the one slow clients starve.
                health = _answer_within(1, lambda: httpx.get(f"{base}/healthz", timeout=1))
                assert health.status_code == 200
                answered += 1
                if answered % 5 == 1:
                    post = _answer_within(
                        1,
                        lambda: httpx.post(
                            f"{base}/v1/analyze", json={"raw_text": "Some text."}, timeout=1
                        ),
                    )
                    assert post.status_code == 202
                    job = post.json()["job_id"]
                    got = _answer_within(
                        1, functools.partial(httpx.get, f"{base}/v1/analyze/{job}", timeout=1)
                    )
                    assert got.status_code == 200 and got.json()["status"] == "PENDING"
                time.sleep(0.1)
            assert slow.held == 50
    assert answered >= 10
    jobs = db.execute("SELECT count(*) FROM jobs").fetchone()
    assert jobs is not None and jobs[0] == (answered + 4) // 5


def test_api__requests_waiting_on_postgres_do_not_block_each_other(
    database_url: str, db: psycopg.Connection[Any]
) -> None:
    # One worker and a pool of 3 + 3 connections, so both limits are in play: four POSTs
    # blocked in PostgreSQL, /healthz beside them, then four more than the pool can hold.
    with gunicorn(database_url, workers=1, CHUNKQ_DB_POOL_SIZE="3") as base:
        results: list[int] = []

        def submit() -> None:
            response = httpx.post(f"{base}/v1/analyze", json={"raw_text": "Text."}, timeout=30)
            results.append(response.status_code)

        with psycopg.connect(database_url) as locker:
            locker.execute("LOCK TABLE jobs IN ACCESS EXCLUSIVE MODE")
            posts = [threading.Thread(target=submit) for _ in range(4)]
            for post in posts:
                post.start()
            wait_for(lambda: _waiting_on_lock(db) == 4, 10, "four POSTs waiting on the lock")
            for _ in range(3):
                health = _answer_within(1, lambda: httpx.get(f"{base}/healthz", timeout=1))
                assert health.status_code == 200
            more = [threading.Thread(target=submit) for _ in range(4)]
            for post in more:
                post.start()
            # The pool holds 6: two of these wait in SQLAlchemy's queue, not in PostgreSQL.
            wait_for(lambda: _waiting_on_lock(db) == 6, 10, "six POSTs waiting on the lock")
            assert results == []
            locker.rollback()
        for post in posts + more:
            post.join(20)
    assert results == [202] * 8
    jobs = db.execute("SELECT count(*) FROM jobs").fetchone()
    assert jobs is not None and jobs[0] == 8


def _waiting_on_lock(db: psycopg.Connection[Any]) -> int:
    row = db.execute(
        """SELECT count(*) FROM pg_stat_activity
           WHERE datname = current_database() AND wait_event_type = 'Lock'"""
    ).fetchone()
    return int(row[0]) if row else 0


def test_gevent_worker__refuses_to_start_when_psycopg_was_imported_before_patching(
    database_url: str, tmp_path: Path
) -> None:
    # What a config (or a module it imports) that imports psycopg at the top would do: its
    # waits would then block every greenlet of the worker, so the worker must not boot.
    config = tmp_path / "early_psycopg_conf.py"
    config.write_text("import psycopg  # noqa: F401\nfrom web.gunicorn_conf import *  # noqa\n")
    argv = [sys.executable, "-m", "gunicorn", "-c", str(config), "--workers", "1"]
    argv += ["--bind", f"127.0.0.1:{free_port()}", "web:create_app()"]
    done = subprocess.run(
        argv, cwd=ROOT, env=environment(database_url), capture_output=True, timeout=60
    )
    assert done.returncode != 0
    assert b"psycopg was imported before gevent patched" in done.stderr


def test_gevent_worker__sigterm_lets_a_request_in_flight_finish_then_exits(
    database_url: str, db: psycopg.Connection[Any]
) -> None:
    listener = socket.create_server(("127.0.0.1", 0))  # bound here: no one takes the port
    port = listener.getsockname()[1]
    argv = [sys.executable, "-m", "gunicorn", "--bind", f"fd://{listener.fileno()}"]
    master = subprocess.Popen(
        [*argv, "--workers", "1", "web:create_app()"],
        cwd=ROOT,
        env=environment(database_url),
        pass_fds=(listener.fileno(),),
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: _healthy(base), 30, "gunicorn", interval=0.1)
        results: list[int] = []
        with psycopg.connect(database_url) as locker:
            locker.execute("LOCK TABLE jobs IN ACCESS EXCLUSIVE MODE")
            post = threading.Thread(
                target=lambda: results.append(
                    httpx.post(f"{base}/v1/analyze", json={"raw_text": "x"}, timeout=30).status_code
                )
            )
            post.start()
            wait_for(lambda: _waiting_on_lock(db) == 1, 10, "the POST waiting on the lock")
            master.send_signal(signal.SIGTERM)
            time.sleep(1)
            assert master.poll() is None and results == []
            locker.rollback()
        post.join(20)
        assert results == [202]
        assert master.wait(10) == 0
    finally:
        stop(master)
        listener.close()


def _healthy(base: str) -> bool:
    try:
        return httpx.get(f"{base}/healthz", timeout=1).status_code == 200
    except httpx.TransportError:
        return False
