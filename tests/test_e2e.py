"""End to end over real processes: gunicorn and two ``python -m workerd`` on the test database."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from tests.processes import gunicorn, start_worker, stop, wait_for
from tests.support import assert_invariants

pytestmark = pytest.mark.slow

TEXT = (Path(__file__).resolve().parent.parent / "setup.cfg").read_text() * 3


def test_e2e__submit_over_http_two_workers_complete_in_order(
    database_url: str, db: psycopg.Connection[Any], tmp_path: Path
) -> None:
    workers = [
        start_worker(
            database_url,
            "--concurrency",
            "4",
            log=tmp_path / f"worker{i}.log",
            CHUNKQ_PROVIDER="builtin",
        )
        for i in range(2)
    ]
    try:
        for i in range(2):
            log = tmp_path / f"worker{i}.log"
            wait_for(
                lambda log=log: "listening for work" in log.read_text(), 30, f"worker {i} to listen"
            )
        with gunicorn(database_url) as base, httpx.Client(base_url=base, timeout=10) as http:
            # Both workers frozen while the job arrives, then let in one at a time, so each
            # takes part whatever the scheduler does (left alone, one that ran first could
            # drain the job before the other woke).
            for worker in workers:
                worker.send_signal(signal.SIGSTOP)
            response = http.post("/v1/analyze", json={"raw_text": TEXT, "max_chunk_chars": 300})
            assert response.status_code == 202
            location = response.headers["Location"]
            job_id = response.json()["job_id"]
            total = response.json()["chunks_total"]
            assert total > 10
            owners = "SELECT DISTINCT worker_id FROM chunks WHERE worker_id IS NOT NULL"
            with psycopg.connect(database_url) as held:
                # Only chunk 0 is free to claim (claims skip locked rows) while worker 0 runs.
                held.execute(
                    "SELECT 1 FROM chunks WHERE job_id = %s AND seq > 0 FOR UPDATE", (job_id,)
                )
                workers[0].send_signal(signal.SIGCONT)
                wait_for(lambda: db.execute(owners).fetchall(), 30, "worker 0 to claim")
                workers[0].send_signal(signal.SIGSTOP)
            workers[1].send_signal(signal.SIGCONT)  # the rest is free now, for worker 1 alone
            wait_for(lambda: len(db.execute(owners).fetchall()) == 2, 30, "worker 1 to claim")
            workers[0].send_signal(signal.SIGCONT)

            seen: list[float] = []

            def finished() -> dict[str, Any] | None:
                body = http.get(location).json()
                seen.append(body["percent"])
                return body if body["status"] == "COMPLETED" else None

            body = wait_for(finished, 60, "the job to complete", interval=0.05)
        assert seen == sorted(seen), "percent went down"
        entries = body["analysis_result"]["chunks"]
        assert [e["index"] for e in entries] == list(range(total))
        assert "".join(TEXT[e["start"] : e["end"]] for e in entries) == TEXT
        assert all(e["status"] == "succeeded" and "sentiment" in e["result"] for e in entries)
        summary = body["analysis_result"]["summary"]
        assert summary["chars"] == len(TEXT) and summary["chunks"] == total
        workers_used = db.execute("SELECT count(DISTINCT worker_id) FROM chunks").fetchone()[0]  # type: ignore[index]
        assert workers_used == 2
        assert_invariants(db)
    finally:
        for worker in workers:
            worker.send_signal(signal.SIGCONT)  # none left frozen by a failure above
        codes = [stop(w, signal.SIGTERM) for w in workers]
    assert codes == [0, 0]
