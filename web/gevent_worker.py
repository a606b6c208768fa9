"""The API's gunicorn worker: gunicorn's gevent worker, made safe for psycopg and quick to stop.

Named by web/gunicorn_conf.py as ``worker_class``; gunicorn loads it in the master (which
imports gevent there, but patches nothing until a worker starts).
"""

from __future__ import annotations

import sys
from typing import Any

import gevent
from gunicorn.workers import ggevent


class GeventWorker(ggevent.GeventWorker):
    """gunicorn's gevent worker, with two changes.

    It refuses to start when psycopg was imported before gevent patched the standard
    library: psycopg picks its wait function at import, and one that waits in C stops every
    greenlet of the worker while one request waits on PostgreSQL.

    On SIGTERM with no request in flight it exits at once. gunicorn's own worker first sleeps
    out its one-second tick and then waits for idle kept-alive connections, so a supervisor
    that stops it (``chunkq up``, after the master died) would see it linger.
    """

    in_flight = 0

    def patch(self) -> None:
        if "psycopg" in sys.modules:
            raise RuntimeError(
                "psycopg was imported before gevent patched the standard library, so database"
                " waits would block the whole worker; import it lazily (inside create_app)"
            )
        super().patch()

    def handle_request(self, listener_name: Any, req: Any, sock: Any, addr: Any) -> None:
        self.in_flight += 1
        try:
            super().handle_request(listener_name, req, sock, addr)
        finally:
            self.in_flight -= 1
            if not self.alive and self.in_flight == 0:
                gevent.spawn(sys.exit, 0)

    def handle_exit(self, sig: int, frame: Any) -> None:
        super().handle_exit(sig, frame)
        if self.in_flight == 0:
            # SystemExit in a greenlet reaches the main one (gunicorn's SIGQUIT relies on it).
            gevent.spawn(sys.exit, 0)
