"""The API key of a local ``chunkq up``: made on its first start, kept in
``$CHUNKQ_HOME/api_key`` (mode 0600), and found there by ``chunkq submit`` and ``status``
when they talk to a server on this machine.

Reading the file needs only the standard library, so the client pays nothing for it.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from chunkq.exits import CommandError

KEY_NAME = "chunkq up"  # the name `chunkq keys list` shows for the keys `up` makes


@dataclass(frozen=True, slots=True)
class LocalKey:
    """The key ``up`` serves with: ``made`` when it was made on this start (and so is to
    be printed, once), ``replaced`` when it took the place of one that no longer opens
    this database."""

    key: str
    id: str | None
    path: Path
    made: bool
    replaced: bool = False


def key_path(environ: Mapping[str, str] | None = None) -> Path:
    """``$CHUNKQ_HOME/api_key`` (default ``./.chunkq/api_key``), made absolute."""
    environ = os.environ if environ is None else environ
    return (Path(environ.get("CHUNKQ_HOME") or ".chunkq") / "api_key").resolve()


def read_key(path: Path) -> str | None:
    """The key kept in ``path``, or None when there is none (or it cannot be read)."""
    try:
        key = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return key or None


def store_key(path: Path, key: str) -> None:
    """Write ``key`` to ``path`` readable by this user only, atomically: a reader sees the
    old key or the new one, never half of one, and a crash leaves no partial file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=".api_key.")  # mode 0600
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            file.write(key + "\n")
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


def is_loopback(url: str) -> bool:
    """Whether ``url`` names this machine (localhost, 127.0.0.0/8, ::1): the only servers
    the local key is sent to without being asked."""
    try:
        host = urlsplit(url).hostname or ""
    except ValueError:
        return False
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def auth_enabled(environ: Mapping[str, str] | None = None) -> bool:
    """CHUNKQ_AUTH as the API reads it (``web``'s own parser and default), so ``up`` makes
    a key exactly when its API will ask for one. Raises ValueError for a value it refuses."""
    from web import DEFAULTS, ENVIRONMENT

    environ = os.environ if environ is None else environ
    value = environ.get("CHUNKQ_AUTH")
    if not value:  # unset or empty: the API's default, as create_app does
        return bool(DEFAULTS["AUTH"])
    _config_key, parse = ENVIRONMENT["CHUNKQ_AUTH"]
    try:
        return bool(parse(value))
    except ValueError as exc:
        raise ValueError(f"CHUNKQ_AUTH: {exc}") from exc


def ensure_key(url: str, path: Path) -> LocalKey:
    """The key kept in ``path`` if it still opens the database at ``url``; otherwise (none
    yet, revoked, or made for another database) a new key, stored in ``path``.

    The new key's row is committed only after the file is written, so a failed write
    leaves no key that nobody holds; a failed commit leaves a file whose key the next start
    finds dead and replaces.
    """
    from schema import tenants
    from schema.db import connect

    stored = read_key(path)
    with connect(url) as conn:  # one transaction: committed on leaving the block
        if stored is not None and (tenant := tenants.authenticate(conn, stored)) is not None:
            return LocalKey(stored, tenant.id, path, made=False)
        made = tenants.create_key(conn, KEY_NAME)
        try:
            store_key(path, made.key)
        except OSError as exc:
            raise CommandError(f"cannot keep the API key in {path}: {exc.strerror or exc}") from exc
    return LocalKey(made.key, made.id, path, made=True, replaced=stored is not None)
