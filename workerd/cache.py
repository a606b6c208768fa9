"""The worker's side of the result cache: how its claims key chunks, and the successes the
cache answered, so an identical chunk costs no provider call.

CHUNKQ_RESULT_CACHE: ``on`` (each tenant's chunks are answered from its own results),
``shared`` (from every tenant's: for an operator whose tenants may see each other's
analyses), ``off``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from schema.cache import Lookup, check_mode
from schema.queue import ClaimedChunk, Success


class ResultCache:
    """The cache as one worker uses it, for one provider identity."""

    def __init__(self, mode: str, identity: str | None) -> None:
        check_mode(mode)
        # A provider with no identity cannot say when its answer would differ: not cached.
        self.lookup = (
            Lookup.of(identity, shared=mode == "shared")
            if mode != "off" and identity is not None
            else None
        )

    @property
    def enabled(self) -> bool:
        return self.lookup is not None

    def answered(self, chunks: Sequence[ClaimedChunk]) -> list[Success]:
        """The successes of the chunks whose claim found a cached result."""
        return [
            Success(
                chunk,
                json.loads(chunk.cached),
                chunk.cached,
                cache_scope=chunk.cache_scope,
                cache_key=chunk.cache_key,
                cached=True,
            )
            for chunk in chunks
            if chunk.cached is not None
        ]
