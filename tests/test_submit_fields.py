"""The fields a submission may carry beside the text: ``text`` (the reference API's name for
``raw_text``), ``metadata``, ``webhook_url`` and ``priority``; each bad one named, nothing
written."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from flask.testing import FlaskClient

TEXT = "Some words to analyse. " * 10


def _jobs(db: psycopg.Connection[Any]) -> int:
    row = db.execute("SELECT count(*) FROM jobs").fetchone()
    assert row is not None
    return int(row[0])


def _problem(client: FlaskClient, body: dict[str, Any], status: int = 422) -> list[Any]:
    response = client.post("/v1/analyze", json=body)
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == "application/problem+json"
    return [(e["field"], e["detail"]) for e in response.get_json()["errors"]]


def test_text_is_raw_text_by_its_other_name(
    client: FlaskClient, db: psycopg.Connection[Any]
) -> None:
    posted = client.post("/v1/analyze", json={"text": TEXT, "max_chunk_chars": 500})
    assert posted.status_code == 202
    assert posted.get_json()["status"] == "PENDING"
    row = db.execute("SELECT text FROM chunks WHERE job_id = %s", (posted.get_json()["job_id"],))
    assert [r[0] for r in row.fetchall()] == [TEXT]


@pytest.mark.parametrize(
    ("body", "field", "says"),
    [
        ({"text": TEXT, "raw_text": TEXT}, "text", "not both"),
        ({"text": ""}, "text", "non-whitespace"),
        ({"text": 7}, "text", "must be a string, got an integer"),
        ({}, "raw_text", "is required (or its other name, text)"),
    ],
)
def test_text__each_mistake_is_named(
    client: FlaskClient, db: psycopg.Connection[Any], body: dict[str, Any], field: str, says: str
) -> None:
    [(named, detail)] = _problem(client, body)
    assert named == field and says in detail
    assert _jobs(db) == 0


def test_metadata_is_stored_and_returned(client: FlaskClient) -> None:
    metadata = {f"k{n}": "v" * 512 for n in range(16)} | {"k0": "café ☕"}
    posted = client.post("/v1/analyze", json={"raw_text": TEXT, "metadata": metadata})
    assert posted.status_code == 202
    assert posted.get_json()["metadata"] == metadata
    report = client.get(posted.headers["Location"]).get_json()
    assert report["metadata"] == metadata


@pytest.mark.parametrize(
    ("metadata", "fields"),
    [
        ([], ["metadata"]),
        ("a=b", ["metadata"]),
        ({f"k{n}": "v" for n in range(17)}, ["metadata"]),
        ({"n": 1}, ["metadata.n"]),
        ({"n": None}, ["metadata.n"]),
        ({"nested": {"a": "b"}}, ["metadata.nested"]),
        ({"long": "x" * 513}, ["metadata.long"]),
        ({"k" * 513: "v"}, ["metadata." + "k" * 513]),
        ({"": "v"}, ["metadata."]),
        ({"nul": "a\x00b"}, ["metadata.nul"]),
        ({"a": 1, "b": True}, ["metadata.a", "metadata.b"]),
    ],
)
def test_metadata__each_mistake_is_named(
    client: FlaskClient, db: psycopg.Connection[Any], metadata: Any, fields: list[str]
) -> None:
    found = _problem(client, {"raw_text": TEXT, "metadata": metadata})
    assert [field for field, _ in found] == fields
    assert _jobs(db) == 0


def test_webhook_url_is_stored_and_returned(client: FlaskClient) -> None:
    url = "https://hooks.example.com/chunkq?tenant=7"
    posted = client.post("/v1/analyze", json={"raw_text": TEXT, "webhook_url": url})
    assert posted.status_code == 202
    assert client.get(posted.headers["Location"]).get_json()["webhook_url"] == url


@pytest.mark.parametrize(
    ("url", "says"),
    [
        (7, "must be a string"),
        ("hooks.example.com/x", "absolute http:// or https://"),
        ("ftp://hooks.example.com/x", "absolute http:// or https://"),
        ("https://user:pw@hooks.example.com/", "user name or password"),
        ("https://hooks.example.com:99999/", "not a valid URL"),
        ("https://" + "a" * 2050 + ".com/", "at most 2048 characters"),
        ("http://127.0.0.1:9000/hook", "127.0.0.1 is a loopback address"),
        ("http://[::1]/hook", "::1 is a loopback address"),
        ("http://10.1.2.3/hook", "10.1.2.3 is a private address"),
        ("http://192.168.0.10/hook", "a private address"),
        ("http://169.254.169.254/latest/meta-data", "link-local"),
        ("http://[::ffff:127.0.0.1]/hook", "loopback"),
        ("http://localhost:8080/hook", "localhost is a loopback name"),
        ("http://0.0.0.0/hook", "not a unicast address"),
    ],
)
def test_webhook_url__refused_with_the_reason(
    client: FlaskClient, db: psycopg.Connection[Any], url: Any, says: str
) -> None:
    [(field, detail)] = _problem(client, {"raw_text": TEXT, "webhook_url": url})
    assert field == "webhook_url" and says in detail, detail
    if isinstance(url, str) and ("127.0.0.1" in url or "localhost" in url):
        assert "CHUNKQ_WEBHOOK_ALLOW_PRIVATE=1" in detail
    assert _jobs(db) == 0


def test_webhook_url__private_targets_are_allowed_when_the_operator_says_so(
    client: FlaskClient,
) -> None:
    client.application.config["WEBHOOK_ALLOW_PRIVATE"] = True
    for url in ("http://127.0.0.1:9000/hook", "http://localhost/hook", "http://10.0.0.5/"):
        posted = client.post("/v1/analyze", json={"raw_text": TEXT, "webhook_url": url})
        assert posted.status_code == 202, url


def test_priority_is_stored_returned_and_given_to_the_chunks(
    client: FlaskClient, db: psycopg.Connection[Any]
) -> None:
    posted = client.post("/v1/analyze", json={"raw_text": TEXT, "priority": -3})
    assert posted.status_code == 202
    assert posted.get_json()["priority"] == -3
    report = client.get(posted.headers["Location"]).get_json()
    assert report["priority"] == -3
    rows = db.execute(
        "SELECT DISTINCT priority FROM chunks WHERE job_id = %s", (report["job_id"],)
    ).fetchall()
    assert rows == [(-3,)]
    plain = client.post("/v1/analyze", json={"raw_text": TEXT}).get_json()
    assert plain["priority"] == 0


@pytest.mark.parametrize(
    ("priority", "says"),
    [
        (11, "must be between -10 and 10"),
        (-11, "must be between -10 and 10"),
        (1.5, "must be an integer"),
        (True, "must be an integer"),
        ("high", "must be an integer"),
    ],
)
def test_priority__out_of_range_or_not_an_integer_is_named(
    client: FlaskClient, db: psycopg.Connection[Any], priority: Any, says: str
) -> None:
    [(named, detail)] = _problem(client, {"raw_text": TEXT, "priority": priority})
    assert named == "priority" and says in detail
    assert _jobs(db) == 0
