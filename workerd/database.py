"""The worker's one connection: each step's work in one bounded transaction, reconnecting
after a lost connection, and a lost database reported as DatabaseDown."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import psycopg

from schema.db import bound, connect, deadline_s, watchdog
from workerd.settings import Settings

Connect = Callable[[], psycopg.Connection[Any]]


def connectors(settings: Settings, url: str) -> tuple[Connect, Connect]:
    """The worker's connection factories: (its work, its LISTEN).

    The work (claims, outcomes, heartbeats, webhooks: at most two connections a process)
    goes to ``url``: through a transaction pooler when DATABASE_DIRECT_URL is set, and
    then those connections keep nothing between transactions (``schema.db.open_connection``).
    LISTEN needs a session that stays on one server connection, which a transaction pooler
    never gives: it goes to DATABASE_DIRECT_URL when that is set.
    """
    direct = settings.database_direct_url
    options: dict[str, Any] = {"autocommit": True, "lease_s": settings.lease_s}
    work = functools.partial(connect, url, pooled=direct is not None, **options)
    listen = functools.partial(connect, direct or url, pooled=False, **options)
    return work, listen


class DatabaseDown(Exception):
    """The database could not be reached this step; the loop backs off and tries again."""


class Database:
    """A connection made on first use and remade after it is lost."""

    def __init__(self, connect: Connect, *, lease_s: float) -> None:
        self._connect = connect
        self._lease_s = lease_s
        self._deadline_s = deadline_s(lease_s)
        self._conn: psycopg.Connection[Any] | None = None

    def transaction(self, fn: Callable[[psycopg.Connection[Any]], Any]) -> Any:
        """Run ``fn`` in one transaction on our connection, reconnecting if it was lost."""
        try:
            if self._conn is None or self._conn.closed or self._conn.broken:
                self._conn = self._connect()
            # The session timeouts hold while the server runs; the watchdog when it hangs.
            with watchdog.guard(self._conn, self._deadline_s), self._conn.transaction():
                bound(self._conn, self._lease_s)
                return fn(self._conn)
        # The server ending a session left idle in a transaction (this process was paused,
        # see schema.db.session_timeouts) is a lost connection too, though psycopg files
        # SQLSTATE 25P03 under InternalError.
        except (
            psycopg.OperationalError,
            psycopg.InterfaceError,
            psycopg.errors.IdleInTransactionSessionTimeout,
        ) as exc:
            if self._conn is not None and (self._conn.closed or self._conn.broken):
                self._conn.close()
                self._conn = None
            raise DatabaseDown(str(exc).strip() or type(exc).__name__) from exc

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
