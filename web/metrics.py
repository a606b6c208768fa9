"""``GET /metrics``: the queue's state in Prometheus' text format, read from the database at
each scrape, so every API process (and every replica) reports the same numbers.

The gauges come from a collector in a registry of the app's own: no process-wide state, so
two apps in one process (tests) never see each other's metrics. The reads are bounded by
one deadline in all (``METRICS_TIMEOUT_S``, 5 s): a scrape answers 503 rather than hang.
"""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
from flask import Blueprint, Flask, Response, current_app, request
from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

from schema import metrics
from web.database import connection
from web.problems import RETRY_AFTER_S, problem

bp = Blueprint("metrics", __name__)

DEFAULT_TIMEOUT_S = 5.0


@bp.get("/metrics")
def scrape() -> Response:
    """The gauges, read now; 503 problem when the database cannot answer in time."""
    registry: CollectorRegistry = current_app.extensions["chunkq.metrics"]
    # The text format, or OpenMetrics when the scraper asks for it.
    encode, content_type = choose_encoder(request.headers.get("Accept", ""))
    try:
        body = encode(registry)
    except psycopg.errors.QueryCanceled:
        timeout = current_app.config.get("METRICS_TIMEOUT_S", DEFAULT_TIMEOUT_S)
        return problem(
            503,
            "Metrics unavailable",
            f"the database did not answer the metrics queries within {timeout:g} s",
            type_="urn:chunkq:problem:metrics-timeout",
            headers={"Retry-After": str(RETRY_AFTER_S)},
        )
    return Response(body, content_type=content_type)


def register_metrics(app: Flask) -> None:
    """Give ``app`` its registry and the route that serves it."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(QueueCollector())
    app.extensions["chunkq.metrics"] = registry
    app.register_blueprint(bp)


class QueueCollector(Collector):
    """The database's gauges, read when Prometheus asks (within a request of this app)."""

    def describe(self) -> Iterator[GaugeMetricFamily]:
        # Described without reading the database: registering must not need one.
        yield from _families()

    def collect(self) -> Iterator[GaugeMetricFamily]:
        timeout_s = current_app.config.get("METRICS_TIMEOUT_S", DEFAULT_TIMEOUT_S)
        with connection(write=False) as conn, conn.transaction():
            state = metrics.read(conn, timeout_s=timeout_s)
        yield from _families(state)


def _families(state: metrics.QueueState | None = None) -> Iterator[GaugeMetricFamily]:
    """The metric families, with ``state``'s samples (none: only their names and help)."""
    chunks = GaugeMetricFamily(
        "chunkq_chunks", "Chunks by status, every status present.", labels=["status"]
    )
    jobs = GaugeMetricFamily(
        "chunkq_jobs", "Jobs by status, every status present.", labels=["status"]
    )
    oldest = GaugeMetricFamily(
        "chunkq_queue_oldest_due_seconds",
        "How long the oldest chunk that is pending and due now has waited (0: none).",
    )
    running = GaugeMetricFamily(
        "chunkq_running_chunks", "Running chunks by the worker that holds them.", labels=["worker"]
    )
    circuit = GaugeMetricFamily(
        "chunkq_circuit_open",
        "1 while a provider endpoint's circuit is open, 0 once closed again.",
        labels=["provider"],
    )
    circuit_s = GaugeMetricFamily(
        "chunkq_circuit_open_seconds",
        "How long a provider endpoint's circuit has been open (0: closed).",
        labels=["provider"],
    )
    if state is not None:
        for chunk_status, n in state.chunks.items():
            chunks.add_metric([chunk_status.value], n)
        for job_status, n in state.jobs.items():
            jobs.add_metric([job_status.value], n)
        oldest.add_metric([], state.oldest_due_s)
        for worker, n in sorted(state.running.items()):
            running.add_metric([worker], n)
        for provider, open_s in sorted(state.circuits.items()):
            circuit.add_metric([provider], 0 if open_s is None else 1)
            circuit_s.add_metric([provider], open_s or 0.0)
    yield from (chunks, jobs, oldest, running, circuit, circuit_s)
