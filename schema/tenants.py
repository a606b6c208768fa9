"""API keys and the tenants they open: made, listed, revoked, checked on every request.

A key is ``cq_<hex id>_<secret>``. Only its SHA-256 is stored: the key has 256 random bits,
so a fast hash is as safe as a slow one and costs nothing per request. A request's key is
found by the id it carries and its hash compared in constant time, so neither the lookup
nor the comparison tells a caller how close a guess came. Revoking is immediate: every
request reads the key's row.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import secrets
from dataclasses import dataclass
from typing import Any

import psycopg

from schema.errors import ChunkqError, KeyNotFound, LimitExceeded

# The tenant of CHUNKQ_AUTH=off (migration 0006 makes its row); no key opens it.
ANONYMOUS = "anonymous"
PREFIX = "cq_"


@dataclass(frozen=True, slots=True)
class Tenant:
    """Who a request acts for, and the limits on what it may queue (None: no limit)."""

    id: str
    name: str
    max_jobs_in_flight: int | None = None
    max_queued_chunks: int | None = None

    @property
    def limited(self) -> bool:
        """Whether a new job must be checked against limits (``admit``)."""
        return self.max_jobs_in_flight is not None or self.max_queued_chunks is not None


@dataclass(frozen=True, slots=True)
class NewKey:
    """A key just made: the only time the key itself is known."""

    id: str
    name: str
    key: str
    webhook_secret: str


@dataclass(frozen=True, slots=True)
class KeyInfo:
    id: str
    name: str
    created_at: dt.datetime
    revoked_at: dt.datetime | None
    max_jobs_in_flight: int | None
    max_queued_chunks: int | None


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_webhook_secret() -> str:
    """A Standard Webhooks signing secret: ``whsec_`` and 24 random bytes in base64."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()


def create_key(
    conn: psycopg.Connection[Any],
    name: str,
    *,
    max_jobs_in_flight: int | None = None,
    max_queued_chunks: int | None = None,
) -> NewKey:
    """Make a key (a tenant) and its webhook signing secret; the caller shows both once."""
    _check_limits(max_jobs_in_flight, max_queued_chunks)
    suffix = secrets.token_hex(8)
    key = f"{PREFIX}{suffix}_{secrets.token_urlsafe(32)}"
    made = NewKey(f"key_{suffix}", name, key, new_webhook_secret())
    conn.execute(
        """INSERT INTO api_keys (id, name, key_hash, webhook_secret, max_jobs_in_flight,
                                 max_queued_chunks)
           VALUES (%s, %s, %s, %s, %s, %s)""",
        (made.id, name, hash_key(key), made.webhook_secret, max_jobs_in_flight, max_queued_chunks),
    )
    return made


def list_keys(conn: psycopg.Connection[Any]) -> list[KeyInfo]:
    """Every key, oldest first, revoked ones included (the anonymous tenant is not a key)."""
    rows = conn.execute(
        """SELECT id, name, created_at, revoked_at, max_jobs_in_flight, max_queued_chunks
           FROM api_keys WHERE key_hash IS NOT NULL ORDER BY created_at, id"""
    ).fetchall()
    return [KeyInfo(*row) for row in rows]


def revoke(conn: psycopg.Connection[Any], key_id: str) -> dt.datetime:
    """Revoke a key at once; returns when it was revoked (the first time, if it already was).

    Its jobs stay, and finish; only new requests with the key are refused.
    """
    row = conn.execute(
        """UPDATE api_keys SET revoked_at = coalesce(revoked_at, now())
           WHERE id = %s AND key_hash IS NOT NULL RETURNING revoked_at""",
        (key_id,),
    ).fetchone()
    if row is None:
        raise KeyNotFound(key_id)
    return row[0]


def set_limits(
    conn: psycopg.Connection[Any],
    key_id: str,
    *,
    max_jobs_in_flight: int | None,
    max_queued_chunks: int | None,
) -> None:
    """Set a key's limits (None: no limit)."""
    _check_limits(max_jobs_in_flight, max_queued_chunks)
    cur = conn.execute(
        "UPDATE api_keys SET max_jobs_in_flight = %s, max_queued_chunks = %s WHERE id = %s",
        (max_jobs_in_flight, max_queued_chunks, key_id),
    )
    if cur.rowcount == 0:
        raise KeyNotFound(key_id)


def webhook_secret(conn: psycopg.Connection[Any], key_id: str) -> str:
    row = conn.execute("SELECT webhook_secret FROM api_keys WHERE id = %s", (key_id,)).fetchone()
    if row is None:
        raise KeyNotFound(key_id)
    return row[0]


def authenticate(conn: psycopg.Connection[Any], presented: str) -> Tenant | None:
    """The tenant of a live key, or None for a malformed, unknown or revoked one."""
    parts = presented.split("_", 2)
    if len(parts) != 3 or f"{parts[0]}_" != PREFIX or not parts[1] or not parts[2]:
        return None
    row = conn.execute(
        """SELECT id, name, key_hash, max_jobs_in_flight, max_queued_chunks FROM api_keys
           WHERE id = %s AND revoked_at IS NULL""",
        (f"key_{parts[1]}",),
    ).fetchone()
    # A hash is compared even when no row was found, so both cases take the same time.
    stored = row[2] if row is not None and row[2] else "0" * 64
    if not hmac.compare_digest(hash_key(presented), stored) or row is None:
        return None
    return Tenant(row[0], row[1], row[3], row[4])


def anonymous() -> Tenant:
    return Tenant(ANONYMOUS, "anonymous")


def admit(conn: psycopg.Connection[Any], tenant: Tenant, chunks: int) -> None:
    """Refuse (LimitExceeded) a new job of ``chunks`` chunks that would take ``tenant`` past
    its limits. Call it in the transaction that writes the job: the tenant's row is locked
    until commit, so two submissions at once cannot both squeeze under a limit."""
    if not tenant.limited:
        return
    conn.execute("SELECT 1 FROM api_keys WHERE id = %s FOR UPDATE", (tenant.id,))
    jobs, queued = conn.execute(
        """SELECT count(*), coalesce(sum(chunks_total - chunks_completed - chunks_failed), 0)
           FROM jobs WHERE api_key_id = %s AND status IN ('PENDING', 'PROCESSING')""",
        (tenant.id,),
    ).fetchone() or (0, 0)
    if tenant.max_jobs_in_flight is not None and jobs >= tenant.max_jobs_in_flight:
        raise LimitExceeded(
            f"this key has {jobs} jobs in flight, its limit is {tenant.max_jobs_in_flight};"
            " retry when one has finished"
        )
    if tenant.max_queued_chunks is not None and queued + chunks > tenant.max_queued_chunks:
        raise LimitExceeded(
            f"this job's {chunks} chunks and the {queued} this key has queued would pass its"
            f" limit of {tenant.max_queued_chunks} queued chunks; retry when some have run"
        )


def _check_limits(*limits: int | None) -> None:
    for limit in limits:
        if limit is not None and limit <= 0:
            raise InvalidLimit(f"a limit must be a positive whole number, got {limit}")


class InvalidLimit(ChunkqError, ValueError):
    """A key's limit that is not a positive whole number."""
