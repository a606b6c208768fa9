"""The probes: /healthz says the database answers, /readyz that its schema is at the head."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from flask import Flask

from web import create_app
from web.health import migration_heads


@pytest.fixture
def app_on() -> Iterator[Any]:
    """Build an app on the URL the test passes, disposing its engine afterwards."""
    made: list[Flask] = []

    def build(url: str) -> Flask:
        made.append(create_app({"DATABASE_URL": url, "TESTING": True}))
        return made[-1]

    yield build
    for app in made:
        app.extensions["chunkq.engine"].dispose()


def assert_not_ready(response: Any, says: str) -> None:
    assert response.status_code == 503
    assert response.mimetype == "application/problem+json"
    assert int(response.headers["Retry-After"]) > 0
    body = response.get_json()
    assert body["status"] == 503 and says in body["detail"], body


def test_readyz__migrated_database_is_ready(app_on: Any, database_url: str) -> None:
    response = app_on(database_url).test_client().get("/readyz")
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.get_json() == {"status": "ready", "revision": ", ".join(migration_heads())}


def test_readyz__unmigrated_database_is_503_while_healthz_stays_200(
    app_on: Any, empty_database_url: str
) -> None:
    client = app_on(empty_database_url).test_client()
    assert client.get("/healthz").status_code == 200  # alive: the database answers
    assert_not_ready(client.get("/readyz"), "never migrated")


def test_readyz__database_behind_the_head_is_503(app_on: Any, database_url: str) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("UPDATE alembic_version SET version_num = '0002'")
    assert_not_ready(app_on(database_url).test_client().get("/readyz"), "revision 0002, not")


def test_readyz__unreachable_database_is_503(app_on: Any) -> None:
    with socket.socket() as sock:  # bound, never listening: connections are refused
        sock.bind(("127.0.0.1", 0))
        url = f"postgresql://nobody@127.0.0.1:{sock.getsockname()[1]}/none"
        response = app_on(url).test_client().get("/readyz")
    assert response.status_code == 503
    assert response.mimetype == "application/problem+json" and "Retry-After" in response.headers
