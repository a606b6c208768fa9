"""Real processes for the tests and the benchmarks: gunicorn serving the API and
``python -m workerd`` workers, the polls that wait for them, and their reaping.

Every wait has a deadline; every start is paired with ``stop``."""

from __future__ import annotations

import contextlib
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
import psutil

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
    predicate: Callable[[], Any],
    timeout: float,
    what: str,
    interval: float = 0.02,
    *,
    error: type[Exception] = AssertionError,
) -> Any:
    """Poll ``predicate`` until it returns something truthy (and return that), or raise
    ``error`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise error(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)


def environment(database_url: str, **extra: str) -> dict[str, str]:
    """This process's environment without its CHUNKQ_* settings, plus the database and
    ``extra``: a child reads only the settings its test gives it. Auth is off unless
    ``extra`` turns it on (CHUNKQ_AUTH=on): the tests of auth say so."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHUNKQ_")}
    env.update(
        {"DATABASE_URL": database_url, "PYTHONUNBUFFERED": "1", "CHUNKQ_AUTH": "off"}, **extra
    )
    return env


def log_tail(path: Path, lines: int = 20) -> str:
    """The last ``lines`` lines of a child's log, for an error message."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return f"(no log at {path})"


def _spawn(
    argv: list[str],
    database_url: str,
    env: dict[str, str],
    log: Path | None,
    *,
    unlogged: int | None = subprocess.DEVNULL,
    **popen: Any,
) -> subprocess.Popen[bytes]:
    """Start ``argv`` from the repository root, no stdin, its output appended to ``log``;
    without a log, to ``unlogged`` (None: this process's own output)."""
    with contextlib.ExitStack() as stack:
        # The child keeps its own copy of the log's descriptor.
        out = stack.enter_context(open(log, "ab")) if log is not None else unlogged
        return subprocess.Popen(
            argv,
            cwd=ROOT,
            env=environment(database_url, **env),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            **popen,
        )


def start_worker(
    database_url: str, *args: str, log: Path | None = None, **env: str
) -> subprocess.Popen[bytes]:
    """``python -m workerd ARGS`` with ``env`` added, its output in ``log`` (or dropped)."""
    return _spawn([sys.executable, "-m", "workerd", *args], database_url, env, log)


@contextmanager
def gunicorn_process(
    database_url: str,
    *,
    workers: int = 2,
    log: Path | None = None,
    ready_s: float = 30,
    env: dict[str, str] | None = None,
    config: str | None = None,
    log_level: str = "warning",
    port: int = 0,
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """Serve ``web:create_app()`` on a free loopback port; yields (base URL, master process)
    once /healthz answers and every worker has started. Stopped at the end.

    The socket is bound here and handed to gunicorn, so no other process can take the port
    between choosing it and listening on it. ``env`` is added to its environment; output
    goes to ``log`` (None: this process's). ``config`` is a gunicorn config file (None: the
    project's gunicorn.conf.py). ``log_level``: gunicorn's (``info`` shows its startup).
    ``port``: this one rather than a free one (a server coming back where its clients wait
    for it)."""
    listener = socket.create_server(("127.0.0.1", port))
    argv = [sys.executable, "-m", "gunicorn", "--bind", f"fd://{listener.fileno()}"]
    argv += ["--workers", str(workers), "--log-level", log_level]
    argv += [*(["-c", config] if config else []), "web:create_app()"]
    fds = (listener.fileno(),)
    proc = _spawn(argv, database_url, env or {}, log, unlogged=None, pass_fds=fds)
    base = f"http://127.0.0.1:{listener.getsockname()[1]}"
    try:

        def healthy() -> bool:
            if proc.poll() is not None:
                tail = f":\n{log_tail(log)}" if log is not None else ""
                raise AssertionError(f"gunicorn exited with {proc.returncode}{tail}")
            try:
                return httpx.get(f"{base}/healthz", timeout=1).status_code == 200
            except httpx.TransportError:
                return False

        wait_for(healthy, ready_s, "gunicorn to answer /healthz", interval=0.1)
        wait_for(
            lambda: len(psutil.Process(proc.pid).children()) >= workers,
            ready_s,
            f"gunicorn's {workers} workers",
            interval=0.05,
        )
        yield base, proc
    finally:
        stop(proc)
        listener.close()


@contextmanager
def gunicorn(database_url: str, *, workers: int = 2, **env: str) -> Iterator[str]:
    """``gunicorn_process`` for a test that needs only the base URL."""
    with gunicorn_process(database_url, workers=workers, env=env) as (base, _master):
        yield base


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
