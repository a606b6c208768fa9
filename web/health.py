"""Probes for load balancers and orchestrators.

``GET /healthz`` (liveness): 200 when the database answers, 503 otherwise.
``GET /readyz`` (readiness): 200 only when the database answers and its schema is at the
migrations' head, so traffic never reaches an API whose every write would fail.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import sqlalchemy.exc
from flask import Blueprint, Response, current_app
from sqlalchemy import text

from web.problems import RETRY_AFTER_S, problem

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz() -> dict[str, Any]:
    with current_app.extensions["chunkq.engine"].connect() as conn:
        conn.execute(text("SELECT 1"))
    return {"status": "ok"}


@bp.get("/readyz")
def readyz() -> Response | dict[str, Any]:
    """200 with the schema revision when it is the head; 503 problem when it is not (yet)."""
    heads = migration_heads()
    try:
        with current_app.extensions["chunkq.engine"].connect() as conn:
            rows = conn.execute(text("SELECT version_num FROM alembic_version"))
            found = frozenset(rows.scalars())
    except sqlalchemy.exc.ProgrammingError:  # no alembic_version table: never migrated
        found = frozenset()
    # A database that cannot be reached raises OperationalError: problems.py answers 503.
    if found != heads:
        have = ", ".join(sorted(found)) or "none (never migrated)"
        return problem(
            503,
            "Not ready",
            f"the database schema is at revision {have}, not at the head"
            f" {', '.join(sorted(heads))}; run `alembic upgrade head`",
            type_="urn:chunkq:problem:schema-not-at-head",
            headers={"Retry-After": str(RETRY_AFTER_S)},
        )
    return {"status": "ready", "revision": ", ".join(sorted(found))}


@functools.cache
def migration_heads() -> frozenset[str]:
    """The head revision(s) of the migration scripts shipped in ``schema`` (read once)."""
    from alembic.script import ScriptDirectory

    import schema

    scripts = ScriptDirectory(str(Path(schema.__file__).resolve().parent / "migrations"))
    return frozenset(scripts.get_heads())
