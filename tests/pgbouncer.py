"""A real PgBouncer in transaction mode on loopback, in front of the tests' PostgreSQL.

Debian's ``pgbouncer`` (``apt-get install pgbouncer``), run as a child process with its
ini and auth file in a temporary directory::

    with PgBouncer(pg_server.url, pool_size=4) as bouncer:
        pooled = bouncer.url(database_url)  # the same database, through the pooler

Every database of the server is reachable under its own name (a ``*`` entry), so a test's
fresh database needs no setup. PgBouncer refuses to run as root: as root it is started with
``-u nobody`` and drops to that user once its files are read. It binds its port by number
itself, so a port taken between our choice and its bind is retried with another.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Any

import psycopg
from sqlalchemy.engine import make_url

from tests.processes import free_port, log_tail, stop

DEBIAN_PATH = "/usr/sbin/pgbouncer"
READY_TIMEOUT_S = 20.0
# Ports tried before giving up (each a free one a moment before PgBouncer binds it).
PORT_TRIES = 3


class PgBouncerMissing(RuntimeError):
    """No pgbouncer program on this machine."""


def program() -> str | None:
    """The pgbouncer executable: on PATH, or where Debian installs it (/usr/sbin, which is
    not on every user's PATH); None when there is none."""
    found = shutil.which("pgbouncer")
    if found:
        return found
    return DEBIAN_PATH if os.access(DEBIAN_PATH, os.X_OK) else None


class PgBouncer:
    """One pgbouncer process pooling connections to the server at ``server_url``.

    ``pool_size`` is its default_pool_size: server connections per database and user, so
    a small one makes clients really share them. ``settings`` are added to (or override)
    the ``[pgbouncer]`` section, e.g. ``server_round_robin="1"``.
    """

    def __init__(
        self,
        server_url: str,
        *,
        pool_size: int = 4,
        pool_mode: str = "transaction",
        **settings: Any,
    ) -> None:
        executable = program()
        if executable is None:
            raise PgBouncerMissing(
                "pgbouncer is not installed (apt-get install -y --no-install-recommends pgbouncer)"
            )
        self.program = executable
        self.server = make_url(server_url)
        self.pool_size = pool_size
        self.pool_mode = pool_mode
        self.settings = {key: str(value) for key, value in settings.items()}
        self.port = 0
        self.dir: Path | None = None
        self.log = Path(os.devnull)
        self.proc: subprocess.Popen[bytes] | None = None

    # -- URLs ----------------------------------------------------------------------------

    def url(self, database_url: str) -> str:
        """``database_url`` (a database on our server) through this pooler."""
        url = make_url(database_url).set(host="127.0.0.1", port=self.port)
        return url.render_as_string(hide_password=False)

    def admin(self) -> psycopg.Connection[Any]:
        """A connection to PgBouncer's admin console (SHOW CLIENTS, SHOW SERVERS, ...)."""
        url = make_url(self.url(self.server.render_as_string(hide_password=False)))
        console = url.set(database="pgbouncer").render_as_string(hide_password=False)
        return psycopg.connect(console, autocommit=True)

    def show(self, what: str) -> list[dict[str, Any]]:
        """``SHOW <what>`` on the admin console, one dict per row."""
        with self.admin() as conn:
            cur = conn.execute(f"SHOW {what}")
            names = [c.name for c in cur.description or []]
            return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]

    def server_pids(self) -> set[int]:
        """The backend pids of PgBouncer's server connections: a session PostgreSQL reports
        with one of these came through the pooler."""
        return {int(row["remote_pid"]) for row in self.show("SERVERS") if row["remote_pid"]}

    # -- lifecycle -----------------------------------------------------------------------

    def start(self) -> PgBouncer:
        self.dir = Path(tempfile.mkdtemp(prefix="chunkq-pgbouncer-"))
        self.log = self.dir / "pgbouncer.log"
        for attempt in range(PORT_TRIES):
            self.port = free_port()
            ini = self._write_files()
            argv = [self.program, *(["-u", "nobody"] if os.geteuid() == 0 else []), str(ini)]
            with self.log.open("ab") as out:
                self.proc = subprocess.Popen(
                    argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT
                )
            if self._wait_ready():
                return self
            tail = log_tail(self.log)
            stop(self.proc, timeout=10)
            self.proc = None
            if attempt + 1 < PORT_TRIES and "Address already in use" in tail:
                continue
            self.stop()
            raise RuntimeError(f"pgbouncer did not start on port {self.port}:\n{tail}")
        raise AssertionError("unreachable")

    def stop(self) -> None:
        if self.proc is not None:
            stop(self.proc, timeout=10)
            self.proc = None
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None

    def __enter__(self) -> PgBouncer:
        return self.start()

    def __exit__(
        self,
        _type: type[BaseException] | None,
        _exc: BaseException | None,
        _tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _write_files(self) -> Path:
        """The ini and the auth file (the server's user, with its password when the URL has
        one: PgBouncer logs in to the server with it)."""
        assert self.dir is not None
        user = self.server.username or "postgres"
        auth = self.dir / "userlist.txt"
        auth.write_text(f'"{_quoted(user)}" "{_quoted(self.server.password or "")}"\n')
        settings = {
            "listen_addr": "127.0.0.1",
            "listen_port": str(self.port),
            "unix_socket_dir": "",  # TCP only, as the tests' PostgreSQL
            "auth_type": "trust",
            "auth_file": str(auth),
            "admin_users": user,
            "pool_mode": self.pool_mode,
            "default_pool_size": str(self.pool_size),
            "min_pool_size": "0",
            "reserve_pool_size": "0",
            "max_client_conn": "1000",
            "max_db_connections": "0",
            "server_login_retry": "1",
            "query_wait_timeout": "60",
            "log_connections": "0",
            "log_disconnections": "0",
            **self.settings,
        }
        target = f"host={self.server.host or '127.0.0.1'} port={self.server.port or 5432}"
        ini = self.dir / "pgbouncer.ini"
        body = "".join(f"{key} = {value}\n" for key, value in settings.items())
        ini.write_text(f"[databases]\n* = {target}\n\n[pgbouncer]\n{body}")
        return ini

    def _wait_ready(self) -> bool:
        """True once the admin console answers; False if the process exits first."""
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                return False
            try:
                with self.admin() as conn:
                    conn.execute("SHOW VERSION")
                return True
            except psycopg.OperationalError:
                time.sleep(0.05)
        tail = log_tail(self.log)
        self.stop()
        raise RuntimeError(f"pgbouncer did not answer within {READY_TIMEOUT_S:g}s:\n{tail}")


def _quoted(value: str) -> str:
    """A value for PgBouncer's auth file, where a double quote is written twice."""
    return value.replace('"', '""')
