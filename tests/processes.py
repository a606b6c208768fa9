"""Real processes for tests: gunicorn serving the API and ``python -m workerd`` workers."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    """A loopback port free a moment ago, for a program that must bind it by number itself
    (honcho's PORT, a server that exits before listening). Anything that can take a bound
    socket gets one instead (``gunicorn`` below): between this choice and the program's
    bind, another process may take the port."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def holding(port: int) -> Iterator[None]:
    """Keep a loopback port that a server just left bound (not listening, so connections are
    still refused) until the block ends, so nobody else takes it before the server returns."""
    with socket.socket() as sock:
        # As servers do, so the connections the old one just closed (TIME_WAIT) don't block us.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))
        yield


def wait_for(
    predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.02
) -> Any:
    """Poll ``predicate`` until it returns something truthy, or fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def environment(database_url: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHUNKQ_")}
    env.update({"DATABASE_URL": database_url, "PYTHONUNBUFFERED": "1"}, **extra)
    return env


def start_worker(
    database_url: str, *args: str, log: Path | None = None, **env: str
) -> subprocess.Popen[bytes]:
    if log is None:
        return subprocess.Popen(
            [sys.executable, "-m", "workerd", *args],
            cwd=ROOT,
            env=environment(database_url, **env),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )
    with open(log, "ab") as out:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(
            [sys.executable, "-m", "workerd", *args],
            cwd=ROOT,
            env=environment(database_url, **env),
            stdout=out,
            stderr=subprocess.STDOUT,
        )


@contextmanager
def gunicorn(database_url: str, *, workers: int = 2, **env: str) -> Iterator[str]:
    """Serve ``web:create_app()`` on a free loopback port; yields the base URL.

    The socket is bound here and handed to gunicorn, so no other process can take the port
    between choosing it and listening on it."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gunicorn",
            "--bind",
            f"fd://{listener.fileno()}",
            "--workers",
            str(workers),
            "--log-level",
            "warning",
            "web:create_app()",
        ],
        cwd=ROOT,
        env=environment(database_url, **env),
        pass_fds=(listener.fileno(),),
    )
    base = f"http://127.0.0.1:{port}"
    try:

        def healthy() -> bool:
            assert proc.poll() is None, "gunicorn exited"
            try:
                return httpx.get(f"{base}/healthz", timeout=1).status_code == 200
            except httpx.TransportError:
                return False

        wait_for(healthy, 30, "gunicorn to answer /healthz", interval=0.1)
        yield base
    finally:
        stop(proc)
        listener.close()


def stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout: float = 30) -> int:
    """Signal a process and reap it; SIGKILL if it outlives ``timeout``."""
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode
