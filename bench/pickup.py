"""Pickup latency: from a submit's commit to the claim of its job's first chunk, idle worker.

One ``python -m workerd --concurrency 8`` waits, LISTENing. Jobs of 4 chunks are submitted
one at a time through schema.queue.enqueue on a client connection; a bench-only trigger
stamps clock_timestamp() when each chunk becomes running. The commit is stamped two ways,
both in the server's clock, so nothing polls while a sample is taken: by a deferred
constraint trigger that fires inside COMMIT (the figure), and by the client reading
clock_timestamp() right after COMMIT returns (in the notes; on a loaded machine that read
can land after the claim, since the client may be descheduled first). The client waits for
each job to finish (plus 0-20 ms of jitter) before the next.

Reference: a plain psycopg LISTEN/NOTIFY round trip on the same server (NOTIFY sent on one
connection, received on another in a thread).
"""

from __future__ import annotations

import random
import threading
import time
import uuid
from typing import Any

import psycopg

from bench import procs, workload
from bench.figures import Figure, median, percentile
from bench.harness import BenchError, Context, wait_until
from schema import queue

NAME = "pickup"
WARMUP = 5


def _submit_and_wait(
    conn: psycopg.Connection[Any], text: str, spans: list[tuple[int, int]]
) -> tuple[uuid.UUID, Any]:
    job_id = uuid.uuid4()
    with conn.transaction():
        queue.enqueue(conn, job_id, text, spans, max_chunk_chars=1000)
    read_at = conn.execute("SELECT clock_timestamp()").fetchone()[0]  # type: ignore[index]

    def done() -> bool:
        row = conn.execute("SELECT status FROM jobs WHERE id = %s", (job_id,)).fetchone()
        return bool(row and row[0] == "COMPLETED")

    wait_until(done, 30, f"job {job_id} to complete", interval=0.005)
    return job_id, read_at


def _notify_round_trips(url: str, count: int) -> list[float]:
    """Milliseconds from sending NOTIFY (autocommit) until another connection receives it."""
    received: list[float] = []
    ready = threading.Event()
    got = threading.Semaphore(0)
    with (
        psycopg.connect(url, autocommit=True) as listener,
        psycopg.connect(url, autocommit=True) as sender,
    ):
        listener.execute("LISTEN bench_ping")

        def listen() -> None:
            ready.set()
            gen = listener.notifies(timeout=30)
            for _ in gen:
                received.append(time.perf_counter())
                got.release()
                if len(received) >= count:
                    gen.close()

        thread = threading.Thread(target=listen, daemon=True)
        thread.start()
        ready.wait(10)
        time.sleep(0.1)
        sent: list[float] = []
        for _ in range(count):
            sent.append(time.perf_counter())
            sender.execute("NOTIFY bench_ping")
            if not got.acquire(timeout=10):
                raise BenchError("a NOTIFY was not received within 10 s")
            time.sleep(random.uniform(0, 0.005))
        thread.join(35)
    return [(r - s) * 1000 for s, r in zip(sent, received, strict=True)]


def run(ctx: Context) -> list[Figure]:
    count = ctx.sizes.pickup_jobs
    with ctx.database("pickup") as url, psycopg.connect(url, autocommit=True) as conn:
        workload.install(conn, workload.CHUNK_CLAIMED_PROBE)
        workload.install(conn, workload.SUBMIT_COMMITTED_PROBE)
        with procs.workers(url, ctx.tmp, "pickup", 1, "--concurrency", "8") as workers:
            procs.wait_listening(conn, 1)
            samples: list[tuple[uuid.UUID, Any]] = []
            for i in range(WARMUP + count):
                procs.check_exit(workers, ctx.tmp, "pickup")
                time.sleep(random.uniform(0, 0.02))
                # Each job its own text: the result cache answers none of them.
                sample = _submit_and_wait(conn, *workload.job_text(4, seed=i + 1))
                if i >= WARMUP:
                    samples.append(sample)
        rows = conn.execute(
            """SELECT extract(epoch FROM min(c.at) - k.at) * 1000,
                      extract(epoch FROM min(c.at) - s.read_at) * 1000
               FROM unnest(%s::uuid[], %s::timestamptz[]) AS s(job_id, read_at)
               JOIN bench_committed k USING (job_id)
               JOIN bench_claims c USING (job_id) GROUP BY s.job_id, k.at, s.read_at""",
            ([s[0] for s in samples], [s[1] for s in samples]),
        ).fetchall()
        if len(rows) != count:
            raise BenchError(f"pickup: {len(rows)} of {count} jobs have both stamps")
        latencies = [float(r[0]) for r in rows]
        after_read = [float(r[1]) for r in rows]
        ref = _notify_round_trips(url, count)
    negative = sum(1 for v in after_read if v < 0)
    note = (
        f"from the client's read right after COMMIT: median {median(after_read):.2f} ms,"
        f" p99 {percentile(after_read, 99):.2f} ms, {negative} negative"
    )
    ctx.say(
        f"pickup: {count} jobs, median {median(latencies):.2f} ms, p99"
        f" {percentile(latencies, 99):.2f} ms, max {max(latencies):.2f} ms"
    )
    return [
        Figure(
            NAME,
            f"commit -> first claim, median (n={count})",
            median(latencies),
            "ms",
            "NOTIFY round trip",
            median(ref),
            value_max=10,
            note=note,
        ),
        Figure(
            NAME,
            f"commit -> first claim, p99 (n={count})",
            percentile(latencies, 99),
            "ms",
            "NOTIFY round trip",
            percentile(ref, 99),
            value_max=50,
            extra={"max_ms": max(latencies), "samples_ms": latencies, "after_read_ms": after_read},
        ),
    ]
