"""Chaos soak: gunicorn and workers on a throwaway PostgreSQL, with workers SIGKILLed, paused
past their leases and switched to another provider, and the database restarted, while jobs
pour in; in a calm phase in the middle, one job row is held locked from outside and the other
jobs' throughput is measured against the window just before. Then every contract invariant is
checked in SQL and over HTTP against the texts that were submitted.

    python -m bench.chaos [--duration S] [--workers N] [--jobs N] [--seed N] [--lock-s S]
                          [--lock-any-status] [--switch-to PROVIDER] [--database-url URL]

Prints each violation as found and the figures at the end; exits 1 if there was any violation.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import itertools
import math
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from types import FrameType
from typing import Any

import httpx
import psycopg
from alembic import command
from alembic.config import Config
from sqlalchemy.engine import make_url

from bench.heldlock import HeldLock, hold_one_job
from schema.embedded import EmbeddedPostgres
from schema.states import CHUNK_TRANSITIONS, JOB_TRANSITIONS, TERMINAL_JOB_STATUSES
from workerd.providers.builtin import count_sentences, count_words

ROOT = Path(__file__).resolve().parent.parent
MARKER = "zugzwangle"  # the simulated provider fails every attempt of a chunk holding this word
MARKED = re.compile(rf"\b{MARKER}\b")
WORDS = [
    "queue", "lease", "worker", "chunk", "result", "retry", "backoff", "commit", "index", "merge",
    "order", "text", "drain", "crash", "fence", "claim", "naïve", "café", "Zürich", "東京",
    "데이터", "🙂", "déjà-vu", "«quoted»", "—", "(aside)", "[note]",
    "cafe\u0301", "10\u00a0km",  # a combining mark, a no-break space
]  # fmt: skip
LEASE_S, GRACE_S, MAX_ATTEMPTS = 3, 5, 5
CRASH_OUTAGE_S = 4.0  # longer than a lease: rescues and fenced late results must happen
DRAIN_S = 180.0
SLACK_S = 10.0  # a 503 this soon after the database came back still belongs to the outage
PAUSE_EVERY_S = (4.0, 8.0)  # SIGSTOP a worker this often (one paused at a time)
SHORT_PAUSE_S = (0.5, 0.7 * LEASE_S)  # its leases may well survive
LONG_PAUSE_S = (LEASE_S + 2, 3 * LEASE_S)  # its leases expire: it is rescued, then fenced
SETTLE_S = 2 * LEASE_S  # calm before the held-lock phase: rescues done, backoffs over
MIN_LOCK_RATIO = 0.5  # other jobs keep at least half their throughput under a held job row
PROVIDER = "simulated"
RESET_NOISE = "Exception during reset or similar"
WEB_FAILURES = ("unhandled error", "WORKER TIMEOUT", "Exception in worker", "failed to boot")
TERMINAL = sorted(s.value for s in TERMINAL_JOB_STATUSES)
RANK = {"PENDING": 0, "PROCESSING": 1}  # anything else is terminal: rank 2
LEGAL = {
    (old.value, new.value)
    for table in (CHUNK_TRANSITIONS, JOB_TRANSITIONS)
    for old, news in table.items()
    for new in news
}

# Trigger-fed side tables: every chunk and job transition, and every commit that left a job
# breaking an invariant (deferred constraint triggers run at COMMIT, seeing what it left).
PROBES = """
CREATE SCHEMA chaos;
CREATE TABLE chaos.chunk_log (id bigserial PRIMARY KEY, job_id uuid, seq int, old_status text,
    new_status text, attempts int, worker_id text, at timestamptz DEFAULT clock_timestamp());
CREATE TABLE chaos.job_log (id bigserial PRIMARY KEY, job_id uuid, old_status text,
    new_status text, result_written bool, at timestamptz DEFAULT clock_timestamp());
CREATE TABLE chaos.broken (id bigserial PRIMARY KEY, job_id uuid, detail text);
CREATE FUNCTION chaos.log_chunk() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN
    INSERT INTO chaos.chunk_log (job_id, seq, old_status, new_status, attempts, worker_id)
    VALUES (NEW.job_id, NEW.seq, OLD.status, NEW.status, NEW.attempts,
            coalesce(NEW.worker_id, OLD.worker_id));
    RETURN NULL; END $$;
CREATE FUNCTION chaos.log_job() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN
    INSERT INTO chaos.job_log (job_id, old_status, new_status, result_written) VALUES (NEW.id,
        OLD.status, NEW.status, OLD.analysis_result IS DISTINCT FROM NEW.analysis_result);
    RETURN NULL; END $$;
CREATE FUNCTION chaos.check_job() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE jid uuid; r record; BEGIN
    IF TG_TABLE_NAME = 'chunks' THEN jid := NEW.job_id; ELSE jid := NEW.id; END IF;
    SELECT j.id, j.status, j.chunks_completed AS done, j.chunks_failed AS failed,
           count(*) FILTER (WHERE c.status = 'succeeded') AS n_ok,
           count(*) FILTER (WHERE c.status = 'failed') AS n_failed,
           count(*) FILTER (WHERE c.status IN ('pending', 'running')) AS n_open
      INTO r FROM public.jobs j JOIN public.chunks c ON c.job_id = j.id
     WHERE j.id = jid GROUP BY j.id;
    IF r.done <> r.n_ok OR r.failed <> r.n_failed
       OR (r.status NOT IN ('PENDING', 'PROCESSING') AND r.n_open > 0) THEN
        INSERT INTO chaos.broken (job_id, detail) VALUES (r.id, format('txid %s (%s update) '
            'left %s, completed %s vs %s succeeded rows, failed %s vs %s, %s pending/running',
            txid_current(), TG_TABLE_NAME, r.status, r.done, r.n_ok, r.failed, r.n_failed,
            r.n_open));
    END IF;
    RETURN NULL; END $$;
CREATE TRIGGER chaos_log AFTER UPDATE ON public.chunks FOR EACH ROW
    WHEN (OLD.status IS DISTINCT FROM NEW.status OR OLD.result IS DISTINCT FROM NEW.result)
    EXECUTE FUNCTION chaos.log_chunk();
CREATE TRIGGER chaos_log AFTER UPDATE ON public.jobs FOR EACH ROW
    WHEN (OLD.status IS DISTINCT FROM NEW.status
          OR OLD.analysis_result IS DISTINCT FROM NEW.analysis_result)
    EXECUTE FUNCTION chaos.log_job();
CREATE CONSTRAINT TRIGGER chaos_check AFTER UPDATE ON public.chunks
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status)
    EXECUTE FUNCTION chaos.check_job();
CREATE CONSTRAINT TRIGGER chaos_check AFTER UPDATE ON public.jobs
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW
    WHEN (OLD.status IS DISTINCT FROM NEW.status OR OLD.chunks_completed <> NEW.chunks_completed
          OR OLD.chunks_failed <> NEW.chunks_failed)
    EXECUTE FUNCTION chaos.check_job();
"""

_SUCCEEDED = "count(*) FILTER (WHERE c.status = 'succeeded')"
_FAILED = "count(*) FILTER (WHERE c.status = 'failed')"
_FINALIZED = "count(l.id) FILTER (WHERE l.new_status = ANY(%(t)s) AND l.old_status <> l.new_status)"
# What is wrong, and SQL that returns one row per offence, run over the drained database.
CHECKS = [
    (
        "counters differ from row counts (job, completed, failed, succeeded rows, failed rows)",
        f"""SELECT j.id, j.chunks_completed, j.chunks_failed, {_SUCCEEDED}, {_FAILED}
            FROM jobs j JOIN chunks c ON c.job_id = j.id GROUP BY j.id
            HAVING j.chunks_completed <> {_SUCCEEDED} OR j.chunks_failed <> {_FAILED}""",
    ),
    (
        "terminal job with a pending/running chunk (job, status, seq, chunk status)",
        """SELECT j.id, j.status, c.seq, c.status FROM jobs j JOIN chunks c ON c.job_id = j.id
           WHERE j.status = ANY(%(t)s) AND c.status IN ('pending', 'running')""",
    ),
    (
        "job stuck non-terminal after the drain (job, status, completed, failed, total)",
        """SELECT id, status, chunks_completed, chunks_failed, chunks_total FROM jobs
           WHERE status <> ALL(%(t)s)""",
    ),
    (
        "status does not match the counts (job, status, total, completed, failed)",
        """SELECT id, status, chunks_total, chunks_completed, chunks_failed FROM jobs
           WHERE status = ANY(%(t)s) AND status <> CASE
               WHEN chunks_completed + chunks_failed <> chunks_total THEN 'INCOMPLETE'
               WHEN chunks_failed = 0 THEN 'COMPLETED' WHEN chunks_completed = 0 THEN 'FAILED'
               ELSE 'PARTIAL_SUCCESS' END
              OR finished_at IS NULL OR analysis_result IS NULL""",
    ),
    (
        "result not recorded exactly once (job, seq, status, times it became succeeded)",
        """SELECT c.job_id, c.seq, c.status, count(l.id) FROM chunks c
           LEFT JOIN chaos.chunk_log l
                  ON (l.job_id, l.seq, l.new_status) = (c.job_id, c.seq, 'succeeded')
           GROUP BY c.job_id, c.seq, c.status
           HAVING count(l.id) <> (c.status = 'succeeded')::int""",
    ),
    (
        "job not finalized exactly once (job, terminal transitions, analysis_result writes)",
        f"""SELECT j.id, {_FINALIZED}, count(l.id) FILTER (WHERE l.result_written)
            FROM jobs j LEFT JOIN chaos.job_log l ON l.job_id = j.id GROUP BY j.id
            HAVING {_FINALIZED} <> 1 OR count(l.id) FILTER (WHERE l.result_written) <> 1""",
    ),
    (
        "a commit left a job breaking an invariant (job, what the commit left)",
        "SELECT job_id, detail FROM chaos.broken ORDER BY id",
    ),
    (
        "illegal status transition (kind, from, to, times)",
        """SELECT 'chunk', old_status, new_status, count(*) FROM chaos.chunk_log
           WHERE old_status <> new_status GROUP BY 2, 3
           UNION ALL SELECT 'job', old_status, new_status, count(*) FROM chaos.job_log
           WHERE old_status <> new_status GROUP BY 2, 3""",
    ),
    (
        "final chunk without its result or error, or attempts out of range (job, seq, ...)",
        """SELECT job_id, seq, status, attempts FROM chunks
           WHERE (status = 'succeeded' AND (result IS NULL OR error IS NOT NULL))
              OR (status = 'failed' AND error IS NULL) OR attempts NOT BETWEEN 1 AND %(max)s""",
    ),
    (
        "failed attempts not logged once each (job, seq, status, attempts, attempts logged)",
        """SELECT c.job_id, c.seq, c.status, c.attempts, array_agg(a.attempt ORDER BY a.attempt)
           FROM chunks c LEFT JOIN chunk_attempts a ON (a.job_id, a.seq) = (c.job_id, c.seq)
           GROUP BY c.job_id, c.seq, c.status, c.attempts
           HAVING array_remove(array_agg(a.attempt ORDER BY a.attempt), NULL) <> ARRAY(
               SELECT generate_series(1, c.attempts - (c.status = 'succeeded')::int))""",
    ),
]
FIGURES = [  # printed in this order; the ones counted in SQL come from ``figures_from``
    "jobs acknowledged (202)", "jobs in the database", "jobs COMPLETED", "jobs PARTIAL_SUCCESS",
    "jobs FAILED", "jobs created without a 202 (answer lost to an outage)", "chunks",
    "chunks failed for good", "  of them holding the marker", "failed attempts logged",
    "  of them lost workers (rescued)", "late results dropped by the fence",
    "chunk transitions logged", "workers started", "worker SIGKILLs", "worker SIGTERMs",
    "  of them exiting 0 in time", "replacement workers", "worker pauses (SIGSTOP, SIGCONT)",
    "  of them longer than the lease", "  late results they had dropped by the fence",
    "workers switched provider (SIGTERM, restart)", "jobs with results from two providers",
    "PostgreSQL restarts (fast)", "PostgreSQL crashes (immediate stop, start)",
    "restart probes answered 503", "restart probes answered 200", "crash probes answered 503",
    "POST answered 503 in an outage (retried)", "GET answered 503 in an outage",
    "pool-reset tracebacks in gunicorn.log", "status polls", "drain seconds",
]  # fmt: skip


class HardDeadline(Exception):
    """The whole soak overran its time budget."""


@dataclass
class Submitted:
    """A job as its submitter knows it, and the latest report the poller saw of it."""

    text: str
    max_chars: int
    total: int
    percent: float = 0.0
    status: str = "PENDING"


@dataclass
class Proc:
    proc: subprocess.Popen[bytes]
    log: Path
    provider: str
    paused_until: float | None = None  # SIGSTOPped until then (monotonic)
    long_pauses: int = 0  # pauses that outlasted its leases

    def up(self) -> bool:
        """Logged its start, so its SIGTERM handler is installed."""
        with contextlib.suppress(OSError):
            return " started: " in self.log.read_text(errors="replace")
        return False


def make_text(rng: random.Random) -> tuple[str, int]:
    """A text of roughly 10-200 chunks and its max_chunk_chars. A quarter of the texts carry the
    marker word now and then; one in twenty has it nearly everywhere (so whole jobs fail)."""
    max_chars, kind = rng.randint(100, 400), rng.random()
    share = 0.5 if kind < 0.05 else 0.004 if kind < 0.3 else 0.0
    target = (rng.randint(10, 30) if share == 0.5 else rng.randint(10, 200)) * max_chars * 4 // 5
    parts: list[str] = []
    size = 0
    while size < target:
        words = [MARKER if rng.random() < share else rng.choice(WORDS) for _ in range(14)]
        end = rng.choice(".!?;,") + rng.choice(("  ", " ", " ", "\n", "\n\n", " \r\n\r\n"))
        parts.append(" ".join(words[: rng.randint(3, 14)]) + end)
        size += len(parts[-1])
    return "".join(parts), max_chars


def wall_seconds(args: argparse.Namespace) -> float:
    """The traffic phase: --duration seconds of chaos plus the held-lock phase."""
    return args.duration + (SETTLE_S + 2 * args.lock_s if args.lock_s > 0 else 0.0)


def made_from(provider: str | None, piece: str, result: dict[str, Any] | None) -> bool:
    """Whether ``result`` is what ``provider`` makes of ``piece``, judged by the fields that
    depend on the text alone (a result recorded without its provider is not)."""
    result = result or {}
    if provider == "simulated":
        digest = hashlib.sha256(piece.encode()).hexdigest()[:16]
        return (result.get("digest"), result.get("chars")) == (digest, len(piece))
    if provider == "builtin":
        counts = (len(piece), count_words(piece), count_sentences(piece))
        fields = (result.get("chars"), result.get("words"), result.get("sentences"))
        return fields == counts and isinstance(result.get("keywords"), list)
    return False


def summary_problems(summary: dict[str, Any], groups: dict[str | None, list[int]]) -> list[str]:
    """A job's summary against the lengths of its succeeded chunks, grouped by the provider
    that produced each (in order of first appearance): one provider's merge, or, when there
    are several, ``{"providers": [{"provider", "chunks", "summary"}, ...]}``; never an error."""
    if "error" in summary:
        return [f"the merge failed: {summary['error']}"]
    if len(groups) <= 1:
        lengths = next(iter(groups.values()), [])
        if (summary.get("chunks"), summary.get("chars")) != (len(lengths), sum(lengths)):
            return [f"summary {summary} does not add up its {len(lengths)} succeeded chunks"]
        return []
    want = [(name, len(ls), len(ls), sum(ls)) for name, ls in groups.items()]
    listed = summary.get("providers")
    got = [
        (p.get("provider"), p.get("chunks"), p.get("summary", {}).get("chunks"),
         p.get("summary", {}).get("chars"))
        for p in (listed if isinstance(listed, list) else [])
        if isinstance(p, dict) and isinstance(p.get("summary", {}), dict)
    ]  # fmt: skip
    if got != want:
        return [f"summary {str(summary)[:300]} is not the per-provider merge {want}"]
    return []


def dropped_after(log: str, resumed: datetime) -> int:
    """Fenced drops a worker logged in the leases' time after it was resumed (its log lines
    start with a local ``asctime``, as ``datetime.now()`` is)."""
    n = 0
    for line in log.splitlines():
        if "result dropped" in line:
            with contextlib.suppress(ValueError):
                at = datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f")
                n += resumed - timedelta(seconds=1) <= at <= resumed + timedelta(seconds=LEASE_S)
    return n


def tail(path: Path, lines: int = 12) -> str:
    with contextlib.suppress(OSError):
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    return f"(no log at {path})"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Soak:
    """One run: set up, traffic and chaos, drain, check; ``cleanup`` undoes everything."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.rng = random.Random(args.seed)
        self.tmp = Path(tempfile.mkdtemp(prefix="chunkq-chaos-"))
        (self.tmp / "logs").mkdir()
        self.server: EmbeddedPostgres | None = None
        self.admin_url = self.url = self.base = self.dbname = ""
        self.env: dict[str, str] = {}
        self.api: subprocess.Popen[bytes] | None = None
        self.workers: list[Proc] = []
        self.stopping: list[tuple[Proc, float]] = []  # SIGTERMed, and when
        self.threads: list[threading.Thread] = []
        self.jobs: dict[str, Submitted] = {}
        self.outages: list[list[float]] = []  # [start, end]; end is inf while it lasts
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.n: Counter[str] = Counter()
        self.violations: list[str] = []
        self.t0 = time.monotonic()
        self.chaos_s = 0.0  # seconds of chaos so far (the calm phase does not count)
        self.held: HeldLock | None = None
        self.resumed: list[tuple[str, datetime]] = []  # (worker log, when) after long pauses

    def violate(self, message: str) -> None:
        with self.lock:
            self.violations.append(message)
        print(f"VIOLATION: {message}", file=sys.stderr, flush=True)

    def count(self, key: str, k: int = 1) -> None:
        with self.lock:
            self.n[key] += k

    # -- setup ---------------------------------------------------------------------------

    def setup(self) -> None:
        """PostgreSQL (ours unless --database-url), a migrated database with the probes,
        gunicorn and the workers."""
        if self.args.database_url:
            self.admin_url = self.args.database_url
        else:
            # synchronous_commit stays on: an acknowledged commit must survive a crash.
            settings = {"fsync": "off", "full_page_writes": "off", "synchronous_commit": "on"}
            self.server = EmbeddedPostgres(self.tmp / "pgdata", port=free_port(), settings=settings)
            self.admin_url = self.server.start()
        self.dbname = f"chunkq_chaos_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{self.dbname}"')
        url = make_url(self.admin_url).set(database=self.dbname)
        self.url = url.render_as_string(hide_password=False)
        cfg = Config(str(ROOT / "alembic.ini"))
        cfg.set_main_option("sqlalchemy.url", self.url.replace("%", "%%"))
        command.upgrade(cfg, "head")
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(PROBES)
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("CHUNKQ_")}
        self.env.update(
            DATABASE_URL=self.url, PYTHONUNBUFFERED="1", CHUNKQ_PROVIDER="simulated",
            CHUNKQ_SIM_LATENCY_MS="50", CHUNKQ_SIM_FAIL_RATE="0.1",
            CHUNKQ_SIM_FAIL_PATTERN=MARKED.pattern, CHUNKQ_LEASE_S=str(LEASE_S),
            CHUNKQ_BACKOFF_BASE_S="0.2", CHUNKQ_BACKOFF_MAX_S="2",
            CHUNKQ_MAX_ATTEMPTS=str(MAX_ATTEMPTS), CHUNKQ_SHUTDOWN_GRACE_S=str(GRACE_S),
        )  # fmt: skip
        self.start_api()
        for _ in range(self.args.workers):
            self.start_worker()

    def start_api(self) -> None:
        port, log = free_port(), self.tmp / "logs" / "gunicorn.log"
        cmd = [sys.executable, "-m", "gunicorn", "--bind", f"127.0.0.1:{port}", "--workers", "2"]
        cmd += ["--log-level", "warning", "--error-logfile", str(log), "web:create_app()"]
        with log.open("ab") as out:
            self.api = subprocess.Popen(
                cmd, cwd=ROOT, env=self.env, stdout=out, stderr=out, start_new_session=True
            )
        self.base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and self.api.poll() is None:
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{self.base}/healthz", timeout=1).status_code == 200:
                    return
            time.sleep(0.1)
        raise RuntimeError(f"gunicorn did not come up:\n{tail(log)}")

    def start_worker(self, provider: str = PROVIDER) -> None:
        self.count("workers started")
        log = self.tmp / "logs" / f"worker-{self.n['workers started']:03d}.log"
        cmd = [sys.executable, "-m", "workerd", "--concurrency", "8"]
        env = {**self.env, "CHUNKQ_PROVIDER": provider}
        with log.open("ab") as out:  # the child keeps its own copy of the descriptor
            proc = subprocess.Popen(
                cmd, cwd=ROOT, env=env, stdout=out, stderr=out, start_new_session=True
            )
        self.workers.append(Proc(proc, log, provider))

    # -- traffic -------------------------------------------------------------------------

    def judge(self, what: str, started: float, response: httpx.Response, expect: int) -> bool:
        """True for the expected status. A 503 during (or just after) an outage is counted and
        must be a problem with Retry-After; anything else is a violation."""
        if response.status_code == expect:
            return True
        with self.lock:
            now = time.monotonic()
            documented = any(s - 1 <= now and started <= e + SLACK_S for s, e in self.outages)
        if response.status_code == 503 and documented:
            retried = " (retried)" if expect == 202 else ""
            self.count(f"{what.split()[0]} answered 503 in an outage{retried}")
            self.check_problem(what, response)
        else:
            self.violate(f"{what} answered {response.status_code}: {response.text[:300]}")
        return False

    def check_problem(self, what: str, response: httpx.Response) -> None:
        kind = response.headers.get("content-type", "")
        retry = response.headers.get("retry-after", "")
        body: Any = None
        with contextlib.suppress(ValueError):
            body = response.json()
        ok = kind.startswith("application/problem+json") and retry.isdigit()
        if not (ok and isinstance(body, dict) and body.get("status") == 503):
            self.violate(f"{what}: 503 without problem+json and Retry-After: {kind!r} {retry!r}")

    def submitter(self) -> None:
        """Submit --jobs texts spread over 85% of the run (the calm phase included, so that it
        has a backlog), retrying those that got a 503."""
        rng = random.Random(self.rng.random())
        spacing = 0.85 * wall_seconds(self.args) / self.args.jobs
        with httpx.Client(base_url=self.base, timeout=30) as http:
            for i in range(self.args.jobs):
                text, max_chars = make_text(rng)
                payload = {"raw_text": text, "max_chunk_chars": max_chars}
                while not self.stop.is_set():
                    started = time.monotonic()
                    try:
                        response = http.post("/v1/analyze", json=payload)
                    except httpx.HTTPError as exc:
                        self.violate(f"POST /v1/analyze: no answer ({exc!r})")
                    else:
                        if self.judge("POST /v1/analyze", started, response, 202):
                            body = response.json()
                            with self.lock:
                                job = Submitted(text, max_chars, body["chunks_total"])
                                self.jobs[body["job_id"]] = job
                            break
                    self.stop.wait(0.5)
                if self.stop.wait(max(0.0, self.t0 + (i + 1) * spacing - time.monotonic())):
                    return

    def poller(self) -> None:
        """GET unfinished jobs all along: status never goes back, percent never goes down."""
        rng = random.Random(self.rng.random())
        with httpx.Client(base_url=self.base, timeout=30) as http:
            while not self.stop.wait(0.05):
                with self.lock:
                    ids = [k for k, job in self.jobs.items() if job.status in RANK]
                if not ids:
                    continue
                job_id, started = rng.choice(ids), time.monotonic()
                try:
                    response = http.get(f"/v1/analyze/{job_id}")
                except httpx.HTTPError as exc:
                    self.violate(f"GET /v1/analyze/{job_id}: no answer ({exc!r})")
                    continue
                if self.judge("GET /v1/analyze/<id>", started, response, 200):
                    self.watch(job_id, response.json())

    def watch(self, job_id: str, body: dict[str, Any]) -> None:
        self.count("status polls")
        job, status, percent = self.jobs[job_id], body["status"], body["percent"]
        if RANK.get(status, 2) < RANK.get(job.status, 2) or (
            job.status not in RANK and status != job.status
        ):
            self.violate(f"job {job_id}: status went from {job.status} to {status}")
        if percent < job.percent:
            self.violate(f"job {job_id}: percent went down from {job.percent} to {percent}")
        if (body["analysis_result"] is None) != (status in RANK):
            self.violate(f"job {job_id}: analysis_result is wrongly null or set while {status}")
        job.status, job.percent = status, max(job.percent, percent)

    def guarded(self, body: Any) -> threading.Thread:
        def run() -> None:
            try:
                body()
            except Exception as exc:  # a harness bug must fail the run, not vanish with its thread
                self.violate(f"harness thread {body.__name__} crashed: {exc!r}")

        return threading.Thread(target=run, name=body.__name__, daemon=True)

    # -- chaos ---------------------------------------------------------------------------

    def chaos(self) -> None:
        """--duration seconds of faults, with the held-lock phase in the middle (``calm``).
        Faults: a random worker hit every 2-5 s (one in four a SIGTERM, the rest SIGKILL) and
        replaced; one SIGSTOPped every 4-8 s for a pause alternately shorter and longer than
        the lease; a quarter of the way in, half the workers restarted on --switch-to;
        PostgreSQL restarted once a minute, alternating fast restarts and crashes."""
        d = self.args.duration
        n = 0 if self.server is None else max(1, round(d / 60))
        kinds = ["crash"] if n == 1 else ["restart", "crash"] * n
        events = [(d * (i + 1) / (n + 1), kinds[i]) for i in range(n)]
        if self.args.switch_to:
            events.append((d / 4, "switch"))
        events.sort()
        if self.args.lock_s > 0:
            self.faults(events, d / 2)
            self.calm()
        self.faults(events, d)

    def faults(self, events: list[tuple[float, str]], until: float) -> None:
        """Faults until ``until`` seconds of chaos in all; ``events`` (at seconds of chaos)
        are taken off the list as they happen."""
        started, base = time.monotonic(), self.chaos_s

        def elapsed() -> float:
            self.chaos_s = base + time.monotonic() - started
            return self.chaos_s

        next_hit = base + self.rng.uniform(2, 5)
        next_pause = base + self.rng.uniform(*PAUSE_EVERY_S)
        while elapsed() < until:
            self.tend_workers()
            if events and self.chaos_s >= events[0][0]:
                kind = events.pop(0)[1]
                if kind == "switch":
                    self.switch_provider(self.args.switch_to)
                else:
                    self.outage(kind)
            elif self.chaos_s >= next_hit:
                self.hit()
                next_hit = elapsed() + self.rng.uniform(2, 5)
            elif self.chaos_s >= next_pause:
                self.pause()
                next_pause = elapsed() + self.rng.uniform(*PAUSE_EVERY_S)
            time.sleep(0.1)

    def hit(self) -> None:
        """SIGTERM (one in four, if it is up) or SIGKILL a worker that is not paused, and start
        a replacement on the same provider."""
        running = [w for w in self.workers if w.paused_until is None]
        if not running:
            return
        victim = self.rng.choice(running)
        self.workers.remove(victim)
        # SIGTERM only a worker that is up: one still importing dies of the default action.
        if self.rng.random() < 0.25 and victim.up():
            victim.proc.terminate()
            self.stopping.append((victim, time.monotonic()))
            self.count("worker SIGTERMs")
        else:
            victim.proc.kill()
            victim.proc.wait()
            self.count("worker SIGKILLs")
        self.start_worker(victim.provider)
        self.count("replacement workers")

    def pause(self) -> None:
        """SIGSTOP a worker that is up (one at a time), alternately for less and for more than
        the lease; ``tend_workers`` sends the SIGCONT. After a long pause its chunks have been
        rescued, so whatever it then tries to record must be refused by the fence."""
        if any(w.paused_until is not None for w in self.workers):
            return
        ready = [w for w in self.workers if w.up()]
        if not ready:
            return
        w = self.rng.choice(ready)
        long = self.n["worker pauses (SIGSTOP, SIGCONT)"] % 2 == 1
        w.proc.send_signal(signal.SIGSTOP)
        w.paused_until = time.monotonic() + self.rng.uniform(
            *(LONG_PAUSE_S if long else SHORT_PAUSE_S)
        )
        w.long_pauses += long
        self.count("worker pauses (SIGSTOP, SIGCONT)")
        self.count("  of them longer than the lease", long)

    def resume(self, w: Proc) -> None:
        w.proc.send_signal(signal.SIGCONT)
        if w.long_pauses and w.paused_until is not None:
            self.resumed.append((w.log.name, datetime.now()))
        w.paused_until = None

    def resume_all(self) -> None:
        for w in self.workers:
            if w.paused_until is not None:
                self.resume(w)

    def switch_provider(self, provider: str) -> None:
        """Restart half the workers (at least one) on ``provider`` while jobs are in flight:
        each is SIGTERMed (it finishes what it holds) and replaced by one on ``provider``, so
        the jobs under way get results from both providers."""
        others = [w for w in self.workers if w.paused_until is None and w.provider != provider]
        for w in others[: max(1, len(self.workers) // 2)]:
            self.workers.remove(w)
            if w.up():
                w.proc.terminate()
                self.stopping.append((w, time.monotonic()))
                self.count("worker SIGTERMs")
            else:
                w.proc.kill()
                w.proc.wait()
                self.count("worker SIGKILLs")
            self.start_worker(provider)
            self.count("workers switched provider (SIGTERM, restart)")

    def calm(self) -> None:
        """The held-lock phase, free of other faults so that its two windows compare: every
        worker resumed and up, no SIGTERMed one left, SETTLE_S for rescues and backoffs to
        play out; then ``hold_one_job``. Judged here: a held job row must leave the other
        jobs at least MIN_LOCK_RATIO of their throughput, as long as they had work due."""
        self.resume_all()
        deadline = time.monotonic() + 60
        while self.stopping or not all(w.up() for w in self.workers):
            if time.monotonic() > deadline:
                break
            self.tend_workers()
            time.sleep(0.1)
        until = time.monotonic() + SETTLE_S
        while time.monotonic() < until:
            self.tend_workers()
            time.sleep(0.1)
        started = self.n["workers started"]
        self.held = held = hold_one_job(
            self.url, self.args.lock_s, self.tend_workers, any_status=self.args.lock_any_status
        )
        if self.n["workers started"] != started:
            self.violate("a worker died during the held-lock phase: its windows do not compare")
        if held.job_id is None or held.held is None:
            self.violate("held-lock phase: no open job with chunks to do, nothing to lock")
            return
        print(f"held lock: {held.describe()}", file=sys.stderr, flush=True)
        ratio = held.ratio
        if held.held.min_backlog > 0 and (ratio is None or ratio < MIN_LOCK_RATIO):
            self.violate(
                f"a job row held for {self.args.lock_s:g}s from outside cut the other jobs' "
                f"throughput below {MIN_LOCK_RATIO:g} of normal, with work due all along: "
                + held.describe()
            )

    def tend_workers(self) -> None:
        """A paused worker whose time is up gets its SIGCONT. A worker that exits unasked is a
        violation (and is replaced); a SIGTERMed one must exit 0 within the grace period
        plus 5 s."""
        now = time.monotonic()
        for w in self.workers:
            if w.paused_until is not None and now >= w.paused_until:
                self.resume(w)
        for w in [w for w in self.workers if w.proc.poll() is not None]:
            self.violate(
                f"worker {w.log.name} exited by itself ({w.proc.returncode}):\n{tail(w.log)}"
            )
            self.workers.remove(w)
            self.start_worker(w.provider)
            self.count("replacement workers")
        for w, sent in list(self.stopping):
            code, late = w.proc.poll(), time.monotonic() - sent > GRACE_S + 5
            if code is None and not late:
                continue
            self.stopping.remove((w, sent))
            if code == 0:
                self.count("  of them exiting 0 in time")
            elif code is None:
                self.violate(
                    f"worker {w.log.name} still up {GRACE_S + 5}s after SIGTERM:\n{tail(w.log)}"
                )
                w.proc.kill()
                w.proc.wait()
            else:
                self.violate(f"worker {w.log.name} exited {code} on SIGTERM:\n{tail(w.log)}")

    def outage(self, kind: str) -> None:
        """``restart``: server.restart() (fast) while probing; ``crash``: immediate stop, a few
        seconds down (every probe must then be a 503 problem), start."""
        assert self.server is not None
        with self.lock:
            job_id = self.rng.choice(list(self.jobs)) if self.jobs else str(uuid.uuid4())
            window = [time.monotonic(), math.inf]
            self.outages.append(window)
        with httpx.Client(base_url=self.base, timeout=30) as http:
            if kind == "restart":
                with ThreadPoolExecutor(1) as pool:
                    restarting = pool.submit(self.server.restart)
                    while not restarting.done():
                        self.probe(http, job_id, down=False)
                        time.sleep(0.02)
                    restarting.result()
                self.count("PostgreSQL restarts (fast)")
            else:
                self.server.stop(mode="immediate")
                until = time.monotonic() + CRASH_OUTAGE_S
                while time.monotonic() < until:
                    self.probe(http, job_id, down=True)
                    time.sleep(0.2)
                self.server.start()
                self.count("PostgreSQL crashes (immediate stop, start)")
        window[1] = time.monotonic()

    def probe(self, http: httpx.Client, job_id: str, *, down: bool) -> None:
        """GET a job mid-outage: a 503 problem (or, around a fast restart, a 200)."""
        kind = "crash" if down else "restart"
        what = f"GET during a PostgreSQL {kind}"
        try:
            response = http.get(f"/v1/analyze/{job_id}")
        except httpx.HTTPError as exc:
            self.violate(f"{what}: no answer ({exc!r})")
            return
        if response.status_code == 503 or (response.status_code == 200 and not down):
            self.count(f"{kind} probes answered {response.status_code}")
            if response.status_code == 503:
                self.check_problem(what, response)
        else:
            self.violate(f"{what}: {response.status_code} {response.text[:300]}")

    # -- drain ---------------------------------------------------------------------------

    def drain(self) -> None:
        """Stop traffic and chaos, wait (bounded) until every job is terminal, then SIGTERM
        every worker and check that each exits 0 in time."""
        self.stop.set()
        self.resume_all()
        for thread in self.threads:
            thread.join(60)
        started = time.monotonic()
        open_jobs = "SELECT count(*) FROM jobs WHERE status <> ALL(%s)"
        with psycopg.connect(self.url, autocommit=True) as conn:
            while conn.execute(open_jobs, (TERMINAL,)).fetchone()[0]:  # type: ignore[index]
                if time.monotonic() - started > DRAIN_S:
                    self.violate(f"jobs open {DRAIN_S:.0f}s into the drain:{self.stuck(conn)}")
                    break
                self.tend_workers()
                time.sleep(0.5)
        self.count("drain seconds", round(time.monotonic() - started))
        for w in self.workers:
            deadline = time.monotonic() + 30
            while not w.up() and w.proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.1)
            w.proc.terminate()
            self.stopping.append((w, time.monotonic()))
            self.count("worker SIGTERMs")
        self.workers = []
        while self.stopping:
            self.tend_workers()
            time.sleep(0.1)

    @staticmethod
    def stuck(conn: psycopg.Connection[Any]) -> str:
        rows = conn.execute(
            """SELECT j.id, j.status, c.status, count(*), max(c.attempts), min(c.next_attempt_at),
                      max(c.lease_expires_at), now()
               FROM jobs j JOIN chunks c ON c.job_id = j.id WHERE j.status <> ALL(%s)
               GROUP BY 1, 2, 3 ORDER BY 1 LIMIT 30""",
            (TERMINAL,),
        )
        return "".join(f"\n  {tuple(map(str, row))}" for row in rows)

    # -- checks --------------------------------------------------------------------------

    def check(self) -> None:
        """Every SQL check over the whole database, then each job against its text and GET."""
        with psycopg.connect(self.url, autocommit=True) as conn:
            for what, sql in CHECKS:
                for row in conn.execute(sql, {"t": TERMINAL, "max": MAX_ATTEMPTS}):
                    if what.startswith("illegal") and tuple(row[1:3]) in LEGAL:
                        continue
                    self.violate(f"{what}: {tuple(map(str, row))}")
            found = {str(row[0]) for row in conn.execute("SELECT id FROM jobs")}
            for job_id in sorted(set(self.jobs) - found):
                self.violate(f"job {job_id} was acknowledged with a 202 but is not in the database")
            unacknowledged = len(found - set(self.jobs))
            self.count("jobs created without a 202 (answer lost to an outage)", unacknowledged)
            with httpx.Client(base_url=self.base, timeout=30) as http:
                for job_id in sorted(found & set(self.jobs)):
                    for problem in self.check_job(conn, http, job_id, self.jobs[job_id]):
                        self.violate(f"job {job_id}: {problem}")
            self.figures_from(conn)
            self.check_faults(conn)

    def check_job(
        self, conn: psycopg.Connection[Any], http: httpx.Client, job_id: str, job: Submitted
    ) -> list[str]:
        """Problems of one job: its analysis_result against the submitted text and its chunk
        rows, and the GET report against the database."""
        row = conn.execute(
            "SELECT status, chunks_total, chunks_completed, chunks_failed, analysis_result"
            " FROM jobs WHERE id = %s",
            (job_id,),
        ).fetchone()
        assert row is not None
        rows = {
            r[0]: r[1:]
            for r in conn.execute(
                "SELECT seq, status, text, result, error, provider FROM chunks WHERE job_id = %s",
                (job_id,),
            )
        }
        entries = (row[4] or {}).get("chunks", [])
        pieces = [job.text[e["start"] : e["end"]] for e in entries]
        problems = []
        if row[1] != job.total or [e["index"] for e in entries] != list(range(job.total)):
            problems.append(f"{len(entries)} result entries, not 0..{job.total - 1} in order")
        if "".join(pieces) != job.text or any(
            a["end"] != b["start"] for a, b in itertools.pairwise(entries)
        ):
            problems.append("the result's chunks do not tile the submitted text")
        groups: dict[str | None, list[int]] = {}  # succeeded chunks' lengths by provider
        for e, piece in zip(entries, pieces, strict=True):
            status, text, result, error, provider = rows.get(e["index"], (None,) * 5)
            if status == "succeeded":
                groups.setdefault(provider, []).append(len(piece))
            if (e["status"], piece) != (status, text):
                span = f"text[{e['start']}:{e['end']}]"
                same = "the same text" if piece == text else "other text"
                problems.append(f"chunk {e['index']}: {e['status']} {span}; row: {status}, {same}")
            elif status == "succeeded" and (
                e.get("result") != result or not made_from(provider, piece, result)
            ):
                problems.append(
                    f"chunk {e['index']}: result {e.get('result')} not {provider}'s of its text"
                )
            elif status == "failed" and (e.get("error") or None, "result" in e) != (error, False):
                problems.append(f"chunk {e['index']}: error {e.get('error')!r} vs {error!r}")
            # Only the simulated provider fails the marker; builtin analyses it like any text.
            if MARKED.search(piece) and status != "failed" and provider != "builtin":
                problems.append(f"chunk {e['index']} holds {MARKER} yet is {status} ({provider})")
            if status == "failed" and MARKED.search(piece):
                self.count("  of them holding the marker")
        problems += summary_problems((row[4] or {}).get("summary", {}), groups)
        body = http.get(f"/v1/analyze/{job_id}").json()
        keys = ("status", "chunks_total", "chunks_completed", "chunks_failed", "analysis_result")
        errors = [
            tuple(e[k] for k in ("chunk_index", "attempt", "error_class", "error"))
            for e in body.get("errors", [])
        ]
        logged = conn.execute(
            "SELECT seq, attempt, error_class, error FROM chunk_attempts WHERE job_id = %s"
            " ORDER BY seq, attempt, id",
            (job_id,),
        ).fetchall()
        if (
            tuple(body.get(k) for k in keys) != row
            or errors != logged
            or body.get("percent") != round(100.0 * (row[2] + row[3]) / row[1], 2)
        ):
            problems.append(f"GET disagrees with the database: {str(body)[:300]}")
        return problems

    def figures_from(self, conn: psycopg.Connection[Any]) -> None:
        for status, k in conn.execute("SELECT status, count(*) FROM jobs GROUP BY 1"):
            self.count(f"jobs {status}", k)
        for name, sql in (
            ("jobs in the database", "jobs"),
            ("chunks", "chunks"),
            ("chunks failed for good", "chunks WHERE status = 'failed'"),
            ("failed attempts logged", "chunk_attempts"),
            ("  of them lost workers (rescued)", "chunk_attempts WHERE error_class = 'WorkerLost'"),
            ("chunk transitions logged", "chaos.chunk_log"),
            (
                "jobs with results from two providers",
                """(SELECT job_id FROM chunks WHERE status = 'succeeded' GROUP BY job_id
                    HAVING count(DISTINCT provider) > 1) AS mixed""",
            ),
        ):
            self.count(name, conn.execute(f"SELECT count(*) FROM {sql}").fetchone()[0])  # type: ignore[index]
        for provider, k in conn.execute(
            "SELECT provider, count(*) FROM chunks WHERE status = 'succeeded' GROUP BY 1"
        ):
            self.count(f"chunks succeeded by {provider}", k)

    def check_faults(self, conn: psycopg.Connection[Any]) -> None:
        """The faults did what they are for: the switch left jobs with results from two
        providers, and the held job ended terminal after its row was released."""
        if self.args.switch_to and not self.n["jobs with results from two providers"]:
            self.violate(f"no job got results from both {PROVIDER} and {self.args.switch_to}")
        held = self.held
        if held is None or held.job_id is None or held.held is None:
            return
        # The job_log's clock is the UPDATE's own; finished_at is its transaction's start,
        # which may precede the release while that transaction waited for CPU.
        row = conn.execute(
            """SELECT j.status, min(l.at) FILTER (WHERE l.new_status = ANY(%(t)s)),
                      (SELECT min(at) FROM chaos.chunk_log WHERE job_id = j.id
                          AND new_status = 'succeeded' AND at >= %(end)s)
               FROM jobs j LEFT JOIN chaos.job_log l ON l.job_id = j.id
               WHERE j.id = %(id)s GROUP BY j.id, j.status""",
            {"id": held.job_id, "t": TERMINAL, "end": held.held.end},
        ).fetchone()
        assert row is not None
        if row[2] is not None:
            held.recorded_after_s = (row[2] - held.held.end).total_seconds()
        if row[0] not in TERMINAL or row[1] is None or row[1] < held.held.end:
            self.violate(
                f"held job {held.job_id} is {row[0]}, made terminal at {row[1]}; its row was "
                f"held until {held.held.end}"
            )
        else:
            held.terminal_after_s = (row[1] - held.held.end).total_seconds()

    def scan_logs(self) -> None:
        """Count fenced drops. A worker's traceback, the web's 500 path ("unhandled error") or
        a gunicorn worker failure is a bug; SQLAlchemy's traceback for a connection that died
        mid-request and is dropped on its way back to the pool is counted, not failed."""
        for log in sorted((self.tmp / "logs").glob("*.log")):
            text = log.read_text(errors="replace")
            self.count("late results dropped by the fence", text.count("result dropped"))
            for name, resumed in self.resumed:
                if name == log.name:
                    late = dropped_after(text, resumed)
                    self.count("  late results they had dropped by the fence", late)
            self.count("pool-reset tracebacks in gunicorn.log", text.count(RESET_NOISE))
            bad = ("Traceback",) if log.name.startswith("worker") else WEB_FAILURES
            for word in bad:
                if (at := text.find(word)) >= 0:
                    excerpt = text[max(0, at - 300) : at + 1500]
                    self.violate(f"{log.name} logged {word!r}:\n{excerpt}")

    # -- the run -------------------------------------------------------------------------

    def run(self) -> None:
        self.setup()
        self.t0 = time.monotonic()
        self.threads = [self.guarded(self.submitter), self.guarded(self.poller)]
        for thread in self.threads:
            thread.start()
        self.chaos()
        self.drain()
        self.check()
        self.scan_logs()

    def cleanup(self) -> None:
        """Every process we started, our database and the temp dir go, whatever happened."""
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not skip this
        self.stop.set()
        for w in self.workers + [w for w, _ in self.stopping]:
            w.proc.kill()
            w.proc.wait()
        if self.api is not None:
            self.api.terminate()
            try:
                self.api.wait(15)
            except subprocess.TimeoutExpired:
                self.api.kill()
                self.api.wait()
        for thread in self.threads:
            thread.join(35)
        if self.server is not None:
            with contextlib.suppress(Exception):
                self.server.stop(mode="immediate")
        elif self.url:
            with (
                contextlib.suppress(psycopg.Error),
                psycopg.connect(self.admin_url, autocommit=True) as conn,
            ):
                conn.execute(f'DROP DATABASE IF EXISTS "{self.dbname}" WITH (FORCE)')
        if self.args.keep:
            print(f"kept {self.tmp}", file=sys.stderr)
        else:
            shutil.rmtree(self.tmp, ignore_errors=True)

    def report(self) -> None:
        if self.violations:
            print(f"\n{len(self.violations)} violation(s):")
            print("\n".join(f"- {v}" for v in self.violations[:100]))
            if len(self.violations) > 100:
                print(f"... and {len(self.violations) - 100} more")
        a = self.args
        print(f"\nchaos soak: {a.duration:g}s, {a.workers} workers, {a.jobs} jobs, seed {a.seed}")
        if a.database_url:
            print("  (no PostgreSQL restarts: --database-url names a server we do not control)")
        self.n["jobs acknowledged (202)"] = len(self.jobs)
        for key in [*FIGURES, *sorted(set(self.n) - set(FIGURES))]:
            print(f"  {key:<56}{self.n[key]:>8}")
        self.report_held()
        print(f"  {'violations found':<56}{len(self.violations):>8}")

    def report_held(self) -> None:
        held = self.held
        if held is None or held.job_id is None or held.reference is None or held.held is None:
            print(f"  {'held-lock phase':<56}{'not run':>8}")
            return
        before, before_others, under = held.rates()
        after, ratio = held.terminal_after_s, held.ratio
        lines: list[tuple[str, object]] = [
            (f"held job row ({self.args.lock_s:g}s FOR UPDATE): open chunks",
             held.pending_at_lock),
            ("  most of them holding worker slots at once", held.most_slots_held),
            ("  chunks/s before the lock, all jobs", f"{before:.1f}"),
            ("  chunks/s before the lock, other jobs", f"{before_others:.1f}"),
            ("  chunks/s under the lock, other jobs", f"{under:.1f}"),
            (f"  ratio under/before (target >= {MIN_LOCK_RATIO:g})",
             "n/a" if ratio is None else f"{ratio:.2f}"),
            ("  fewest due chunks of other jobs, before", held.reference.min_backlog),
            ("  fewest due chunks of other jobs, under", held.held.min_backlog),
            ("  its first result recorded, seconds after the release",
             "none" if held.recorded_after_s is None else f"{held.recorded_after_s:.1f}"),
            ("  held job terminal, seconds after the release",
             "no" if after is None else f"{after:.1f}"),
        ]  # fmt: skip
        for key, value in lines:
            print(f"  {key:<56}{value!s:>8}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.chaos", description=__doc__)
    parser.add_argument("--duration", type=float, default=120, help="seconds of chaos")
    parser.add_argument("--workers", type=int, default=3, help="worker processes at a time")
    parser.add_argument("--jobs", type=int, default=360, help="jobs submitted during the run")
    parser.add_argument("--seed", type=int, default=random.randrange(1_000_000))
    parser.add_argument(
        "--lock-s", type=float, default=20, help="seconds one job row is held locked (0: none)"
    )
    parser.add_argument(
        "--lock-any-status",
        action="store_true",
        help="the held job may be one not started yet (PENDING), not only a PROCESSING one",
    )
    parser.add_argument(
        "--switch-to",
        default="builtin",
        choices=["builtin", "simulated", ""],
        help=f"provider half the workers switch to mid-run ('' or {PROVIDER}: none)",
    )
    parser.add_argument("--database-url", help="use this server (then no PostgreSQL restarts)")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir and its logs")
    args = parser.parse_args(argv)
    if args.duration <= 0 or args.workers < 1 or args.jobs < 1 or args.lock_s < 0:
        parser.error("--duration, --workers and --jobs must be positive, --lock-s not negative")
    if args.switch_to == PROVIDER:
        args.switch_to = ""
    budget = int(wall_seconds(args) + DRAIN_S + 180)  # setup, chaos, drain, checks: all of it

    def interrupt(signum: int, _frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    def overrun(signum: int, _frame: FrameType | None) -> None:
        raise HardDeadline(f"the soak overran its hard deadline of {budget}s")

    signal.signal(signal.SIGINT, interrupt)  # even if our parent left SIGINT ignored
    signal.signal(signal.SIGTERM, interrupt)
    signal.signal(signal.SIGALRM, overrun)
    signal.alarm(budget)
    soak, code = Soak(args), 0
    try:
        soak.run()
    except KeyboardInterrupt:
        print("interrupted: cleaning up", file=sys.stderr)
        code = 130
    except HardDeadline as exc:
        soak.violate(str(exc))
    finally:
        signal.alarm(0)
        soak.cleanup()
    soak.report()
    return code or (1 if soak.violations else 0)


if __name__ == "__main__":
    sys.exit(main())
