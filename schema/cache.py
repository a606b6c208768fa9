"""The result cache: a provider's result for a chunk text, reused for an identical chunk
instead of another provider call, and pruned by age.

An entry is keyed by (scope, key): ``key`` is the SHA-256 of what decides the result (the
provider's identity: name, model, prompt, output schema; and the text), made by the worker
(``workerd.cache``); ``scope`` is the tenant the chunk belongs to, so a tenant only ever
reads results of its own chunks, unless the operator shares one scope (``SHARED``) among
all. Entries are written by ``schema.queue.record`` with the success they come from, in
its transaction: a cached result is one a chunk succeeded with.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import psycopg

from schema.clock import NOW

# The one scope of a cache shared by every tenant (CHUNKQ_RESULT_CACHE=shared).
SHARED = "*"


def lookup(
    conn: psycopg.Connection[Any], scopes: Sequence[str], keys: Sequence[bytes]
) -> dict[tuple[str, bytes], str]:
    """The cached results (JSON text) of these (scope, key) pairs that have one: a primary
    key lookup each (a LATERAL subquery, whatever plan the statement gets), in one statement."""
    if not keys:
        return {}
    rows = conn.execute(
        """SELECT c.scope, c.key, c.result::text
           FROM unnest(%(scopes)b::text[], %(keys)b::bytea[]) AS i(scope, key)
           CROSS JOIN LATERAL (SELECT scope, key, result FROM result_cache r
                               WHERE r.scope = i.scope AND r.key = i.key LIMIT 1) c""",
        {"scopes": list(scopes), "keys": list(keys)},
    ).fetchall()
    return {(scope, bytes(key)): result for scope, key, result in rows}


def prune(
    conn: psycopg.Connection[Any],
    older_than_s: float,
    *,
    batch: int = 5000,
    now: datetime | None = None,
) -> int:
    """Forget entries stored more than ``older_than_s`` seconds ago, ``batch`` at a time
    (``conn`` in autocommit mode, one short transaction each); returns how many went."""
    deleted = 0
    while True:
        with conn.transaction():
            cur = conn.execute(
                f"""DELETE FROM result_cache WHERE (scope, key) IN (
                        SELECT scope, key FROM result_cache
                        WHERE created_at < {NOW} - make_interval(secs => %(age)s)
                        LIMIT %(batch)s FOR UPDATE SKIP LOCKED)""",
                {"age": older_than_s, "batch": batch, "now": now},
            )
        deleted += cur.rowcount
        if cur.rowcount < batch:
            return deleted
