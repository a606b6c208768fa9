"""``Idempotency-Key`` on submit, with Stripe's semantics, within a tenant.

The key is claimed with an INSERT in the transaction that writes the job, before the job:
the primary key (tenant, key) makes a concurrent request with the same key wait for the
first to commit, then find its answer. Never a read-then-write, so two requests at once
cannot both make a job.
"""

from __future__ import annotations

import json
import uuid
from datetime import datetime
from typing import Any

import psycopg

from schema.clock import NOW
from schema.errors import IdempotencyMismatch

# How long a key is kept: at least a day, as Stripe does.
KEEP_S = 24 * 3600
MAX_KEY_CHARS = 255


def key_problem(key: str) -> str | None:
    """Why a header value cannot be an idempotency key (None: it can)."""
    if not 1 <= len(key) <= MAX_KEY_CHARS:
        return f"must have 1 to {MAX_KEY_CHARS} characters, got {len(key)}"
    if not all(" " <= c <= "~" for c in key):
        return "must be printable ASCII (a UUID is a good key)"
    return None


def claim(
    conn: psycopg.Connection[Any],
    tenant: str,
    key: str,
    fingerprint: str,
    job_id: uuid.UUID,
    response: dict[str, Any],
) -> dict[str, Any] | None:
    """Claim ``key`` for a new job, or return the answer an earlier request with it got.

    None: the key is now this request's; write ``job_id`` in the same transaction. A dict:
    the earlier request's response body, to be answered again with nothing written. Raises
    IdempotencyMismatch when the earlier request asked for something else.
    """
    for _ in range(2):
        made = conn.execute(
            """INSERT INTO idempotency_keys (api_key_id, key, request_hash, job_id, response)
               VALUES (%s, %s, %s, %s, %s) ON CONFLICT DO NOTHING RETURNING 1""",
            (tenant, key, fingerprint, job_id, json.dumps(response)),
        ).fetchone()
        if made is not None:
            return None
        earlier = conn.execute(
            """SELECT request_hash, response FROM idempotency_keys
               WHERE api_key_id = %s AND key = %s""",
            (tenant, key),
        ).fetchone()
        if earlier is None:
            continue  # pruned between the two statements: claim it again
        if earlier[0] != fingerprint:
            raise IdempotencyMismatch(
                f"Idempotency-Key {key!r} was used for a different request; use a new key for"
                " a new request"
            )
        return dict(earlier[1])
    raise RuntimeError(f"idempotency key {key!r} neither inserted nor found")


def prune(
    conn: psycopg.Connection[Any], older_than_s: float = KEEP_S, *, now: datetime | None = None
) -> int:
    """Forget keys older than ``older_than_s`` (a day by default); returns how many."""
    cur = conn.execute(
        f"""DELETE FROM idempotency_keys
            WHERE created_at < {NOW} - make_interval(secs => %(age)s)""",
        {"age": older_than_s, "now": now},
    )
    return cur.rowcount
