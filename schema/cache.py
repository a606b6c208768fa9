"""The result cache: a provider's result for a chunk text, reused for an identical chunk
instead of another provider call, and pruned by age.

An entry is keyed by (scope, key): ``key`` is the SHA-256 of what decides the result (the
provider's identity: name, model, prompt, output schema; and the text), made by the claim
in SQL from the worker's ``Lookup``; ``scope`` is the tenant the chunk belongs to, so a
tenant only ever reads results of its own chunks, unless the operator shares one scope
(``SHARED``) among all. The claim looks each chunk up as it takes it
(``schema.queue.claim``); entries are written by ``schema.queue.record`` with the success
they come from, in its transaction: a cached result is one a chunk succeeded with.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg

from schema.clock import NOW

# The one scope of a cache shared by every tenant (CHUNKQ_RESULT_CACHE=shared).
SHARED = "*"

# CHUNKQ_RESULT_CACHE: within each tenant, across tenants, or no cache.
MODES = ("on", "shared", "off")


def check_mode(mode: str) -> str:
    """``mode`` if it is one of MODES, else ValueError naming the setting."""
    if mode not in MODES:
        raise ValueError(f"CHUNKQ_RESULT_CACHE={mode!r}: choose one of {', '.join(MODES)}")
    return mode


@dataclass(frozen=True, slots=True)
class Lookup:
    """How a claim keys its chunks in the cache: ``prefix`` (the provider's identity and a
    NUL, as bytes) before each chunk's UTF-8 text makes the SHA-256 key; ``shared``: one
    scope for every tenant instead of the chunk's own lane."""

    prefix: bytes
    shared: bool = False

    @classmethod
    def of(cls, identity: str, *, shared: bool = False) -> Lookup:
        return cls(identity.encode("utf-8") + b"\0", shared)

    def key(self, text: str) -> bytes:
        """The key of ``text``, as the claim makes it in SQL (for tests and tools)."""
        return hashlib.sha256(self.prefix + text.encode("utf-8")).digest()


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
