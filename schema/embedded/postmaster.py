"""postmaster.pid: which postgres process runs a cluster, on what port, and in what state.

The file outlives a crashed server and its pid may since belong to another process, so a
pid counts only while it is a live process named postgres.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple


class Postmaster(NamedTuple):
    """The live postmaster of a cluster, as its pid file describes it."""

    pid: int
    port: int | None
    status: str  # "starting", "ready", "stopping", ...


def running_postmaster(datadir: Path) -> Postmaster | None:
    """The live postmaster of the cluster in ``datadir``, or None when there is none."""
    lines = _read_pidfile(datadir)
    if not lines or not lines[0].strip().isdigit() or not _is_postgres(int(lines[0])):
        return None
    port = int(lines[3]) if len(lines) > 3 and lines[3].strip().isdigit() else None
    status = lines[7].strip() if len(lines) > 7 else "starting"
    return Postmaster(int(lines[0]), port, status)


def remove_stale_pidfile(datadir: Path) -> None:
    """Delete a pid file that names no live postgres, so that postgres will start."""
    # postgres refuses to start while the pid in the file is alive, even when a reboot
    # handed that pid to an unrelated process; we know better (_is_postgres said no).
    lines = _read_pidfile(datadir)
    if lines and running_postmaster(datadir) is None:
        (datadir / "postmaster.pid").unlink(missing_ok=True)


def _read_pidfile(datadir: Path) -> list[str]:
    try:
        return (datadir / "postmaster.pid").read_text().splitlines()
    except (FileNotFoundError, NotADirectoryError):
        return []


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
