"""Footprint: what one chunk costs the database, for sizing a server (the README's "Scaling
out" works from these figures).

20,000 chunks (--quick 4,000) of about 800 characters in jobs of 200 are submitted through
schema.queue.enqueue, then drained by one in-process worker (workerd.worker.Worker stepped
with run_once, simulated provider at 0 ms, result cache on, as deployed by default) on its
own connection. Measured on the server:

- WAL written per chunk (pg_current_wal_lsn before and after), for the submit and for the
  rest of its life (claim, result, cache entry, counters, finalization), against the WAL of
  a raw COPY of the same rows into a copy of the table (the least a submit can write);
- the CPU time of the worker's server process per chunk, read from /proc (the embedded
  server runs on this machine; with --database-url on another machine this figure is
  left out), against the same drain with the result cache off;
- the heap and index bytes per chunk of chunks and result_cache after VACUUM FULL (the
  fill factor left as configured).

The server runs with fsync and full_page_writes off (bench.harness): WAL figures leave out
the full-page images a production server writes after each checkpoint.
"""

from __future__ import annotations

import functools
import os
from typing import Any

import psycopg

from bench import workload
from bench.figures import Figure
from bench.harness import BenchError, Context
from schema.db import connect
from workerd.providers.simulated import SimulatedProvider
from workerd.settings import Settings
from workerd.worker import Worker

NAME = "footprint"
PER_JOB = 200
TICKS = os.sysconf("SC_CLK_TCK")


def _lsn(conn: psycopg.Connection[Any]) -> Any:
    return conn.execute("SELECT pg_current_wal_lsn()").fetchone()[0]  # type: ignore[index]


def _wal(conn: psycopg.Connection[Any], before: Any) -> float:
    row = conn.execute("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), %s)", (before,)).fetchone()
    return float(row[0]) if row else 0.0


def _backend_cpu_s(conn: psycopg.Connection[Any]) -> float | None:
    """CPU seconds of this connection's server process so far, None when it is not here."""
    try:
        with open(f"/proc/{conn.info.backend_pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / TICKS


def _drain(url: str, cache: str, chunks: int) -> float | None:
    """Drain the backlog with one worker stepped in this process; its server CPU per chunk."""
    settings = Settings(provider="simulated", result_cache=cache)
    worker = Worker(
        settings,
        SimulatedProvider(),
        functools.partial(connect, url, autocommit=True, lease_s=settings.lease_s),
        concurrency=64,
    )
    try:
        worker._transaction(lambda conn: conn.execute("SELECT 1"))
        conn = worker._db._conn
        assert conn is not None
        before = _backend_cpu_s(conn)
        for _ in range(10 * chunks):
            if not worker.run_once().busy and worker.idle():
                break
        else:
            raise BenchError("the worker did not drain its backlog")
        after = _backend_cpu_s(conn)
    finally:
        worker.close()
    return None if before is None or after is None else (after - before) / chunks


def _sizes(conn: psycopg.Connection[Any], chunks: int) -> dict[str, float]:
    for table in ("chunks", "result_cache"):
        conn.execute(f"VACUUM FULL {table}")
    sizes = {}
    for relation in ("chunks", "chunks_pkey", "result_cache", "result_cache_pkey"):
        row = conn.execute("SELECT pg_relation_size(%s)", (relation,)).fetchone()
        sizes[relation] = (row[0] if row else 0) / chunks
    return sizes


def run(ctx: Context) -> list[Figure]:
    chunks = ctx.sizes.drain_chunks
    figures = []
    with ctx.database("footprint") as url, psycopg.connect(url, autocommit=True) as conn:
        # The least a submit can write: the same rows, COPYed into a bare copy of the table.
        conn.execute("CREATE TABLE raw_chunks (LIKE chunks INCLUDING ALL)")
        ids = workload.enqueue_jobs(conn, chunks // PER_JOB, PER_JOB)
        before = _lsn(conn)
        with conn.transaction():
            conn.execute("INSERT INTO raw_chunks SELECT * FROM chunks")
        raw_wal = _wal(conn, before) / chunks
        workload.reset(conn)

        cpu: dict[str, float | None] = {}
        wal: dict[str, float] = {}
        for cache in ("off", "on"):
            workload.reset(conn)
            before = _lsn(conn)
            ids = workload.enqueue_jobs(conn, chunks // PER_JOB, PER_JOB)
            wal[f"submit-{cache}"] = _wal(conn, before) / chunks
            workload.vacuum_analyze(conn, "jobs", "chunks")
            before = _lsn(conn)
            cpu[cache] = _drain(url, cache, chunks)
            wal[cache] = _wal(conn, before) / chunks
            done = conn.execute(
                "SELECT count(*) FROM jobs WHERE id = ANY(%s) AND status = 'COMPLETED'", (ids,)
            ).fetchone()
            if done != (len(ids),):
                raise BenchError(f"footprint: {done} of {len(ids)} jobs completed")
        sizes = _sizes(conn, chunks)
    ctx.say(
        f"footprint: {chunks} chunks; WAL per chunk: submit {wal['submit-on']:.0f} B (raw COPY"
        f" {raw_wal:.0f} B), the rest {wal['on']:.0f} B (cache off {wal['off']:.0f} B);"
        f" server CPU per chunk {cpu['on']} s (cache off {cpu['off']} s);"
        f" bytes per chunk {', '.join(f'{k} {v:.0f}' for k, v in sizes.items())}"
    )
    figures.append(
        Figure(NAME, "WAL per chunk, submit", wal["submit-on"], "B", "raw COPY", raw_wal)
    )
    figures.append(
        Figure(
            NAME,
            "WAL per chunk, claim to finalization",
            wal["on"],
            "B",
            "result cache off",
            wal["off"],
        )
    )
    if cpu["on"] is not None and cpu["off"] is not None:
        figures.append(
            Figure(
                NAME,
                "server CPU per chunk, claim to finalization",
                cpu["on"] * 1e6,
                "us",
                "result cache off",
                cpu["off"] * 1e6,
                note="one worker's server process, from /proc",
            )
        )
    figures.append(
        Figure(
            NAME,
            "bytes kept per finished chunk",
            sum(sizes.values()),
            "B",
            "its chunks row alone",
            sizes["chunks"],
            note=", ".join(f"{k} {v:.0f} B" for k, v in sizes.items()),
        )
    )
    return figures
