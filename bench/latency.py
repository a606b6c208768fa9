"""Latency-bound efficiency: does a slow provider keep every slot of concurrency busy?

Simulated provider at 200 ms per chunk. (a) 2,000 chunks (--quick 640) in jobs of 100, two
idle workers x --concurrency 32 (64 slots): time from the submit's commit to the commit of the last
finalization, against the ideal chunks / 64 x 0.2 s. (b) one job of 100 chunks, two idle
workers x --concurrency 16 (32 slots): submit -> COMPLETED (commit to commit), against
ceil(100 / 32) x 0.2 s = 0.8 s; median of several runs. The workers are started and
LISTENing before the submit, so interpreter start-up is not counted; the submit's commit
is stamped inside COMMIT by a bench-only deferred trigger, as in the pickup benchmark.
"""

from __future__ import annotations

import itertools
import math
import uuid
from typing import Any

import psycopg

from bench import procs, workload
from bench.figures import Figure, median
from bench.harness import BenchError, Context, wait_until
from schema import queue

NAME = "latency"
LATENCY_S = 0.2
# Every job of every run gets a text of its own: the result cache answers none of them.
_SEEDS = itertools.count(1)


def _submit(conn: psycopg.Connection[Any], jobs: int, per_job: int) -> list[uuid.UUID]:
    """Enqueue ``jobs`` jobs in one transaction, each of its own text (none answered by the
    result cache)."""
    ids = [uuid.uuid4() for _ in range(jobs)]
    with conn.transaction():
        for job_id in ids:
            text, spans = workload.job_text(per_job, seed=next(_SEEDS))
            queue.enqueue(conn, job_id, text, spans, max_chunk_chars=1000)
    return ids


def _run(
    ctx: Context,
    url: str,
    conn: psycopg.Connection[Any],
    label: str,
    per_worker: int,
    jobs: int,
    per_job: int,
    reps: int,
) -> list[float]:
    """Seconds from submit commit to the last finished_at, for each of ``reps`` runs."""
    out = []
    with procs.workers(
        url,
        ctx.tmp,
        label,
        2,
        "--concurrency",
        str(per_worker),
        CHUNKQ_SIM_LATENCY_MS=str(int(LATENCY_S * 1000)),
    ) as workers:
        procs.wait_listening(conn, 2)
        for _ in range(reps):
            # No TRUNCATE between runs: it could deadlock with a live worker's transaction.
            ids = _submit(conn, jobs, per_job)

            def finished() -> bool:
                procs.check_exit(workers, ctx.tmp, label)
                return workload.unfinished_jobs(conn) == 0

            wait_until(finished, 120, f"{label} to finish", interval=0.02)
            row = conn.execute(
                """SELECT extract(epoch FROM
                              (SELECT max(at) FROM bench_job_finished WHERE job_id = ANY(%(ids)s))
                            - (SELECT min(at) FROM bench_committed WHERE job_id = ANY(%(ids)s))),
                          count(*) FILTER (WHERE status = 'COMPLETED')
                   FROM jobs WHERE id = ANY(%(ids)s)""",
                {"ids": ids},
            ).fetchone()
            assert row is not None
            if row[1] != jobs:
                raise BenchError(f"{label}: {row[1]} of {jobs} jobs completed")
            out.append(float(row[0]))
    return out


def run(ctx: Context) -> list[Figure]:
    n = ctx.sizes.latency_chunks
    with ctx.database("latency") as url, psycopg.connect(url, autocommit=True) as conn:
        workload.install(conn, workload.SUBMIT_COMMITTED_PROBE)
        workload.install(conn, workload.JOB_STARTED_PROBE)
        bulk = _run(ctx, url, conn, "latency-bulk", 32, n // 100, 100, 1)[0]
        single = _run(ctx, url, conn, "latency-job", 16, 1, 100, ctx.sizes.latency_reps)
    ideal_bulk = n / 64 * LATENCY_S
    ideal_job = math.ceil(100 / 32) * LATENCY_S
    ctx.say(f"latency: {n} chunks in {bulk:.2f}s (ideal {ideal_bulk:.2f}s)")
    ctx.say(f"latency: 100-chunk job runs {', '.join(f'{s:.3f}s' for s in single)}")
    return [
        Figure(
            NAME,
            f"{n} chunks @200ms, 2x32 slots: wall",
            bulk,
            "s",
            "ideal n/64*0.2s",
            ideal_bulk,
            ratio_max=1.1,
        ),
        Figure(
            NAME,
            f"100-chunk job @200ms, 2x16 slots: submit->COMPLETED, median of {len(single)}",
            median(single),
            "s",
            "ideal ceil(100/32)*0.2s",
            ideal_job,
            ratio_max=1.1,
            extra={"runs_s": single},
        ),
    ]
