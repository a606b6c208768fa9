"""``python -m bench``: chunkq's benchmarks, each figure beside a reference from the same run.

Machines are noisy, so every figure is printed with a reference measured in the same run
and the ratio between them; targets are reported (ok / MISS) and never fail the run. The
exit status is 0 unless a benchmark crashed. Unless ``--database-url`` names a server, a
throwaway embedded PostgreSQL is started as the tests do (fsync and full_page_writes off,
synchronous_commit on) in a temporary directory that is removed at the end; every
benchmark works in fresh databases migrated with Alembic (``alembic upgrade head``).

Benchmarks (sizes of the full run; ``--quick`` shrinks them and says so):

reference  The ceiling, with no chunkq code: plain psycopg clients claim pending rows of
           bench_chunks (same columns and indexes as chunks) with FOR UPDATE SKIP LOCKED,
           mark them done and bump a per-job counter; 1 row or 100 rows per transaction,
           1 or 2 client processes; rows/s.
drain      20,000 chunks (over 100 jobs, or in one job) enqueued via schema.queue.enqueue,
           simulated provider at 0 ms, drained by 1, 2 and 4 ``python -m workerd --burst
           --concurrency 64``; chunks/s from the first claim to the commit of the last
           finalization (bench-only triggers; wall time incl. start-up in the notes),
           against the batched reference with as many clients (at most 2) measured right
           before, and one job against spread. With 2 workers, spread also against
           pgqueuer 1.6.0 (bench.pgq) measured right before: 2 processes of one
           QueueManager each (asyncpg, batch_size 100, drain mode) draining as many no-op
           jobs, its rate from the first dequeue to the last completion (bench-only
           statement-level triggers); target twice pgqueuer's rate. Best of 2 runs each.
pickup     One idle ``python -m workerd --concurrency 8``; 200 jobs submitted one at a time;
           submit commit -> first chunk claimed, both stamped by the server's clock
           (bench-only triggers; the commit also as read by the client right after COMMIT,
           in the notes). Median and p99 against a plain LISTEN/NOTIFY round trip.
submit     gunicorn ``web:create_app()`` (2 workers); POST /v1/analyze of 10 KB, 100 KB,
           1 MB and 10 MB of prose at max_chunk_chars=1000 (200 requests each, 20 at 10 MB);
           median and p99 against inserting the same rows with plain psycopg + COPY,
           interleaved request by request.
huge       A ~30 MB body at just under 100,000 chunks (prose, and prose with combining marks
           on every character): the splitter and POST /v1/analyze against json.loads of the
           body and a raw COPY of the same rows; cancel of a 100,000-chunk job (time, bytes)
           against a plain UPDATE; its GET with and without chunks against reading its chunk
           rows raw. --quick: a fifth of the size.
latency    Simulated provider at 200 ms, workers started and idle beforehand: 2,000 chunks
           on 2 workers x 32 slots against the ideal 6.25 s; one 100-chunk job on 2 x 16
           slots, submit -> COMPLETED against 0.8 s.
capped     Three workers of --concurrency 32 against a loopback OpenAI-compatible server at
           300 ms per reply (tests.mock_openai), CHUNKQ_PROVIDER_CONCURRENCY=16: 200 chunks,
           wall time against the ideal 3.75 s, and the most requests in flight against 16.
backlog    schema.queue.claim(limit 64), rolled back, with 1,000,000 finished + 100,000
           pending chunk rows (two tenants, some retries due) against 1,000 pending; median
           per claim, and EXPLAIN (ANALYZE, BUFFERS) of the whole claim, custom and generic
           plan: chunks_fair_idx and chunks_retry_idx, no Seq Scan on chunks; buffers touched.
metrics    schema.metrics.read (GET /metrics's reads) with 1,000,000 finished chunk rows in
           1,000 jobs (every terminal status) and a 5,000-chunk job in flight (some running,
           some retries due) against a naive count(*) GROUP BY status of chunks and of jobs;
           median of 21, target 0.1x (--quick: 100,000 finished, 0.25x); the counts by
           status must be equal.
memory     Peak RSS of ``python -m workerd --concurrency 64`` draining at 50 ms, and of a
           gunicorn worker taking 10 MB texts, against a bare ``python -c "import psycopg,
           flask, sqlalchemy"``.
api        Two gunicorns on one database, CHUNKQ_AUTH on and off, requests in turn: a GET
           and a 10 KB POST with a key against without; a POST replayed by its
           Idempotency-Key against one with a new key; a list page of 100 jobs against 100
           single GETs.
fairness   Two idle ``python -m workerd --concurrency 16``, simulated provider at 100 ms,
           result cache off: a 1-chunk job's submit commit -> COMPLETED while a 4,000-chunk
           job drains (median of 7, once 300 of its chunks are done), against the same with
           the workers idle (pickup plus one call; target ratio <= 2.5); the big job's rate
           with the small jobs among it against the same job alone.
cache      gunicorn (2 workers, auth on, two keys) and 2 workers x 16 slots at 50 ms, result
           cache on (the default): a 200-chunk document POSTed, then again by the same
           tenant (submit -> COMPLETED against the first, target <= 0.5x; provider calls,
           target 0) and by another tenant (cache hits, target 0). Three documents.
pgbouncer  A real PgBouncer in transaction mode in front of the server: 2 workers draining
           20,000 chunks through it (LISTEN direct) against the same drain direct; pickup
           median and p99 through it against direct.
footprint  What one chunk costs the database, for sizing a server: WAL per chunk (submit
           against a raw COPY of the same rows; the rest of its life with the result cache on
           against off), the server CPU per chunk of one worker draining 20,000, and the
           heap and index bytes a finished chunk keeps.
scale      16 ``python -m workerd --concurrency 64`` at 1,000 ms on 10,240 chunks in 64
           jobs: spawned with --burst onto the backlog (first claim -> last finalization)
           and started idle beforehand (submit commit -> last finalization), each against
           the ideal 10 s (target 1.1x); database connections per worker process from
           pg_stat_activity (target <= 3: 2 + LISTEN).
ui         The dashboard's job page in Debian's Chromium (Playwright), gunicorn with auth on:
           finished jobs of 1,000 and 10,000 chunks (builtin results; --quick: 1,000 only),
           navigation -> the first frame with the whole grid and the document's first page
           (timed in the page), median of 9 against the same page of a 10-chunk job; target
           3x at 1,000, 10x at 10,000. Skipped (no figures) without chromium.

Each module's docstring says exactly what it measures and how.
A benchmark module has NAME and ``run(ctx: bench.harness.Context) -> list[Figure]``. The
chaos soak (``python -m bench.chaos``, minutes of faults) is a command of its own.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import platform
import shutil
import signal
import sys
import tempfile
import time
import traceback
from collections.abc import Iterator
from pathlib import Path
from types import FrameType, ModuleType
from typing import Any

from bench.figures import Figure, render_table
from bench.harness import Context, Server, Sizes

MODULES = (
    "reference",
    "drain",
    "pickup",
    "submit",
    "huge",
    "latency",
    "capped",
    "backlog",
    "metrics",
    "memory",
    "api",
    "fairness",
    "cache",
    "scale",
    "pgbouncer",
    "footprint",
    "ui",
)


def benchmarks() -> dict[str, ModuleType]:
    found: dict[str, ModuleType] = {}
    for name in MODULES:
        module = importlib.import_module(f"bench.{name}")
        found[module.NAME] = module
    return found


def parse_args(argv: list[str] | None, names: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="chunkq benchmarks; every figure beside a reference from the same run.",
    )
    parser.add_argument("--quick", action="store_true", help="smaller sizes: under 2 minutes")
    parser.add_argument("--only", metavar="NAME[,NAME]", help=f"run only these: {', '.join(names)}")
    parser.add_argument("--json", metavar="PATH", help="write every figure to PATH as JSON")
    parser.add_argument(
        "--database-url",
        metavar="URL",
        help="admin URL of a PostgreSQL server to use (default: a throwaway embedded one)",
    )
    args = parser.parse_args(argv)
    if args.only:
        args.only = [n.strip() for n in args.only.split(",") if n.strip()]
        unknown = sorted(set(args.only) - set(names))
        if unknown:
            parser.error(f"unknown benchmark {', '.join(unknown)}; choose from {', '.join(names)}")
    return args


@contextlib.contextmanager
def server(url: str | None) -> Iterator[Server]:
    if url:
        yield Server(url)
    else:
        with Server.embedded() as embedded:
            yield embedded


def _terminate(signum: int, _frame: FrameType | None) -> None:
    # Unwinds through every finally, so processes, databases and the server are cleaned up.
    raise KeyboardInterrupt(signal.Signals(signum).name)


def main(argv: list[str] | None = None) -> int:
    suite = benchmarks()
    args = parse_args(argv, list(suite))
    selected = [name for name in suite if not args.only or name in args.only]
    sizes = Sizes.for_mode(args.quick)
    signal.signal(signal.SIGTERM, _terminate)
    started = time.monotonic()
    mode = "QUICK (smaller sizes; figures are indicative only)" if args.quick else "full"
    print(f"chunkq benchmarks, {mode}: {', '.join(selected)}", flush=True)
    if args.quick:
        print(f"  quick sizes: {sizes}", flush=True)
    figures: list[Figure] = []
    crashed: dict[str, str] = {}
    timings: dict[str, float] = {}
    tmp = Path(tempfile.mkdtemp(prefix="chunkq-bench-"))
    meta: dict[str, Any] = {}
    ctx: Context | None = None
    try:
        with server(args.database_url) as pg:
            ctx = Context(pg, sizes, tmp)
            meta = {
                "mode": "quick" if args.quick else "full",
                "postgres": pg.version(),
                "embedded": not args.database_url,
                "python": platform.python_version(),
                "machine": platform.platform(),
                "sizes": {k: v for k, v in vars(sizes).items()},
            }
            print(f"  PostgreSQL {meta['postgres']}, Python {meta['python']}", flush=True)
            for name in selected:
                print(f"[{name}]", flush=True)
                t0 = time.monotonic()
                try:
                    figures += suite[name].run(ctx)
                except KeyboardInterrupt:
                    raise
                except Exception:
                    crashed[name] = traceback.format_exc()
                    print(f"  CRASHED:\n{crashed[name]}", file=sys.stderr, flush=True)
                timings[name] = time.monotonic() - t0
                print(f"  ({timings[name]:.1f}s)", flush=True)
    except KeyboardInterrupt:
        print("interrupted; cleaned up", file=sys.stderr)
        return 130
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    total = time.monotonic() - started
    report(figures, ctx, crashed, total, args.quick)
    if args.json:
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        data = {
            "meta": {**meta, "total_s": total, "timings_s": timings},
            "figures": [f.as_dict() for f in figures],
            "details": ctx.details if ctx else {},
            "evidence": ctx.evidence if ctx else {},
            "crashed": crashed,
        }
        path.write_text(json.dumps(data, indent=2, default=str) + "\n")
        print(f"wrote {path}")
    return 1 if crashed else 0


def report(
    figures: list[Figure], ctx: Context | None, crashed: dict[str, str], total: float, quick: bool
) -> None:
    if ctx is not None:
        for title, text in ctx.details.items():
            print(f"\n--- {title}\n{text}")
    print(
        f"\n=== chunkq benchmarks ({'QUICK, smaller sizes' if quick else 'full run'}),"
        f" {total:.0f}s; ratio = value / reference ==="
    )
    print(render_table(figures))
    notes = [f"  {f.bench} / {f.name}: {f.note}" for f in figures if f.note]
    if notes:
        print("notes:")
        print("\n".join(notes))
    misses = [f for f in figures if f.verdict == "MISS"]
    print(
        f"targets: {sum(f.verdict == 'ok' for f in figures)} ok, {len(misses)} missed"
        " (reported, not failed)"
    )
    if crashed:
        print(f"CRASHED: {', '.join(crashed)} (tracebacks above)")


if __name__ == "__main__":
    sys.exit(main())
