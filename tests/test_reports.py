"""The job report over GET: the contract's body spliced from the database's JSON, ?chunks=false."""

from __future__ import annotations

import json
import uuid
from datetime import datetime
from typing import Any

import psycopg
from flask.testing import FlaskClient

from schema import queue, reads
from schema.queue import Failure, Success
from tests.support import submit

TEXT = "First sentence here. Second one follows it. A third, longer, closes the text."


def _finish(db: psycopg.Connection[Any], job_id: Any) -> None:
    """Succeed every chunk but the second, which fails twice (retried, then for good)."""
    for attempt in (1, 2):
        with db.transaction():
            claimed = queue.claim(db, "W", 100, lease_s=30)
            outcomes: list[Success | Failure] = [
                Success(c, {"chars": c.end - c.start, "words": 2, "note": 'q"uote\\ ünï'})
                for c in claimed
                if c.seq != 1
            ]
            outcomes += [
                Failure(
                    c,
                    "Boom",
                    f'attempt {attempt}: "bad"\nline',
                    retry_in=None if attempt == 2 else 0.0,
                )
                for c in claimed
                if c.seq == 1
            ]
            queue.record(
                db, "W", outcomes, queue.merge_with(lambda results: {"chunks": len(results)})
            )


def test_status__terminal_job_lists_every_chunk_in_order_and_every_failed_attempt(
    client: FlaskClient, db: psycopg.Connection[Any]
) -> None:
    job_id = submit(db, TEXT, 25)
    _finish(db, job_id)
    response = client.get(f"/v1/analyze/{job_id}")
    assert response.status_code == 200 and response.mimetype == "application/json"
    body = response.get_json()
    assert body["status"] == "PARTIAL_SUCCESS" and body["percent"] == 100.0
    entries = body["analysis_result"]["chunks"]
    assert [e["index"] for e in entries] == list(range(body["chunks_total"]))
    assert "".join(TEXT[e["start"] : e["end"]] for e in entries) == TEXT
    assert entries[1] == {**entries[1], "status": "failed", "error": 'attempt 2: "bad"\nline'}
    assert entries[0]["result"]["note"] == 'q"uote\\ ünï'
    assert body["analysis_result"]["summary"] == {"chunks": len(entries) - 1}
    assert [(e["chunk_index"], e["attempt"], e["error_class"]) for e in body["errors"]] == [
        (1, 1, "Boom"),
        (1, 2, "Boom"),
    ]
    assert body["errors"][0]["error"] == 'attempt 1: "bad"\nline'
    assert all(datetime.fromisoformat(e["at"]).tzinfo is not None for e in body["errors"])
    assert body["split_chunks"] == [] and body["provider_unavailable"] == []


def test_status__chunks_false_leaves_out_only_the_chunk_entries(
    client: FlaskClient, db: psycopg.Connection[Any]
) -> None:
    job_id = submit(db, TEXT, 25)
    _finish(db, job_id)
    full = client.get(f"/v1/analyze/{job_id}").get_json()
    light = client.get(f"/v1/analyze/{job_id}?chunks=false").get_json()
    assert light["analysis_result"] == {"summary": full["analysis_result"]["summary"]}
    del full["analysis_result"], light["analysis_result"]
    assert light == full
    assert client.get(f"/v1/analyze/{job_id}?chunks=0").get_json()["analysis_result"].keys() == {
        "summary"
    }
    assert "chunks" in client.get(f"/v1/analyze/{job_id}?chunks=true").get_json()["analysis_result"]


def test_status__chunks_false_on_an_unfinished_job_is_still_null(
    client: FlaskClient, db: psycopg.Connection[Any]
) -> None:
    job_id = submit(db, TEXT, 25)
    assert client.get(f"/v1/analyze/{job_id}?chunks=false").get_json()["analysis_result"] is None


def test_status__chunks_flag_that_is_not_a_boolean_is_a_400_problem(
    client: FlaskClient, db: psycopg.Connection[Any]
) -> None:
    job_id = submit(db, TEXT, 25)
    response = client.get(f"/v1/analyze/{job_id}?chunks=maybe")
    assert response.status_code == 400 and response.mimetype == "application/problem+json"
    assert response.get_json()["errors"][0]["field"] == "chunks"


def test_report_json__is_the_dict_report_encoded(db: psycopg.Connection[Any]) -> None:
    job_id = submit(db, TEXT, 25)
    _finish(db, job_id)
    text = reads.report_json(db, job_id)
    assert text is not None
    assert json.loads(text) == reads.job_report(db, job_id)
    assert list(json.loads(text))[-1] == "analysis_result"  # the bulk comes last
    assert reads.report_json(db, uuid.uuid4()) is None


def test_encode__writes_raw_members_verbatim_and_escapes_the_rest() -> None:
    fields = {"a": 'x"y', "raw": reads.RawJSON('[1, {"b": null}]'), "none": None, "n": 1.5}
    assert json.loads(reads.encode(fields)) == {**fields, "raw": [1, {"b": None}]}
