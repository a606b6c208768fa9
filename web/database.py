"""A request's database connection: pooled, bounded in time, and returned when it ends."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from flask import current_app
from sqlalchemy import Engine

from schema.db import bound, deadline_s, watchdog


@contextmanager
def connection(*, write: bool) -> Iterator[psycopg.Connection[Any]]:
    """A pooled connection for this request only, returned to the pool when it ends.

    For writes, the block is one transaction: committed on success, rolled back on any error.
    """
    engine: Engine = current_app.extensions["chunkq.engine"]
    with engine.begin() if write else engine.connect() as conn:
        driver = conn.connection.driver_connection
        lease_s = current_app.config["LEASE_S"]
        try:
            # A server that hangs cannot enforce its statement timeout: bound it here too.
            with watchdog.guard(driver, deadline_s(lease_s)):
                bound(driver, lease_s)  # type: ignore[arg-type]
                yield driver  # type: ignore[misc]
        except psycopg.OperationalError:
            # SQLAlchemy did not see this error (it came through the raw connection), so
            # tell it the connection is gone rather than let the pool try to reset it.
            if conn.connection.driver_connection.broken:  # type: ignore[union-attr]
                conn.invalidate()
            raise
