"""One attempt at a chunk or a reduce step: the provider's call, turned into an outcome that
never raises, and the retry decision that goes with a failure."""

from __future__ import annotations

import logging
import random
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from schema import logs
from schema.queue import ClaimedChunk, Failure, Success, jsonb_text
from schema.queue.reductions import ClaimedReduction
from workerd.metrics import Metrics
from workerd.providers import AttemptTimeout, Call, PermanentError, Provider, ProviderError
from workerd.retry import retry_delay
from workerd.settings import Settings

log = logging.getLogger("workerd")


@dataclass(frozen=True, slots=True)
class ReduceOutcome:
    """One attempt at a job's reduce step: a result, or an error with its retry decision."""

    reduction: ClaimedReduction
    result: dict[str, Any] | None = None
    error: str | None = None
    retry_in: float | None = None
    unavailable: bool = False


Outcome = Success | Failure | ReduceOutcome
# What the worker tracks an attempt by: a chunk's (job_id, seq), or a reduction's job id.
Key = Any


class Attempts:
    """Runs attempts with the provider, and decides each failure's retry. The settings, random
    source and clock are passed in, so tests control the backoff and the deadlines."""

    def __init__(
        self,
        settings: Settings,
        provider: Provider,
        *,
        rng: random.Random | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        metrics: Metrics | None = None,
    ) -> None:
        self.settings = settings
        self.provider = provider
        self._rng = rng or random.Random()
        self._monotonic = monotonic
        self._metrics = metrics if metrics is not None else Metrics()

    def new_call(self, parts: list[dict[str, Any]] | None) -> Call:
        """A call with the attempt's deadline, carrying a split chunk's finished pieces."""
        return Call(self.settings.attempt_timeout_s, parts=parts, monotonic=self._monotonic)

    def chunk(self, chunk: ClaimedChunk, call: Call | None = None) -> Success | Failure:
        """Run the provider on one chunk; never raises: every error becomes a Failure. A
        success is kept in the result cache under the chunk's key (when the cache is on)."""
        call = call or self.new_call(chunk.parts)
        started = self._monotonic()
        # Every line logged during the attempt (the provider's too) says which it is about.
        with logs.bound(job_id=chunk.job_id, chunk=chunk.seq, attempt=chunk.attempt):
            try:
                result = self.provider.analyze(chunk.text, call)
                encoded = encode(result)
            except Exception as exc:
                self._metrics.call("chunk", self._monotonic() - started, exc)
                failure = Failure(
                    chunk,
                    type(exc).__name__,
                    # PostgreSQL text cannot hold NUL; a server's error body may.
                    (str(exc) or type(exc).__name__).replace("\x00", "\\x00"),
                    self.retry_in(chunk.attempt, exc),
                    unavailable=getattr(exc, "unavailable", False),
                    parts=_pieces(call),
                )
                _log_failure(failure, unexpected=not isinstance(exc, ProviderError))
                return failure
        self._metrics.call("chunk", self._monotonic() - started)
        self._metrics.used(result.get("usage"))
        return Success(
            chunk, result, encoded, cache_scope=chunk.cache_scope, cache_key=chunk.cache_key
        )

    def reduce(self, reduction: ClaimedReduction, call: Call | None = None) -> ReduceOutcome:
        """Run the provider's reduce step on a job's ordered analyses; never raises."""
        call = call or self.new_call(None)
        started = self._monotonic()
        with logs.bound(job_id=reduction.job_id, attempt=reduction.attempt):
            try:
                result = self.provider.reduce(reduction.analyses, call)  # type: ignore[attr-defined]
                encode(result)
            except Exception as exc:
                self._metrics.call("reduce", self._monotonic() - started, exc)
                return ReduceOutcome(
                    reduction,
                    error=f"{type(exc).__name__}: {exc}",
                    retry_in=self.retry_in(reduction.attempt, exc),
                    unavailable=getattr(exc, "unavailable", False),
                )
        self._metrics.call("reduce", self._monotonic() - started)
        self._metrics.used(result.get("usage"))
        return ReduceOutcome(reduction, result=result)

    def timed_out(self, claimed: ClaimedChunk | ClaimedReduction, call: Call) -> Outcome:
        """The failure of an attempt that ran past its deadline (counted, retried as usual)."""
        timeout = AttemptTimeout(
            f"attempt exceeded CHUNKQ_ATTEMPT_TIMEOUT_S={self.settings.attempt_timeout_s:g}"
        )
        if isinstance(claimed, ClaimedReduction):
            return ReduceOutcome(
                claimed,
                error=f"AttemptTimeout: {timeout}",
                retry_in=self.retry_in(claimed.attempt, timeout),
            )
        return Failure(
            claimed,
            "AttemptTimeout",
            str(timeout),
            self.retry_in(claimed.attempt, timeout),
            parts=_pieces(call),
        )

    def unrecordable(self, outcome: Outcome, exc: Exception) -> Outcome:
        """The failure that replaces an outcome the database refused: counted, retried under
        the usual policy, its message plain text."""
        reason = (str(exc).strip().splitlines() or [""])[0]
        detail = getattr(getattr(exc, "diag", None), "message_detail", None)
        if detail:
            reason = f"{reason} ({detail})"
        reason = reason.replace("\x00", "\\x00")
        error = f"the attempt's outcome could not be recorded: {type(exc).__name__}: {reason}"
        if isinstance(outcome, ReduceOutcome):
            return ReduceOutcome(
                outcome.reduction,
                error=error,
                retry_in=self.retry_in(outcome.reduction.attempt, exc),
            )
        chunk = outcome.chunk
        return Failure(chunk, "RecordFailed", error, self.retry_in(chunk.attempt, exc))

    def retry_in(self, attempt: int, exc: Exception) -> float | None:
        """Seconds until the next attempt after ``exc``, or None to fail now. An error that
        is not a ProviderError is unknown and may be transient: retried, within limits."""
        retryable = exc.retryable if isinstance(exc, ProviderError) else True
        hint = exc.retry_after if isinstance(exc, ProviderError) else None
        s = self.settings
        return retry_delay(
            attempt,
            retryable=retryable,
            max_attempts=s.max_attempts,
            base_s=s.backoff_base_s,
            max_s=s.backoff_max_s,
            rng=self._rng,
            hint_s=hint,
            hint_max_s=s.retry_after_max_s,
        )


def key_of(outcome: Outcome) -> Key:
    """The key the worker tracks ``outcome``'s attempt by."""
    if isinstance(outcome, ReduceOutcome):
        return outcome.reduction.job_id
    return outcome.chunk.key


def label(key: Key) -> str:
    """``key`` for a log line."""
    return f"reduce of job {key}" if isinstance(key, uuid.UUID) else f"chunk {key[0]}/{key[1]}"


def fields(key: Key) -> dict[str, Any]:
    """``key`` as a log line's context fields (``schema.logs``)."""
    if isinstance(key, uuid.UUID):
        return {"job_id": key}
    return {"job_id": key[0], "chunk": key[1]}


def encode(result: Any) -> str:
    """Serialise a provider's result for the database, refusing what jsonb cannot hold: a
    non-object, NaN or infinity, or a NUL character. A bad result is the provider's failure,
    not a reason for the worker to fail writing a whole batch."""
    if not isinstance(result, dict):
        raise PermanentError(f"provider returned {type(result).__name__}, not a JSON object")
    try:
        return jsonb_text(result)
    except (TypeError, ValueError) as exc:
        raise PermanentError(f"provider returned a result that jsonb cannot hold: {exc}") from exc


def _log_failure(failure: Failure, *, unexpected: bool) -> None:
    """One warning per failed attempt of a chunk: retried (and when) or failed for good.
    ``unexpected``: the provider raised something that is not a ProviderError (a bug)."""
    what = "provider raised" if unexpected else "attempt failed:"
    if failure.retry_in is None:
        log.warning("%s %s: %s; chunk failed for good", what, failure.error_class, failure.error)
    else:
        log.warning(
            "%s %s: %s; retry in %.3gs",
            what,
            failure.error_class,
            failure.error,
            failure.retry_in,
        )


def _pieces(call: Call) -> list[dict[str, Any]] | None:
    """A split chunk's finished pieces to keep for the next attempt (None: nothing new)."""
    return call.parts + call.finished if call.finished else None
