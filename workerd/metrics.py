"""One worker process's own counters and histograms, for Prometheus to scrape from it on
``--metrics-port`` / ``CHUNKQ_METRICS_PORT``: its provider calls, their latency and tokens,
its claims, records and rescues, its cache hits and how many attempts it holds.

Each ``Metrics`` counts into a registry of its own (no process-wide default registry), so
two workers in one test process never add to each other's numbers. On the hot path each
event is one counter increment (prometheus_client's own lock), nothing more.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from schema.queue import Failure, Success

# Provider calls take from milliseconds (a cache, a local model) to minutes (a long reply).
CALL_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class Metrics:
    """The counters a worker moves as it works, in ``registry`` (a new one by default)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.calls = Counter(
            "chunkq_worker_provider_calls",
            "Provider calls that ended, by kind (chunk, reduce), outcome (success, error)"
            " and error class.",
            ["kind", "outcome", "error_class"],
            registry=r,
        )
        self.call_seconds = Histogram(
            "chunkq_worker_provider_call_seconds",
            "How long each provider call took, success or error.",
            ["kind"],
            buckets=CALL_BUCKETS,
            registry=r,
        )
        self.tokens = Counter(
            "chunkq_worker_tokens",
            "Tokens the provider reported using, by type (prompt, completion).",
            ["type"],
            registry=r,
        )
        self.claims = Counter(
            "chunkq_worker_claims",
            "Attempts claimed, by kind (chunk, reduce).",
            ["kind"],
            registry=r,
        )
        self.records = Counter(
            "chunkq_worker_records",
            "Chunk outcomes written, by outcome: succeeded, retried, failed, handed_back (the"
            " open circuit's, attempt not counted), lost (the lease was gone: not written).",
            ["outcome"],
            registry=r,
        )
        self.rescues = Counter(
            "chunkq_worker_rescues",
            "Chunks this worker took back from workers whose lease expired.",
            registry=r,
        )
        self.cache_hits = Counter(
            "chunkq_worker_cache_hits",
            "Claimed chunks the result cache answered, with no provider call.",
            registry=r,
        )
        self.in_flight = Gauge(
            "chunkq_worker_in_flight", "Attempts this worker holds now.", registry=r
        )
        self._info = Gauge(
            "chunkq_worker_info",
            "1, labelled with the worker's id (the API's chunkq_running_chunks{worker}).",
            ["worker_id"],
            registry=r,
        )
        # Series that exist from the start, at 0, so a rate() over them has a beginning.
        for kind in ("prompt", "completion"):
            self.tokens.labels(kind)
        for kind in ("chunk", "reduce"):
            self.claims.labels(kind)
        # Label children made once: the hot path does no label lookup for the common cases.
        self._succeeded = self.calls.labels("chunk", "success", "")
        self._chunk_seconds = self.call_seconds.labels("chunk")
        self._recorded = {
            name: self.records.labels(name)
            for name in ("succeeded", "retried", "failed", "handed_back", "lost")
        }

    def identify(self, worker_id: str, in_flight: Callable[[], int]) -> None:
        """Name the worker these counters belong to, and read its in-flight count at scrape."""
        self._info.labels(worker_id).set(1)
        self.in_flight.set_function(in_flight)

    def call(self, kind: str, seconds: float, error: BaseException | None = None) -> None:
        """A provider call of ``kind`` ended after ``seconds``, with ``error`` or not."""
        if kind == "chunk":
            self._chunk_seconds.observe(seconds)
            if error is None:
                self._succeeded.inc()
                return
        else:
            self.call_seconds.labels(kind).observe(seconds)
        if error is None:
            self.calls.labels(kind, "success", "").inc()
        else:
            self.calls.labels(kind, "error", type(error).__name__).inc()

    def used(self, usage: Any) -> None:
        """Count the tokens of a result's ``usage``, when the provider reported any."""
        if not isinstance(usage, dict):
            return
        for kind in ("prompt", "completion"):
            n = usage.get(f"{kind}_tokens")
            if isinstance(n, int) and n > 0:
                self.tokens.labels(kind).inc(n)

    def recorded(self, outcome: Success | Failure, *, lost: bool = False) -> None:
        """A chunk's outcome was written (or, ``lost``, refused by the fence)."""
        if lost:
            name = "lost"
        elif isinstance(outcome, Success):
            name = "succeeded"
        elif not outcome.counted:
            name = "handed_back"
        else:
            name = "failed" if outcome.retry_in is None else "retried"
        self._recorded[name].inc()


def serve(
    metrics: Metrics, port: int, host: str = "0.0.0.0"
) -> tuple[WSGIServer, threading.Thread]:
    """Serve ``metrics`` over HTTP on ``host:port`` from a daemon thread; OSError when the
    port cannot be bound (in use, not allowed)."""
    return start_http_server(port, addr=host, registry=metrics.registry)
