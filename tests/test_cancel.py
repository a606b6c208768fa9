"""Cancellation over the API: pending chunks cancelled, late results dropped, 409 when done;
a small answer whatever the job's size, and the stored result the finalizer's shape."""

from __future__ import annotations

from typing import Any

import psycopg
from flask.testing import FlaskClient

from schema import queue
from schema.queue import Failure, Success
from tests.support import assert_invariants, chunk_rows, job_row, submit


def test_cancel__cancels_pending_and_running_keeps_succeeded_and_drops_late_result(
    client: FlaskClient, db: psycopg.Connection[Any]
) -> None:
    text = "one. two. three. four."
    job_id = client.post("/v1/analyze", json={"raw_text": text, "max_chunk_chars": 6}).get_json()[
        "job_id"
    ]
    with db.transaction():
        first, second = queue.claim(db, "W", 2, lease_s=30)
    with db.transaction():
        queue.record(
            db, "W", [Success(first, {"chars": 5, "words": 1})], queue.merge_with(lambda r: {})
        )

    response = client.post(f"/v1/analyze/{job_id}/cancel")
    assert response.status_code == 200
    assert response.headers["Location"] == f"/v1/analyze/{job_id}"
    body = response.get_json()
    assert body["status"] == "CANCELLED" and body["chunks_completed"] == 1
    assert "chunks" not in body["analysis_result"]  # those are at Location
    assert body["analysis_result"]["summary"]["chunks"] == 1
    full = client.get(response.headers["Location"]).get_json()
    entries = full["analysis_result"]["chunks"]
    assert [e["status"] for e in entries] == ["succeeded"] + ["cancelled"] * (len(entries) - 1)
    assert entries[0]["result"] == {"chars": 5, "words": 1}
    assert full["analysis_result"]["summary"] == body["analysis_result"]["summary"]

    with db.transaction():
        late = queue.record(
            db, "W", [Success(second, {"late": True})], queue.merge_with(lambda r: {})
        )
    assert late.applied == 0 and late.dropped == [second.key]
    assert chunk_rows(db, second.job_id)[second.seq]["result"] is None
    with db.transaction():
        assert queue.claim(db, "W", 10, lease_s=30) == []

    again = client.post(f"/v1/analyze/{job_id}/cancel")
    assert again.status_code == 409
    assert again.mimetype == "application/problem+json"
    assert "CANCELLED" in again.get_json()["detail"]
    assert client.get(f"/v1/analyze/{job_id}").get_json()["status"] == "CANCELLED"
    assert_invariants(db)


def test_cancel__unknown_job_is_404(client: FlaskClient) -> None:
    response = client.post("/v1/analyze/00000000-0000-0000-0000-000000000000/cancel")
    assert response.status_code == 404
    assert response.mimetype == "application/problem+json"


def test_cancel__answers_without_chunk_entries_however_big_the_job(
    client: FlaskClient, db: psycopg.Connection[Any]
) -> None:
    text = "Word after word, sentence after sentence. " * 2500  # 105,000 characters
    job_id = client.post("/v1/analyze", json={"raw_text": text, "max_chunk_chars": 50}).get_json()[
        "job_id"
    ]
    response = client.post(f"/v1/analyze/{job_id}/cancel")
    assert response.status_code == 200
    body = response.get_json()
    assert body["chunks_total"] > 2000 and body["status"] == "CANCELLED"
    assert set(body["analysis_result"]) == {"summary"}
    assert len(response.data) < 2000  # the report, not 2,000+ entries
    full = client.get(f"/v1/analyze/{job_id}").get_json()["analysis_result"]["chunks"]
    assert [e["index"] for e in full] == list(range(body["chunks_total"]))
    assert {e["status"] for e in full} == {"cancelled"}
    assert "".join(text[e["start"] : e["end"]] for e in full) == text


def test_cancel__reports_every_chunk_as_it_ended_and_stores_each_result_once(
    db: psycopg.Connection[Any],
) -> None:
    # Succeeded, failed, retried-then-cancelled, running and pending chunks.
    job_id = submit(db, "alpha beta gamma delta epsilon zeta eta theta iota kappa", 6)
    with db.transaction():
        claimed = queue.claim(db, "W", 4, lease_s=30)
    ok, bad, retried, _running = claimed
    result = {"chars": ok.end - ok.start, "words": 1, "note": 'ünïcode "q"'}
    with db.transaction():
        queue.record(
            db,
            "W",
            [
                Success(ok, result),
                Failure(bad, "Permanent", "no good\nat all", retry_in=None),
                Failure(retried, "Retryable", "try later", retry_in=0.0),
            ],
            queue.merge_with(lambda results: {}),
        )
    summary = {"chunks": 1, "chars": ok.end - ok.start, "words": 1}
    with db.transaction():
        queue.cancel(db, job_id, queue.merge_with(lambda results: summary))
    reported = job_row(db, job_id)["analysis_result"]
    assert reported["summary"] == summary
    entries = reported["chunks"]
    assert [e["index"] for e in entries] == list(range(len(entries)))
    assert [e["status"] for e in entries[:3]] == ["succeeded", "failed", "cancelled"]
    assert {e["status"] for e in entries[3:]} == {"cancelled"}
    assert entries[0]["result"] == result and entries[0]["cached"] is False
    assert entries[1]["error"] == "no good\nat all"
    assert entries[2]["error"] == "try later"  # the last error of a cancelled retry
    # The job keeps its own part; the chunk's result lives in its row only.
    stored = db.execute("SELECT analysis_result FROM jobs WHERE id = %s", (job_id,)).fetchone()
    assert stored == ({"summary": summary},)
    assert_invariants(db)


def test_cancel__when_the_only_open_chunk_is_running(
    db: psycopg.Connection[Any],
) -> None:
    job_id = submit(db, "one two", 4)
    with db.transaction():
        first, _running = queue.claim(db, "W", 2, lease_s=30)
        queue.record(
            db, "W", [Success(first, {"chars": 4, "words": 1})], queue.merge_with(lambda r: {})
        )
    with db.transaction():
        queue.cancel(db, job_id, queue.merge_with(lambda results: {"chunks": len(results)}))
    row = job_row(db, job_id)
    assert row["status"] == "CANCELLED"
    assert [e["status"] for e in row["analysis_result"]["chunks"]] == ["succeeded", "cancelled"]
    assert row["analysis_result"]["summary"] == {"chunks": 1}
    assert_invariants(db)
