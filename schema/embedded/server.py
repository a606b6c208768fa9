"""The lifecycle of one embedded PostgreSQL cluster: initdb, start, stop, restart, its URL.

Each step holds the cluster's lifecycle lock (``locks``), so any process may start, stop or
restart it; a start reuses a running server and keeps the port of the last one.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import time
from collections.abc import Mapping
from pathlib import Path
from typing import IO
from urllib.parse import quote

from schema.embedded.conf import (
    HOST,
    choose_port,
    include_conf,
    persisted_port,
    write_conf,
)
from schema.embedded.locks import ClusterLocks
from schema.embedded.postmaster import Postmaster, remove_stale_pidfile, running_postmaster
from schema.embedded.programs import (
    LOG_NAME,
    PG_MAJOR,
    TIMEOUT_S,
    EmbeddedServerError,
    bin_dir,
    log_since,
    log_tail,
    prepare_dirs,
    run_pg,
)

SUPERUSER = "postgres"
DATABASE = "chunkq"  # the database ensure_embedded hands out
_STOP_SIGNALS = {"smart": signal.SIGTERM, "fast": signal.SIGINT, "immediate": signal.SIGQUIT}


class EmbeddedPostgres:
    """Controls one cluster directory: initdb on first start, then start/stop/restart at will."""

    def __init__(
        self,
        datadir: str | os.PathLike[str],
        *,
        port: int | None = None,
        settings: Mapping[str, str] | None = None,
    ) -> None:
        self.datadir = Path(datadir).expanduser().resolve()  # cwd of pg_ctl is "/", so be absolute
        self.port = port  # None: pick a free one on first start, then keep it
        self.settings = {k: str(v) for k, v in (settings or {}).items()}
        for key in self.settings:
            if key == "port":
                raise ValueError("pass port=, not settings['port']")
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.]*", key):
                raise ValueError(f"not a PostgreSQL setting name: {key!r}")
        self.log_path = self.datadir / LOG_NAME
        self.locks = ClusterLocks(self.datadir)

    @property
    def url(self) -> str:
        """postgresql://postgres@127.0.0.1:PORT/postgres for the current or last-used port."""
        return self.url_for("postgres")

    def url_for(self, dbname: str) -> str:
        """The URL of database `dbname` on this cluster."""
        port = self._running_port() or persisted_port(self.datadir) or self.port
        if port is None:
            raise EmbeddedServerError(f"{self.datadir} has never been started, so it has no port")
        return f"postgresql://{SUPERUSER}@{HOST}:{port}/{quote(dbname, safe='')}"

    def is_running(self) -> bool:
        """True when postmaster.pid names a live postgres process."""
        return self._postmaster() is not None

    def start(self) -> str:
        """initdb if needed, start unless already running, wait until it accepts connections."""
        with self.locks.exclusive():
            return self._start(pinned_port=self.port)

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (pg_ctl -m mode); a no-op when it is not running."""
        if mode not in _STOP_SIGNALS:
            raise ValueError(f"mode must be one of {sorted(_STOP_SIGNALS)}")
        with self.locks.exclusive():
            self._stop(mode)

    def share(self) -> IO[str]:
        """Count this process as a user of the server until the returned file is closed.

        A shared flock beside the datadir, which the kernel drops when the process dies
        (even by SIGKILL), so a crashed user never keeps the server from being stopped.
        Waits while a ``stop_unused`` is stopping it; start the server after this call.
        """
        return self.locks.share()

    def stop_unused(self, mode: str = "fast") -> bool:
        """Stop the server unless another process holds ``share()``; False when one does.

        The exclusive lock is held through the stop, so a newcomer's ``share()`` waits for it
        and then starts the server afresh instead of connecting to one on its way down.
        """
        with self.locks.unused() as unused:
            if unused:
                self.stop(mode)
            return unused

    def restart(self) -> None:
        """Fast stop, then start on the same port so clients' URLs stay valid."""
        with self.locks.exclusive():
            port = self._running_port() or persisted_port(self.datadir) or self.port
            self._stop("fast")
            self._start(pinned_port=port)

    # -- steps, each called with the lock held ------------------------------------------

    def _start(self, pinned_port: int | None) -> str:
        programs = bin_dir()
        if self._wait_until_ready_if_running():
            return self.url
        prepare_dirs(self.datadir, programs)
        if not (self.datadir / "PG_VERSION").exists():
            self._initdb(programs)
        version = (self.datadir / "PG_VERSION").read_text().strip()
        if version != str(PG_MAJOR):
            raise EmbeddedServerError(f"{self.datadir} is PostgreSQL {version}, not {PG_MAJOR}")
        include_conf(self.datadir)
        remove_stale_pidfile(self.datadir)
        for _ in range(3):
            port = choose_port(self.datadir, pinned_port)
            write_conf(self.datadir, port, self.settings)
            log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
            try:
                self._pg_ctl("start", "-l", str(self.log_path))
                break
            except EmbeddedServerError:
                # Another process can grab a free port between our check and postgres' bind;
                # a port we picked ourselves may move, a pinned one may not.
                if pinned_port is not None or "could not bind" not in log_since(
                    self.log_path, log_offset
                ):
                    raise
        else:
            raise EmbeddedServerError(f"no free port after 3 tries\n{log_tail(self.log_path)}")
        if not self._wait_until_ready_if_running():
            raise EmbeddedServerError(
                f"server exited right after starting\n{log_tail(self.log_path)}"
            )
        return self.url

    def _stop(self, mode: str) -> None:
        info = self._postmaster()
        if info is None:
            return
        try:
            prepare_dirs(self.datadir, bin_dir())
            self._pg_ctl("stop", "-m", mode)
            return
        except EmbeddedServerError:
            if self._postmaster() is None:
                return  # it stopped anyway (e.g. pg_ctl lost access to the datadir's parents)
        # pg_ctl itself only sends this signal and waits, so doing it ourselves is equivalent.
        with contextlib.suppress(ProcessLookupError):
            os.kill(info.pid, _STOP_SIGNALS[mode])
        deadline = time.monotonic() + TIMEOUT_S
        while self._postmaster() is not None:
            if time.monotonic() > deadline:
                raise EmbeddedServerError(f"server did not stop\n{log_tail(self.log_path)}")
            time.sleep(0.05)

    def _pg_ctl(self, action: str, *args: str) -> None:
        common = ["-w", "-t", str(TIMEOUT_S), "-D", str(self.datadir)]
        run_pg(bin_dir() / "pg_ctl", action, *common, *args, log_path=self.log_path)

    def _initdb(self, programs: Path) -> None:
        args = [
            "--auth=trust",
            "--auth-local=trust",
            "--encoding=UTF8",
            "--locale=C",
            f"--username={SUPERUSER}",
            "--no-instructions",
            "-D",
            str(self.datadir),
        ]
        if self.settings.get("fsync", "").lower() in ("off", "false", "0"):
            args.append("--no-sync")  # the caller gave up durability; skip fsyncing new files
        run_pg(programs / "initdb", *args, log_path=self.log_path)

    def _postmaster(self) -> Postmaster | None:
        """(pid, port, status) of the live postmaster, or None when there is none."""
        return running_postmaster(self.datadir)

    def _running_port(self) -> int | None:
        info = self._postmaster()
        return info.port if info else None

    def _wait_until_ready_if_running(self) -> bool:
        """Wait for a live postmaster to accept connections; False when none is running."""
        import psycopg

        deadline = time.monotonic() + TIMEOUT_S
        while (info := self._postmaster()) is not None:
            if info.status == "ready" and info.port is not None:
                url = f"postgresql://{SUPERUSER}@{HOST}:{info.port}/postgres"
                with contextlib.suppress(psycopg.OperationalError):
                    psycopg.connect(url, connect_timeout=5).close()
                    return True
            if time.monotonic() > deadline:
                raise EmbeddedServerError(f"server never became ready\n{log_tail(self.log_path)}")
            time.sleep(0.05)
        return False


def ensure_embedded(home: str | os.PathLike[str]) -> str:
    """Start (or reuse, if already running) the cluster under home/'pgdata' and return its URL.

    Safe when several processes call it at once: start() holds an fcntl lock under home.
    The URL names a ``chunkq`` database (created on first use), not the maintenance one.
    """
    server = EmbeddedPostgres(Path(home) / "pgdata")
    server.start()
    import psycopg

    with server.locks.exclusive(), psycopg.connect(server.url, autocommit=True) as conn:
        exists = conn.execute(
            "SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE,)
        ).fetchone()
        if not exists:
            conn.execute(f'CREATE DATABASE "{DATABASE}"')
    return server.url_for(DATABASE)
