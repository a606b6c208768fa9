"""Cancellation over the API: pending chunks cancelled, late results dropped, 409 when done."""

from __future__ import annotations

from typing import Any

import psycopg
from flask.testing import FlaskClient

from schema import queue
from schema.queue import Success
from tests.support import assert_invariants, chunk_rows


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
    body = response.get_json()
    assert body["status"] == "CANCELLED" and body["chunks_completed"] == 1
    entries = body["analysis_result"]["chunks"]
    assert [e["status"] for e in entries] == ["succeeded"] + ["cancelled"] * (len(entries) - 1)
    assert entries[0]["result"] == {"chars": 5, "words": 1}
    assert body["analysis_result"]["summary"]["chunks"] == 1

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
