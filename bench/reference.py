"""Reference: the ceiling a Postgres queue can reach here, with no chunkq code in the loop.

Tables ``bench_jobs`` / ``bench_chunks`` copy the columns, defaults, constraints and indexes
of ``jobs`` / ``chunks`` (including the partial due index) and hold the same rows the drain
benchmark works through. Each client process loops over one statement per transaction:
claim up to N due pending rows with FOR UPDATE SKIP LOCKED, mark them succeeded, and add
their count to their jobs' counters (job rows locked in id order, as chunkq does);
N = 1 (single-row) or 100 (batched).
"""

from __future__ import annotations

import contextlib
import multiprocessing
import time
from collections.abc import Iterator
from typing import Any

import psycopg

from bench import workload
from bench.figures import Figure
from bench.harness import BenchError, Context

NAME = "reference"
BATCH = 100
TIMEOUT_S = 300

_TABLES = """
CREATE TABLE bench_jobs (LIKE jobs INCLUDING ALL);
CREATE TABLE bench_chunks (LIKE chunks INCLUDING ALL,
    FOREIGN KEY (job_id) REFERENCES bench_jobs (id) ON DELETE CASCADE) WITH (fillfactor = 80);
"""

# One statement per transaction. The job rows are locked in id order (LockRows above the
# Sort) before any is updated, so two clients whose batches span the same two jobs cannot
# deadlock (a deadlock would cost deadlock_timeout, 1 s, and skew the ceiling).
_STEP = """
WITH picked AS (
    SELECT job_id, seq FROM bench_chunks
    WHERE status = 'pending' AND next_attempt_at <= now()
    ORDER BY next_attempt_at, job_id, seq
    LIMIT %(n)s
    FOR UPDATE SKIP LOCKED
), done AS (
    UPDATE bench_chunks c SET status = 'succeeded', attempts = c.attempts + 1, finished_at = now()
    FROM picked WHERE c.job_id = picked.job_id AND c.seq = picked.seq
    RETURNING c.job_id
), counts AS (
    SELECT job_id, count(*)::int AS n FROM done GROUP BY job_id
), locked AS (
    SELECT id FROM bench_jobs WHERE id IN (SELECT job_id FROM counts) ORDER BY id FOR UPDATE
), counted AS (
    UPDATE bench_jobs j SET chunks_completed = j.chunks_completed + c.n, updated_at = now()
    FROM counts c WHERE j.id = c.job_id AND j.id IN (SELECT id FROM locked)
)
SELECT count(*) FROM done
"""


def _client(url: str, batch: int, start: Any, results: Any) -> None:
    """One client process: loop until no row is left; report (rows, t0, t1, deadlocks)."""
    rows = deadlocks = 0
    with psycopg.connect(url) as conn:
        conn.execute("SELECT 1")
        conn.commit()
        start.wait(60)
        t0 = time.monotonic()
        deadline = t0 + TIMEOUT_S
        while time.monotonic() < deadline:
            try:
                n = conn.execute(_STEP, {"n": batch}).fetchone()[0]  # type: ignore[index]
                conn.commit()
            except psycopg.errors.DeadlockDetected:
                conn.rollback()
                deadlocks += 1
                continue
            if not n:
                break
            rows += n
        t1 = time.monotonic()
    results.put((rows, t0, t1, deadlocks))


def _fill(conn: psycopg.Connection[Any], rows: int, per_job: int) -> None:
    """The same rows the drain benchmark enqueues, moved into the bench_* tables."""
    workload.reset(conn)
    with conn.transaction():
        conn.execute("TRUNCATE bench_jobs, bench_chunks")
    workload.enqueue_jobs(conn, rows // per_job, per_job, one_transaction=True)
    with conn.transaction():
        conn.execute("INSERT INTO bench_jobs SELECT * FROM jobs")
        conn.execute("INSERT INTO bench_chunks SELECT * FROM chunks")
    workload.reset(conn)
    workload.vacuum_analyze(conn, "bench_jobs", "bench_chunks")


def _drain(url: str, batch: int, clients: int, rows: int) -> tuple[float, int]:
    """Run the clients on the filled tables; (rows/s, deadlocks retried)."""
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Barrier(clients + 1)
    results = ctx.Queue()
    procs = [ctx.Process(target=_client, args=(url, batch, start, results)) for _ in range(clients)]
    try:
        for proc in procs:
            proc.start()
        start.wait(60)
        reports = [results.get(timeout=TIMEOUT_S + 30) for _ in procs]
    finally:
        for proc in procs:
            if proc.pid is None:  # never started
                continue
            proc.join(10)
            if proc.is_alive():
                proc.kill()
                proc.join()
    done = sum(r[0] for r in reports)
    if done != rows:
        raise BenchError(f"reference clients finished {done} rows, expected {rows}")
    elapsed = max(r[2] for r in reports) - min(r[1] for r in reports)
    return done / elapsed, sum(r[3] for r in reports)


class Ceiling:
    """A database holding bench_jobs / bench_chunks; ``rate`` refills them and drains them."""

    def __init__(self, ctx: Context, url: str, conn: psycopg.Connection[Any]) -> None:
        self.ctx, self.url, self.conn = ctx, url, conn

    @classmethod
    @contextlib.contextmanager
    def open(cls, ctx: Context) -> Iterator[Ceiling]:
        with ctx.database("reference") as url, psycopg.connect(url, autocommit=True) as conn:
            with conn.transaction():
                conn.execute(_TABLES)
            yield cls(ctx, url, conn)

    def rate(self, mode: str, clients: int, rows: int) -> float:
        """Rows/s of ``clients`` processes draining ``rows`` rows, 1 (single) or 100 a txn."""
        _fill(self.conn, rows, self.ctx.sizes.per_job)
        rate, deadlocks = _drain(self.url, 1 if mode == "single" else BATCH, clients, rows)
        extra = f", {deadlocks} deadlocks retried" if deadlocks else ""
        self.ctx.say(f"reference {mode} x{clients}: {rows} rows, {rate:,.0f} rows/s{extra}")
        return rate


def run(ctx: Context) -> list[Figure]:
    sizes = ctx.sizes
    with Ceiling.open(ctx) as ceiling:
        s1 = ceiling.rate("single", 1, sizes.ref_single_rows)
        s2 = ceiling.rate("single", 2, sizes.ref_single_rows)
        b1 = ceiling.rate("batched", 1, sizes.drain_chunks)
        b2 = ceiling.rate("batched", 2, sizes.drain_chunks)
    rows = f"{sizes.drain_chunks} rows in jobs of {sizes.per_job}"
    return [
        Figure(NAME, "single-row, 1 client", s1, "rows/s", note=f"{sizes.ref_single_rows} rows"),
        Figure(NAME, "single-row, 2 clients", s2, "rows/s", "single x1", s1),
        Figure(NAME, f"batched {BATCH}/txn, 1 client", b1, "rows/s", "single x1", s1, note=rows),
        Figure(NAME, f"batched {BATCH}/txn, 2 clients", b2, "rows/s", "batched x1", b1),
    ]
