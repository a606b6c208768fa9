"""The optional reduce step: its own retried unit of work after finalization."""

from __future__ import annotations

import hashlib
from typing import Any

import psycopg
from flask.testing import FlaskClient

from schema import queue
from schema.queue import Success
from tests import support
from tests.support import assert_invariants, job_row, run_until_idle
from workerd.providers import PermanentError, SimulatedProvider

TEXT = "\n\n".join(f"Section {i} says something about item {i}." for i in range(6))


def submit(client: FlaskClient, **extra: Any) -> str:
    body = {"raw_text": TEXT, "max_chunk_chars": 45, **extra}
    response = client.post("/v1/analyze", json=body)
    assert response.status_code == 202
    return str(response.get_json()["job_id"])


def test_reduce__runs_after_finalization_and_lands_in_analysis_result(
    client: FlaskClient, database_url: str, db: psycopg.Connection[Any]
) -> None:
    job_id = submit(client, reduce=True)
    provider = SimulatedProvider()
    run_until_idle(database_url, provider)
    body = client.get(f"/v1/analyze/{job_id}").get_json()
    assert body["status"] == "COMPLETED"
    reduce = body["analysis_result"]["reduce"]
    digests = "".join(c["result"]["digest"] for c in body["analysis_result"]["chunks"])
    assert reduce == {
        "status": "succeeded",
        "attempts": 1,
        "result": {
            "chunks": body["chunks_total"],
            "digest": hashlib.sha256(digests.encode()).hexdigest()[:16],
        },
    }
    assert db.execute("SELECT status FROM reductions").fetchall() == [("succeeded",)]
    assert_invariants(db)


def test_reduce__failure_is_reported_and_chunk_results_stay(
    client: FlaskClient, database_url: str, db: psycopg.Connection[Any]
) -> None:
    job_id = submit(client, reduce=True)

    class BrokenReduce(SimulatedProvider):
        calls = 0

        def reduce(self, analyses: list[dict[str, Any]], call: Any = None) -> dict[str, Any]:
            BrokenReduce.calls += 1
            raise PermanentError("model refused the summary")

    run_until_idle(database_url, BrokenReduce(), concurrency=4)
    body = client.get(f"/v1/analyze/{job_id}").get_json()
    assert body["status"] == "COMPLETED"
    result = body["analysis_result"]
    assert result["reduce"]["status"] == "failed"
    assert "model refused the summary" in result["reduce"]["error"]
    assert BrokenReduce.calls == 1
    assert len(result["chunks"]) == body["chunks_total"]
    assert all(c["status"] == "succeeded" and c["result"] for c in result["chunks"])
    assert job_row(db, job_id)["chunks_completed"] == body["chunks_total"]


def test_reduce__retryable_failure_is_retried_then_succeeds(
    client: FlaskClient, database_url: str
) -> None:
    job_id = submit(client, reduce=True)

    class FlakyReduce(SimulatedProvider):
        calls = 0

        def reduce(self, analyses: list[dict[str, Any]], call: Any = None) -> dict[str, Any]:
            FlakyReduce.calls += 1
            if FlakyReduce.calls == 1:
                raise TimeoutError("read timed out")
            return {"ok": len(analyses)}

    run_until_idle(database_url, FlakyReduce(), concurrency=2)
    reduce = client.get(f"/v1/analyze/{job_id}").get_json()["analysis_result"]["reduce"]
    assert reduce["status"] == "succeeded" and reduce["attempts"] == 2
    assert FlakyReduce.calls == 2


def test_reduce__not_requested_means_no_reduce(client: FlaskClient, database_url: str) -> None:
    job_id = submit(client)
    run_until_idle(database_url, SimulatedProvider(), concurrency=4)
    assert "reduce" not in client.get(f"/v1/analyze/{job_id}").get_json()["analysis_result"]


def test_reduce__provider_without_reduce_step_marks_it_skipped(
    client: FlaskClient, database_url: str
) -> None:
    job_id = submit(client, reduce=True)

    class NoReduce:
        name = "no-reduce"

        def analyze(self, text: str, call: Any = None) -> dict[str, Any]:
            return {"chars": len(text)}

        def summarize(self, results: list[Any]) -> dict[str, Any]:
            return {"chunks": len(results)}

    run_until_idle(database_url, NoReduce())
    body = client.get(f"/v1/analyze/{job_id}").get_json()
    assert body["status"] == "COMPLETED"
    assert body["analysis_result"]["reduce"]["status"] == "skipped"


def test_reduce__scheduling_it_wakes_idle_workers_at_commit(
    database_url: str, db: psycopg.Connection[Any]
) -> None:
    # An idle worker sleeps on LISTEN until its poll interval; the reduce a finalization
    # queues must wake it then, not seconds later (nothing else notifies at that commit).
    job_id = support.submit(db, TEXT, 1000, reduce=True)
    with db.transaction():
        [chunk] = queue.claim(db, "A", 10, lease_s=30)
    with psycopg.connect(database_url, autocommit=True) as listener:
        listener.execute(f"LISTEN {queue.NOTIFY_CHANNEL}")
        with db.transaction():
            done = queue.record(db, "A", [Success(chunk, {})], queue.merge_with(len))
            assert list(done.finalized) == [job_id]
            assert list(listener.notifies(timeout=0.2, stop_after=1)) == []  # not before commit
        woken = list(listener.notifies(timeout=10, stop_after=1))
    assert [n.channel for n in woken] == [queue.NOTIFY_CHANNEL]
    assert db.execute("SELECT status FROM reductions").fetchall() == [("pending",)]
