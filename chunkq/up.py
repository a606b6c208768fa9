"""``chunkq up``: the all-in-one run. Opens the database (DATABASE_URL or the embedded
one), migrates it, and supervises gunicorn and ``python -m workerd`` children: restarts a
child that dies, and on SIGINT/SIGTERM stops them all within their grace periods.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import select
import signal
import socket
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass
from errno import EADDRINUSE
from pathlib import Path
from types import FrameType
from typing import IO, Any

import httpx

from chunkq import client


@dataclass
class Database:
    """The database ``up`` and the one-shot commands use. For the embedded one, ``server`` is
    it, ``share`` this process's hold on it (``EmbeddedPostgres.share``), and ``stop`` says
    whether closing stops it once no other process holds it."""

    url: str
    label: str
    server: Any = None
    share: IO[str] | None = None
    stop: bool = False


def embedded_datadir() -> Path:
    """Where the embedded PostgreSQL keeps its data: $CHUNKQ_HOME/pgdata, made absolute."""
    return (Path(os.environ.get("CHUNKQ_HOME") or ".chunkq") / "pgdata").resolve()


def open_database(*, adopt: bool = False) -> Database:
    """DATABASE_URL, or the embedded PostgreSQL under CHUNKQ_HOME (started if it is not running).

    Closing stops an embedded server this call started. With ``adopt`` (``chunkq up``) it
    also stops one that was already running, such as one left by a ``chunkq up`` killed with
    SIGKILL; either way only once no other chunkq process uses it.
    Raises ``client.ClientError`` with exit code 2 when the embedded wheel is missing.
    """
    url = os.environ.get("DATABASE_URL", "").strip()
    if url:
        return Database(url, f"DATABASE_URL {_redact(url)}")
    from schema.embedded import EmbeddedPostgres, EmbeddedUnavailable, ensure_embedded

    datadir = embedded_datadir()
    server = EmbeddedPostgres(datadir)
    share = server.share()  # first: a `chunkq down` under way finishes before we look
    try:
        try:
            running = server.is_running()
        except ImportError:  # psutil comes with the wheel; without it nothing can be running
            running = False
        if not running:
            say(f"starting the embedded PostgreSQL in {datadir} ...")
        with warnings.catch_warnings():
            # platformdirs, imported by the wheel, warns about a missing XDG_RUNTIME_DIR
            # (normal in containers and under sudo); it changes nothing for us.
            warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR is not set")
            url = ensure_embedded(datadir.parent)
    except EmbeddedUnavailable as exc:
        share.close()
        raise client.ClientError(str(exc), client.EXIT_REJECTED) from exc
    except BaseException:
        share.close()
        raise
    label = f"embedded PostgreSQL, data in {datadir}"
    if running:
        label += ", adopted: it was already running" if adopt else ", already running"
    return Database(url, label, server, share, stop=adopt or not running)


def close_database(db: Database) -> None:
    """Let go of the embedded server, stopping it if ``db.stop`` and nobody else uses it."""
    if db.share is None:
        return
    db.share.close()
    db.share = None
    if not db.stop:
        return
    if db.server.stop_unused():
        say(f"stopped the embedded PostgreSQL (data in {db.server.datadir})")
    else:
        say("left the embedded PostgreSQL running: another chunkq process is using it")


def migrate(url: str) -> None:
    """``alembic upgrade head`` through alembic's API, with the project's alembic.ini if present."""
    from alembic import command
    from alembic.config import Config

    import schema

    ini = Path(__file__).resolve().parent.parent / "alembic.ini"
    if ini.is_file():
        cfg = Config(str(ini))
    else:
        # A non-editable install has no alembic.ini; the scripts travel inside `schema`.
        scripts = Path(schema.__file__).resolve().parent / "migrations"
        if not (scripts / "env.py").is_file():
            raise client.ClientError(f"no migration scripts at {scripts}; is chunkq installed?")
        cfg = Config()
        cfg.set_main_option("script_location", str(scripts))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))  # configparser escaping
    command.upgrade(cfg, "head")


def _redact(url: str) -> str:
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # an unparsable URL will fail loudly later; don't fail here
        return "(unparsable URL)"


def startup_errors() -> tuple[type[Exception], ...]:
    """What opening and migrating the database may raise that is the environment's fault."""
    import sqlalchemy.exc
    from alembic.util import CommandError

    from schema.embedded import EmbeddedServerError

    return (EmbeddedServerError, CommandError, sqlalchemy.exc.SQLAlchemyError)


GUNICORN_GRACE_S = 10  # requests are short by design; in-flight ones get this long on stop
STOP_MARGIN_S = 10  # on top of the longest grace, before stragglers are killed
READY_TIMEOUT_S = 60
STABLE_AFTER_S = 30  # a child that ran this long before dying starts its backoff afresh


@dataclass
class Child:
    """One supervised slot (gunicorn, or a worker); its process is replaced when it dies."""

    name: str
    argv: list[str]
    proc: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    failures: int = 0
    restart_at: float | None = None


class Supervisor:
    """Starts children, restarts the ones that die with backoff, stops them all on a signal."""

    def __init__(self, env: dict[str, str], pass_fds: tuple[int, ...]) -> None:
        self.env = env
        self.pass_fds = pass_fds
        self.children: list[Child] = []
        self.signals = 0  # SIGINT/SIGTERM/SIGHUP received: one stops gently, two force
        # A signal cuts wait() short through this pipe. Not a threading.Event: the handler
        # runs in the main thread between two bytecodes, maybe while that thread holds the
        # Event's lock inside wait() or clear(), and setting it there would wait forever.
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)

    def on_signal(self, _signum: int, _frame: FrameType | None) -> None:
        """The handler for SIGINT/SIGTERM/SIGHUP: takes no lock (see ``__init__``)."""
        self.signals += 1
        with contextlib.suppress(BlockingIOError):  # a full pipe already wakes wait()
            os.write(self._wake_w, b"\0")

    def wait(self, seconds: float) -> None:
        """Sleep up to ``seconds``; a signal (now or since the last wait) ends it at once."""
        select.select([self._wake_r], [], [], seconds)
        with contextlib.suppress(BlockingIOError):
            while os.read(self._wake_r, 4096):
                pass

    def close(self) -> None:
        os.close(self._wake_r)
        os.close(self._wake_w)

    def spawn(self, child: Child) -> None:
        # Each child leads its own process group, so a terminal's Ctrl-C reaches only us and
        # every child gets the same orderly SIGTERM (gunicorn treats SIGINT as a fast exit).
        child.proc = subprocess.Popen(
            child.argv,
            env=self.env,
            stdin=subprocess.DEVNULL,
            pass_fds=self.pass_fds,
            process_group=0,
            preexec_fn=_die_with_parent,
        )
        child.started_at, child.restart_at = time.monotonic(), None
        if child not in self.children:
            self.children.append(child)
        say(f"{child.name} started (pid {child.proc.pid})")

    def tick(self) -> None:
        """Reap children that died and restart each one once its backoff has passed."""
        now = time.monotonic()
        for child in self.children:
            if child.proc is not None and (code := child.proc.poll()) is not None:
                stable = now - child.started_at > STABLE_AFTER_S
                child.failures = 1 if stable else child.failures + 1
                delay = min(30.0, 0.5 * 2 ** (child.failures - 1))
                say(f"{child.name} (pid {child.proc.pid}) {_exit_text(code)}; restart in {delay}s")
                # Whatever it left behind in its group (gunicorn's workers) must not linger.
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(child.proc.pid, signal.SIGTERM)
                child.proc, child.restart_at = None, now + delay
            if child.proc is None and child.restart_at is not None and now >= child.restart_at:
                self.spawn(child)

    def stop(self, timeout: float) -> None:
        """SIGTERM every child, wait up to ``timeout`` (or a second signal), then SIGKILL."""
        live = [c.proc for c in self.children if c.proc is not None and c.proc.poll() is None]
        for proc in live:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
        seen, deadline = self.signals, time.monotonic() + timeout
        while any(proc.poll() is None for proc in live):
            if self.signals > seen or time.monotonic() > deadline:
                break
            self.wait(0.1)
        for proc in live:
            if proc.poll() is None:  # not yet reaped, so its pid is still its group's id
                say(f"pid {proc.pid} did not stop in time; killing it")
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def cmd_up(args: argparse.Namespace) -> int:
    """Database, migrations, gunicorn and workers in one supervised process tree."""
    from workerd.settings import Settings

    try:
        # Checked here once, or every worker would fail on it and be restarted forever.
        grace = Settings.from_env().shutdown_grace_s
    except ValueError as exc:
        say(str(exc))
        return 2
    try:
        # We own the socket and hand it to gunicorn: a busy port fails here, before any
        # slow startup, and a restarted gunicorn finds connections waiting in the backlog.
        listener = socket.create_server(("127.0.0.1", args.port), reuse_port=False)
    except OSError as exc:
        hint = " (another chunkq up?); choose --port or PORT" if exc.errno == EADDRINUSE else ""
        say(f"cannot listen on 127.0.0.1:{args.port}: {exc.strerror}{hint}")
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
            migrate(db.url)
        if sup.signals:
            return 0
        sup.env["DATABASE_URL"] = db.url
        gunicorn = Child("gunicorn", _gunicorn_argv(listener.fileno(), args.web_workers))
        sup.spawn(gunicorn)
        for i in range(1, args.workers + 1):
            worker = [sys.executable, "-m", "workerd", "--concurrency", str(args.concurrency)]
            sup.spawn(Child(f"worker-{i}", worker))
        if not _wait_ready(sup, gunicorn, base):
            return 0 if sup.signals else 1
        hint = "" if port == 8000 else f"CHUNKQ_URL={base} "
        print(f"chunkq is up: {base}  (database: {db.label})", flush=True)
        print(f"  submit a text: {hint}chunkq submit FILE --wait\n  stop: Ctrl-C", flush=True)
        while not sup.signals:
            sup.tick()
            sup.wait(0.25)
        say("stopping")
        return 0
    except client.ClientError as exc:
        say(str(exc))
        return exc.code
    except startup_errors() as exc:
        say(f"startup failed ({db.label if db else 'database'}): {exc}")
        return 1
    finally:
        sup.stop(max(grace, GUNICORN_GRACE_S) + STOP_MARGIN_S)
        listener.close()
        if db is not None:
            close_database(db)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        sup.close()


def _gunicorn_argv(fd: int, workers: int) -> list[str]:
    argv = [sys.executable, "-m", "gunicorn", "-c", "python:web.gunicorn_conf"]
    argv += ["--bind", f"fd://{fd}", "--workers", str(workers)]
    argv += ["--graceful-timeout", str(GUNICORN_GRACE_S)]
    return [*argv, "web:create_app()"]


def _wait_ready(sup: Supervisor, gunicorn: Child, base: str) -> bool:
    """Until /readyz answers 200; False if gunicorn gives up, time runs out or we are stopped."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    while not sup.signals:
        if gunicorn.proc is not None and (code := gunicorn.proc.poll()) is not None:
            say(f"the API server (gunicorn) {_exit_text(code)} before answering; see its log above")
            return False
        sup.tick()  # workers that die meanwhile are restarted as usual
        # Short timeout: our socket queues the request until gunicorn's first worker boots,
        # and a long wait here would hide a gunicorn that died meanwhile.
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{base}/readyz", timeout=0.5).status_code == 200:
                return True
        if time.monotonic() > deadline:
            say(f"the API was not ready at {base}/readyz within {READY_TIMEOUT_S}s")
            return False
        sup.wait(0.1)
    return False


def _die_with_parent() -> None:
    """Runs in the child before exec: on Linux, SIGTERM it if ``chunkq up`` is SIGKILLed."""
    if _PRCTL is not None:
        _PRCTL(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _find_prctl() -> Any:
    # Looked up in the parent: importing or loading libraries between fork and exec is unsafe.
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    return getattr(ctypes.CDLL(None), "prctl", None)


_PRCTL = _find_prctl()


def _exit_text(code: int) -> str:
    return f"was killed by {signal.Signals(-code).name}" if code < 0 else f"exited with {code}"


def say(message: str) -> None:
    print(f"chunkq: {message}", file=sys.stderr, flush=True)
