"""Drain: how fast ``python -m workerd --burst --concurrency 64`` processes empty a backlog.

The backlog (20,000 chunks; --quick 4,000) is enqueued through schema.queue.enqueue,
either spread over jobs of 200 chunks or all in one job; the simulated provider answers in
0 ms, so this measures chunkq's own overhead per chunk. 1, 2 and 4 worker processes.

Two rates per run: *db*, chunks / (last finalization's commit - first claim), both
stamped with clock_timestamp() by bench-only triggers on jobs (the PENDING -> PROCESSING
move, and a deferred trigger that fires inside the COMMIT of the move to a terminal
status), so interpreter start-up is not counted; and *wall*, from spawning the workers until every
job is terminal (start-up included). The db rate is the figure compared with the batched
reference of as many clients (two for four workers, the most the reference runs),
measured right before the runs it is compared with. With 2 workers, the spread db rate is
also compared with pgqueuer (bench.pgq): 2 processes draining as many no-op jobs as there
are chunks, its rate measured the same way right before the chunkq runs, at its default
dequeue batch (10, what its own benchmark runs; chunkq's target is twice that rate) and at
a batch of 100 tuned for short jobs (reported beside it). The full run repeats each
pairing twice and keeps the best rates.
"""

from __future__ import annotations

import time
from typing import Any

import psycopg

from bench import pgq, procs, reference, workload
from bench.figures import Figure
from bench.harness import BenchError, Context, wait_until

NAME = "drain"
CONCURRENCY = 64
# pgqueuer is compared at this many processes, and chunkq at as many workers.
PGQ_WORKERS = 2


def drain_once(
    ctx: Context,
    url: str,
    conn: psycopg.Connection[Any],
    label: str,
    count: int,
    *,
    layout: str = "spread",
    **env: str,
) -> tuple[float, float]:
    """Enqueue the backlog (``layout``: spread over jobs, or one job) and drain it with
    ``count`` burst workers on ``url`` (``env`` for their environment); returns (db
    chunks/s, wall chunks/s)."""
    sizes = ctx.sizes
    n = sizes.drain_chunks
    workload.reset(conn)
    if layout == "spread":
        workload.enqueue_jobs(conn, n // sizes.per_job, sizes.per_job)
    else:
        workload.enqueue_one_big_job(conn, n, sizes.per_job)
    workload.vacuum_analyze(conn, "jobs", "chunks")
    args = ("--burst", "--concurrency", str(CONCURRENCY))
    t0 = time.monotonic()
    with procs.workers(url, ctx.tmp, label, count, *args, **env) as workers:

        def finished() -> bool:
            procs.check_exit(workers, ctx.tmp, label)
            if all(w.poll() is not None for w in workers) and workload.unfinished_jobs(conn):
                raise BenchError(f"{label}: workers exited with jobs unfinished")
            return workload.unfinished_jobs(conn) == 0

        wait_until(finished, 600, f"{label} to finish", interval=0.02)
        wall = time.monotonic() - t0
        for w in workers:
            w.wait(60)
        procs.check_exit(workers, ctx.tmp, label)
    window, completed, chunks = workload.drain_window(conn)
    if chunks != n or completed != (n // sizes.per_job if layout == "spread" else 1):
        raise BenchError(f"{label}: {chunks} of {n} chunks, {completed} jobs completed")
    ctx.say(
        f"{label}: {n} chunks, db window {window:.2f}s ({n / window:,.0f}/s),"
        f" wall {wall:.2f}s ({n / wall:,.0f}/s)"
    )
    return n / window, n / wall


def run(ctx: Context) -> list[Figure]:
    sizes = ctx.sizes
    counts = sizes.drain_workers
    refs: dict[int, float] = {}
    rates: dict[tuple[str, int], tuple[float, float]] = {}
    tries: dict[tuple[str, int], list[int]] = {}
    with (
        reference.Ceiling.open(ctx) as ceiling,
        pgq.Pgqueuer.open(ctx) as pgqueuer,
        ctx.database("drain") as url,
        psycopg.connect(url, autocommit=True) as conn,
    ):
        workload.install(conn, workload.JOB_STARTED_PROBE)
        for count in counts:
            for _ in range(sizes.drain_reps):
                # The reference right before the runs it is compared with: the load on a
                # shared machine drifts, and a ratio is only as good as the pairing.
                ref = ceiling.rate("batched", min(count, 2), sizes.drain_chunks)
                refs[count] = max(refs.get(count, 0.0), ref)
                if count == PGQ_WORKERS:
                    for batch in (pgq.DEFAULT_BATCH, pgq.TUNED_BATCH):
                        pgqueuer.rate(sizes.drain_chunks, PGQ_WORKERS, batch)
                for layout in ("spread", "one-job"):
                    db_rate, wall_rate = drain_once(
                        ctx, url, conn, f"drain-{layout}-{count}", count, layout=layout
                    )
                    best = rates.get((layout, count), (0.0, 0.0))
                    rates[layout, count] = (max(best[0], db_rate), max(best[1], wall_rate))
                    tries.setdefault((layout, count), []).append(round(db_rate))
    figures = []
    jobs = sizes.drain_chunks // sizes.per_job
    for layout in ("spread", "one-job"):
        for count in counts:
            db_rate, wall_rate = rates[layout, count]
            clients = min(count, 2)
            shape = f"{jobs} jobs" if layout == "spread" else "1 job"
            figures.append(
                Figure(
                    NAME,
                    f"{count} worker{'s' if count > 1 else ''}, {shape} (db)",
                    db_rate,
                    "chunks/s",
                    f"ref batched x{clients}",
                    refs[count],
                    ratio_min=0.5 if count == 2 else None,
                    note=f"wall incl. start-up {wall_rate:,.0f} chunks/s; db rate of each run"
                    f" {tries[layout, count]}",
                    extra={"wall_rate": wall_rate, "chunks": sizes.drain_chunks},
                )
            )
    for batch in (pgq.DEFAULT_BATCH, pgq.TUNED_BATCH) if PGQ_WORKERS in counts else ():
        runs = pgqueuer.runs[batch]
        db_rate, wall_rate = rates["spread", PGQ_WORKERS]
        pgq_db, pgq_wall = max(r[0] for r in runs), max(r[1] for r in runs)
        tuned = batch == pgq.TUNED_BATCH
        how = "tuned for short jobs" if tuned else "its default and its benchmark's"
        figures.append(
            Figure(
                NAME,
                f"{PGQ_WORKERS} workers, {jobs} jobs (db) vs pgqueuer x{PGQ_WORKERS}"
                + (" tuned" if tuned else ""),
                db_rate,
                "chunks/s",
                f"pgqueuer x{PGQ_WORKERS}, batch {batch}",
                pgq_db,
                # The target is against pgqueuer as it ships and benchmarks itself; the tuned
                # batch is reported beside it.
                ratio_min=None if tuned else 2.0,
                note=f"{sizes.drain_chunks} no-op pgqueuer jobs, dequeue batch {batch}"
                f" ({how});"
                f" pgqueuer wall incl. start-up {pgq_wall:,.0f} jobs/s, chunkq's"
                f" {wall_rate:,.0f} chunks/s; pgqueuer db rate of each run"
                f" {[round(r[0]) for r in runs]}",
                extra={"pgqueuer_wall_rate": pgq_wall, "wall_rate": wall_rate, "batch": batch},
            )
        )
    for count in counts:
        figures.append(
            Figure(
                NAME,
                f"{count} worker{'s' if count > 1 else ''}, one-job vs spread (db)",
                rates["one-job", count][0],
                "chunks/s",
                "spread",
                rates["spread", count][0],
                ratio_min=0.8,
            )
        )
    return figures
