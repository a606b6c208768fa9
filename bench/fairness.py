"""Fairness: how long a small job waits behind a big one.

Two idle ``python -m workerd --concurrency 16`` (32 slots), simulated provider at 100 ms,
LISTENing; CHUNKQ_RESULT_CACHE=off, so every chunk costs a provider call. Every 1-chunk
job has a text of its own. All jobs belong to one tenant (enqueued without an owner), so
what lets a small job through is the turns its tenant's jobs take, not the share between
tenants.

- Reference, first: 1-chunk jobs submitted one at a time with the workers idle; submit ->
  COMPLETED, from the submit's commit to the commit of the job's finalization, both stamped
  in the server's clock by bench-only triggers (as in pickup and latency). That is the
  normal pickup time plus one call.
- Then one job of 4,000 chunks (--quick 1,500); once 300 of them have succeeded, 1-chunk
  jobs one at a time (each after the last finished, plus 0.1-0.3 s) while it drains, timed
  the same way; median. The big job's progress when each finished, and each small job's
  submit -> claim (the wait for a slot, bench-only trigger), are in the note. Target:
  ratio <= 2.5. A slot must free up first, and with all 32 slots on 100 ms calls one frees
  within one call, so the wait is at most the reference plus one call (ratio 2); the
  margin of half a call is for the batch that frees the slot being recorded in the same
  transaction as the claim, and for two busy workers sharing two cores with the server.
- The big job's rate (chunks / its first claim -> its finalization) with the small jobs
  among it, against the same job drained alone right after (ratio >= 0.9).
"""

from __future__ import annotations

import itertools
import random
import subprocess
import time
import uuid
from typing import Any

import psycopg

from bench import procs, workload
from bench.figures import Figure, median
from bench.harness import BenchError, Context, wait_until
from schema import queue

NAME = "fairness"
WORKERS, SLOTS, LATENCY_MS = 2, 16, 100
# Of the big job, succeeded chunks before the first small job: it is well under way.
DRAINING_AT = 300
WARMUP = 2
# The big job's texts use seeds 1.. (workload.enqueue_one_big_job); the small jobs' from here.
_SEEDS = itertools.count(1_000_000)


def _submit_small(conn: psycopg.Connection[Any]) -> uuid.UUID:
    text, spans = workload.job_text(1, seed=next(_SEEDS))
    job_id = uuid.uuid4()
    with conn.transaction():
        queue.enqueue(conn, job_id, text, spans, max_chunk_chars=1000)
    return job_id


def _status(conn: psycopg.Connection[Any], job_id: uuid.UUID) -> tuple[str, int, int]:
    row = conn.execute(
        "SELECT status, chunks_completed, chunks_total FROM jobs WHERE id = %s", (job_id,)
    ).fetchone()
    assert row is not None
    return str(row[0]), int(row[1]), int(row[2])


def _wait_completed(
    conn: psycopg.Connection[Any],
    workers: list[subprocess.Popen[bytes]],
    ctx: Context,
    job_id: uuid.UUID,
    timeout: float,
) -> None:
    def terminal() -> bool:
        procs.check_exit(workers, ctx.tmp, NAME)
        return _status(conn, job_id)[0] not in ("PENDING", "PROCESSING")

    wait_until(terminal, timeout, f"job {job_id} to finish", interval=0.005)
    status = _status(conn, job_id)[0]
    if status != "COMPLETED":
        raise BenchError(f"job {job_id} ended {status}")


def _timeline_ms(conn: psycopg.Connection[Any], job_id: uuid.UUID) -> tuple[float, float]:
    """(submit commit -> finalization commit, submit commit -> its chunk claimed), in the
    server's clock."""
    row = conn.execute(
        """SELECT extract(epoch FROM f.at - c.at) * 1000,
                  extract(epoch FROM (SELECT min(at) FROM bench_claims k
                                      WHERE k.job_id = c.job_id) - c.at) * 1000
           FROM bench_committed c JOIN bench_job_finished f USING (job_id)
           WHERE job_id = %s""",
        (job_id,),
    ).fetchone()
    if row is None or row[1] is None:
        raise BenchError(f"job {job_id} lacks a commit, claim or finalization stamp")
    return float(row[0]), float(row[1])


def _progress_at(conn: psycopg.Connection[Any], big: uuid.UUID, small: uuid.UUID) -> int:
    """Chunks of ``big`` succeeded by the time ``small`` was finalized (recording
    transactions that started before that commit)."""
    row = conn.execute(
        """SELECT count(*) FROM chunks
           WHERE job_id = %s AND status = 'succeeded'
             AND finished_at <= (SELECT at FROM bench_job_finished WHERE job_id = %s)""",
        (big, small),
    ).fetchone()
    return int(row[0]) if row else 0


def _rate(conn: psycopg.Connection[Any], job_id: uuid.UUID) -> float:
    """A job's chunks / (its first claim -> its finalization's commit), chunks/s."""
    row = conn.execute(
        """SELECT j.chunks_completed / extract(epoch FROM f.at - s.at)
           FROM jobs j JOIN bench_job_started s ON s.job_id = j.id
           JOIN bench_job_finished f ON f.job_id = j.id WHERE j.id = %s""",
        (job_id,),
    ).fetchone()
    if row is None:
        raise BenchError(f"job {job_id} has no start or finalization stamp")
    return float(row[0])


def run(ctx: Context) -> list[Figure]:
    big_chunks = 1_500 if ctx.quick else 4_000
    reps = 3 if ctx.quick else 7
    idle: list[float] = []
    busy: list[float] = []
    # submit commit -> the chunk claimed, idle and busy
    picked: dict[str, list[float]] = {"idle": [], "busy": []}
    progress: list[int] = []
    with ctx.database("fairness") as url, psycopg.connect(url, autocommit=True) as conn:
        workload.install(conn, workload.SUBMIT_COMMITTED_PROBE)
        workload.install(conn, workload.JOB_STARTED_PROBE)
        workload.install(conn, workload.CHUNK_CLAIMED_PROBE)
        with procs.workers(
            url,
            ctx.tmp,
            NAME,
            WORKERS,
            "--concurrency",
            str(SLOTS),
            CHUNKQ_SIM_LATENCY_MS=str(LATENCY_MS),
            CHUNKQ_RESULT_CACHE="off",
        ) as workers:
            procs.wait_listening(conn, WORKERS)
            for i in range(WARMUP + reps):
                time.sleep(random.uniform(0.05, 0.15))
                job_id = _submit_small(conn)
                _wait_completed(conn, workers, ctx, job_id, 30)
                if i >= WARMUP:
                    done_ms, claim_ms = _timeline_ms(conn, job_id)
                    idle.append(done_ms)
                    picked["idle"].append(claim_ms)
            big = workload.enqueue_one_big_job(conn, big_chunks, 200)

            def draining() -> bool:
                procs.check_exit(workers, ctx.tmp, NAME)
                return _status(conn, big)[1] >= DRAINING_AT

            wait_until(draining, 60, f"{DRAINING_AT} chunks of the big job", interval=0.01)
            for _ in range(reps):
                job_id = _submit_small(conn)
                _wait_completed(conn, workers, ctx, job_id, 30)
                done_ms, claim_ms = _timeline_ms(conn, job_id)
                busy.append(done_ms)
                picked["busy"].append(claim_ms)
                progress.append(_progress_at(conn, big, job_id))
                time.sleep(random.uniform(0.1, 0.3))
            _wait_completed(conn, workers, ctx, big, 300)
            if max(progress) >= big_chunks:
                raise BenchError(f"the big job finished before a small job did: {progress}")
            shared = _rate(conn, big)
            alone_job = workload.enqueue_one_big_job(conn, big_chunks, 200)
            _wait_completed(conn, workers, ctx, alone_job, 300)
            alone = _rate(conn, alone_job)
    ideal = WORKERS * SLOTS / (LATENCY_MS / 1000)
    ctx.say(
        f"fairness: 1-chunk job idle {', '.join(f'{v:.0f}' for v in idle)} ms; behind the"
        f" {big_chunks}-chunk job {', '.join(f'{v:.0f}' for v in busy)} ms at"
        f" {progress} of its chunks done; big job {shared:,.0f} chunks/s, alone {alone:,.0f}"
    )
    return [
        Figure(
            NAME,
            f"1-chunk job behind a {big_chunks:,}-chunk job: submit->COMPLETED, median of {reps}",
            median(busy),
            "ms",
            "the same, workers idle",
            median(idle),
            ratio_max=2.5,
            note=f"2 workers x {SLOTS} slots, {LATENCY_MS} ms calls; runs"
            f" {[round(v) for v in busy]} ms, idle {[round(v) for v in idle]} ms; submit ->"
            f" claimed, median {median(picked['busy']):.0f} ms (idle"
            f" {median(picked['idle']):.1f} ms); the big job had {progress} of {big_chunks:,}"
            " chunks done as each finished. Target: a slot frees within one call (ratio 2),"
            " plus half a call for the recording of the batch that frees it and two busy"
            " workers on two cores",
            extra={
                "busy_ms": busy,
                "idle_ms": idle,
                "claimed_ms": picked,
                "big_progress": progress,
            },
        ),
        Figure(
            NAME,
            f"{big_chunks:,}-chunk job's rate with the small jobs among it",
            shared,
            "chunks/s",
            "the same job alone",
            alone,
            ratio_min=0.9,
            note=f"first claim -> finalization; ideal {ideal:,.0f} chunks/s"
            f" ({WORKERS * SLOTS} slots / {LATENCY_MS} ms)",
        ),
    ]
