"""One chaos soak from start to end: a throwaway PostgreSQL and database with the probes,
gunicorn and the workers; traffic and faults; the drain, the audit, and the cleanup."""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import psycopg
from alembic import command
from alembic.config import Config
from sqlalchemy.engine import make_url

from bench.chaos.audit import Audit
from bench.chaos.faults import Faults
from bench.chaos.fleet import Fleet, tail
from bench.chaos.invariants import PROBES
from bench.chaos.report import Tally, report
from bench.chaos.settings import DRAIN_S, GRACE_S, LEASE_S, MAX_ATTEMPTS, ROOT, TERMINAL
from bench.chaos.texts import MARKED
from bench.chaos.traffic import Traffic
from bench.heldlock import HeldLock
from schema.embedded import EmbeddedPostgres


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Soak:
    """One run: set up, traffic and chaos, drain, check; ``cleanup`` undoes everything."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.rng = random.Random(args.seed)
        self.tmp = Path(tempfile.mkdtemp(prefix="chunkq-chaos-"))
        self.logs = self.tmp / "logs"
        self.logs.mkdir()
        self.server: EmbeddedPostgres | None = None
        self.admin_url = self.url = self.dbname = ""
        self.api: subprocess.Popen[bytes] | None = None
        self.tally = Tally()
        self.traffic = Traffic(args, self.rng, self.tally)
        self.fleet = Fleet(self.tally, self.rng, self.logs)
        self.held: HeldLock | None = None

    @property
    def violations(self) -> list[str]:
        """Every violation found so far."""
        return self.tally.violations

    def violate(self, message: str) -> None:
        """Record a violation found outside the run's parts (such as an overrun)."""
        self.tally.violate(message)

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
        env = {k: v for k, v in os.environ.items() if not k.startswith("CHUNKQ_")}
        env.update(
            DATABASE_URL=self.url, PYTHONUNBUFFERED="1", CHUNKQ_PROVIDER="simulated",
            CHUNKQ_SIM_LATENCY_MS="50", CHUNKQ_SIM_FAIL_RATE="0.1",
            CHUNKQ_SIM_FAIL_PATTERN=MARKED.pattern, CHUNKQ_LEASE_S=str(LEASE_S),
            CHUNKQ_BACKOFF_BASE_S="0.2", CHUNKQ_BACKOFF_MAX_S="2",
            CHUNKQ_MAX_ATTEMPTS=str(MAX_ATTEMPTS), CHUNKQ_SHUTDOWN_GRACE_S=str(GRACE_S),
            # The soak is about faults, not keys: one anonymous tenant sees every job.
            CHUNKQ_AUTH="off",
        )  # fmt: skip
        self.fleet.env = env
        self.start_api(env)
        for _ in range(self.args.workers):
            self.fleet.start_worker()

    def start_api(self, env: dict[str, str]) -> None:
        """Start gunicorn on a free port and wait until it answers /healthz."""
        port, log = free_port(), self.logs / "gunicorn.log"
        cmd = [sys.executable, "-m", "gunicorn", "--bind", f"127.0.0.1:{port}", "--workers", "2"]
        cmd += ["--log-level", "warning", "--error-logfile", str(log), "web:create_app()"]
        with log.open("ab") as out:
            self.api = subprocess.Popen(
                cmd, cwd=ROOT, env=env, stdout=out, stderr=out, start_new_session=True
            )
        self.traffic.base = base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and self.api.poll() is None:
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    return
            time.sleep(0.1)
        raise RuntimeError(f"gunicorn did not come up:\n{tail(log)}")

    # -- drain ---------------------------------------------------------------------------

    def drain(self) -> None:
        """Stop traffic and chaos, wait (bounded) until every job is terminal, then SIGTERM
        every worker and check that each exits 0 in time."""
        self.traffic.stop.set()
        self.fleet.resume_all()
        self.traffic.halt(60)
        started = time.monotonic()
        open_jobs = "SELECT count(*) FROM jobs WHERE status <> ALL(%s)"
        with psycopg.connect(self.url, autocommit=True) as conn:
            while conn.execute(open_jobs, (TERMINAL,)).fetchone()[0]:  # type: ignore[index]
                if time.monotonic() - started > DRAIN_S:
                    self.violate(f"jobs open {DRAIN_S:.0f}s into the drain:{self.stuck(conn)}")
                    break
                self.fleet.tend()
                time.sleep(0.5)
        self.tally.count("drain seconds", round(time.monotonic() - started))
        self.fleet.stop_all()

    @staticmethod
    def stuck(conn: psycopg.Connection[Any]) -> str:
        """The open jobs' chunks, grouped by status, for the drain's violation."""
        rows = conn.execute(
            """SELECT j.id, j.status, c.status, count(*), max(c.attempts), min(c.next_attempt_at),
                      max(c.lease_expires_at), now()
               FROM jobs j JOIN chunks c ON c.job_id = j.id WHERE j.status <> ALL(%s)
               GROUP BY 1, 2, 3 ORDER BY 1 LIMIT 30""",
            (TERMINAL,),
        )
        return "".join(f"\n  {tuple(map(str, row))}" for row in rows)

    # -- the run -------------------------------------------------------------------------

    def run(self) -> None:
        """Set up, then traffic under faults, the drain, and the audit."""
        self.setup()
        self.traffic.start()
        faults = Faults(
            self.args, self.rng, self.tally, self.fleet, self.traffic, self.server, self.url
        )
        try:
            faults.chaos()
        finally:
            self.held = faults.held
        self.drain()
        audit = Audit(
            self.args,
            self.tally,
            self.url,
            self.traffic.base,
            self.traffic.jobs,
            self.held,
            self.fleet.resumed,
            self.logs,
        )
        audit.check()
        audit.scan_logs()

    def cleanup(self) -> None:
        """Every process we started, our database and the temp dir go, whatever happened."""
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not skip this
        self.traffic.stop.set()
        self.fleet.kill_all()
        if self.api is not None:
            self.api.terminate()
            try:
                self.api.wait(15)
            except subprocess.TimeoutExpired:
                self.api.kill()
                self.api.wait()
        self.traffic.halt(35)
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
        """Print what the run found."""
        report(self.tally, self.args, len(self.traffic.jobs), self.held)
