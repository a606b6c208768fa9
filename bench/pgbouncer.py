"""PgBouncer: chunkq through a transaction-pooling PgBouncer against chunkq connected direct.

A real PgBouncer (Debian's ``pgbouncer``, started by tests/pgbouncer.py on loopback) in
transaction mode in front of the benchmark's server, with POOL_SIZE server connections per
database, so the workers' pooled connections (the step's and the webhook sender's, two per
process) really share them. Through it, DATABASE_URL names the pooler and
DATABASE_DIRECT_URL the server: the workers claim and record through PgBouncer with no
prepared statements and the timeouts set per transaction, and LISTEN on the direct URL.
Each figure is measured right after its direct reference, on the same database.

- *drain*: 2 ``python -m workerd --burst --concurrency 64`` empty 20,000 chunks (--quick
  4,000) over jobs of 200, simulated provider at 0 ms, as bench.drain does; the rate from
  the first claim to the commit of the last finalization (bench-only triggers), against the
  same drain with both URLs direct. Best of 2 pairs (--quick 1); wall rates in the note.
- *pickup*: one idle ``python -m workerd --concurrency 8``; 200 jobs (--quick 60) of 4
  chunks submitted one at a time through schema.queue.enqueue, through the pooler (the
  NOTIFY goes with the submit's transaction), each waited for; from the submit's commit to
  its first chunk's claim, both in the server's clock (bench-only triggers), as
  bench.pickup does; median and p99 against the same with the worker and the submits direct.

A worker log that names an error or a prepared statement fails the run: its figure would
not be chunkq's.
"""

from __future__ import annotations

import random
import re
import time
import uuid
from dataclasses import dataclass
from typing import Any

import psycopg

from bench import drain, procs, workload
from bench.figures import Figure, median, percentile
from bench.harness import BenchError, Context, wait_until
from schema import queue
from schema.db import connect
from tests.pgbouncer import PgBouncer, program

NAME = "pgbouncer"
CONCURRENCY = 64
WORKERS = 2
# Server connections PgBouncer keeps per database: one per worker process, shared by its
# two pooled connections.
POOL_SIZE = 2
WARMUP = 5
_BAD_LOG = re.compile(r"ERROR|CRITICAL|Traceback|prepared statement", re.I)


@dataclass(frozen=True)
class Route:
    """How the workers reach the database: DATABASE_URL, and DATABASE_DIRECT_URL or None."""

    url: str
    direct_url: str | None = None

    @property
    def env(self) -> dict[str, str]:
        return {"DATABASE_DIRECT_URL": self.direct_url} if self.direct_url else {}


def _routes(bouncer: PgBouncer, url: str) -> dict[str, Route]:
    """``direct`` (the reference) and ``pgbouncer`` (the figure), in the order they run."""
    return {"direct": Route(url), "pgbouncer": Route(bouncer.url(url), url)}


def _check_logs(ctx: Context, label: str, count: int) -> None:
    for i in range(count):
        path = ctx.tmp / f"{label}-{i}.log"
        bad = [
            line for line in path.read_text(errors="replace").splitlines() if _BAD_LOG.search(line)
        ]
        if bad:
            raise BenchError(f"{label}-{i}: {len(bad)} error lines, first: {bad[0]}")


def _drain(
    ctx: Context, conn: psycopg.Connection[Any], name: str, route: Route
) -> tuple[float, float]:
    """The drain benchmark's backlog drained by WORKERS burst workers on ``route``; (db
    chunks/s, wall chunks/s). A worker log naming an error fails the run."""
    label = f"pgbouncer-drain-{name}"
    rates = drain.drain_once(ctx, route.url, conn, label, WORKERS, **route.env)
    _check_logs(ctx, label, WORKERS)
    return rates


def _pickups(ctx: Context, conn: psycopg.Connection[Any], name: str, route: Route) -> list[float]:
    """Milliseconds from each submit's commit to its first chunk's claim, idle worker."""
    count = ctx.sizes.pickup_jobs
    workload.reset(conn)
    label = f"pgbouncer-pickup-{name}"
    pooled = route.direct_url is not None
    ids: list[uuid.UUID] = []
    with (
        procs.workers(route.url, ctx.tmp, label, 1, "--concurrency", "8", **route.env) as workers,
        connect(route.url, autocommit=True, pooled=pooled) as client,
    ):
        procs.wait_listening(conn, 1)
        for i in range(WARMUP + count):
            procs.check_exit(workers, ctx.tmp, label)
            time.sleep(random.uniform(0, 0.02))
            job_id = uuid.uuid4()
            text, spans = workload.job_text(4, seed=i + 1)
            with client.transaction():
                queue.enqueue(client, job_id, text, spans, max_chunk_chars=1000)

            def done(job_id: uuid.UUID = job_id) -> bool:
                row = conn.execute("SELECT status FROM jobs WHERE id = %s", (job_id,)).fetchone()
                return bool(row and row[0] == "COMPLETED")

            wait_until(done, 30, f"job {job_id} to complete", interval=0.005)
            if i >= WARMUP:
                ids.append(job_id)
    _check_logs(ctx, label, 1)
    rows = conn.execute(
        """SELECT extract(epoch FROM min(c.at) - k.at) * 1000
           FROM unnest(%s::uuid[]) AS s(job_id)
           JOIN bench_committed k USING (job_id)
           JOIN bench_claims c USING (job_id) GROUP BY s.job_id, k.at""",
        (ids,),
    ).fetchall()
    if len(rows) != count:
        raise BenchError(f"{label}: {len(rows)} of {count} jobs have both stamps")
    latencies = [float(row[0]) for row in rows]
    ctx.say(
        f"{label}: {count} jobs, median {median(latencies):.2f} ms,"
        f" p99 {percentile(latencies, 99):.2f} ms"
    )
    return latencies


def run(ctx: Context) -> list[Figure]:
    if program() is None:
        ctx.say("skipped: pgbouncer is not installed (apt-get install pgbouncer)")
        return []
    sizes = ctx.sizes
    rates: dict[str, list[tuple[float, float]]] = {"direct": [], "pgbouncer": []}
    pickups: dict[str, list[float]] = {}
    with (
        PgBouncer(ctx.server.url, pool_size=POOL_SIZE) as bouncer,
        ctx.database("pgbouncer") as url,
        psycopg.connect(url, autocommit=True) as conn,
    ):
        routes = _routes(bouncer, url)
        workload.install(conn, workload.JOB_STARTED_PROBE)
        workload.install(conn, workload.CHUNK_CLAIMED_PROBE)
        workload.install(conn, workload.SUBMIT_COMMITTED_PROBE)
        for _ in range(sizes.drain_reps):
            for name, route in routes.items():  # the reference right before its figure
                rates[name].append(_drain(ctx, conn, name, route))
        for name, route in routes.items():
            pickups[name] = _pickups(ctx, conn, name, route)
    best = {route: max(r[0] for r in runs) for route, runs in rates.items()}
    wall = {route: max(r[1] for r in runs) for route, runs in rates.items()}
    jobs = sizes.drain_chunks // sizes.per_job
    count = sizes.pickup_jobs
    through, direct = pickups["pgbouncer"], pickups["direct"]
    return [
        Figure(
            NAME,
            f"drain, {WORKERS} workers, {jobs} jobs, through pgbouncer (db)",
            best["pgbouncer"],
            "chunks/s",
            "direct",
            best["direct"],
            ratio_min=0.7,
            note=f"pool of {POOL_SIZE} server connections; wall incl. start-up"
            f" {wall['pgbouncer']:,.0f} chunks/s (direct {wall['direct']:,.0f}); db rate of"
            f" each run {[round(r[0]) for r in rates['pgbouncer']]}"
            f" (direct {[round(r[0]) for r in rates['direct']]})",
            extra={"wall_rate": wall["pgbouncer"], "ref_wall_rate": wall["direct"]},
        ),
        Figure(
            NAME,
            f"pickup through pgbouncer (LISTEN direct), median (n={count})",
            median(through),
            "ms",
            "direct",
            median(direct),
            value_max=10,
        ),
        Figure(
            NAME,
            f"pickup through pgbouncer (LISTEN direct), p99 (n={count})",
            percentile(through, 99),
            "ms",
            "direct",
            percentile(direct, 99),
            value_max=50,
            extra={"max_ms": max(through), "ref_max_ms": max(direct)},
        ),
    ]
