"""Reference: pgqueuer 1.6.0 draining a backlog of no-op jobs, on the same server in the same run.

A fresh database gets chunkq's schema (``ctx.database``) and pgqueuer's, installed by
pgqueuer itself (``Queries.install()``, then ``optimize_autovacuum()``, the ``pgq autovac``
its performance guide asks of every installation; durability stays ``durable``, the
default, as chunkq's tables are logged too). Each run enqueues the jobs with one batched
``SyncQueries.enqueue`` (one statement), VACUUM ANALYZEs the queue as drain does chunkq's
tables, then starts real OS processes (``python -m bench.pgq_consumer``), each running one
``QueueManager`` with a no-op entrypoint in drain mode, as pgqueuer's own drain benchmark
(``tools/benchmark.py --strategy drain``) does.

Settings, from pgqueuer's benchmark and performance guide: asyncpg, its benchmark's default
driver (about 1.7x psycopg by its docs, and faster here too), one ``AsyncpgDriver``
connection per manager (the guide's advice for a QueueManager; a pool was no faster here),
uvloop (as its benchmark and ``pgq run``). Two batch sizes are run: ``batch_size=10``, the
default and what its own benchmark runs (``tools/benchmark.py``: dequeue batch size 10),
and ``batch_size=100``, tuned: the guide says to raise it for short jobs, and each dequeue
and each completion statement then covers up to 100 jobs; 100 drained fastest and
steadiest here, 50 and 200 close behind, 10 at about half the rate. No
``max_concurrent_tasks`` (unlimited, the default); one manager per process (2 to 5 per
process, as the benchmark runs 5, were no faster on two cores); log aggregation off
(bench.pgq_consumer).

The rate is measured as drain's db rate: jobs / (last completion - first claim), stamped
with clock_timestamp() by bench-only triggers FOR EACH STATEMENT (one stamp per statement,
not per row: pgqueuer drained as fast with them as without, within the noise) into an
unlogged side table. The first UPDATE of ``pgqueuer`` is the first dequeue (the jobs
are there before any process starts, and nothing else updates the table before a job is
picked); the last DELETE is the last completion (``log_jobs`` moves finished jobs to
``pgqueuer_log`` in one autocommitted statement, so the stamp is taken just before its
commit). The wall rate (process start to an empty queue) goes in a note. Every job must
have one 'successful' entry in ``pgqueuer_log`` and none other than queued and picked,
else BenchError.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import psycopg
from pgqueuer.db import AsyncpgDriver, SyncPsycopgDriver
from pgqueuer.queries import Queries, SyncQueries

from bench import procs, workload
from bench.harness import BenchError, Context, wait_until
from bench.pgq_consumer import ENTRYPOINT
from tests.processes import stop

# pgqueuer's default dequeue batch, which its own benchmark runs; and the tuned one.
DEFAULT_BATCH = 10
TUNED_BATCH = 100
TIMEOUT_S = 300
# A drain-mode manager exits by itself once the queue is empty, well within this.
EXIT_S = 30
ROOT = Path(__file__).resolve().parent.parent

_PROBE = """
CREATE UNLOGGED TABLE bench_pgq_stamps (op text NOT NULL, at timestamptz NOT NULL);
CREATE FUNCTION bench_pgq_stamp() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO bench_pgq_stamps VALUES (TG_OP, clock_timestamp());
    RETURN NULL;
END $$;
CREATE TRIGGER bench_pgq_claimed AFTER UPDATE ON pgqueuer
    FOR EACH STATEMENT EXECUTE FUNCTION bench_pgq_stamp();
CREATE TRIGGER bench_pgq_completed AFTER DELETE ON pgqueuer
    FOR EACH STATEMENT EXECUTE FUNCTION bench_pgq_stamp();
"""


async def _install(url: str) -> None:
    """pgqueuer's own installer, and its recommended autovacuum settings."""
    conn = await asyncpg.connect(url)
    try:
        queries = Queries(AsyncpgDriver(conn))
        await queries.install()
        await queries.optimize_autovacuum()
    finally:
        await conn.close()


def _start(url: str, log: Path, batch: int) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "bench.pgq_consumer", str(batch)],
            cwd=ROOT,
            env={**os.environ, "DATABASE_URL": url, "PYTHONUNBUFFERED": "1"},
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


class Pgqueuer:
    """A database with pgqueuer installed; ``rate`` refills its queue and drains it."""

    def __init__(self, ctx: Context, url: str, conn: psycopg.Connection[Any]) -> None:
        self.ctx, self.url, self.conn = ctx, url, conn
        # (db rate, wall rate) of each run, in order, by batch size.
        self.runs: dict[int, list[tuple[float, float]]] = {}

    @classmethod
    @contextlib.contextmanager
    def open(cls, ctx: Context) -> Iterator[Pgqueuer]:
        with ctx.database("pgq") as url:
            asyncio.run(_install(url))
            with psycopg.connect(url, autocommit=True) as conn:
                with conn.transaction():
                    conn.execute(_PROBE)
                yield cls(ctx, url, conn)

    def _fill(self, jobs: int) -> None:
        """Empty pgqueuer's tables and the stamps, then enqueue ``jobs`` jobs in one statement."""
        with self.conn.transaction():
            self.conn.execute(
                "TRUNCATE pgqueuer, pgqueuer_log, pgqueuer_statistics, bench_pgq_stamps"
            )
        if not jobs:
            return
        SyncQueries(SyncPsycopgDriver(self.conn)).enqueue(
            [ENTRYPOINT] * jobs, [None] * jobs, [0] * jobs
        )
        workload.vacuum_analyze(self.conn, "pgqueuer", "pgqueuer_log")

    def _empty(self) -> bool:
        row = self.conn.execute("SELECT NOT EXISTS (SELECT FROM pgqueuer)").fetchone()
        return bool(row and row[0])

    def _window(self, jobs: int) -> float:
        """Seconds from the first claim to the last completion, once every job is accounted
        for: one successful log entry each, no other outcome, nothing left queued."""
        row = self.conn.execute(
            """SELECT (SELECT count(*) FROM pgqueuer),
                      (SELECT count(*) FROM pgqueuer_log WHERE status = 'successful'),
                      (SELECT count(DISTINCT job_id) FROM pgqueuer_log
                       WHERE status = 'successful'),
                      (SELECT count(*) FROM pgqueuer_log
                       WHERE status NOT IN ('queued', 'picked', 'successful')),
                      extract(epoch FROM
                          (SELECT max(at) FROM bench_pgq_stamps WHERE op = 'DELETE')
                          - (SELECT min(at) FROM bench_pgq_stamps WHERE op = 'UPDATE'))"""
        ).fetchone()
        assert row is not None
        left, done, distinct, other, window = row
        if left or done != jobs or distinct != jobs or other:
            raise BenchError(
                f"pgqueuer: {done} successful log entries for {distinct} of {jobs} jobs,"
                f" {other} other outcomes, {left} jobs left in the queue"
            )
        if not window or window <= 0:
            raise BenchError(f"pgqueuer: no claim-to-completion window ({window})")
        return float(window)

    def rate(self, jobs: int, processes: int = 2, batch: int = DEFAULT_BATCH) -> float:
        """Jobs/s of ``processes`` QueueManager processes, dequeuing ``batch`` at a time,
        draining ``jobs`` no-op jobs."""
        self._fill(jobs)
        runs = self.runs.setdefault(batch, [])
        label = f"pgqueuer-{processes}-b{batch}-{len(runs)}"
        consumers: list[subprocess.Popen[bytes]] = []
        t0 = time.monotonic()
        try:
            for i in range(processes):
                consumers.append(_start(self.url, self.ctx.tmp / f"{label}-{i}.log", batch))

            def drained() -> bool:
                procs.check_exit(consumers, self.ctx.tmp, label)
                if self._empty():
                    return True
                if all(c.poll() is not None for c in consumers):
                    raise BenchError(f"{label}: consumers exited with jobs left in the queue")
                return False

            wait_until(drained, TIMEOUT_S, f"{label} to drain", interval=0.02)
            wall = time.monotonic() - t0
            deadline = time.monotonic() + EXIT_S
            for c in consumers:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    c.wait(max(0.0, deadline - time.monotonic()))
        finally:
            # SIGTERM (the manager's clean shutdown), then SIGKILL, whichever still run.
            for c in consumers:
                stop(c)
        procs.check_exit(consumers, self.ctx.tmp, label)
        window = self._window(jobs)
        self._fill(0)  # nothing left behind for autovacuum while chunkq runs
        runs.append((jobs / window, jobs / wall))
        self.ctx.say(
            f"pgqueuer x{processes} batch {batch}: {jobs} jobs, db window {window:.2f}s"
            f" ({jobs / window:,.0f}/s), wall {wall:.2f}s ({jobs / wall:,.0f}/s)"
        )
        return jobs / window
