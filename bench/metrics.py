"""Metrics scrape: what ``GET /metrics``'s database reads cost when the table is mostly history.

One database: 1,000,000 finished chunk rows in 1,000 jobs of 1,000 chunks (--quick 100,000
in 100), and one job in flight of 5,000 chunks: 990 succeeded, 10 failed, 64 running (held
by 4 workers), and the rest pending, a tenth of them retries (half of those due now). The
finished jobs are mostly COMPLETED, with every tenth PARTIAL_SUCCESS (10 failed chunks each),
every hundredth FAILED and every hundredth CANCELLED (half its chunks succeeded, the rest
cancelled), their counters equal to their chunks' states. Built with INSERT ... SELECT
generate_series (256-character texts, lanes and turns as schema.queue.enqueue sets them), as
bench.backlog builds its tables; then VACUUM ANALYZE, as autovacuum would.

``schema.metrics.read`` (what a scrape runs) is timed against what a naive exporter would
run, ``SELECT status, count(*) FROM chunks GROUP BY status`` and the same on ``jobs``,
alternating, after a few warm-up runs of each; the figure is the median time of each, measured
on the client (round trips included). Every run's counts of chunks and jobs by status must
equal the naive ones: if any differ, the figure has no value (MISS) and the difference is in
its note.

Target: the read at most 0.1x the naive count (0.25x with --quick). The read's cost follows
the backlog, which is the same size in both modes, and the naive count's the history, which
--quick cuts to a tenth; a read that scanned the finished rows would be near 1x in either.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from enum import StrEnum
from typing import Any, TypeVar

import psycopg

from bench.figures import Figure, median
from bench.harness import Context
from schema import metrics, queue
from schema.states import ChunkStatus, JobStatus

NAME = "metrics"
PER_JOB = 1000
IN_FLIGHT = 5000
WARMUP = 5
WORKERS = 4

# Finished jobs: per g, its terminal status, and the counters its chunks (below) agree with.
_JOBS = """
INSERT INTO jobs (id, status, chunks_total, chunks_completed, chunks_failed, max_chunk_chars,
                  text_chars, created_at, updated_at, finished_at)
SELECT gen_random_uuid(), st,
       %(per_job)s,
       CASE st WHEN 'COMPLETED' THEN %(per_job)s
               WHEN 'PARTIAL_SUCCESS' THEN %(per_job)s - %(per_job)s / 100
               WHEN 'CANCELLED' THEN %(per_job)s / 2
               ELSE 0 END,
       CASE st WHEN 'PARTIAL_SUCCESS' THEN %(per_job)s / 100
               WHEN 'FAILED' THEN %(per_job)s
               ELSE 0 END,
       1000, %(per_job)s * 256,
       now() - make_interval(secs => 86400 + g), now(), now() - make_interval(secs => g)
FROM generate_series(1, %(jobs)s) g,
     LATERAL (SELECT CASE WHEN g %% 100 = 0 THEN 'FAILED'
                          WHEN g %% 100 = 50 THEN 'CANCELLED'
                          WHEN g %% 10 = 5 THEN 'PARTIAL_SUCCESS'
                          ELSE 'COMPLETED' END AS st) s
"""

# Their chunks: a PARTIAL_SUCCESS job's every hundredth failed, a CANCELLED job's second half
# cancelled.
_CHUNKS = """
INSERT INTO chunks (job_id, seq, start_offset, end_offset, text, status, attempts,
                    next_attempt_at, result, error, finished_at, lane, turn)
SELECT j.id, s, s * 256, (s + 1) * 256, repeat(md5(j.id::text || s), 8), c.st,
       CASE WHEN c.st = 'cancelled' THEN 0 ELSE 1 END, j.created_at,
       CASE WHEN c.st = 'succeeded' THEN '{"chars": 256, "words": 40}'::jsonb END,
       CASE WHEN c.st = 'failed' THEN 'permanent: bench' END,
       j.finished_at, 'anonymous', s / %(quantum)s
FROM jobs j CROSS JOIN generate_series(0, %(per_job)s - 1) s,
     LATERAL (SELECT CASE WHEN j.status = 'FAILED' THEN 'failed'
                          WHEN j.status = 'PARTIAL_SUCCESS' AND s %% 100 = 99 THEN 'failed'
                          WHEN j.status = 'CANCELLED' AND s >= %(per_job)s / 2 THEN 'cancelled'
                          ELSE 'succeeded' END AS st) c
ORDER BY j.created_at, s
"""

_IN_FLIGHT_JOB = """
INSERT INTO jobs (id, status, chunks_total, chunks_completed, chunks_failed, max_chunk_chars,
                  text_chars, created_at, updated_at)
VALUES (gen_random_uuid(), 'PROCESSING', %(n)s, 990, 10, 1000, %(n)s * 256,
        now() - interval '10 minutes', now())
RETURNING id
"""

# The job in flight: 990 succeeded, 10 failed, 64 running over the workers, then pending: a
# tenth retries (attempt 1 failed), the first half of them due now, the rest in an hour.
_IN_FLIGHT_CHUNKS = """
INSERT INTO chunks (job_id, seq, start_offset, end_offset, text, status, attempts,
                    next_attempt_at, worker_id, lease_expires_at, result, error, finished_at,
                    lane, turn)
SELECT %(job)s, s, s * 256, (s + 1) * 256, repeat(md5(%(job)s::text || s), 8), c.st,
       CASE WHEN c.st <> 'pending' OR s %% 10 = 5 THEN 1 ELSE 0 END,
       CASE WHEN c.st = 'pending' AND s %% 10 = 5 AND s >= %(n)s / 2
            THEN now() + interval '1 hour' ELSE now() - interval '10 minutes' END,
       CASE WHEN c.st = 'running' THEN 'bench-metrics-' || s %% %(workers)s END,
       CASE WHEN c.st = 'running' THEN now() + interval '30 seconds' END,
       CASE WHEN c.st = 'succeeded' THEN '{"chars": 256, "words": 40}'::jsonb END,
       CASE WHEN c.st = 'failed' THEN 'permanent: bench' END,
       CASE WHEN c.st IN ('succeeded', 'failed') THEN now() END,
       'anonymous', s / %(quantum)s
FROM generate_series(0, %(n)s - 1) s,
     LATERAL (SELECT CASE WHEN s < 990 THEN 'succeeded'
                          WHEN s < 1000 THEN 'failed'
                          WHEN s < 1064 THEN 'running'
                          ELSE 'pending' END AS st) c
"""

_NAIVE_CHUNKS = "SELECT status, count(*) FROM chunks GROUP BY status"
_NAIVE_JOBS = "SELECT status, count(*) FROM jobs GROUP BY status"

Counts = tuple[dict[ChunkStatus, int], dict[JobStatus, int]]
S = TypeVar("S", bound=StrEnum)


def _build(conn: psycopg.Connection[Any], finished: int) -> None:
    """The finished jobs first (older), then the job in flight, as a queue's table grows."""
    with conn.transaction():
        conn.execute(_JOBS, {"per_job": PER_JOB, "jobs": -(-finished // PER_JOB)})
        conn.execute(_CHUNKS, {"per_job": PER_JOB, "quantum": queue.FAIR_QUANTUM})
        row = conn.execute(_IN_FLIGHT_JOB, {"n": IN_FLIGHT}).fetchone()
        assert row is not None
        conn.execute(
            _IN_FLIGHT_CHUNKS,
            {"job": row[0], "n": IN_FLIGHT, "workers": WORKERS, "quantum": queue.FAIR_QUANTUM},
        )
    conn.execute("VACUUM ANALYZE jobs")
    conn.execute("VACUUM ANALYZE chunks")


def _time_read(conn: psycopg.Connection[Any]) -> tuple[float, Counts]:
    t0 = time.perf_counter()
    state = metrics.read(conn)
    elapsed = time.perf_counter() - t0
    return elapsed * 1000, (state.chunks, state.jobs)


def _time_naive(conn: psycopg.Connection[Any]) -> tuple[float, Counts]:
    t0 = time.perf_counter()
    chunk_rows = conn.execute(_NAIVE_CHUNKS).fetchall()
    job_rows = conn.execute(_NAIVE_JOBS).fetchall()
    elapsed = time.perf_counter() - t0
    chunks = dict.fromkeys(ChunkStatus, 0)
    chunks.update({ChunkStatus(status): n for status, n in chunk_rows})
    jobs = dict.fromkeys(JobStatus, 0)
    jobs.update({JobStatus(status): n for status, n in job_rows})
    return elapsed * 1000, (chunks, jobs)


def _differ(have: Mapping[S, int], want: Mapping[S, int]) -> list[str]:
    return [
        f"{status.value}: {have.get(status)} != {n}"
        for status, n in want.items()
        if have.get(status) != n
    ]


def _diff(got: Counts, want: Counts) -> str:
    """``status: read != naive`` for every count that differs; empty when they agree."""
    return ", ".join(_differ(got[0], want[0]) + _differ(got[1], want[1]))


def run(ctx: Context) -> list[Figure]:
    finished = 100_000 if ctx.quick else 1_000_000
    reps = 11 if ctx.quick else 21
    label = f"{finished:,} finished + {IN_FLIGHT:,} in flight"
    with ctx.database("metrics") as url, psycopg.connect(url, autocommit=True) as conn:
        t0 = time.monotonic()
        _build(conn, finished)
        ctx.say(f"metrics: built {label} chunk rows in {time.monotonic() - t0:.1f}s")
        times: dict[str, list[float]] = {"read": [], "naive": []}
        diffs: list[str] = []
        counts: Counts | None = None
        for i in range(WARMUP + reps):
            read_ms, got = _time_read(conn)
            naive_ms, want = _time_naive(conn)
            if diff := _diff(got, want):
                diffs.append(diff)
            counts = want
            if i >= WARMUP:
                times["read"].append(read_ms)
                times["naive"].append(naive_ms)
    med = {key: median(values) for key, values in times.items()}
    assert counts is not None
    shown = "; ".join(
        ", ".join(f"{status.value} {n:,}" for status, n in by_status.items() if n)
        for by_status in counts
    )
    if diffs:
        ctx.say(f"metrics: COUNTS DIFFER from the naive GROUP BY in {len(diffs)} runs: {diffs[0]}")
    ctx.say(
        f"metrics: median read {med['read']:.3f} ms vs naive count {med['naive']:.3f} ms"
        f" (ratio {med['read'] / med['naive']:.4f}); counts {shown}"
    )
    note = f"{label}; counts {shown}"
    if diffs:
        note = f"COUNTS DIFFER in {len(diffs)} of {WARMUP + reps} runs (read != naive): {diffs[0]}"
    return [
        Figure(
            NAME,
            f"schema.metrics.read, {label}, median (n={reps})",
            None if diffs else med["read"],
            "ms",
            "naive count(*) GROUP BY status of chunks + jobs",
            med["naive"],
            ratio_max=0.25 if ctx.quick else 0.1,
            note=note,
            extra={"read_median_ms": med["read"], "runs_ms": times},
        ),
        Figure(
            NAME,
            "read's chunk and job counts equal the naive count's, every run",
            float(not diffs),
            "bool",
            value_min=1,
        ),
    ]
