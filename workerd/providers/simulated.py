"""The test and benchmark double: configurable latency and failures, deterministic results."""

from __future__ import annotations

import hashlib
import math
import random
import re
import threading
import time
from collections.abc import Callable
from typing import Any

from schema.merging import summarize_counts
from workerd.providers.base import Call, RetryableError


class SimulatedProvider:
    """Sleeps ``latency_ms`` per call and fails attempts at random or by pattern.

    Every attempt first takes its latency (a real provider is slow to fail too), then
    fails if the chunk matches ``fail_pattern`` (on every attempt, so the chunk ends up
    failed) or, with probability ``fail_rate``, at random. Safe to call from many threads.
    """

    name = "simulated"
    # Its results depend on the text alone (failures are never cached).
    cache_identity = "simulated/1"

    def __init__(
        self,
        latency_ms: float = 0,
        fail_rate: float = 0.0,
        fail_pattern: str | None = None,
        *,
        rng: random.Random | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if not (math.isfinite(latency_ms) and latency_ms >= 0):
            raise ValueError(f"latency_ms must be a finite number >= 0, got {latency_ms!r}")
        if not 0.0 <= fail_rate <= 1.0:
            raise ValueError(f"fail_rate must be between 0 and 1, got {fail_rate!r}")
        self.latency_ms = latency_ms
        self.fail_rate = fail_rate
        self._pattern: re.Pattern[str] | None = None
        # An empty pattern would match every chunk; treat it as unset, since that is what an
        # empty CHUNKQ_SIM_FAIL_PATTERN means (fail_rate=1 is the way to fail everything).
        if fail_pattern:
            try:
                self._pattern = re.compile(fail_pattern)
            except re.error as exc:
                raise ValueError(
                    f"fail_pattern {fail_pattern!r} is not a valid regex: {exc}"
                ) from exc
        self._rng = rng if rng is not None else random.Random()
        # random.Random is not documented as thread-safe; a lock keeps a seeded sequence
        # intact when many threads draw from it.
        self._rng_lock = threading.Lock()
        self._sleep = sleep

    def analyze(self, text: str, call: Call | None = None) -> dict[str, Any]:
        """Return length, word count and digest of ``text``, or raise RetryableError."""
        self._wait(call)
        if self._pattern is not None and self._pattern.search(text):
            raise RetryableError(
                f"simulated failure: chunk matches fail_pattern {self._pattern.pattern!r}"
            )
        if self.fail_rate > 0 and self._draw() < self.fail_rate:
            raise RetryableError(f"simulated failure (fail_rate={self.fail_rate})")
        return {
            "chars": len(text),
            "words": len(text.split()),
            "digest": hashlib.sha256(text.encode()).hexdigest()[:16],
        }

    def summarize(self, results: list[tuple[int, dict[str, Any]]]) -> dict[str, Any]:
        """Chunk count and total chars and words of the succeeded chunks."""
        return summarize_counts(results)

    def _wait(self, call: Call | None) -> None:
        """Take the call's latency; within a Call, its deadline or an abort cuts it short."""
        if self.latency_ms <= 0:
            return
        if call is None:
            self._sleep(self.latency_ms / 1000)
        else:
            call.sleep(self.latency_ms / 1000)

    def _draw(self) -> float:
        with self._rng_lock:
            return self._rng.random()

    def reduce(self, analyses: list[dict[str, Any]], call: Call | None = None) -> dict[str, Any]:
        """The reduce step's double: one more call (same latency and random failures) that
        folds the ordered chunk digests into one."""
        self._wait(call)
        if self.fail_rate > 0 and self._draw() < self.fail_rate:
            raise RetryableError(f"simulated reduce failure (fail_rate={self.fail_rate})")
        digests = "".join(a["result"]["digest"] for a in analyses)
        return {
            "chunks": len(analyses),
            "digest": hashlib.sha256(digests.encode()).hexdigest()[:16],
        }
