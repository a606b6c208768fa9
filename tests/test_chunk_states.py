"""What the dashboard reads from the API: every chunk's state in one small read
(``GET /v1/analyze/<id>/chunks/states``), and pages of chunks with their text, picked by
number (``GET /v1/analyze/<id>/chunks?text=true&from=N``)."""

from __future__ import annotations

from typing import Any

import psycopg
from flask.testing import FlaskClient

from schema import queue
from schema.queue import Failure, Success
from tests.support import submit

TEXT = "One sentence here. Two sentences here. Three sentences. Four. Five is the last one."


def _progress(db: psycopg.Connection[Any], job_id: Any) -> None:
    """Chunk 0 succeeds with the builtin's shape, chunk 1 with a model's, chunk 2 with a
    shape of neither; chunk 3 fails for good; chunk 4 fails once and waits to be retried."""
    with db.transaction():
        claimed = {c.seq: c for c in queue.claim(db, "W", 100, lease_s=30)}
        assert len(claimed) == 5
        outcomes: list[Success | Failure] = [
            Success(claimed[0], {"words": 3, "sentiment": {"compound": 0.5, "pos": 0.4}}),
            Success(claimed[1], {"summary": "s", "sentiment": "negative", "sentiment_score": -1}),
            Success(claimed[2], {"digest": "abc", "sentiment": "n/a"}),
            Failure(claimed[3], "Boom", "gave up", retry_in=None),
            Failure(claimed[4], "Boom", "try again <soon>", retry_in=60.0),
        ]
        queue.record(db, "W", outcomes, queue.merge_with(lambda results: {}))


def test_chunk_states__parallel_arrays_of_status_attempts_score_and_last_errors(
    client: FlaskClient, db: psycopg.Connection[Any]
) -> None:
    job_id = submit(db, TEXT, 20)
    total = db.execute("SELECT chunks_total FROM jobs WHERE id = %s", (job_id,)).fetchone()
    _progress(db, job_id)
    response = client.get(f"/v1/analyze/{job_id}/chunks/states")
    assert response.status_code == 200 and response.mimetype == "application/json"
    body = response.get_json()
    assert total == (5,)
    assert body["status"] == ["succeeded", "succeeded", "succeeded", "failed", "pending"]
    assert body["attempts"] == [1, 1, 1, 1, 1]
    assert body["score"] == [0.5, -1, None, None, None]
    assert body["errors"] == [
        {"index": 3, "error": "gave up"},
        {"index": 4, "error": "try again <soon>"},
    ]


def test_chunk_states__unknown_job_is_a_404_problem(client: FlaskClient) -> None:
    response = client.get("/v1/analyze/00000000-0000-0000-0000-000000000000/chunks/states")
    assert response.status_code == 404
    assert response.mimetype == "application/problem+json"


def test_chunks__text_and_from_give_a_page_by_number_with_each_chunks_text(
    client: FlaskClient, db: psycopg.Connection[Any]
) -> None:
    job_id = submit(db, TEXT, 20)
    plain = client.get(f"/v1/analyze/{job_id}/chunks?limit=2&from=2").get_json()
    assert [c["index"] for c in plain["data"]] == [2, 3]
    assert all("text" not in c for c in plain["data"])
    page = client.get(f"/v1/analyze/{job_id}/chunks?limit=2&from=2&text=true").get_json()
    assert [c["index"] for c in page["data"]] == [2, 3]
    assert [c["text"] for c in page["data"]] == [TEXT[c["start"] : c["end"]] for c in page["data"]]
    # The cursor of a page picked by number goes on from there.
    after = client.get(f"/v1/analyze/{job_id}/chunks?limit=2&cursor={page['next_cursor']}")
    assert [c["index"] for c in after.get_json()["data"]] == [4]
    assert after.get_json()["next_cursor"] is None
    past = client.get(f"/v1/analyze/{job_id}/chunks?from=100000").get_json()
    assert past == {"data": [], "next_cursor": None}


def test_chunks__a_bad_from_or_from_with_a_cursor_is_a_400_naming_it(
    client: FlaskClient, db: psycopg.Connection[Any]
) -> None:
    job_id = submit(db, TEXT, 20)
    cursor = client.get(f"/v1/analyze/{job_id}/chunks?limit=1").get_json()["next_cursor"]
    for query in ("from=-1", "from=x", "from=99999999999", f"from=0&cursor={cursor}", "text=2"):
        response = client.get(f"/v1/analyze/{job_id}/chunks?{query}")
        assert response.status_code == 400, query
        field = query.split("=", 1)[0]
        assert [e["field"] for e in response.get_json()["errors"]] == [field], query
