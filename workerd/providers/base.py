"""The provider interface: what workerd calls per chunk, the limits of one call, and the
errors that steer retries."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from typing import Any, Protocol, runtime_checkable

from schema.errors import ChunkqError


class ProviderError(ChunkqError):
    """Base of provider failures; an unclassified failure is worth another attempt."""

    retryable: bool = True
    # True for failures that say the provider itself is down (refused, reset, 5xx): the
    # worker's circuit counts these across chunks and pauses claiming while they last.
    unavailable: bool = False

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        # The provider's own hint (e.g. an HTTP Retry-After) in seconds; the retry policy
        # waits at least this long instead of its computed backoff.
        self.retry_after = retry_after


class RetryableError(ProviderError):
    """A transient failure (timeout, rate limit, overload): try the chunk again later."""

    retryable = True


class ProviderUnavailable(RetryableError):
    """The provider cannot be reached or answers 5xx: nothing about this chunk is wrong."""

    unavailable = True


class AttemptTimeout(RetryableError):
    """The attempt ran past CHUNKQ_ATTEMPT_TIMEOUT_S; its slot is free again."""


class AttemptAborted(RetryableError):
    """The worker gave the attempt up (its lease was lost or the job cancelled)."""


class PermanentError(ProviderError):
    """A failure another attempt cannot fix (e.g. input rejected): fail the chunk at once."""

    retryable = False


class InvalidReply(PermanentError):
    """The model's reply does not match the analysis schema, even with a changed sampling."""


class ContextOverflow(PermanentError):
    """The input does not fit the model's context; permanent unless split."""


class Call:
    """The limits of one provider attempt: a deadline, an abort, and what is already done.

    The worker makes one per attempt and hands it to the provider. ``check`` raises once the
    deadline passed or the worker aborted the attempt; ``abortable`` registers a hook that
    the abort runs from the worker's thread (e.g. shutting a socket down, so the server stops
    generating). ``parts`` are the pieces of a split chunk that earlier attempts finished;
    ``finished`` collects the pieces this attempt finishes, so a failure keeps them.
    """

    def __init__(
        self,
        timeout_s: float | None = None,
        *,
        parts: list[dict[str, Any]] | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._monotonic = monotonic
        self.timeout_s = timeout_s
        self.deadline = math.inf if timeout_s is None else monotonic() + timeout_s
        self.parts: list[dict[str, Any]] = list(parts or [])
        self.finished: list[dict[str, Any]] = []
        self.abort_reason = ""
        self._aborted = False
        # Made on the first wait: most attempts never wait on an abort, and an Event (a
        # condition and its lock) per attempt costs more than a fast provider's whole call.
        self._event: threading.Event | None = None
        self._hooks: list[Callable[[], None]] = []
        self._lock = threading.Lock()

    @property
    def aborted(self) -> threading.Event:
        """Set once the attempt is aborted: something to wait on."""
        with self._lock:
            if self._event is None:
                self._event = threading.Event()
                if self._aborted:
                    self._event.set()
            return self._event

    def remaining(self) -> float:
        """Seconds left before the deadline (``inf`` when there is none)."""
        return self.deadline - self._monotonic()

    def check(self) -> None:
        """Raise AttemptAborted or AttemptTimeout when the attempt must stop now."""
        if self._aborted:
            raise AttemptAborted(f"attempt aborted: {self.abort_reason}")
        if self.remaining() <= 0:
            raise AttemptTimeout(f"attempt exceeded CHUNKQ_ATTEMPT_TIMEOUT_S={self.timeout_s:g}")

    def sleep(self, seconds: float) -> None:
        """Wait ``seconds``, cut short by the deadline or an abort (then raise as ``check``)."""
        self.aborted.wait(max(0.0, min(seconds, self.remaining())))
        self.check()

    def abort(self, reason: str) -> None:
        """Give the attempt up: later ``check``s raise, and every registered hook runs now."""
        with self._lock:
            self.abort_reason = reason
            self._aborted = True
            if self._event is not None:
                self._event.set()
            hooks, self._hooks = self._hooks, []
        for hook in hooks:
            with suppress(Exception):  # an abort hook is best effort
                hook()

    @contextmanager
    def abortable(self, hook: Callable[[], None]) -> Iterator[None]:
        """Run ``hook`` if the attempt is aborted while the block runs."""
        with self._lock:
            already = self._aborted
            if not already:
                self._hooks.append(hook)
        if already:
            hook()
        try:
            yield
        finally:
            with self._lock:
                if hook in self._hooks:
                    self._hooks.remove(hook)


@runtime_checkable
class Provider(Protocol):
    """Analyses one chunk at a time and merges the succeeded chunks of a document.

    ``analyze`` may be called from many threads at once, so implementations must be
    thread-safe. ``call`` (None: no limits) carries the attempt's deadline and abort.
    """

    name: str

    def analyze(self, text: str, call: Call | None = None) -> dict[str, Any]:
        """Return the JSON-serialisable result for one chunk, or raise a ProviderError."""
        ...

    def summarize(self, results: list[tuple[int, dict[str, Any]]]) -> dict[str, Any]:
        """Merge the succeeded chunks, given in original order as (length in chars, result)."""
        ...


def can_reduce(provider: Provider) -> bool:
    """Whether ``provider`` has the optional ``reduce(analyses, call) -> dict`` step: one
    more call that turns a job's ordered chunk analyses (dicts with index, start, end and
    result) into a document-level result."""
    return callable(getattr(provider, "reduce", None))


def cache_identity(provider: Provider) -> str | None:
    """What decides a provider's result besides the chunk's text (its name, model, prompt,
    output schema, version), for the result cache's key; None: its results are not cached.
    A provider opts in with a ``cache_identity`` attribute, and must change it whenever its
    answer to the same text would change."""
    identity = getattr(provider, "cache_identity", None)
    return str(identity) if identity else None


def circuit_key(provider: Provider) -> str:
    """What identifies the provider's endpoint for the shared circuit breaker: workers that
    call the same server share one circuit."""
    key = getattr(provider, "endpoint", None)
    return str(key) if key else provider.name
