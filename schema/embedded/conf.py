"""chunkq.conf, included from a cluster's postgresql.conf: the listen address, the port and
the caller's settings, written on every start; and the choice of that port.

The port is kept across restarts (read back from chunkq.conf) so clients' URLs stay valid.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
from collections.abc import Mapping
from pathlib import Path

from schema.embedded.programs import EmbeddedServerError

HOST = "127.0.0.1"
CONF_NAME = "chunkq.conf"  # our settings, included from postgresql.conf
DEFAULT_SETTINGS: Mapping[str, str] = {"max_connections": "300"}  # tests run many workers


def include_conf(datadir: Path) -> None:
    """Make postgresql.conf include chunkq.conf, unless it already does."""
    # initdb may have been run by someone else (e.g. the wheel), so check every time.
    main_conf = datadir / "postgresql.conf"
    line = f"include_if_exists = '{CONF_NAME}'"
    if line not in main_conf.read_text():
        with main_conf.open("a") as fh:
            fh.write(f"\n# chunkq: listen address, port and caller settings\n{line}\n")


def write_conf(datadir: Path, port: int, settings: Mapping[str, str]) -> None:
    """Write chunkq.conf: TCP on HOST:``port`` only, DEFAULT_SETTINGS, then ``settings``."""
    values = {
        "listen_addresses": HOST,
        # TCP only: a socket path under a deep tmp dir can exceed the 107-byte limit
        "unix_socket_directories": "",
        **DEFAULT_SETTINGS,
        **settings,
        "port": str(port),
    }
    conf = datadir / CONF_NAME
    escaped = {key: value.replace("'", "''") for key, value in values.items()}
    text = "".join(f"{key} = '{value}'\n" for key, value in escaped.items())
    conf.write_text(f"# written by schema/embedded/conf.py on every start\n{text}")
    owner = datadir.stat()
    if os.geteuid() == 0:
        os.chown(conf, owner.st_uid, owner.st_gid)


def persisted_port(datadir: Path) -> int | None:
    """The port the last start wrote to chunkq.conf; None before the first start."""
    with contextlib.suppress(FileNotFoundError):
        match = re.search(r"^port = '(\d+)'$", (datadir / CONF_NAME).read_text(), re.M)
        return int(match.group(1)) if match else None
    return None


def choose_port(datadir: Path, pinned: int | None) -> int:
    """``pinned`` if it is free (else EmbeddedServerError), the last-used port if it is free,
    or any free one."""
    if pinned is not None:
        if not _port_is_free(pinned):
            raise EmbeddedServerError(f"port {pinned} on {HOST} is taken by another process")
        return pinned
    persisted = persisted_port(datadir)
    if persisted is not None and _port_is_free(persisted):
        return persisted
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


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
