"""Database URLs and connection factories; nothing connects at import time."""

from __future__ import annotations

import os
from collections.abc import Mapping
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


def make_engine(url: str, **options: Any) -> Engine:
    """A pooled engine that checks connections before use, surviving a restarted server."""
    from sqlalchemy import create_engine  # workerd never needs SQLAlchemy: import it here

    options.setdefault("pool_pre_ping", True)
    # Fail fast when the server is unreachable, so a request can answer 503 instead of hanging.
    options.setdefault("connect_args", {"connect_timeout": 5})
    if "poolclass" not in options:
        options.setdefault("pool_size", 5)
        options.setdefault("max_overflow", 10)
        options.setdefault("pool_recycle", 1800)
    return create_engine(sqlalchemy_url(url), **options)


def connect(url: str, **options: Any) -> psycopg.Connection[Any]:
    """A plain psycopg connection (workerd's hot path and LISTEN use these)."""
    options.setdefault("connect_timeout", 5)
    # Notice a dead peer (failover, cut cable) within ~30 s even on an idle LISTEN socket.
    options.setdefault("keepalives", 1)
    options.setdefault("keepalives_idle", 10)
    options.setdefault("keepalives_interval", 5)
    options.setdefault("keepalives_count", 3)
    return psycopg.connect(libpq_url(url), **options)
