"""A real provider under a shared cap: 200 chunks against the loopback chat-completions
server (tests/mock_openai.py) answering in 300 ms, three workers of --concurrency 32 and
CHUNKQ_PROVIDER_CONCURRENCY=16. Wall time from the submit's commit to the commit of the
job's finalization, against the ideal 200 / 16 x 0.3 s = 3.75 s; and the most requests the
server ever had in flight, which the cap must hold to 16.
"""

from __future__ import annotations

import uuid

import psycopg

from bench import procs, workload
from bench.figures import Figure
from bench.harness import BenchError, Context, wait_until
from schema import queue
from tests.mock_openai import MockOpenAI

NAME = "capped"
CHUNKS, CAP, LATENCY_S = 200, 16, 0.3


def run(ctx: Context) -> list[Figure]:
    with (
        ctx.database("capped") as url,
        psycopg.connect(url, autocommit=True) as conn,
        MockOpenAI(latency_s=LATENCY_S) as server,
    ):
        workload.install(conn, workload.SUBMIT_COMMITTED_PROBE)
        workload.install(conn, workload.JOB_STARTED_PROBE)
        env = {
            "CHUNKQ_PROVIDER": "openai",
            "OPENAI_BASE_URL": server.base_url,
            "CHUNKQ_PROVIDER_CONCURRENCY": str(CAP),
        }
        with procs.workers(url, ctx.tmp, NAME, 3, "--concurrency", "32", **env) as workers:
            procs.wait_listening(conn, 3)
            text, spans = workload.job_text(CHUNKS)
            job_id = uuid.uuid4()
            with conn.transaction():
                queue.enqueue(conn, job_id, text, spans, max_chunk_chars=1000)

            def finished() -> bool:
                procs.check_exit(workers, ctx.tmp, NAME)
                return workload.unfinished_jobs(conn) == 0

            wait_until(finished, 120, "the capped job to finish", interval=0.02)
        row = conn.execute(
            """SELECT extract(epoch FROM
                          (SELECT max(at) FROM bench_job_finished WHERE job_id = %(id)s)
                        - (SELECT min(at) FROM bench_committed WHERE job_id = %(id)s)),
                      (SELECT status FROM jobs WHERE id = %(id)s)""",
            {"id": job_id},
        ).fetchone()
        assert row is not None
        if row[1] != "COMPLETED":
            raise BenchError(f"capped job ended {row[1]}")
        wall, peak = float(row[0]), server.max_in_flight
    ideal = CHUNKS / CAP * LATENCY_S
    ctx.say(f"capped: {CHUNKS} chunks in {wall:.2f}s (ideal {ideal:.2f}s), peak in flight {peak}")
    return [
        Figure(
            NAME,
            f"{CHUNKS} chunks @300ms, cap {CAP}: wall",
            wall,
            "s",
            f"ideal {CHUNKS}/{CAP}*0.3s",
            ideal,
            ratio_max=1.1,
        ),
        Figure(
            NAME,
            f"most requests in flight at the server (cap {CAP})",
            float(peak),
            "",
            "the cap",
            float(CAP),
            ratio_max=1.0,
        ),
    ]
