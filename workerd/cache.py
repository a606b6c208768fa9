"""The worker's side of the result cache: the key of each claimed chunk, and the successes
the cache answers at once, so an identical chunk costs no provider call.

CHUNKQ_RESULT_CACHE: ``on`` (each tenant's chunks are answered from its own results),
``shared`` (from every tenant's: for an operator whose tenants may see each other's
analyses), ``off``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Any

import psycopg

from schema import cache
from schema.queue import ClaimedChunk, Success

MODES = ("on", "shared", "off")


class ResultCache:
    """Keys chunks by the provider's identity and their text, within their scope."""

    def __init__(self, mode: str, identity: str | None) -> None:
        if mode not in MODES:
            raise ValueError(f"CHUNKQ_RESULT_CACHE={mode!r}: choose one of {', '.join(MODES)}")
        # A provider with no identity cannot say when its answer would differ: not cached.
        self.enabled = mode != "off" and identity is not None
        self._shared = mode == "shared"
        self._base = hashlib.sha256((identity or "").encode() + b"\0")

    def scope_and_key(self, chunk: ClaimedChunk) -> tuple[str, bytes]:
        """Where ``chunk``'s result is kept: its tenant's scope (or the shared one), and the
        SHA-256 of the provider's identity and its text."""
        digest = self._base.copy()
        digest.update(chunk.text.encode("utf-8", "surrogatepass"))
        return (cache.SHARED if self._shared else chunk.lane), digest.digest()

    def answer(
        self, conn: psycopg.Connection[Any], chunks: Sequence[ClaimedChunk]
    ) -> tuple[list[Success], dict[tuple[Any, int], tuple[str, bytes]]]:
        """Look ``chunks`` up (one statement, in the claim's transaction): the successes the
        cache answers, and the (scope, key) of every chunk, to store its result under."""
        if not self.enabled or not chunks:
            return [], {}
        keys = {chunk.key: self.scope_and_key(chunk) for chunk in chunks}
        found = cache.lookup(conn, [s for s, _ in keys.values()], [k for _, k in keys.values()])
        hits = []
        for chunk in chunks:
            scope, key = keys[chunk.key]
            text = found.get((scope, key))
            if text is not None:
                hits.append(
                    Success(
                        chunk,
                        json.loads(text),
                        text,
                        cache_scope=scope,
                        cache_key=key,
                        cached=True,
                    )
                )
        return hits, keys
