"""Slow and idle clients on loopback: connections that hold a server's request slots.

``SlowClients`` opens connections that send a request's headers one byte a second (never
finishing in the time a test runs) and connections that send nothing, and keeps that many
open: one the server closes is opened again, as a client set on starving a server would.
The tests and ``python -m bench.slow_clients`` measure the API beside them.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from types import TracebackType

# Long enough that one byte a second never completes it while a test runs.
TRICKLED = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Padding: " + b"a" * 100 + b"\r\n\r\n"


class _Conn:
    def __init__(self, sock: socket.socket, trickles: bool) -> None:
        self.sock, self.trickles, self.sent = sock, trickles, 0


class SlowClients:
    """``trickling`` connections sending one byte a second and ``idle`` ones sending nothing."""

    def __init__(self, port: int, *, trickling: int, idle: int, interval: float = 1.0) -> None:
        self.port = port
        self.interval = interval
        self.reopened = 0
        self._plan = [True] * trickling + [False] * idle
        self._conns: list[_Conn] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="slow-clients", daemon=True)

    def __enter__(self) -> SlowClients:
        self._conns = [_Conn(self._open(), trickles) for trickles in self._plan]
        self._thread.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._thread.join(5)
        for conn in self._conns:
            conn.sock.close()

    @property
    def held(self) -> int:
        return len(self._conns)

    def _open(self) -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=5)
        sock.setblocking(False)
        return sock

    @staticmethod
    def _closed_by_server(sock: socket.socket) -> bool:
        try:
            return sock.recv(4096) == b""
        except BlockingIOError:
            return False
        except OSError:
            return True

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            for conn in self._conns:
                if self._closed_by_server(conn.sock):
                    conn.sock.close()
                    with contextlib.suppress(OSError):
                        conn.sock, conn.sent = self._open(), 0
                        self.reopened += 1
                elif conn.trickles and conn.sent < len(TRICKLED) - 1:
                    with contextlib.suppress(OSError):
                        conn.sent += conn.sock.send(TRICKLED[conn.sent : conn.sent + 1])
