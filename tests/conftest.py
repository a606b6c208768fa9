"""Test harness: a real PostgreSQL, one migrated template, a fresh database per test.

A throwaway server from the embedded wheel is started unless TEST_DATABASE_URL names one.
The template is migrated once with Alembic; each test gets ``CREATE DATABASE … TEMPLATE``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from alembic import command
from sqlalchemy.engine import make_url

from schema.migrate import alembic_config


class PgServer:
    """The PostgreSQL the tests use: its admin URL, and (when it is ours) stop/start."""

    def __init__(self, url: str, embedded: Any = None) -> None:
        self.url = url
        self.embedded = embedded

    def url_for(self, dbname: str) -> str:
        url = make_url(self.url).set(database=dbname)
        return url.render_as_string(hide_password=False)

    @property
    def controllable(self) -> bool:
        return self.embedded is not None


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    url = os.environ.get("TEST_DATABASE_URL", "").strip()
    if url:
        yield PgServer(url)
        return
    from schema.embedded import EmbeddedPostgres

    # Not under pytest's own temp root: pytest resets that to 0700 at every session start,
    # which would lock the server (running as another user when we are root) out of its
    # data directory if two sessions overlap.
    base = Path(tempfile.mkdtemp(prefix="chunkq-test-pg-"))
    server = EmbeddedPostgres(
        base / "data",
        # fsync buys nothing in a throwaway cluster; commits stay synchronous so a killed
        # server (the resilience tests) loses nothing that was acknowledged.
        settings={"fsync": "off", "full_page_writes": "off"},
    )
    server.start()
    try:
        yield PgServer(server.url, server)
    finally:
        server.stop()
        shutil.rmtree(base, ignore_errors=True)


def _admin(pg: PgServer) -> psycopg.Connection[Any]:
    return psycopg.connect(pg.url, autocommit=True)


@pytest.fixture(scope="session")
def template_db(pg_server: PgServer) -> Iterator[str]:
    name = f"chunkq_template_{os.getpid()}"
    with _admin(pg_server) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    command.upgrade(alembic_config(pg_server.url_for(name)), "head")
    yield name
    with _admin(pg_server) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def create_database(pg: PgServer, template: str | None) -> str:
    name = f"chunkq_test_{uuid.uuid4().hex[:12]}"
    with _admin(pg) as conn:
        clause = f' TEMPLATE "{template}"' if template else ""
        conn.execute(f'CREATE DATABASE "{name}"{clause}')
    return name


def drop_database(pg: PgServer, name: str) -> None:
    with _admin(pg) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def database_url(pg_server: PgServer, template_db: str) -> Iterator[str]:
    """A freshly migrated database of this test's own."""
    name = create_database(pg_server, template_db)
    yield pg_server.url_for(name)
    drop_database(pg_server, name)


@pytest.fixture
def empty_database_url(pg_server: PgServer) -> Iterator[str]:
    """A database with no schema at all (for migration tests)."""
    name = create_database(pg_server, None)
    yield pg_server.url_for(name)
    drop_database(pg_server, name)


@pytest.fixture
def db(database_url: str) -> Iterator[psycopg.Connection[Any]]:
    """An autocommit connection to this test's database."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        yield conn


@pytest.fixture
def app(database_url: str) -> Iterator[Any]:
    from web import create_app

    app = create_app(
        {"DATABASE_URL": database_url, "TESTING": True, "PROVIDER": "simulated", "AUTH": False}
    )
    yield app
    app.extensions["chunkq.engine"].dispose()


CHROMIUM = os.environ.get("CHUNKQ_CHROMIUM") or shutil.which("chromium") or ""


@pytest.fixture
def browser() -> Iterator[Any]:
    """Debian's Chromium under Playwright (its own browser download cannot work here).
    Skipped without chromium, unless CHUNKQ_REQUIRE_BROWSER=1 (``.ci/run`` sets it, and
    installs Debian's chromium)."""
    if not CHROMIUM:
        if os.environ.get("CHUNKQ_REQUIRE_BROWSER") == "1":
            pytest.fail("CHUNKQ_REQUIRE_BROWSER=1 but no chromium (apt-get install chromium)")
        pytest.skip("no chromium installed (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            yield launched
        finally:
            launched.close()
