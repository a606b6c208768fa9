"""The retry policy: how long a failed chunk waits, and when it has had enough attempts."""

from __future__ import annotations

import random


def backoff(attempt: int, *, base_s: float, max_s: float, rng: random.Random) -> float:
    """Seconds to wait after failed attempt number ``attempt`` (from 1).

    Exponential (base, 2*base, 4*base, ...) capped at ``max_s``, with "equal jitter": a
    uniform draw from the upper half of that ceiling, so retries of chunks that failed
    together spread out yet still grow.
    """
    ceiling = min(max_s, base_s * 2.0 ** (attempt - 1))
    return ceiling / 2.0 + rng.random() * ceiling / 2.0


def retry_delay(
    attempt: int,
    *,
    retryable: bool,
    max_attempts: int,
    base_s: float,
    max_s: float,
    rng: random.Random,
    hint_s: float | None = None,
    hint_max_s: float = 300.0,
) -> float | None:
    """The delay before the next attempt, or None when the chunk must fail now.

    A provider's Retry-After hint is the server's word: it wins when it asks for longer,
    whatever the backoff's ``max_s``, up to its own cap ``hint_max_s``
    (CHUNKQ_RETRY_AFTER_MAX_S).
    """
    if not retryable or attempt >= max_attempts:
        return None
    delay = backoff(attempt, base_s=base_s, max_s=max_s, rng=rng)
    if hint_s is not None and hint_s > delay:
        delay = min(hint_s, hint_max_s)
    return delay
