"""``chunkq keys``: make, list and revoke API keys (tenants), and set their limits, on
DATABASE_URL or the embedded database.

A key and its webhook signing secret exist in clear only in ``create``'s output: the
database keeps the key's hash. Results go to stdout (``--json`` for scripts); which
database was used goes to stderr, so a script's stdout holds only the result.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Literal

from chunkq.console import say
from chunkq.database import Database, migrate, on_database
from chunkq.exits import EXIT_OK, EXIT_REJECTED, CommandError

if TYPE_CHECKING:
    import psycopg

    from schema.tenants import KeyInfo

# What a limit option holds: a positive number, "none" (no limit), or None (not given).
Limit = int | Literal["none"] | None


def run_create(
    name: str, *, max_jobs_in_flight: Limit, max_queued_chunks: Limit, as_json: bool
) -> int:
    """``chunkq keys create``: make a key and print it, its webhook secret and its id once."""
    from schema import tenants

    def create(db: Database) -> int:
        with _connect(db) as conn:
            try:
                made = tenants.create_key(
                    conn,
                    name,
                    max_jobs_in_flight=_number(max_jobs_in_flight),
                    max_queued_chunks=_number(max_queued_chunks),
                )
            except tenants.InvalidLimit as exc:
                raise CommandError(str(exc), EXIT_REJECTED) from exc
        limits = {
            "max_jobs_in_flight": _number(max_jobs_in_flight),
            "max_queued_chunks": _number(max_queued_chunks),
        }
        if as_json:
            fields = {"id": made.id, "name": made.name, "key": made.key}
            print(json.dumps({**fields, "webhook_secret": made.webhook_secret, **limits}))
            return EXIT_OK
        print(f"made API key {made.id} ({made.name!r}, limits: {_limits(**limits)})")
        print(f"  API key:                {made.key}")
        print(f"  webhook signing secret: {made.webhook_secret}")
        print(f"  key id:                 {made.id}")
        print("The key and the secret are shown only now, never again: store them safely.")
        print("Send the key as 'Authorization: Bearer <key>'; chunkq takes it as --api-key")
        print(f"or CHUNKQ_API_KEY. Revoke it with: chunkq keys revoke {made.id}")
        return EXIT_OK

    return on_database("keys create", create)


def run_list(*, as_json: bool) -> int:
    """``chunkq keys list``: every key with its state and limits, never the key itself."""
    from schema import tenants

    def show(db: Database) -> int:
        with _connect(db) as conn:
            keys = tenants.list_keys(conn)
        if as_json:
            print(json.dumps([_key_json(info) for info in keys], indent=2))
        elif not keys:
            say("no API keys yet; make one with `chunkq keys create`")
        else:
            print(_table(keys))
        return EXIT_OK

    return on_database("keys list", show)


def run_revoke(key_id: str) -> int:
    """``chunkq keys revoke``: refuse the key from now on; its jobs stay and finish."""
    from schema import tenants
    from schema.errors import KeyNotFound

    def revoke(db: Database) -> int:
        with _connect(db) as conn:
            before = _find(conn, key_id)
            try:
                at = tenants.revoke(conn, key_id)
            except KeyNotFound as exc:  # deleted meanwhile
                raise _not_found(key_id) from exc
        if before.revoked_at is not None:
            print(f"chunkq: key {key_id} ({before.name!r}) was already revoked at {_time(at)}")
        else:
            print(
                f"chunkq: revoked key {key_id} ({before.name!r}); requests with it are refused"
                " from now on, its jobs still finish"
            )
        return EXIT_OK

    return on_database("keys revoke", revoke)


def run_limits(key_id: str, *, max_jobs_in_flight: Limit, max_queued_chunks: Limit) -> int:
    """``chunkq keys limits``: change a key's limits; an option not given keeps its value."""
    from schema import tenants
    from schema.errors import KeyNotFound

    def change(db: Database) -> int:
        with _connect(db) as conn:
            current = _find(conn, key_id)
            jobs = _merge(max_jobs_in_flight, current.max_jobs_in_flight)
            queued = _merge(max_queued_chunks, current.max_queued_chunks)
            try:
                tenants.set_limits(conn, key_id, max_jobs_in_flight=jobs, max_queued_chunks=queued)
            except KeyNotFound as exc:
                raise _not_found(key_id) from exc
            except tenants.InvalidLimit as exc:
                raise CommandError(str(exc), EXIT_REJECTED) from exc
        limits = _limits(max_jobs_in_flight=jobs, max_queued_chunks=queued)
        print(f"chunkq: key {key_id} ({current.name!r}) now has limits: {limits}")
        return EXIT_OK

    return on_database("keys limits", change)


@contextmanager
def _connect(db: Database) -> Iterator[psycopg.Connection[Any]]:
    """One transaction on the database, committed when the block ends without error.

    The embedded database is ours, so it is migrated first, as ``up`` would (``keys create``
    may well be the first command a newcomer runs); DATABASE_URL's schema is its operator's
    business, and a missing one is named as such.
    """
    import psycopg

    from schema.db import connect

    say(f"database: {db.label}")
    if db.server is not None:
        migrate(db.migration_url)
    try:
        with connect(db.url) as conn:
            yield conn
    except psycopg.errors.UndefinedTable as exc:
        raise CommandError(
            "this database has no chunkq schema yet (or an old one): run `chunkq migrate`"
            f" (or `alembic upgrade head`) first ({exc.diag.message_primary})"
        ) from exc


def _find(conn: psycopg.Connection[Any], key_id: str) -> KeyInfo:
    from schema import tenants

    for info in tenants.list_keys(conn):
        if info.id == key_id:
            return info
    raise _not_found(key_id)


def _not_found(key_id: str) -> CommandError:
    hint = " (that is a key, not its id)" if key_id.startswith("cq_") else ""
    return CommandError(
        f"no API key has the id {key_id!r}{hint}; `chunkq keys list` shows the ids",
        EXIT_REJECTED,
    )


def _number(limit: Limit) -> int | None:
    return None if limit is None or limit == "none" else limit


def _merge(given: Limit, current: int | None) -> int | None:
    """The limit to set: the one given ("none": no limit), or the current one if none was."""
    return current if given is None else _number(given)


def _limits(*, max_jobs_in_flight: int | None, max_queued_chunks: int | None) -> str:
    jobs = "no limit" if max_jobs_in_flight is None else max_jobs_in_flight
    queued = "no limit" if max_queued_chunks is None else max_queued_chunks
    return f"max jobs in flight {jobs}, max queued chunks {queued}"


def _time(at: dt.datetime) -> str:
    return at.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _key_json(info: KeyInfo) -> dict[str, Any]:
    return {
        "id": info.id,
        "name": info.name,
        "created_at": info.created_at.isoformat(),
        "revoked_at": info.revoked_at.isoformat() if info.revoked_at else None,
        "active": info.revoked_at is None,
        "max_jobs_in_flight": info.max_jobs_in_flight,
        "max_queued_chunks": info.max_queued_chunks,
    }


def _table(keys: list[KeyInfo]) -> str:
    """The keys as aligned columns, one line each, oldest first."""
    header = ("ID", "NAME", "CREATED", "STATE", "MAX JOBS IN FLIGHT", "MAX QUEUED CHUNKS")
    rows = [header] + [
        (
            info.id,
            info.name,
            _time(info.created_at),
            "active" if info.revoked_at is None else f"revoked {_time(info.revoked_at)}",
            "none" if info.max_jobs_in_flight is None else str(info.max_jobs_in_flight),
            "none" if info.max_queued_chunks is None else str(info.max_queued_chunks),
        )
        for info in keys
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )
