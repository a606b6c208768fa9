"""Database URLs and connection factories; nothing connects at import time."""

from __future__ import annotations

import heapq
import itertools
import os
import socket
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from typing import TYPE_CHECKING, Any

import psycopg

from schema.errors import DatabaseUrlMissing

if TYPE_CHECKING:
    from sqlalchemy import Engine


def resolve_url(environ: Mapping[str, str] | None = None) -> str:
    """DATABASE_URL, or ``DatabaseUrlMissing`` when it is unset.

    Never an embedded server: a web, worker or migration process that started one of its own
    would serve an empty database nobody else sees. ``chunkq up`` starts the embedded one and
    hands its URL to its children in DATABASE_URL.
    """
    environ = os.environ if environ is None else environ
    url = environ.get("DATABASE_URL", "").strip()
    if not url:
        raise DatabaseUrlMissing(
            "DATABASE_URL is not set: set it to postgresql://USER:PASSWORD@HOST/DB, or run"
            " `chunkq up`, which starts an embedded PostgreSQL and sets DATABASE_URL itself"
        )
    return url


def direct_url(environ: Mapping[str, str] | None = None) -> str | None:
    """DATABASE_DIRECT_URL, or None when it is unset.

    When it is set, DATABASE_URL goes through a transaction-pooling PgBouncer, which hands
    each transaction to whichever server connection is free: connections on DATABASE_URL
    then keep no session state (``open_connection``), and what needs a session of its own
    (LISTEN, migrations) connects here instead.
    """
    environ = os.environ if environ is None else environ
    return environ.get("DATABASE_DIRECT_URL", "").strip() or None


def migration_url(environ: Mapping[str, str] | None = None) -> str:
    """Where migrations run: DATABASE_DIRECT_URL when it is set, else DATABASE_URL. A
    migration's locks and DDL belong on a session of its own, not on server connections a
    pooler shares with live traffic. DATABASE_URL is required either way
    (``DatabaseUrlMissing``), as for every other deployed process."""
    url = resolve_url(environ)
    return direct_url(environ) or url


def libpq_url(url: str) -> str:
    """The URL as libpq/psycopg wants it: ``postgresql://`` with no SQLAlchemy driver suffix."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    if scheme.split("+")[0] in ("postgres", "postgresql"):
        return f"postgresql://{rest}"
    return url


def sqlalchemy_url(url: str) -> str:
    """The URL as SQLAlchemy wants it: the psycopg 3 driver named explicitly."""
    if "://" not in url:
        raise ValueError(f"expected a postgresql:// URL, got {url!r}")
    return "postgresql+psycopg://" + libpq_url(url).partition("://")[2]


# CHUNKQ_LEASE_S's default: the session timeouts below are sized to it.
DEFAULT_LEASE_S = 30.0


def session_timeouts(
    lease_s: float = DEFAULT_LEASE_S, *, statements: bool = True
) -> dict[str, str]:
    """The server-side limits every connection chunkq opens sets, sized to the lease.

    A peer that stops while holding locks (a paused VM, a long GC, an operator's open
    session) must not hold anyone past their own leases: a lock is waited on for a sixth
    of the lease at most, a statement runs for half of it, and a session left idle inside a
    transaction is ended by the server after half of it, which frees what it held.
    ``statements=False`` (migrations, which may legitimately run long) leaves statements
    unbounded.
    """
    limits = {
        "lock_timeout": lease_s / 6,
        "statement_timeout": lease_s / 2 if statements else 0.0,
        "idle_in_transaction_session_timeout": lease_s / 2,
    }
    return {name: f"{round(seconds * 1000)}ms" for name, seconds in limits.items()}


def session_options(lease_s: float = DEFAULT_LEASE_S, *, statements: bool = True) -> str:
    """``session_timeouts`` as libpq's ``options`` startup parameter (no extra round trip)."""
    limits = session_timeouts(lease_s, statements=statements)
    return " ".join(f"-c {name}={value}" for name, value in limits.items())


def make_engine(
    url: str,
    *,
    lease_s: float = DEFAULT_LEASE_S,
    statements: bool = True,
    pooled: bool | None = None,
    **options: Any,
) -> Engine:
    """A pooled engine that checks connections before use, surviving a restarted server.

    ``pooled``: whether ``url`` goes through a transaction pooler (see ``open_connection``).

    Every wait is bounded, so a request answers 503 within seconds when the database is
    away or hangs: a pooled connection is waited for 3 s at most, its ping 2 s, connecting
    2 s (libpq's least); the session timeouts (``session_timeouts``) bound the rest.
    """
    # workerd never needs SQLAlchemy: import it here.
    from sqlalchemy import create_engine, event

    options.setdefault("pool_pre_ping", True)
    options.setdefault("connect_args", {}).setdefault("connect_timeout", 2)
    if "poolclass" not in options:
        options.setdefault("pool_size", 5)
        options.setdefault("max_overflow", 10)
        options.setdefault("pool_recycle", 1800)
        options.setdefault("pool_timeout", 3)
    engine = create_engine(sqlalchemy_url(url), **options)

    @event.listens_for(engine, "do_connect")
    def _open(_dialect: Any, _record: Any, cargs: Any, cparams: Any) -> Any:
        return open_connection(
            *cargs, lease_s=lease_s, statements=statements, pooled=pooled, **cparams
        )

    # The pool's liveness ping is the one wait the session timeouts cannot bound: a server
    # that hangs (stopped, partitioned) never answers it. Bound it here.
    ping = engine.dialect.do_ping

    def bounded_ping(dbapi_connection: Any) -> bool:
        with watchdog.guard(dbapi_connection, PING_DEADLINE_S):
            return bool(ping(dbapi_connection))

    engine.dialect.do_ping = bounded_ping  # type: ignore[method-assign]
    return engine


def connect(
    url: str, *, lease_s: float = DEFAULT_LEASE_S, pooled: bool | None = None, **options: Any
) -> psycopg.Connection[Any]:
    """A plain psycopg connection (workerd's hot path and LISTEN use these), with the
    session timeouts sized to ``lease_s``; ``pooled`` as for ``open_connection``."""
    options.setdefault("connect_timeout", 5)
    # Notice a dead peer (failover, cut cable) within ~30 s even on an idle LISTEN socket.
    options.setdefault("keepalives", 1)
    options.setdefault("keepalives_idle", 10)
    options.setdefault("keepalives_interval", 5)
    options.setdefault("keepalives_count", 3)
    return open_connection(libpq_url(url), lease_s=lease_s, pooled=pooled, **options)


def open_connection(
    *args: Any,
    lease_s: float = DEFAULT_LEASE_S,
    statements: bool = True,
    pooled: bool | None = None,
    **kwargs: Any,
) -> psycopg.Connection[Any]:
    """``psycopg.connect`` with the session timeouts as a startup parameter.

    A transaction pooler (PgBouncer) hands each transaction to whichever server connection
    is free, so a connection through one keeps no session state: the parameter is not sent
    (PgBouncer refuses it; ``bound`` applies the same limits to each transaction instead),
    and psycopg prepares no statement (it would prepare on one server connection and
    execute on another: ``prepared statement "_pg3_0" does not exist``, or ``already
    exists`` on a server connection another client prepared it on). ``pooled`` says whether
    this one goes through a pooler; None: it does when DATABASE_DIRECT_URL is set (the
    direct connections, LISTEN and migrations, pass False). A server that refuses the
    parameter is a pooler too.
    """
    if pooled is None:
        pooled = direct_url() is not None
    if not pooled:
        try:
            return psycopg.connect(
                *args, options=session_options(lease_s, statements=statements), **kwargs
            )
        except psycopg.OperationalError as exc:
            if "unsupported startup parameter" not in str(exc):
                raise
    kwargs["prepare_threshold"] = None
    return psycopg.connect(*args, **kwargs)


def bound(
    conn: psycopg.Connection[Any], lease_s: float = DEFAULT_LEASE_S, *, statements: bool = True
) -> None:
    """Apply the session timeouts to the current transaction of a connection opened without
    them (through a transaction pooler); a no-op on the others."""
    if has_timeouts(conn):
        return
    limits = session_timeouts(lease_s, statements=statements)
    conn.execute(
        "SELECT " + ", ".join(f"set_config('{name}', %s, true)" for name in limits),
        list(limits.values()),
    )


def has_timeouts(conn: psycopg.Connection[Any]) -> bool:
    """Whether the connection carries the session timeouts itself, as its startup parameter
    (libpq's own record of it: no round trip, no parsing of the connection string)."""
    return b"statement_timeout" in (conn.pgconn.options or b"")


# How long the pool's ping may wait for an answer before the connection is given up.
PING_DEADLINE_S = 2.0


def deadline_s(lease_s: float = DEFAULT_LEASE_S) -> float:
    """How long one transaction may wait on the server, client side: a little past the
    statement timeout, which the server enforces itself whenever it is running at all."""
    return lease_s / 2 + 5.0


class Watchdog:
    """Shuts a connection's socket when its deadline passes.

    The server's own timeouts fire only while the server runs; when it hangs (a stopped
    process, a partition that keeps the TCP session up), a client waits on its socket for
    ever. Shutting the socket down makes that wait fail at once with a connection error,
    which every caller already handles (503 in the API, a reconnect in workerd). One thread
    serves every deadline of the process.
    """

    def __init__(self, monotonic: Any = time.monotonic) -> None:
        self._monotonic = monotonic
        self._cond = threading.Condition()
        self._armed: dict[int, tuple[float, Any]] = {}
        self._heap: list[tuple[float, int]] = []
        self._ids = itertools.count()
        self._thread: threading.Thread | None = None
        self.fired = 0

    @contextmanager
    def guard(self, conn: Any, seconds: float) -> Iterator[None]:
        """Within the block, ``conn`` (a psycopg connection) is cut off after ``seconds``."""
        token = next(self._ids)
        deadline = self._monotonic() + seconds
        with self._cond:
            self._armed[token] = (deadline, conn)
            heapq.heappush(self._heap, (deadline, token))
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._run, name="chunkq-db-watchdog", daemon=True
                )
                self._thread.start()
            elif self._heap[0][1] == token:
                self._cond.notify()
        try:
            yield
        finally:
            with self._cond:
                self._armed.pop(token, None)

    def _run(self) -> None:
        while True:
            with self._cond:
                while self._heap and self._heap[0][1] not in self._armed:
                    heapq.heappop(self._heap)
                if not self._heap:
                    self._cond.wait()
                    continue
                deadline, token = self._heap[0]
                wait = deadline - self._monotonic()
                if wait > 0:
                    self._cond.wait(wait)
                    continue
                heapq.heappop(self._heap)
                _, conn = self._armed.pop(token)
            self.fired += 1
            _shut(conn)


def _shut(conn: Any) -> None:
    """Shut down a psycopg connection's socket (not close: its owner still holds the fd)."""
    try:
        fd = conn.pgconn.socket
        sock = socket.socket(fileno=os.dup(fd))
    except Exception:
        return  # closed already, or never connected
    with sock, suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)


# The process's watchdog, shared by the API's pool and workerd's connection.
watchdog = Watchdog()
