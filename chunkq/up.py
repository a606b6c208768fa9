"""``chunkq up``: the all-in-one run. Opens the database (DATABASE_URL or the embedded
one), migrates it, serves the API with gunicorn and runs ``python -m workerd`` workers under
the supervisor, until SIGINT/SIGTERM stops them all.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import sys
import time
from errno import EADDRINUSE

import httpx

from chunkq.console import log_as_json, say
from chunkq.database import close_database, migrate, open_database, startup_errors
from chunkq.exits import CommandError
from chunkq.local_key import LocalKey, auth_enabled, ensure_key, key_path
from chunkq.supervisor import Child, Supervisor, exit_text

GUNICORN_GRACE_S = 10  # requests are short by design; in-flight ones get this long on stop
STOP_MARGIN_S = 10  # on top of the longest grace, before stragglers are killed
READY_TIMEOUT_S = 60


def run_up(*, workers: int, concurrency: int, port: int, web_workers: int) -> int:
    """Database, migrations, gunicorn and workers in one supervised process tree.

    Exits 0 after a clean stop, 1 if startup fails, 2 for a bad setting or when the
    embedded PostgreSQL is not installed.
    """
    from schema.logs import log_format
    from workerd.settings import Settings

    try:
        # Checked here once, or every worker would fail on it and be restarted forever.
        settings = Settings.from_env()
        grace = settings.shutdown_grace_s
        metrics_ports = _metrics_ports(settings.metrics_port, workers)
        auth = auth_enabled()
        # The children read CHUNKQ_LOG_FORMAT from the environment they inherit; our own
        # messages follow it, the banner for people on stdout stays plain text.
        if log_format() == "json":
            log_as_json()
    except ValueError as exc:
        say(str(exc))
        return 2
    try:
        # We own the socket and hand it to gunicorn: a busy port fails here, before any
        # slow startup, and a restarted gunicorn finds connections waiting in the backlog.
        listener = socket.create_server(("127.0.0.1", port), reuse_port=False)
    except OSError as exc:
        hint = " (another chunkq up?); choose --port or PORT" if exc.errno == EADDRINUSE else ""
        say(f"cannot listen on 127.0.0.1:{port}: {exc.strerror}{hint}")
        return 1
    port = listener.getsockname()[1]
    base = f"http://127.0.0.1:{port}"
    sup = Supervisor(dict(os.environ), (listener.fileno(),))
    handled = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    previous = {sig: signal.signal(sig, sup.on_signal) for sig in handled}
    db = None
    try:
        db = open_database(adopt=True)
        if not sup.signals:
            migrate(db.migration_url)
        if sup.signals:
            return 0
        access = _access(db.url) if auth else None
        sup.env["DATABASE_URL"] = db.url
        if db.direct_url is None:  # no pooler in front (the embedded server, or no direct URL)
            sup.env.pop("DATABASE_DIRECT_URL", None)
        gunicorn = Child("gunicorn", gunicorn_argv(listener.fileno(), web_workers))
        sup.spawn(gunicorn)
        for i in range(1, workers + 1):
            worker = [sys.executable, "-m", "workerd", "--concurrency", str(concurrency)]
            if metrics_ports:
                worker += ["--metrics-port", str(metrics_ports[i - 1])]
            sup.spawn(Child(f"worker-{i}", worker))
        if not _wait_ready(sup, gunicorn, base):
            return 0 if sup.signals else 1
        hint = "" if port == 8000 else f"CHUNKQ_URL={base} "
        print(f"chunkq is up: {base}  (database: {db.label})", flush=True)
        print(_access_line(access), flush=True)
        print(f"  submit a text: {hint}chunkq submit FILE --wait\n  stop: Ctrl-C", flush=True)
        while not sup.signals:
            sup.tick()
            sup.wait(0.25)
        say("stopping")
        return 0
    except CommandError as exc:
        say(str(exc))
        return exc.code
    except startup_errors() as exc:
        say(f"startup failed ({db.label if db else 'database'}): {exc}", level=logging.ERROR)
        return 1
    finally:
        sup.stop(max(grace, GUNICORN_GRACE_S) + STOP_MARGIN_S)
        listener.close()
        if db is not None:
            close_database(db)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        sup.close()


def _access(url: str) -> LocalKey:
    """The key this run serves with (see ``ensure_key``), saying so when an old one is
    replaced."""
    path = key_path()
    local = ensure_key(url, path)
    if local.replaced:
        say(
            f"the API key in {path} does not open this database (revoked, or made for"
            " another one); made a new one in its place"
        )
    return local


def _access_line(local: LocalKey | None) -> str:
    """The banner's line about keys: a new key in full (the only time it is printed), or
    where the kept one is, or that none is needed."""
    if local is None:
        return "  auth is off (CHUNKQ_AUTH=off): the API takes requests without a key"
    if local.made:
        return (
            f"  API key: {local.key}\n"
            f"    (id {local.id}; printed only this once, kept in {local.path},"
            " where chunkq submit finds it by itself)"
        )
    return (
        f"  API key: kept in {local.path} (id {local.id}); chunkq submit finds it by itself,"
        " other clients send it as 'Authorization: Bearer <key>'"
    )


def _metrics_ports(base: int | None, workers: int) -> list[int]:
    """Each worker's metrics port, so they do not collide: worker i (from 1) serves on
    CHUNKQ_METRICS_PORT + i - 1; none when it is unset."""
    if base is None:
        return []
    if base + workers - 1 > 65535:
        raise ValueError(
            f"CHUNKQ_METRICS_PORT={base} leaves no room for {workers} workers' ports"
            f" ({base} to {base + workers - 1}; the last port is 65535)"
        )
    return [base + i for i in range(workers)]


def gunicorn_argv(fd: int, workers: int) -> list[str]:
    """The API server's command line: gunicorn with the project's config, on socket ``fd``."""
    argv = [sys.executable, "-m", "gunicorn", "-c", "python:web.gunicorn_conf"]
    argv += ["--bind", f"fd://{fd}", "--workers", str(workers)]
    argv += ["--graceful-timeout", str(GUNICORN_GRACE_S)]
    return [*argv, "web:create_app()"]


def _wait_ready(sup: Supervisor, gunicorn: Child, base: str) -> bool:
    """Until /readyz answers 200; False if gunicorn gives up, time runs out or we are stopped."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    while not sup.signals:
        if gunicorn.proc is not None and (code := gunicorn.proc.poll()) is not None:
            say(
                f"the API server (gunicorn) {exit_text(code)} before answering; see its log above",
                level=logging.ERROR,
            )
            return False
        sup.tick()  # workers that die meanwhile are restarted as usual
        # Short timeout: our socket queues the request until gunicorn's first worker boots,
        # and a long wait here would hide a gunicorn that died meanwhile.
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{base}/readyz", timeout=0.5).status_code == 200:
                return True
        if time.monotonic() > deadline:
            say(
                f"the API was not ready at {base}/readyz within {READY_TIMEOUT_S}s",
                level=logging.ERROR,
            )
            return False
        sup.wait(0.1)
    return False
