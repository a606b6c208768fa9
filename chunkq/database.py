"""The database the ``chunkq`` commands use: DATABASE_URL, or the embedded PostgreSQL under
$CHUNKQ_HOME, opened, migrated and let go of; and the commands that need nothing else
(``migrate``, ``prune``, ``down``).

sqlalchemy, alembic and the embedded wheel are imported only where they are used, so a
command that never reaches them does not pay for them.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from chunkq.console import say
from chunkq.exits import EXIT_REJECTED, CommandError


@dataclass
class Database:
    """The database ``up`` and the one-shot commands use. For the embedded one, ``server`` is
    it, ``share`` this process's hold on it (``EmbeddedPostgres.share``), and ``stop`` says
    whether closing stops it once no other process holds it. ``direct_url`` is
    DATABASE_DIRECT_URL beside DATABASE_URL (which then goes through a transaction pooler)."""

    url: str
    label: str
    server: Any = None
    share: IO[str] | None = None
    stop: bool = False
    direct_url: str | None = None

    @property
    def migration_url(self) -> str:
        """Where migrations run: on a direct connection, never through a pooler."""
        return self.direct_url or self.url


def embedded_datadir() -> Path:
    """Where the embedded PostgreSQL keeps its data: $CHUNKQ_HOME/pgdata, made absolute."""
    return (Path(os.environ.get("CHUNKQ_HOME") or ".chunkq") / "pgdata").resolve()


def open_database(*, adopt: bool = False) -> Database:
    """DATABASE_URL, or the embedded PostgreSQL under CHUNKQ_HOME (started if it is not running).

    Closing stops an embedded server this call started. With ``adopt`` (``chunkq up``) it
    also stops one that was already running, such as one left by a ``chunkq up`` killed with
    SIGKILL; either way only once no other chunkq process uses it.
    Raises ``CommandError`` with exit code 2 when the embedded wheel is missing.
    """
    url = os.environ.get("DATABASE_URL", "").strip()
    if url:
        from schema.db import direct_url

        label = f"DATABASE_URL {_redact(url)}"
        direct = direct_url()
        if direct:
            label += f" (direct: DATABASE_DIRECT_URL {_redact(direct)})"
        return Database(url, label, direct_url=direct)
    from schema.embedded import EmbeddedPostgres, EmbeddedUnavailable, ensure_embedded

    datadir = embedded_datadir()
    server = EmbeddedPostgres(datadir)
    share = server.share()  # first: a `chunkq down` under way finishes before we look
    try:
        try:
            running = server.is_running()
        except ImportError:  # psutil comes with the wheel; without it nothing can be running
            running = False
        if not running:
            say(f"starting the embedded PostgreSQL in {datadir} ...")
        with warnings.catch_warnings():
            # platformdirs, imported by the wheel, warns about a missing XDG_RUNTIME_DIR
            # (normal in containers and under sudo); it changes nothing for us.
            warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR is not set")
            url = ensure_embedded(datadir.parent)
    except EmbeddedUnavailable as exc:
        share.close()
        raise CommandError(str(exc), EXIT_REJECTED) from exc
    except BaseException:
        share.close()
        raise
    label = f"embedded PostgreSQL, data in {datadir}"
    if running:
        label += ", adopted: it was already running" if adopt else ", already running"
    return Database(url, label, server, share, stop=adopt or not running)


def close_database(db: Database) -> None:
    """Let go of the embedded server, stopping it if ``db.stop`` and nobody else uses it."""
    if db.share is None:
        return
    db.share.close()
    db.share = None
    if not db.stop:
        return
    if db.server.stop_unused():
        say(f"stopped the embedded PostgreSQL (data in {db.server.datadir})")
    else:
        say("left the embedded PostgreSQL running: another chunkq process is using it")


def migrate(url: str) -> None:
    """``alembic upgrade head`` through alembic's API, with the project's alembic.ini if present."""
    from schema.migrate import MigrationsMissing, upgrade

    try:
        upgrade(url)
    except MigrationsMissing as exc:
        raise CommandError(str(exc)) from exc


def _redact(url: str) -> str:
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # an unparsable URL will fail loudly later; don't fail here
        return "(unparsable URL)"


def startup_errors() -> tuple[type[Exception], ...]:
    """What opening, migrating and using the database may raise that is the environment's
    fault (a server that is down, refuses us, or has no schema yet)."""
    import psycopg
    import sqlalchemy.exc
    from alembic.util import CommandError as AlembicCommandError

    from schema.embedded import EmbeddedServerError

    return (EmbeddedServerError, AlembicCommandError, sqlalchemy.exc.SQLAlchemyError, psycopg.Error)


def with_database(what: str, action: Callable[[str], str], *, direct: bool = False) -> int:
    """Run ``action(url)`` on DATABASE_URL or the embedded database, print what it says,
    and turn failures into an exit code (2 for a setup problem, 1 for the action).
    ``direct``: the action needs a direct connection (DATABASE_DIRECT_URL when it is set)."""

    def run(db: Database) -> int:
        print(f"chunkq: {action(db.migration_url if direct else db.url)} (database: {db.label})")
        return 0

    return on_database(what, run)


def on_database(what: str, action: Callable[[Database], int]) -> int:
    """Run ``action(db)`` on DATABASE_URL or the embedded database (started for it and
    stopped after, if it was not running) and return its exit code; failures become one
    message and an exit code (2 for a setup problem or a ``CommandError`` of 2, else 1)."""
    db = None
    try:
        db = open_database()
        return action(db)
    except CommandError as exc:
        say(str(exc))
        return exc.code
    except startup_errors() as exc:
        say(f"{what} failed: {exc}")
        return 1
    finally:
        if db is not None:
            close_database(db)


def run_migrate() -> int:
    """``chunkq migrate``: apply migrations to DATABASE_URL (on DATABASE_DIRECT_URL when it is
    set), or to the embedded database."""

    def run(url: str) -> str:
        migrate(url)
        return "the database is at the latest migration"

    return with_database("migration", run, direct=True)


def run_prune(older_than_s: float, cache_older_than_s: float) -> int:
    """``chunkq prune``: delete finished jobs older than ``older_than_s`` seconds, and
    result-cache entries older than ``cache_older_than_s``."""
    from schema import cache
    from schema.db import connect
    from schema.prune import prune

    def run(url: str) -> str:
        with connect(url, autocommit=True) as conn:  # the session limits, as everywhere
            deleted = prune(conn, older_than_s)
            forgotten = cache.prune(conn, cache_older_than_s)
        return (
            f"deleted {deleted} finished jobs older than {older_than_s:g} s and"
            f" {forgotten} cached results older than {cache_older_than_s:g} s"
        )

    return with_database("prune", run)


def run_down() -> int:
    """``chunkq down``: stop the embedded PostgreSQL a crashed ``chunkq up`` left running.

    Exits 0 when it is stopped or none was running, 1 while a chunkq process still uses it.
    """
    from schema.embedded import EmbeddedPostgres
    from schema.errors import ChunkqError

    datadir = embedded_datadir()
    server = EmbeddedPostgres(datadir)
    try:
        running = server.is_running()
    except ImportError:  # psutil comes with the wheel; without it none of ours can run
        running = False
    if not running:
        print(f"chunkq: no embedded PostgreSQL is running under {datadir}; nothing to stop")
        return 0
    try:
        stopped = server.stop_unused()
    except ChunkqError as exc:
        say(f"could not stop the embedded PostgreSQL under {datadir}: {exc}")
        return 1
    if not stopped:
        say(
            f"the embedded PostgreSQL under {datadir} is in use by a running chunkq"
            " (up, migrate or prune); stop that one instead (Ctrl-C)"
        )
        return 1
    print(f"chunkq: stopped the embedded PostgreSQL under {datadir}")
    return 0
