"""Backlog scale: does the claim stay cheap when the table holds millions of finished rows?

Two databases: *large*, 1,000,000 succeeded chunk rows plus 100,000 pending (--quick
100,000 / 10,000), and *small*, 1,000 pending. Both are built with INSERT ... SELECT
generate_series (jobs of 1,000 chunks, 256-character texts), then VACUUM ANALYZEd as
autovacuum would. schema.queue.claim (limit 64) runs inside a transaction that is rolled
back, alternating between the two databases; the figure is the median time per claim,
measured on the client (one round trip included). EXPLAIN (ANALYZE, BUFFERS) of the
claim's SELECT (the ``picked`` CTE of schema.queue._CLAIM) is printed for both, with
whether it scans chunks_due_idx.
"""

from __future__ import annotations

import re
import time
from typing import Any

import psycopg

from bench.figures import Figure, median
from bench.harness import Context
from schema import queue

NAME = "backlog"
LIMIT = 64
PER_JOB = 1000
WARMUP = 20

_JOBS = """
INSERT INTO jobs (id, status, chunks_total, chunks_completed, max_chunk_chars, text_chars,
                  created_at, updated_at, finished_at)
SELECT gen_random_uuid(), %(status)s, %(per_job)s, %(completed)s, 1000, %(per_job)s * 256,
       now() - make_interval(secs => %(age)s + g), now(),
       CASE WHEN %(done)s THEN now() END
FROM generate_series(1, %(jobs)s) g
"""

_CHUNKS = """
INSERT INTO chunks (job_id, seq, start_offset, end_offset, text, status, attempts,
                    next_attempt_at, result, finished_at)
SELECT j.id, s, s * 256, (s + 1) * 256, repeat(md5(j.id::text || s), 8), %(status)s,
       %(attempts)s, j.created_at, %(result)s::jsonb, j.finished_at
FROM jobs j CROSS JOIN generate_series(0, %(per_job)s - 1) s
WHERE j.status = %(job_status)s
ORDER BY j.created_at, s
"""


def _build(conn: psycopg.Connection[Any], finished: int, pending: int) -> None:
    """Finished jobs first (older), then the pending backlog, as a FIFO queue's table grows."""
    with conn.transaction():
        for rows, status, chunk_status in (
            (finished, "COMPLETED", "succeeded"),
            (pending, "PENDING", "pending"),
        ):
            if not rows:
                continue
            done = status == "COMPLETED"
            conn.execute(
                _JOBS,
                {
                    "status": status,
                    "per_job": PER_JOB,
                    "completed": PER_JOB if done else 0,
                    "age": 86_400 if done else 60,
                    "done": done,
                    "jobs": -(-rows // PER_JOB),
                },
            )
            conn.execute(
                _CHUNKS,
                {
                    "status": chunk_status,
                    "attempts": 1 if done else 0,
                    "result": '{"chars": 256, "words": 40}' if done else None,
                    "per_job": PER_JOB,
                    "job_status": status,
                },
            )
    conn.execute("VACUUM ANALYZE jobs")
    conn.execute("VACUUM ANALYZE chunks")


def _claim_select() -> str:
    """The SELECT of the claim (its ``picked`` CTE), taken from schema.queue itself."""
    match = re.search(r"picked AS \((.*?)\n\)", queue._CLAIM, re.S)
    assert match, "schema.queue._CLAIM has no `picked` CTE any more"
    return match.group(1).strip()


def _explain(conn: psycopg.Connection[Any], sql: str, params: dict[str, Any]) -> str:
    cur = psycopg.ClientCursor(conn)  # parameters inlined, as a custom plan sees them
    with conn.transaction(force_rollback=True):
        cur.execute(f"EXPLAIN (ANALYZE, BUFFERS) {sql}", params)
        return "\n".join(row[0] for row in cur.fetchall())


def _time_claim(conn: psycopg.Connection[Any]) -> float:
    with conn.transaction(force_rollback=True):
        t0 = time.perf_counter()
        claimed = queue.claim(conn, "bench-backlog", LIMIT, lease_s=30)
        elapsed = time.perf_counter() - t0
    assert len(claimed) == LIMIT, f"claimed {len(claimed)}"
    return elapsed * 1000


def run(ctx: Context) -> list[Figure]:
    sizes = ctx.sizes
    finished, pending = sizes.backlog_finished, sizes.backlog_pending
    with (
        ctx.database("backlog_small") as small_url,
        ctx.database("backlog_large") as large_url,
        psycopg.connect(small_url, autocommit=True) as small,
        psycopg.connect(large_url, autocommit=True) as large,
    ):
        t0 = time.monotonic()
        _build(small, 0, sizes.backlog_empty)
        _build(large, finished, pending)
        ctx.say(
            f"backlog: built {finished:,} finished + {pending:,} pending rows"
            f" in {time.monotonic() - t0:.1f}s"
        )
        times: dict[str, list[float]] = {"small": [], "large": []}
        conns = {"small": small, "large": large}
        for i in range(WARMUP + sizes.backlog_claims):
            for key, conn in conns.items():
                elapsed = _time_claim(conn)
                if i >= WARMUP:
                    times[key].append(elapsed)
        select = _claim_select()
        params: dict[str, Any] = {"now": None, "limit": LIMIT, "skip": []}
        plans = {key: _explain(conn, select, params) for key, conn in conns.items()}
        full = {
            key: _explain(conn, queue._CLAIM, {**params, "me": "bench", "lease": 30})
            for key, conn in conns.items()
        }
    index_scan = re.compile(r"Index (Only )?Scan( Backward)? using chunks_due_idx")
    uses = {key: bool(index_scan.search(plan)) for key, plan in plans.items()}
    labels = {
        "small": f"{sizes.backlog_empty:,} pending",
        "large": f"{finished:,} finished + {pending:,} pending",
    }
    for key in ("small", "large"):
        ctx.details[f"backlog: EXPLAIN claim SELECT, {labels[key]}"] = plans[key]
        ctx.evidence[f"backlog: EXPLAIN whole claim statement, {labels[key]}"] = full[key]
    med = {key: median(values) for key, values in times.items()}
    ctx.say(
        f"backlog: median claim {med['large']:.3f} ms (large) vs {med['small']:.3f} ms"
        f" (small); chunks_due_idx used: {uses}"
    )
    n = sizes.backlog_claims
    return [
        Figure(
            NAME,
            f"claim(64), {labels['large']}, median (n={n})",
            med["large"],
            "ms",
            labels["small"],
            med["small"],
            ratio_max=1.5,
        ),
        Figure(
            NAME,
            f"claim SELECT uses chunks_due_idx, {labels['large']}",
            float(uses["large"]),
            "bool",
            value_min=1,
        ),
        Figure(
            NAME,
            f"claim SELECT uses chunks_due_idx, {labels['small']}",
            float(uses["small"]),
            "bool",
            value_min=1,
        ),
    ]
