"""The HTTP API: submit, status, validation problems, limits, the single-transaction write."""

from __future__ import annotations

import json
import uuid
from typing import Any

import psycopg
import pytest
from flask.testing import FlaskClient

PROBLEM = "application/problem+json"


def _jobs(db: psycopg.Connection[Any]) -> int:
    return db.execute("SELECT count(*) FROM jobs").fetchone()[0]  # type: ignore[index]


def _post(client: FlaskClient, body: Any, **kwargs: Any) -> Any:
    return client.post("/v1/analyze", json=body, **kwargs)


def test_submit__answers_202_with_location_and_writes_job_and_chunks(
    client: FlaskClient, db: psycopg.Connection[Any]
) -> None:
    text = "First paragraph here.\n\nSecond one, a bit longer than the first.\n\nThird."
    response = _post(client, {"raw_text": text, "max_chunk_chars": 30})
    assert response.status_code == 202
    body = response.get_json()
    job_id = body["job_id"]
    assert uuid.UUID(job_id)
    assert body["status"] == "PENDING"
    assert response.headers["Location"] == f"/v1/analyze/{job_id}"
    rows = db.execute(
        "SELECT seq, start_offset, end_offset, text, status, attempts FROM chunks"
        " WHERE job_id = %s ORDER BY seq",
        (job_id,),
    ).fetchall()
    assert body["chunks_total"] == len(rows) >= 3
    assert "".join(r[3] for r in rows) == text
    assert [r[0] for r in rows] == list(range(len(rows)))
    for _seq, start, end, chunk, status, attempts in rows:
        assert text[start:end] == chunk and status == "pending" and attempts == 0
    assert rows[0][1] == 0 and rows[-1][2] == len(text)


def test_status__shows_pending_job_with_zero_percent(client: FlaskClient) -> None:
    job_id = _post(client, {"raw_text": "word " * 100, "max_chunk_chars": 100}).get_json()["job_id"]
    response = client.get(f"/v1/analyze/{job_id}")
    assert response.status_code == 200
    body = response.get_json()
    assert body["job_id"] == job_id
    assert body["status"] == "PENDING"
    assert body["percent"] == 0.0
    assert body["chunks_total"] == 5
    assert body["chunks_completed"] == 0 and body["chunks_failed"] == 0
    assert body["errors"] == [] and body["analysis_result"] is None


def test_submit__defaults_max_chunk_chars_when_omitted(client: FlaskClient) -> None:
    body = _post(client, {"raw_text": "x" * 4500}).get_json()
    assert body["chunks_total"] == 3 and body["max_chunk_chars"] == 2000


@pytest.mark.parametrize(
    ("body", "field", "status"),
    [
        ({"max_chunk_chars": 100}, "raw_text", 422),
        ({"raw_text": "", "max_chunk_chars": 100}, "raw_text", 422),
        ({"raw_text": "  \n\t ", "max_chunk_chars": 100}, "raw_text", 422),
        ({"raw_text": 12, "max_chunk_chars": 100}, "raw_text", 422),
        ({"raw_text": None, "max_chunk_chars": 100}, "raw_text", 422),
        ({"raw_text": ["a"], "max_chunk_chars": 100}, "raw_text", 422),
        ({"raw_text": "ok\x00no", "max_chunk_chars": 100}, "raw_text", 422),
        ({"raw_text": "text", "max_chunk_chars": "100"}, "max_chunk_chars", 422),
        ({"raw_text": "text", "max_chunk_chars": 10.5}, "max_chunk_chars", 422),
        ({"raw_text": "text", "max_chunk_chars": 100.0}, "max_chunk_chars", 422),
        ({"raw_text": "text", "max_chunk_chars": True}, "max_chunk_chars", 422),
        ({"raw_text": "text", "max_chunk_chars": None}, "max_chunk_chars", 422),
        ({"raw_text": "text", "max_chunk_chars": 0}, "max_chunk_chars", 422),
        ({"raw_text": "text", "max_chunk_chars": -5}, "max_chunk_chars", 422),
        ({"raw_text": "text", "max_chunk_chars": 10**9}, "max_chunk_chars", 422),
        ({"raw_text": "text", "max_chunk_chars": 100, "colour": "red"}, "colour", 422),
        ({"raw_text": "text", "reduce": "yes"}, "reduce", 422),
        (["raw_text"], "body", 400),
        ("just a string", "body", 400),
    ],
)
def test_submit__rejects_bad_field_with_problem_and_writes_nothing(
    client: FlaskClient, db: psycopg.Connection[Any], body: Any, field: str, status: int
) -> None:
    response = _post(client, body)
    assert response.status_code == status
    assert response.mimetype == PROBLEM
    problem = response.get_json()
    assert problem["status"] == status
    assert problem["title"] and problem["detail"] and problem["type"]
    assert field in [e["field"] for e in problem["errors"]]
    assert field in problem["detail"]
    assert _jobs(db) == 0


def test_submit__reports_every_bad_field_at_once(client: FlaskClient) -> None:
    problem = _post(client, {"raw_text": 5, "max_chunk_chars": "x"}).get_json()
    assert {e["field"] for e in problem["errors"]} == {"raw_text", "max_chunk_chars"}


def test_submit__rejects_invalid_json(client: FlaskClient, db: psycopg.Connection[Any]) -> None:
    response = client.post(
        "/v1/analyze", data='{"raw_text": "unterminated', content_type="application/json"
    )
    assert response.status_code == 400
    assert response.mimetype == PROBLEM
    assert "not valid JSON" in response.get_json()["detail"]
    assert _jobs(db) == 0


def test_submit__rejects_wrong_content_type(
    client: FlaskClient, db: psycopg.Connection[Any]
) -> None:
    response = client.post(
        "/v1/analyze",
        data=json.dumps({"raw_text": "hello", "max_chunk_chars": 10}),
        content_type="text/plain",
    )
    assert response.status_code == 400
    assert response.mimetype == PROBLEM
    assert "application/json" in response.get_json()["detail"]
    assert _jobs(db) == 0


def test_submit__rejects_body_over_limit_with_413(
    app: Any, client: FlaskClient, db: psycopg.Connection[Any]
) -> None:
    app.config["MAX_CONTENT_LENGTH"] = 1000
    response = _post(client, {"raw_text": "x" * 2000, "max_chunk_chars": 100})
    assert response.status_code == 413
    assert response.mimetype == PROBLEM
    assert "1000 bytes" in response.get_json()["detail"]
    assert _jobs(db) == 0


def test_submit__rejects_too_many_chunks_saying_how_to_fix(
    app: Any, client: FlaskClient, db: psycopg.Connection[Any]
) -> None:
    app.config["MAX_CHUNKS_PER_JOB"] = 10
    response = _post(client, {"raw_text": "y" * 1000, "max_chunk_chars": 10})
    assert response.status_code == 422
    detail = response.get_json()["detail"]
    assert "100 chunks" in detail and "limit of 10" in detail and "at least about 100" in detail
    assert _jobs(db) == 0


def test_submit__failure_mid_insert_leaves_no_job_row(
    client: FlaskClient, db: psycopg.Connection[Any]
) -> None:
    # A trigger that fails the sixth chunk row: the job row was already inserted in the
    # same transaction, so it must roll back with it.
    db.execute(
        """CREATE FUNCTION fail_sixth() RETURNS trigger LANGUAGE plpgsql AS $$
           BEGIN IF NEW.seq = 5 THEN RAISE EXCEPTION 'injected failure'; END IF;
           RETURN NEW; END $$;
           CREATE TRIGGER fail_sixth BEFORE INSERT ON chunks
           FOR EACH ROW EXECUTE FUNCTION fail_sixth();"""
    )
    response = _post(client, {"raw_text": "z" * 100, "max_chunk_chars": 10})
    assert response.status_code == 500
    assert response.mimetype == PROBLEM
    assert _jobs(db) == 0
    assert db.execute("SELECT count(*) FROM chunks").fetchone()[0] == 0  # type: ignore[index]


@pytest.mark.parametrize("job_id", [str(uuid.uuid4()), "not-a-uuid", "1234"])
def test_status__unknown_or_malformed_id_is_404_problem(client: FlaskClient, job_id: str) -> None:
    response = client.get(f"/v1/analyze/{job_id}")
    assert response.status_code == 404
    assert response.mimetype == PROBLEM
    assert response.get_json()["status"] == 404


def test_unknown_route_and_method__are_problems(client: FlaskClient) -> None:
    assert client.get("/v1/nothing").mimetype == PROBLEM
    response = client.delete("/v1/analyze")
    assert response.status_code == 405 and response.mimetype == PROBLEM


def test_healthz__answers_ok(client: FlaskClient) -> None:
    assert client.get("/healthz").get_json() == {"status": "ok"}
