"""Faults with real processes: SIGKILLed workers, SIGTERM mid-chunk, a restarted database."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from tests.conftest import PgServer
from tests.processes import gunicorn, holding, start_worker, stop, wait_for
from tests.support import assert_invariants, chunk_rows, job_row, submit

pytestmark = pytest.mark.slow


def success_log(db: psycopg.Connection[Any]) -> None:
    """Log every transition into succeeded, to count results recorded, not infer them."""
    db.execute(
        """CREATE TABLE succeeded_log (job_id uuid, seq int, worker_id text);
           CREATE FUNCTION log_success() RETURNS trigger LANGUAGE plpgsql AS $$
           BEGIN INSERT INTO succeeded_log VALUES (NEW.job_id, NEW.seq, NEW.worker_id);
           RETURN NEW; END $$;
           CREATE TRIGGER log_success AFTER UPDATE OF status ON chunks FOR EACH ROW
           WHEN (NEW.status = 'succeeded' AND OLD.status <> 'succeeded')
           EXECUTE FUNCTION log_success();"""
    )


def running_owners(db: psycopg.Connection[Any]) -> set[str]:
    rows = db.execute("SELECT DISTINCT worker_id FROM chunks WHERE status = 'running'")
    return {r[0] for r in rows}


def terminal(db: psycopg.Connection[Any], job_id: Any) -> dict[str, Any] | None:
    row = job_row(db, job_id)
    return row if row["status"] not in ("PENDING", "PROCESSING") else None


def test_sigkill_mid_chunk__another_worker_finishes_and_nothing_is_duplicated(
    database_url: str, db: psycopg.Connection[Any], tmp_path: Path
) -> None:
    success_log(db)
    job_id = submit(db, "first part. second part. third part.", 12)
    total = job_row(db, job_id)["chunks_total"]
    env = {"CHUNKQ_PROVIDER": "simulated", "CHUNKQ_LEASE_S": "2"}
    doomed = start_worker(
        database_url,
        "--concurrency",
        "8",
        log=tmp_path / "doomed.log",
        CHUNKQ_SIM_LATENCY_MS="60000",
        **env,
    )
    try:

        def all_claimed() -> bool:
            running = db.execute("SELECT count(*) FROM chunks WHERE status = 'running'")
            return running.fetchone()[0] == total and len(running_owners(db)) == 1  # type: ignore[index]

        wait_for(all_claimed, 20, "the doomed worker to claim every chunk")
        doomed.send_signal(signal.SIGKILL)
        doomed.wait(10)
    finally:
        stop(doomed)
    rescuer = start_worker(
        database_url,
        "--concurrency",
        "8",
        log=tmp_path / "rescuer.log",
        CHUNKQ_SIM_LATENCY_MS="10",
        # The doomed chunks carry the dead worker's 2 s leases; the rescuer's own are long,
        # so a stall of it on a loaded machine cannot expire them and count a third attempt.
        **{**env, "CHUNKQ_LEASE_S": "30"},
    )
    try:
        row = wait_for(lambda: terminal(db, job_id), 30, "the job to finish")
    finally:
        assert stop(rescuer) == 0
    assert row["status"] == "COMPLETED"
    chunks = chunk_rows(db, job_id)
    assert [c["attempts"] for c in chunks] == [2] * total
    logged = db.execute("SELECT seq, count(*) FROM succeeded_log GROUP BY seq ORDER BY seq")
    assert logged.fetchall() == [(seq, 1) for seq in range(total)]
    lost = db.execute("SELECT count(*) FROM chunk_attempts WHERE error_class = 'WorkerLost'")
    assert lost.fetchone()[0] == total  # type: ignore[index]
    assert_invariants(db)


def test_sigterm_mid_chunk__exits_0_in_grace_and_hands_back_without_burning_attempt(
    database_url: str, db: psycopg.Connection[Any], tmp_path: Path
) -> None:
    job_id = submit(db, "a single long-running chunk", 100)
    env = {"CHUNKQ_PROVIDER": "simulated", "CHUNKQ_SHUTDOWN_GRACE_S": "1"}
    slow = start_worker(
        database_url, log=tmp_path / "slow.log", CHUNKQ_SIM_LATENCY_MS="60000", **env
    )
    try:
        wait_for(lambda: running_owners(db), 20, "the slow worker to claim")
        slow.send_signal(signal.SIGTERM)
        code = slow.wait(30)  # the chunk takes 60 s: only the grace period can end it sooner
    finally:
        stop(slow)
    assert code == 0
    # It gave up on the chunk when the grace period ran out, not when the chunk finished.
    assert "grace period over: handed back 1 chunks" in (tmp_path / "slow.log").read_text()
    [chunk] = chunk_rows(db, job_id)
    assert (chunk["status"], chunk["attempts"], chunk["worker_id"]) == ("pending", 0, None)
    other = start_worker(database_url, log=tmp_path / "other.log", **env)
    try:
        row = wait_for(lambda: terminal(db, job_id), 20, "the job to finish")
    finally:
        assert stop(other) == 0
    assert row["status"] == "COMPLETED"
    assert chunk_rows(db, job_id)[0]["attempts"] == 1
    assert db.execute("SELECT count(*) FROM chunk_attempts").fetchone()[0] == 0  # type: ignore[index]


def test_sigterm__finishes_in_flight_chunk_within_grace(
    database_url: str, db: psycopg.Connection[Any], tmp_path: Path
) -> None:
    job_id = submit(db, "short chunk", 100)
    worker = start_worker(
        database_url,
        log=tmp_path / "w.log",
        CHUNKQ_PROVIDER="simulated",
        CHUNKQ_SIM_LATENCY_MS="1500",
        CHUNKQ_SHUTDOWN_GRACE_S="20",
    )
    try:
        wait_for(lambda: running_owners(db), 20, "the worker to claim")
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(20) == 0
    finally:
        stop(worker)
    assert job_row(db, job_id)["status"] == "COMPLETED"


def test_database_restart__jobs_complete_and_api_answers_503_meanwhile(
    pg_server: PgServer, database_url: str, tmp_path: Path
) -> None:
    if not pg_server.controllable:
        pytest.skip("needs the test's own PostgreSQL (TEST_DATABASE_URL is set)")
    env = {"CHUNKQ_PROVIDER": "simulated", "CHUNKQ_SIM_LATENCY_MS": "200"}
    workers = [
        start_worker(database_url, "--concurrency", "4", log=tmp_path / f"w{i}.log", **env)
        for i in range(2)
    ]
    try:
        with (
            gunicorn(database_url, workers=1) as base,
            httpx.Client(base_url=base, timeout=10) as http,
        ):
            first = http.post(
                "/v1/analyze", json={"raw_text": "before the outage. " * 60, "max_chunk_chars": 40}
            ).json()
            with psycopg.connect(database_url, autocommit=True) as db:
                wait_for(lambda: running_owners(db), 20, "workers to start on the job")
            port = int(database_url.rsplit(":", 1)[1].split("/")[0])
            pg_server.embedded.stop()
            # Held through the outage: the server must come back on its port (every URL of
            # this session names it), and it would move off it if another process took it.
            try:
                with holding(port):
                    during = http.get(f"/v1/analyze/{first['job_id']}")
                    assert during.status_code == 503
                    assert during.headers["Content-Type"] == "application/problem+json"
                    assert int(during.headers["Retry-After"]) > 0
                    refused = http.post("/v1/analyze", json={"raw_text": "x", "max_chunk_chars": 5})
                    assert refused.status_code == 503
                    # Keep the outage until every worker has seen its LISTEN connection drop.
                    logs = [tmp_path / f"w{i}.log" for i in range(2)]
                    wait_for(
                        lambda: all("LISTEN connection lost" in log.read_text() for log in logs),
                        20,
                        "both workers to notice the outage",
                        interval=0.05,
                    )
            finally:
                pg_server.embedded.start()
            second = http.post(
                "/v1/analyze", json={"raw_text": "after the outage. " * 60, "max_chunk_chars": 40}
            )
            assert second.status_code == 202
            for job in (first, second.json()):

                def done(job_id: str = job["job_id"]) -> dict[str, Any] | None:
                    body = http.get(f"/v1/analyze/{job_id}").json()
                    return body if body["status"] == "COMPLETED" else None

                wait_for(done, 60, f"job {job['job_id']} to complete", interval=0.1)
        with psycopg.connect(database_url, autocommit=True) as db:
            assert_invariants(db)
        for worker in workers:
            assert worker.poll() is None, "a worker died during the outage"
        logs = "".join((tmp_path / f"w{i}.log").read_text() for i in range(2))
        assert "LISTEN re-established" in logs
    finally:
        codes = [stop(w) for w in workers]
    assert codes == [0, 0]


def catches(pid: int, signum: int) -> bool:
    """Whether process ``pid`` has a handler installed for ``signum`` (Linux: SigCgt)."""
    status = Path(f"/proc/{pid}/status").read_text()
    caught = int(next(line for line in status.splitlines() if line.startswith("SigCgt:"))[7:], 16)
    return bool(caught >> (signum - 1) & 1)


def stopped(pid: int) -> bool:
    """Whether ``pid`` is stopped (SIGSTOP): the state after the command name in its stat."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "T"


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc (Linux)")
def test_sigterm_while_starting__still_exits_0(database_url: str, tmp_path: Path) -> None:
    # The signal must land while the interpreter is still importing: no handler of ours yet
    # unless it is installed before the imports. Each try waits for the handler (SigCgt),
    # freezes the process and checks that libpq, which the imports after the handler load
    # (psycopg), is not mapped yet; only then is SIGTERM sent. With the handler installed
    # after the imports that moment never comes, and the test fails.
    for _attempt in range(5):
        log = tmp_path / f"w{_attempt}.log"
        worker = start_worker(database_url, log=log, CHUNKQ_PROVIDER="builtin")
        try:
            wait_for(
                lambda w=worker: w.poll() is not None or catches(w.pid, signal.SIGTERM),
                30,
                "the worker to install its SIGTERM handler",
                interval=0.001,
            )
            assert worker.poll() is None, log.read_text()
            worker.send_signal(signal.SIGSTOP)
            wait_for(lambda w=worker: stopped(w.pid), 10, "the worker to stop", interval=0.001)
            importing = "libpq" not in Path(f"/proc/{worker.pid}/maps").read_text()
            worker.send_signal(signal.SIGTERM)  # delivered on SIGCONT
            worker.send_signal(signal.SIGCONT)
            assert worker.wait(30) == 0, log.read_text()
        finally:
            stop(worker)
        if importing:
            return
    raise AssertionError("SIGTERM was never caught while the imports were still loading")
