"""Real processes for the benchmarks: workers and gunicorn on the simulated provider, always
reaped, and the memory they use.

The launchers, waits and reaping are the tests' own (tests.processes); what is here is
the benchmarks' defaults, their logs and their checks. Every start is paired with ``stop``
in a ``finally``; every wait has a deadline.
"""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import psycopg

from bench.harness import BenchError, wait_until
from tests import processes
from tests.processes import log_tail, stop

# A benchmark's children run the simulated provider without latency unless it says otherwise.
DEFAULTS = {"CHUNKQ_PROVIDER": "simulated", "CHUNKQ_SIM_LATENCY_MS": "0"}


def environment(database_url: str, **extra: str) -> dict[str, str]:
    """tests.processes.environment with the benchmarks' defaults under ``extra``."""
    return processes.environment(database_url, **{**DEFAULTS, **extra})


@contextlib.contextmanager
def workers(
    database_url: str, logs: Path, label: str, count: int, *args: str, **env: str
) -> Iterator[list[subprocess.Popen[bytes]]]:
    """Start ``count`` workers, each logging to ``logs/LABEL-I.log``; SIGTERM (then SIGKILL)
    whichever are still alive at the end."""
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for i in range(count):
            log = logs / f"{label}-{i}.log"
            procs.append(
                processes.start_worker(database_url, *args, log=log, **{**DEFAULTS, **env})
            )
        yield procs
    finally:
        for proc in procs:
            stop(proc)


def check_exit(procs: list[subprocess.Popen[bytes]], logs: Path, label: str) -> None:
    """BenchError with the log's tail if a worker exited with a non-zero status."""
    for i, proc in enumerate(procs):
        if proc.returncode not in (None, 0):
            tail = log_tail(logs / f"{label}-{i}.log")
            raise BenchError(f"worker {label}-{i} exited with {proc.returncode}:\n{tail}")


def wait_listening(conn: psycopg.Connection[Any], count: int, timeout: float = 60) -> None:
    """Wait until ``count`` workers have a LISTEN connection on this database."""

    def ready() -> bool:
        row = conn.execute(
            """SELECT count(*) FROM pg_stat_activity
               WHERE datname = current_database() AND query ILIKE 'LISTEN %%'"""
        ).fetchone()
        return bool(row and row[0] >= count)

    wait_until(ready, timeout, f"{count} workers to LISTEN", interval=0.05)


@contextlib.contextmanager
def gunicorn(
    database_url: str, logs: Path, *, workers: int = 2, **env: str
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """tests.processes.gunicorn_process logging to ``logs/gunicorn.log``, with the
    benchmarks' defaults; yields (base URL, master process)."""
    with processes.gunicorn_process(
        database_url,
        workers=workers,
        log=logs / "gunicorn.log",
        ready_s=60,
        env={**DEFAULTS, **env},
    ) as served:
        yield served


def tree_rss(pid: int) -> int:
    """RSS in bytes of a process and all its descendants; 0 if it is gone."""
    try:
        proc = psutil.Process(pid)
        procs = [proc, *proc.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0
    total = 0
    for p in procs:
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            total += p.memory_info().rss
    return total


def high_water_mark(pid: int) -> int | None:
    """The kernel's peak RSS (VmHWM) of one process in bytes, where /proc has it."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return None
