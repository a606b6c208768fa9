"""Scale: sixteen worker processes of 64 slots each on a slow provider.

16 ``python -m workerd --concurrency 64`` (1,024 slots), simulated provider at 1,000 ms,
a backlog of 16 x 64 x k chunks (k = 10, --quick 3) in 64 jobs (160 chunks each; --quick
48), each of its own text, enqueued through schema.queue.enqueue in one transaction. The
ideal wall time is k seconds: every slot on a call from the first moment to the last. Two
runs:

- *cold*: 16 ``--burst`` workers spawned onto the backlog. The window is the drain
  benchmark's: from the first claim to the commit of the last finalization, both stamped in
  the server's clock by bench-only triggers. The note has the wall time from the spawn, how
  long after it the first claim came and over how long the workers' first claims spread (a
  bench-only trigger per claimed chunk, matched to the chunk's ``worker_id``), and the
  ideal for those start times (each worker's 64 slots busy from its first claim on: k plus
  the mean delay of the workers' first claims after the first).
- *warm*: the 16 workers started and LISTENing first (not --burst), then the backlog
  submitted; from the submit's commit to the commit of the last finalization.

Target for both: ratio <= 1.1 to the ideal. Where the time goes is in the notes: a chunk's
claim -> the start of the transaction that recorded it (p50, p90, max), how often a worker
found job rows held by a peer's transaction and deferred outcomes (its log's warnings),
how busy the machine's CPUs were (anything else running on it included), and the
workers' peak RSS and threads.

And the database connections of the worker processes while they drain (cold and warm),
sampled every 0.1 s from pg_stat_activity (this benchmark's own two connections left
out): the most seen over 16, against 2 plus the LISTEN connection (target ratio <= 1). The
note breaks the most seen down into LISTEN and the others by state (an idle step or
webhook connection shows only its last statement, COMMIT), and gives the most any one
process held, its connections matched to it by client port.
"""

from __future__ import annotations

import collections
import contextlib
import math
import statistics
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import psutil
import psycopg

from bench import procs, workload
from bench.figures import Figure
from bench.harness import BenchError, Context, wait_until
from schema import queue

NAME = "scale"
WORKERS, SLOTS, LATENCY_S = 16, 64, 1.0
# The backlog's jobs: four per worker. Fewer, bigger jobs make the workers' recording
# transactions meet on the same job rows more often (see the notes' deferrals).
JOBS = 64
SAMPLE_S = 0.1
# The most connections a worker may hold: its step's, the webhook sender's, and LISTEN.
MOST_PER_WORKER = 3

_ACTIVITY = """
SELECT pid, client_port, state, query FROM pg_stat_activity
WHERE datname = current_database() AND backend_type = 'client backend'
  AND pid <> ALL(%(mine)s)
"""


def _use(state: str | None, query: str | None) -> str:
    """LISTEN, or the state of another connection: the step's and the webhook sender's
    (idle, both show their last statement, COMMIT, so only the state tells them apart)."""
    if (query or "").lstrip().upper().startswith("LISTEN"):
        return "LISTEN"
    return str(state)


@dataclass
class Sampler:
    """Samples the database's connections and the workers' processes in a thread."""

    url: str
    exclude: list[int]
    pids: list[int] = field(default_factory=list)
    most: int = 0
    at_most: collections.Counter[str] = field(default_factory=collections.Counter)
    most_by_use: collections.Counter[str] = field(default_factory=collections.Counter)
    most_per_process: int = 0
    unmatched: int = 0
    samples: int = 0
    peak_rss: int = 0
    most_threads: int = 0
    cpu_s: dict[int, float] = field(default_factory=dict)
    _ports: dict[int, int] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)

    @contextlib.contextmanager
    def running(self) -> Iterator[Sampler]:
        thread = threading.Thread(target=self._loop, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            thread.join(10)

    def _loop(self) -> None:
        with psycopg.connect(self.url, autocommit=True) as conn:
            exclude = [*self.exclude, conn.info.backend_pid]
            n = 0
            while not self._stop.is_set():
                rows = conn.execute(_ACTIVITY, {"mine": exclude}).fetchall()
                self._connections(rows)
                if n % 5 == 0:
                    self._processes()
                n += 1
                self._stop.wait(SAMPLE_S)

    def _connections(self, rows: list[tuple[Any, ...]]) -> None:
        self.samples += 1
        uses = collections.Counter(_use(state, query) for _, _, state, query in rows)
        if len(rows) > self.most:
            self.most, self.at_most = len(rows), uses
        for use, k in uses.items():
            self.most_by_use[use] = max(self.most_by_use[use], k)
        ports = [port for _, port, _, _ in rows]
        if any(port not in self._ports for port in ports):
            self._match_ports()
        owners = collections.Counter(self._ports.get(port) for port in ports)
        self.unmatched = max(self.unmatched, owners.pop(None, 0))
        self.most_per_process = max([self.most_per_process, *owners.values()])

    def _match_ports(self) -> None:
        """Which worker process each local TCP port belongs to."""
        for pid in self.pids:
            with contextlib.suppress(psutil.Error):
                for c in psutil.Process(pid).net_connections(kind="tcp"):
                    if c.laddr:
                        self._ports[c.laddr.port] = pid

    def _processes(self) -> None:
        rss = 0
        for pid in self.pids:
            with contextlib.suppress(psutil.Error):
                proc = psutil.Process(pid)
                with proc.oneshot():
                    rss += proc.memory_info().rss
                    self.most_threads = max(self.most_threads, proc.num_threads())
                    times = proc.cpu_times()
                    self.cpu_s[pid] = times.user + times.system
        self.peak_rss = max(self.peak_rss, rss)

    def describe(self) -> str:
        at_most = ", ".join(f"{use} {k}" for use, k in sorted(self.at_most.items()))
        return (
            f"most seen {self.most} ({at_most}); any one process at most"
            f" {self.most_per_process}"
            + (f" ({self.unmatched} not matched to a process)" if self.unmatched else "")
            + f"; {self.samples} samples"
        )


@dataclass
class Run:
    label: str
    window_s: float
    wall_s: float
    sampler: Sampler
    cpu_busy: float
    # A chunk's claim -> its recording (the start of the transaction that wrote it): p50,
    # p90, max; the call is 1 s of it.
    recorded: list[float] = field(default_factory=list)
    # Times a worker found job rows held by a peer's transaction and deferred the outcomes
    # (its log's warnings).
    held: int = 0
    # Cold run: seconds from the first claim to each worker's first claim, and from the
    # spawn to the first claim.
    delays: list[float] = field(default_factory=list)
    spawn_to_first: float = 0.0

    def describe(self) -> str:
        p50, p90, most = self.recorded
        return (
            f"a chunk's claim -> its recording p50 {p50:.2f} s, p90 {p90:.2f} s, max"
            f" {most:.2f} s (the call is {LATENCY_S:g} s); {self.held} times a worker found"
            " job rows held by a peer's transaction and deferred their outcomes"
        )


def _backlog(conn: psycopg.Connection[Any], chunks: int) -> list[uuid.UUID]:
    """Enqueue ``chunks`` chunks in JOBS jobs, in one transaction."""
    ids = workload.enqueue_jobs(conn, JOBS, chunks // JOBS, one_transaction=True)
    workload.vacuum_analyze(conn, "jobs", "chunks")
    return ids


def _cpu_busy(before: Any, after: Any) -> float:
    """The fraction of all CPUs' time spent busy between two psutil.cpu_times()."""
    idle = (after.idle + getattr(after, "iowait", 0)) - (before.idle + getattr(before, "iowait", 0))
    total = sum(after) - sum(before)
    return 1 - idle / total if total > 0 else 0.0


def _drain(
    ctx: Context,
    url: str,
    conn: psycopg.Connection[Any],
    label: str,
    chunks: int,
    *,
    warm: bool,
) -> Run:
    mode = () if warm else ("--burst",)
    sampler = Sampler(url, [conn.info.backend_pid])
    timeout = 120 + chunks / (WORKERS * SLOTS) * LATENCY_S * 5
    if not warm:
        _backlog(conn, chunks)
    spawned = conn.execute("SELECT clock_timestamp()").fetchone()[0]  # type: ignore[index]
    t0 = time.monotonic()
    with procs.workers(
        url,
        ctx.tmp,
        label,
        WORKERS,
        *mode,
        "--concurrency",
        str(SLOTS),
        CHUNKQ_SIM_LATENCY_MS=str(int(LATENCY_S * 1000)),
    ) as workers:
        sampler.pids = [w.pid for w in workers]
        if warm:
            procs.wait_listening(conn, WORKERS, timeout=120)
            _backlog_after_listening(conn, chunks)
            t0 = time.monotonic()
        cpu_before = psutil.cpu_times()
        with sampler.running():

            def finished() -> bool:
                procs.check_exit(workers, ctx.tmp, label)
                if all(w.poll() is not None for w in workers) and workload.unfinished_jobs(conn):
                    raise BenchError(f"{label}: workers exited with jobs unfinished")
                return workload.unfinished_jobs(conn) == 0

            wait_until(finished, timeout, f"{label} to finish", interval=0.05)
            wall = time.monotonic() - t0
            cpu_after = psutil.cpu_times()
        if not warm:
            _reap(workers, ctx, label)
    done = conn.execute("SELECT coalesce(sum(chunks_completed), 0) FROM jobs").fetchone()
    if done is None or int(done[0]) != chunks:
        raise BenchError(f"{label}: {done} of {chunks} chunks succeeded")
    run = Run(label, _window(conn, warm), wall, sampler, _cpu_busy(cpu_before, cpu_after))
    row = conn.execute(
        """SELECT percentile_cont(ARRAY[0.5, 0.9, 1.0]) WITHIN GROUP
                  (ORDER BY extract(epoch FROM c.finished_at - b.at))
           FROM bench_claims b JOIN chunks c USING (job_id, seq)"""
    ).fetchone()
    run.recorded = [float(v) for v in row[0]] if row and row[0] else [math.nan] * 3
    run.held = sum(
        log.read_text(errors="replace").count("job rows held by another transaction")
        for log in ctx.tmp.glob(f"{label}-*.log")
    )
    if not warm:
        rows = conn.execute(
            """SELECT extract(epoch FROM min(b.at) - %s)
               FROM bench_claims b JOIN chunks c USING (job_id, seq)
               GROUP BY c.worker_id ORDER BY 1""",
            (spawned,),
        ).fetchall()
        firsts = [float(r[0]) for r in rows]
        if len(firsts) != WORKERS:
            raise BenchError(f"{label}: {len(firsts)} of {WORKERS} workers claimed anything")
        run.spawn_to_first = firsts[0]
        run.delays = [f - firsts[0] for f in firsts]
    return run


def _backlog_after_listening(conn: psycopg.Connection[Any], chunks: int) -> None:
    """The warm run's backlog: texts made first, so the one transaction is only the writes."""
    texts = [workload.job_text(chunks // JOBS, seed=n + 1) for n in range(JOBS)]
    with conn.transaction():
        for text, spans in texts:
            queue.enqueue(conn, uuid.uuid4(), text, spans, max_chunk_chars=1000)


def _reap(workers: list[subprocess.Popen[bytes]], ctx: Context, label: str) -> None:
    """--burst workers exit by themselves once nothing is due or running."""
    for w in workers:
        try:
            w.wait(60)
        except subprocess.TimeoutExpired as exc:
            raise BenchError(
                f"{label}: a --burst worker did not exit 60 s after the drain"
            ) from exc
    procs.check_exit(workers, ctx.tmp, label)


def _window(conn: psycopg.Connection[Any], warm: bool) -> float:
    """Cold: first claim -> last finalization. Warm: submit commit -> last finalization."""
    start = "bench_committed" if warm else "bench_job_started"
    row = conn.execute(
        f"""SELECT extract(epoch FROM (SELECT max(at) FROM bench_job_finished)
                                   - (SELECT min(at) FROM {start}))"""
    ).fetchone()
    if row is None or row[0] is None:
        raise BenchError("the drain's start or end stamp is missing")
    return float(row[0])


def run(ctx: Context) -> list[Figure]:
    k = 3 if ctx.quick else 10
    chunks = WORKERS * SLOTS * k
    ideal = chunks / (WORKERS * SLOTS) * LATENCY_S
    with ctx.database("scale") as url, psycopg.connect(url, autocommit=True) as conn:
        for probe in (
            workload.JOB_STARTED_PROBE,
            workload.SUBMIT_COMMITTED_PROBE,
            workload.CHUNK_CLAIMED_PROBE,
        ):
            workload.install(conn, probe)
        cold = _drain(ctx, url, conn, "scale-cold", chunks, warm=False)
        workload.reset(conn)
        warm = _drain(ctx, url, conn, "scale-warm", chunks, warm=True)
    for r in (cold, warm):
        ctx.say(
            f"{r.label}: {chunks:,} chunks, window {r.window_s:.2f}s (ideal {ideal:.0f}s),"
            f" wall {r.wall_s:.2f}s; connections {r.sampler.describe()}; peak RSS"
            f" {r.sampler.peak_rss / 2**20:,.0f} MB, {r.sampler.most_threads} threads per"
            f" process at most, machine CPUs {r.cpu_busy:.0%} busy; {r.describe()}"
        )
    mean_delay = statistics.fmean(cold.delays)
    started = ideal + mean_delay
    shape = f"{chunks:,} chunks @1s, {WORKERS}x{SLOTS} slots"
    most = max(cold.sampler.most, warm.sampler.most)
    return [
        Figure(
            NAME,
            f"{shape}, --burst spawned onto the backlog: first claim -> last finalization",
            cold.window_s,
            "s",
            f"ideal {chunks:,}/{WORKERS * SLOTS} x 1s",
            ideal,
            ratio_max=1.1,
            note=f"from the spawn {cold.wall_s:.2f} s; first claim {cold.spawn_to_first:.2f} s"
            f" after the spawn, the workers' first claims then over {cold.delays[-1]:.2f} s"
            f" (median {statistics.median(cold.delays):.2f} s): interpreters starting on"
            f" {psutil.cpu_count()} cores. With each worker's slots busy from its first claim,"
            f" the ideal is {started:.2f} s (ratio {cold.window_s / started:.2f}); machine"
            f" CPUs {cold.cpu_busy:.0%} busy, workers' peak RSS"
            f" {cold.sampler.peak_rss / 2**20:,.0f} MB in all; {cold.describe()}",
            extra={"delays_s": cold.delays, "wall_s": cold.wall_s, "ideal_started_s": started},
        ),
        Figure(
            NAME,
            f"{shape}, workers idle beforehand: submit commit -> last finalization",
            warm.window_s,
            "s",
            f"ideal {chunks:,}/{WORKERS * SLOTS} x 1s",
            ideal,
            ratio_max=1.1,
            note=f"{warm.describe()}; machine CPUs {warm.cpu_busy:.0%} busy; workers' peak RSS"
            f" {warm.sampler.peak_rss / 2**20:,.0f} MB in all, at most"
            f" {warm.sampler.most_threads} threads each; {JOBS} jobs of {chunks // JOBS} chunks",
        ),
        Figure(
            NAME,
            "database connections per worker process, most seen",
            most / WORKERS,
            "",
            "2 + LISTEN",
            float(MOST_PER_WORKER),
            ratio_max=1.0,
            note=f"cold: {cold.sampler.describe()}; warm: {warm.sampler.describe()}",
            extra={
                "most_by_use": {
                    "cold": dict(cold.sampler.most_by_use),
                    "warm": dict(warm.sampler.most_by_use),
                }
            },
        ),
    ]
