"""What flows through the queue: a claimed chunk, an attempt's outcome, what recording did,
and the merge that turns a job's results into its summary."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from schema.states import JobStatus

Summarize = Callable[[list[tuple[int, dict[str, Any]]]], dict[str, Any]]
# A provider's merge, looked up by the provider's name (each chunk records the provider
# that produced its result; None for results recorded before names were kept).
Merge = Callable[[str | None], Summarize]


def merge_with(summarize: Summarize) -> Merge:
    """A Merge that merges every result with ``summarize``, whoever produced it."""
    return lambda _provider: summarize


@dataclass(frozen=True, slots=True)
class ClaimedChunk:
    """One chunk this worker now owns for attempt number ``attempt``."""

    job_id: uuid.UUID
    seq: int
    attempt: int
    start: int
    end: int
    text: str
    # Pieces of a split chunk that earlier attempts finished (None when not split).
    parts: list[dict[str, Any]] | None = None
    # The lane (tenant) it was claimed in.
    lane: str = "anonymous"
    # Where the result cache keeps its result (None: the cache is off), and the cached
    # result (JSON text) the claim found there, if any (schema.cache).
    cache_scope: str | None = None
    cache_key: bytes | None = None
    cached: str | None = None
    # This claim moved the chunk's job PENDING -> PROCESSING: the job's first claim.
    started: bool = False

    @property
    def key(self) -> tuple[uuid.UUID, int]:
        return (self.job_id, self.seq)


@dataclass(frozen=True, slots=True)
class Success:
    chunk: ClaimedChunk
    result: dict[str, Any]
    # The result already serialised (by the attempt thread, off the recording path).
    encoded: str | None = None
    # Where the result cache keeps it (``schema.cache``): the scope and key it was looked up
    # by (None: the cache is off), and whether it came from there rather than a provider call.
    cache_scope: str | None = None
    cache_key: bytes | None = None
    cached: bool = False


@dataclass(frozen=True, slots=True)
class Failure:
    """A failed attempt. ``retry_in`` is None when the chunk is out of attempts (or the error
    is permanent) and must fail now; otherwise the seconds until it may run again."""

    chunk: ClaimedChunk
    error_class: str
    error: str
    retry_in: float | None
    # The failure says the provider is down (refused, reset, 5xx): the circuit breaker's input.
    unavailable: bool = False
    # False for a failure while the provider's circuit was open: the chunk goes back to the
    # queue with its attempt handed back, and nothing is logged against it.
    counted: bool = True
    # The finished pieces of a split chunk, kept for the next attempt (None: unchanged).
    parts: list[dict[str, Any]] | None = None


@dataclass(frozen=True, slots=True)
class Finalized:
    """A job that ``finalize`` moved to its terminal status: what its lifecycle's last log
    line says (its chunks' counts, and the time from its submit to now)."""

    status: JobStatus
    succeeded: int
    failed: int
    duration_s: float


@dataclass(frozen=True, slots=True)
class Recorded:
    """What one ``record`` transaction did."""

    applied: int
    dropped: list[tuple[uuid.UUID, int]]
    finalized: dict[uuid.UUID, Finalized]
    # Outcomes not written because another transaction holds their job's row: still ours
    # (the lease is untouched), to be recorded by a later transaction.
    deferred: list[tuple[uuid.UUID, int]] = field(default_factory=list)
