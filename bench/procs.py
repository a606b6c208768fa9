"""Real processes for the benchmarks: ``python -m workerd`` and gunicorn, always reaped.

Every start is paired with ``stop`` in a ``finally``; every wait has a deadline.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import psycopg

from bench.harness import ROOT, BenchError, wait_until


def environment(database_url: str, **extra: str) -> dict[str, str]:
    """This process's environment without CHUNKQ_* settings, plus the database and ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHUNKQ_")}
    env.update(
        DATABASE_URL=database_url,
        PYTHONUNBUFFERED="1",
        CHUNKQ_PROVIDER="simulated",
        CHUNKQ_SIM_LATENCY_MS="0",
    )
    env.update(extra)
    return env


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_worker(database_url: str, log: Path, *args: str, **env: str) -> subprocess.Popen[bytes]:
    """``python -m workerd ARGS`` with its output in ``log``."""
    with open(log, "ab") as out:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(
            [sys.executable, "-m", "workerd", *args],
            cwd=ROOT,
            env=environment(database_url, **env),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


@contextlib.contextmanager
def workers(
    database_url: str, logs: Path, label: str, count: int, *args: str, **env: str
) -> Iterator[list[subprocess.Popen[bytes]]]:
    """Start ``count`` workers; SIGTERM (then SIGKILL) whichever are still alive at the end."""
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for i in range(count):
            procs.append(start_worker(database_url, logs / f"{label}-{i}.log", *args, **env))
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


def log_tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return f"(no log at {path})"


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
    """Serve ``web:create_app()`` on a free loopback port; yields (base URL, master process)."""
    port = free_port()
    with open(logs / "gunicorn.log", "ab") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gunicorn",
                "--bind",
                f"127.0.0.1:{port}",
                "--workers",
                str(workers),
                "--log-level",
                "warning",
                "web:create_app()",
            ],
            cwd=ROOT,
            env=environment(database_url, **env),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    base = f"http://127.0.0.1:{port}"
    try:

        def healthy() -> bool:
            if proc.poll() is not None:
                raise BenchError(f"gunicorn exited:\n{log_tail(logs / 'gunicorn.log')}")
            try:
                return httpx.get(f"{base}/healthz", timeout=1).status_code == 200
            except httpx.TransportError:
                return False

        wait_until(healthy, 60, "gunicorn to answer /healthz", interval=0.1)
        wait_until(
            lambda: len(psutil.Process(proc.pid).children()) >= workers,
            30,
            "gunicorn workers",
            interval=0.05,
        )
        yield base, proc
    finally:
        stop(proc)


def stop(proc: subprocess.Popen[bytes], timeout: float = 30) -> int:
    """SIGTERM a process and reap it; SIGKILL if it outlives ``timeout``."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


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
