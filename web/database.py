"""A request's database connection: pooled, bounded in time, and returned when it ends."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from flask import current_app
from sqlalchemy import Engine

from schema.db import bound, deadline_s, has_timeouts, watchdog


@contextmanager
def connection(*, write: bool, alone: bool = False) -> Iterator[psycopg.Connection[Any]]:
    """A pooled connection for this request only, returned to the pool when it ends.

    The pool keeps its connections in autocommit. A write block is one transaction:
    committed on success, rolled back on any error. ``alone=True`` is for a block whose one
    write is a single statement (or opens its own transaction): it runs outside a
    transaction, which saves the BEGIN and COMMIT round trips. Reads run outside one too: at
    READ COMMITTED each statement reads its own snapshot either way. Through a transaction
    pooler, where a connection carries no session timeouts, every block is a transaction,
    in which ``bound`` sets them.
    """
    engine: Engine = current_app.extensions["chunkq.engine"]
    lease_s = current_app.config["LEASE_S"]
    pooled = engine.raw_connection()
    driver: psycopg.Connection[Any] = pooled.driver_connection  # type: ignore[assignment]
    try:
        # A server that hangs cannot enforce its statement timeout: bound it here too.
        with watchdog.guard(driver, deadline_s(lease_s)):
            if (write and not alone) or not has_timeouts(driver):
                with driver.transaction():
                    bound(driver, lease_s)
                    yield driver
            else:
                yield driver
    except psycopg.OperationalError:
        # The pool did not see this error (it came through the raw connection), so tell it
        # the connection is gone rather than let it try to reset it.
        if driver.broken:
            pooled.invalidate()
        raise
    finally:
        pooled.close()
