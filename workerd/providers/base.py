"""The provider interface: what workerd calls per chunk, and the errors that steer retries."""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from schema.errors import ChunkqError


class ProviderError(ChunkqError):
    """Base of provider failures; an unclassified failure is worth another attempt."""

    retryable: bool = True

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        # The provider's own hint (e.g. an HTTP Retry-After) in seconds; the retry policy
        # may wait at least this long instead of its computed backoff.
        self.retry_after = retry_after


class RetryableError(ProviderError):
    """A transient failure (timeout, rate limit, overload): try the chunk again later."""

    retryable = True


class PermanentError(ProviderError):
    """A failure another attempt cannot fix (e.g. input rejected): fail the chunk at once."""

    retryable = False


@runtime_checkable
class Provider(Protocol):
    """Analyses one chunk at a time and merges the succeeded chunks of a document.

    ``analyze`` may be called from many threads at once, so implementations must be
    thread-safe.
    """

    name: str

    def analyze(self, text: str) -> dict[str, Any]:
        """Return the JSON-serialisable result for one chunk, or raise a ProviderError."""
        ...

    def summarize(self, results: list[tuple[int, dict[str, Any]]]) -> dict[str, Any]:
        """Merge the succeeded chunks, given in original order as (length in chars, result)."""
        ...


def can_reduce(provider: Provider) -> bool:
    """Whether ``provider`` has the optional ``reduce(analyses) -> dict`` step: one more call
    that turns a job's ordered chunk analyses (dicts with index, start, end and result) into
    a document-level result."""
    return callable(getattr(provider, "reduce", None))
