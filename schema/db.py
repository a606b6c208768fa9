"""Database URLs and connection factories; nothing connects at import time."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import psycopg

if TYPE_CHECKING:
    from sqlalchemy import Engine


def resolve_url(environ: Mapping[str, str] | None = None) -> str:
    """DATABASE_URL, or the URL of the embedded PostgreSQL under CHUNKQ_HOME (started if needed)."""
    environ = os.environ if environ is None else environ
    url = environ.get("DATABASE_URL", "").strip()
    if url:
        return url
    from schema.embedded import ensure_embedded

    return ensure_embedded(environ.get("CHUNKQ_HOME", ".chunkq"))


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
    url: str, *, lease_s: float = DEFAULT_LEASE_S, statements: bool = True, **options: Any
) -> Engine:
    """A pooled engine that checks connections before use, surviving a restarted server.

    Every wait is bounded, so a request answers 503 within seconds when the database is
    away or hangs: a connection is waited for in the pool at most 3 s and connecting takes
    at most 3 s; the session timeouts (``session_timeouts``) bound the rest.
    """
    from sqlalchemy import create_engine  # workerd never needs SQLAlchemy: import it here

    options.setdefault("pool_pre_ping", True)
    connect_args = options.setdefault("connect_args", {})
    connect_args.setdefault("connect_timeout", 3)
    connect_args.setdefault("options", session_options(lease_s, statements=statements))
    if "poolclass" not in options:
        options.setdefault("pool_size", 5)
        options.setdefault("max_overflow", 10)
        options.setdefault("pool_recycle", 1800)
        options.setdefault("pool_timeout", 3)
    return create_engine(sqlalchemy_url(url), **options)


def connect(
    url: str, *, lease_s: float = DEFAULT_LEASE_S, **options: Any
) -> psycopg.Connection[Any]:
    """A plain psycopg connection (workerd's hot path and LISTEN use these), with the
    session timeouts sized to ``lease_s``."""
    options.setdefault("options", session_options(lease_s))
    options.setdefault("connect_timeout", 5)
    # Notice a dead peer (failover, cut cable) within ~30 s even on an idle LISTEN socket.
    options.setdefault("keepalives", 1)
    options.setdefault("keepalives_idle", 10)
    options.setdefault("keepalives_interval", 5)
    options.setdefault("keepalives_count", 3)
    return psycopg.connect(libpq_url(url), **options)
