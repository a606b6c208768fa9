"""Request edges that must be refused with a problem, never a 500 or a job: deep JSON, lone
surrogates, invalid UTF-8, NUL, repeated keys, every unknown field named, and (over a real
gunicorn, on raw sockets) a body cut short by a half-close and a chunked body over the limit."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import psycopg
import pytest
from flask.testing import FlaskClient

from tests.processes import gunicorn

PROBLEM = "application/problem+json"


def _jobs(db: psycopg.Connection[Any]) -> int:
    row = db.execute("SELECT count(*) FROM jobs").fetchone()
    assert row is not None
    return int(row[0])


def _post_raw(client: FlaskClient, data: bytes) -> Any:
    return client.post("/v1/analyze", data=data, content_type="application/json")


def _fields(response: Any) -> list[str]:
    assert response.mimetype == PROBLEM
    problem = response.get_json()
    assert problem["status"] == response.status_code
    return [e["field"] for e in problem["errors"]]


@pytest.mark.parametrize(
    "data",
    [
        b"[" * 100_000 + b"]" * 100_000,
        b'{"raw_text": "x", "deep": ' + b'{"a": ' * 100_000 + b"1" + b"}" * 100_001,
    ],
    ids=["array", "object"],
)
def test_submit__json_nested_100000_deep_is_400(
    client: FlaskClient, db: psycopg.Connection[Any], data: bytes
) -> None:
    response = _post_raw(client, data)
    assert response.status_code == 400
    assert _fields(response) == ["body"]
    assert "nested too deeply" in response.get_json()["detail"]
    assert _jobs(db) == 0


@pytest.mark.parametrize(
    ("escaped", "code"), [("\\ud800", "D800"), ("\\udfff", "DFFF"), ("\\ude00\\ud83d", "DE00")]
)
def test_submit__escaped_lone_surrogate_in_raw_text_is_422_naming_it(
    client: FlaskClient, db: psycopg.Connection[Any], escaped: str, code: str
) -> None:
    response = _post_raw(client, b'{"raw_text": "ab' + escaped.encode() + b'cd"}')
    assert response.status_code == 422
    assert _fields(response) == ["raw_text"]
    detail = response.get_json()["detail"]
    assert f"lone surrogate (U+{code}) at offset 2" in detail
    assert _jobs(db) == 0


@pytest.mark.parametrize(
    ("url", "code", "at"),
    [("https://example.com/\\ud800", "D800", 20), ("https://\\udc00.example.com/", "DC00", 8)],
)
def test_submit__escaped_lone_surrogate_in_webhook_url_is_422_naming_it(
    client: FlaskClient, db: psycopg.Connection[Any], url: str, code: str, at: int
) -> None:
    # It passed the URL checks and made the INSERT fail: a 500 before.
    response = _post_raw(client, b'{"raw_text": "x", "webhook_url": "' + url.encode() + b'"}')
    assert response.status_code == 422
    assert _fields(response) == ["webhook_url"]
    assert f"lone surrogate (U+{code}) at offset {at}" in response.get_json()["detail"]
    assert _jobs(db) == 0


def test_submit__escaped_surrogate_pair_is_one_character_and_accepted(
    client: FlaskClient, db: psycopg.Connection[Any]
) -> None:
    response = _post_raw(client, b'{"raw_text": "smile \\ud83d\\ude00 please"}')
    assert response.status_code == 202
    stored = db.execute("SELECT string_agg(text, '' ORDER BY seq) FROM chunks").fetchone()
    assert stored is not None and stored[0] == "smile \U0001f600 please"


@pytest.mark.parametrize(
    ("raw", "at"),
    [
        (b"\xed\xa0\x80", 17),  # UTF-8's form of U+D800, which UTF-8 forbids
        (b"\xff", 17),
        (b"\xc0\xaf", 17),  # an overlong "/"
        (b"\xe2\x82", 17),  # a sequence cut short
    ],
    ids=["surrogate", "ff", "overlong", "truncated"],
)
def test_submit__invalid_utf8_in_the_body_is_400_saying_where(
    client: FlaskClient, db: psycopg.Connection[Any], raw: bytes, at: int
) -> None:
    response = _post_raw(client, b'{"raw_text": "abc' + raw + b'def"}')
    assert response.status_code == 400
    assert _fields(response) == ["body"]
    assert "is not valid UTF-8: invalid" in response.get_json()["detail"]
    assert f"at byte {at}" in response.get_json()["detail"]
    assert _jobs(db) == 0


def test_submit__utf8_byte_order_mark_is_ignored(
    client: FlaskClient, db: psycopg.Connection[Any]
) -> None:
    response = _post_raw(client, b'\xef\xbb\xbf{"raw_text": "caf\xc3\xa9"}')
    assert response.status_code == 202
    assert _jobs(db) == 1


def test_submit__nul_is_422_when_escaped_and_400_when_raw(
    client: FlaskClient, db: psycopg.Connection[Any]
) -> None:
    escaped = _post_raw(client, b'{"raw_text": "before\\u0000after"}')
    assert escaped.status_code == 422
    assert _fields(escaped) == ["raw_text"]
    assert "NUL character (U+0000) at offset 6" in escaped.get_json()["detail"]
    # A raw control character inside a JSON string is not JSON at all.
    raw = _post_raw(client, b'{"raw_text": "before\x00after"}')
    assert raw.status_code == 400
    assert _fields(raw) == ["body"]
    assert _jobs(db) == 0


def test_submit__repeated_keys_are_400_naming_each(
    client: FlaskClient, db: psycopg.Connection[Any]
) -> None:
    response = _post_raw(
        client,
        b'{"raw_text": "first", "max_chunk_chars": 10, "raw_text": "second",'
        b' "max_chunk_chars": 20, "raw_text": "third"}',
    )
    assert response.status_code == 400
    assert _fields(response) == ["raw_text", "max_chunk_chars"]
    assert "more than once" in response.get_json()["detail"]
    assert _jobs(db) == 0


def test_submit__repeated_key_in_a_nested_object_is_400_too(
    client: FlaskClient, db: psycopg.Connection[Any]
) -> None:
    response = _post_raw(client, b'{"raw_text": "x", "extra": {"k": 1, "k": 2}}')
    assert response.status_code == 400
    assert _fields(response) == ["k"]
    assert _jobs(db) == 0


def test_submit__every_unknown_field_is_named(
    client: FlaskClient, db: psycopg.Connection[Any]
) -> None:
    response = client.post(
        "/v1/analyze", json={"raw_text": "x", "colour": "red", "size": 3, "max_chunk_chars": 0}
    )
    assert response.status_code == 422
    assert _fields(response) == ["colour", "size", "max_chunk_chars"]
    detail = response.get_json()["detail"]
    assert "colour" in detail and "size" in detail
    assert _jobs(db) == 0


@pytest.mark.parametrize("constant", [b"NaN", b"Infinity", b"-Infinity"])
def test_submit__nan_and_infinity_are_not_json(
    client: FlaskClient, db: psycopg.Connection[Any], constant: bytes
) -> None:
    response = _post_raw(client, b'{"raw_text": "x", "max_chunk_chars": ' + constant + b"}")
    assert response.status_code == 400
    assert _fields(response) == ["body"]
    assert _jobs(db) == 0


# Over a real gunicorn (the default config), on raw sockets.

LIMIT = 10_000


@pytest.fixture(scope="module")
def server(pg_server: Any, template_db: str) -> Iterator[tuple[int, str]]:
    """gunicorn on one database for this module's socket tests: (port, database URL)."""
    from tests.conftest import create_database, drop_database

    name = create_database(pg_server, template_db)
    url = pg_server.url_for(name)
    try:
        with gunicorn(url, workers=1, CHUNKQ_MAX_BODY_BYTES=str(LIMIT)) as base:
            port = urlsplit(base).port
            assert port is not None
            yield port, url
    finally:
        drop_database(pg_server, name)


@pytest.fixture
def server_db(server: tuple[int, str]) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(server[1], autocommit=True) as conn:
        conn.execute("TRUNCATE jobs CASCADE")
        yield conn


def _exchange(port: int, head: bytes, body: bytes, *, half_close: bool) -> tuple[int, Any]:
    """Send a request as raw bytes; the status and JSON body of the answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(head + body)
        if half_close:
            sock.shutdown(socket.SHUT_WR)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    header, _, payload = answer.partition(b"\r\n\r\n")
    status = int(header.split(b" ", 2)[1])
    return status, json.loads(payload)


def _head(extra: str) -> bytes:
    return (
        "POST /v1/analyze HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Connection: close\r\n{extra}\r\n"
    ).encode()


@pytest.mark.slow
def test_socket__body_shorter_than_content_length_then_half_close_is_400(
    server: tuple[int, str], server_db: psycopg.Connection[Any]
) -> None:
    body = json.dumps({"raw_text": "a whole, valid JSON document"}).encode()
    status, problem = _exchange(
        server[0], _head(f"Content-Length: {len(body) + 50}\r\n"), body, half_close=True
    )
    assert status == 400
    assert [e["field"] for e in problem["errors"]] == ["body"]
    assert f"ended after {len(body)} of the {len(body) + 50} bytes" in problem["detail"]
    assert _jobs(server_db) == 0


def _chunked(data: bytes, size: int = 1000) -> bytes:
    pieces = [data[i : i + size] for i in range(0, len(data), size)]
    return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n"


@pytest.mark.slow
def test_socket__chunked_body_over_the_limit_is_413_never_cut(
    server: tuple[int, str], server_db: psycopg.Connection[Any]
) -> None:
    # Valid JSON if cut at the limit: a body that werkzeug's reading silently truncated.
    body = json.dumps({"raw_text": "under the limit"}).encode().ljust(2 * LIMIT)
    status, problem = _exchange(
        server[0], _head("Transfer-Encoding: chunked\r\n"), _chunked(body), half_close=False
    )
    assert status == 413
    assert f"limit of {LIMIT} bytes" in problem["detail"]
    assert _jobs(server_db) == 0


@pytest.mark.slow
def test_socket__chunked_body_within_the_limit_is_accepted(
    server: tuple[int, str], server_db: psycopg.Connection[Any]
) -> None:
    body = json.dumps({"raw_text": "y" * (LIMIT - 100)}).encode().ljust(LIMIT)
    status, accepted = _exchange(
        server[0], _head("Transfer-Encoding: chunked\r\n"), _chunked(body), half_close=False
    )
    assert status == 202
    assert accepted["chunks_total"] >= 1
    assert _jobs(server_db) == 1


@pytest.mark.slow
def test_socket__chunked_body_cut_short_then_half_close_is_400(
    server: tuple[int, str], server_db: psycopg.Connection[Any]
) -> None:
    body = json.dumps({"raw_text": "complete JSON, incomplete chunking"}).encode()
    status, problem = _exchange(
        server[0], _head("Transfer-Encoding: chunked\r\n"), _chunked(body)[:-5], half_close=True
    )
    assert status == 400
    assert [e["field"] for e in problem["errors"]] == ["body"]
    assert _jobs(server_db) == 0


@pytest.mark.slow
def test_socket__content_length_over_the_limit_is_413(
    server: tuple[int, str], server_db: psycopg.Connection[Any]
) -> None:
    body = json.dumps({"raw_text": "x" * 2 * LIMIT}).encode()
    status, problem = _exchange(
        server[0], _head(f"Content-Length: {len(body)}\r\n"), body, half_close=False
    )
    assert status == 413
    assert f"limit of {LIMIT} bytes" in problem["detail"]
    assert _jobs(server_db) == 0
