"""Backlog scale: does the claim stay cheap when the table holds millions of finished rows?

Two databases: *large*, 1,000,000 succeeded chunk rows plus 100,000 pending (--quick
100,000 / 10,000), and *small*, 1,000 pending. Both are built with INSERT ... SELECT
generate_series (jobs of 1,000 chunks, 256-character texts), as schema.queue.enqueue lays
them out: the pending jobs alternate between two tenants (two lanes) and each chunk has
its turn (seq / FAIR_QUANTUM); a tenth of the pending chunks are retries waiting out their backoff,
32 of them due now, so a claim of 64 takes 32 due retries and 32 untried chunks from the
two lanes. Then VACUUM ANALYZE, as autovacuum would. schema.queue.claim (limit 64) runs
inside a transaction that is rolled back, alternating between the two databases; the
figure is the median time per claim, measured on the client (one round trip included).

The whole claim statement, as schema.queue.claim sends it, is run under EXPLAIN (ANALYZE,
BUFFERS) and rolled back, with a custom plan (planned for its parameters) and a generic one
(what a prepared statement gets after five runs): it must use chunks_fair_idx (the lanes
and their untried chunks) and chunks_retry_idx (the due retries), and no Seq Scan on
chunks. The buffers it touches are compared with the small database's. The text plans are
printed after the table.
"""

from __future__ import annotations

import time
from typing import Any

import psycopg

from bench.figures import Figure, median
from bench.harness import Context
from schema import queue, tenants
from tests.support import explain_claim, plan_nodes

NAME = "backlog"
LIMIT = 64
PER_JOB = 1000
WARMUP = 20
DUE_RETRIES = LIMIT // 2

_JOBS = """
INSERT INTO jobs (id, status, chunks_total, chunks_completed, max_chunk_chars, text_chars,
                  api_key_id, created_at, updated_at, finished_at)
SELECT gen_random_uuid(), %(status)s, %(per_job)s, %(completed)s, 1000, %(per_job)s * 256,
       CASE WHEN g %% 2 = 0 THEN %(tenant)s END,
       now() - make_interval(secs => %(age)s + g), now(),
       CASE WHEN %(done)s THEN now() END
FROM generate_series(1, %(jobs)s) g
"""

# A pending job's chunks: a tenth are retries (attempt 1 failed) due in an hour, the rest
# untried; lane and turn as enqueue sets them.
_CHUNKS = """
INSERT INTO chunks (job_id, seq, start_offset, end_offset, text, status, attempts,
                    next_attempt_at, result, finished_at, lane, turn)
SELECT j.id, s, s * 256, (s + 1) * 256, repeat(md5(j.id::text || s), 8), %(status)s,
       CASE WHEN %(done)s OR s %% 10 = 5 THEN 1 ELSE 0 END,
       CASE WHEN NOT %(done)s AND s %% 10 = 5 THEN now() + interval '1 hour'
            ELSE j.created_at END,
       %(result)s::jsonb, j.finished_at, coalesce(j.api_key_id, 'anonymous'),
       s / %(quantum)s
FROM jobs j CROSS JOIN generate_series(0, %(per_job)s - 1) s
WHERE j.status = %(job_status)s
ORDER BY j.created_at, s
"""

_DUE_NOW = """
UPDATE chunks SET next_attempt_at = now() - interval '1 minute'
WHERE (job_id, seq) IN (SELECT job_id, seq FROM chunks
                        WHERE status = 'pending' AND attempts > 0 LIMIT %(n)s)
"""


def _build(conn: psycopg.Connection[Any], finished: int, pending: int) -> None:
    """Finished jobs first (older), then the pending backlog, as a queue's table grows."""
    tenant = tenants.create_key(conn, "bench backlog").id
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
                    "tenant": None if done else tenant,
                    "age": 86_400 if done else 60,
                    "done": done,
                    "jobs": -(-rows // PER_JOB),
                },
            )
            conn.execute(
                _CHUNKS,
                {
                    "status": chunk_status,
                    "done": done,
                    "result": '{"chars": 256, "words": 40}' if done else None,
                    "per_job": PER_JOB,
                    "quantum": queue.FAIR_QUANTUM,
                    "job_status": status,
                },
            )
        conn.execute(_DUE_NOW, {"n": DUE_RETRIES})
    conn.execute("VACUUM ANALYZE jobs")
    conn.execute("VACUUM ANALYZE chunks")


def _check(plan: dict[str, Any]) -> tuple[bool, str, int, int]:
    """(uses both indexes and no Seq Scan on chunks, what scans chunks, rows claimed,
    buffers touched)."""
    nodes = plan_nodes(plan)
    on_chunks = [
        (n["Node Type"], n.get("Index Name"))
        for n in nodes
        if n.get("Relation Name") == "chunks" and n["Node Type"].endswith("Scan")
    ]
    indexes = {index for _, index in on_chunks}
    good = ("Seq Scan", None) not in on_chunks and {
        "chunks_fair_idx",
        "chunks_retry_idx",
    } <= indexes
    scans = ", ".join(sorted({f"{kind} {index or ''}".strip() for kind, index in on_chunks}))
    claimed = max((n["Actual Rows"] for n in nodes if n["Node Type"] == "ModifyTable"), default=0)
    top = plan["Plan"]
    return good, scans, int(claimed), int(top["Shared Hit Blocks"] + top["Shared Read Blocks"])


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
        checks: dict[tuple[str, str], tuple[bool, str, int, int]] = {}
        for key, conn in conns.items():
            for plan in ("custom", "generic"):
                generic = plan == "generic"
                checks[key, plan] = _check(explain_claim(conn, LIMIT, generic=generic))
                text = explain_claim(conn, LIMIT, generic=generic, fmt="TEXT")
                ctx.evidence[f"backlog: EXPLAIN claim, {plan} plan, {key}"] = text
                if key == "large":
                    ctx.details[f"backlog: EXPLAIN (ANALYZE, BUFFERS) claim, {plan} plan"] = text
    labels = {
        "small": f"{sizes.backlog_empty:,} pending",
        "large": f"{finished:,} finished + {pending:,} pending",
    }
    med = {key: median(values) for key, values in times.items()}
    ctx.say(
        f"backlog: median claim {med['large']:.3f} ms (large) vs {med['small']:.3f} ms"
        f" (small); plans: {checks}"
    )
    n = sizes.backlog_claims
    figures = [
        Figure(
            NAME,
            f"claim(64), {labels['large']}, median (n={n})",
            med["large"],
            "ms",
            labels["small"],
            med["small"],
            ratio_max=1.5,
        )
    ]
    for plan in ("custom", "generic"):
        good, scans, claimed, buffers = checks["large", plan]
        figures.append(
            Figure(
                NAME,
                f"claim uses chunks_fair_idx + chunks_retry_idx, no Seq Scan, {plan} plan",
                float(good),
                "bool",
                value_min=1,
                note=f"{labels['large']}; on chunks: {scans}; claimed {claimed}; small"
                f" database: {checks['small', plan][1]}",
            )
        )
        figures.append(
            Figure(
                NAME,
                f"buffers the claim touches, {plan} plan",
                float(buffers),
                "",
                labels["small"],
                float(checks["small", plan][3]),
                ratio_max=2.0,
                note=f"{labels['large']}; shared hit + read blocks of EXPLAIN (ANALYZE, BUFFERS)",
            )
        )
    return figures
