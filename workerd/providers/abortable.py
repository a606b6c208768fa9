"""An httpx transport whose in-flight requests another thread can cut off.

httpx has no way to abort a request that is blocked reading (a model server sends nothing
until its reply is generated), and closing a socket does not wake a thread blocked in recv.
This transport remembers, per thread, the socket that thread last read or wrote;
``abort_thread`` shuts that socket down, which wakes the blocked read at once and closes the
connection, so the server sees the client leave (and can stop generating).
"""

from __future__ import annotations

import logging
import socket
import ssl
import threading
from typing import Any

import httpcore
import httpx

log = logging.getLogger("workerd.http")

# Thread id -> the socket of the connection that thread is using now.
_sockets: dict[int, socket.socket] = {}
_lock = threading.Lock()


def abort_thread(ident: int) -> bool:
    """Shut down the connection thread ``ident`` is reading or writing; False if none."""
    with _lock:
        sock = _sockets.get(ident)
    if sock is None:
        return False
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        return False
    return True


def forget_thread(ident: int) -> None:
    """Stop tracking thread ``ident`` (its request is over)."""
    with _lock:
        _sockets.pop(ident, None)


class AbortableTransport(httpx.HTTPTransport):
    """``httpx.HTTPTransport`` whose connections register their socket with the calling thread."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        pool = getattr(self, "_pool", None)
        backend = getattr(pool, "_network_backend", None)
        if isinstance(pool, httpcore.ConnectionPool) and backend is not None:
            pool._network_backend = _Backend(backend)
        else:  # a future httpx/httpcore layout: calls still end at their deadline
            log.warning("httpx transport layout not recognised; in-flight calls cannot be cut off")


class _Backend(httpcore.NetworkBackend):
    def __init__(self, inner: httpcore.NetworkBackend) -> None:
        self._inner = inner

    def connect_tcp(self, *args: Any, **kwargs: Any) -> httpcore.NetworkStream:
        return _Stream(self._inner.connect_tcp(*args, **kwargs))

    def connect_unix_socket(self, *args: Any, **kwargs: Any) -> httpcore.NetworkStream:
        return _Stream(self._inner.connect_unix_socket(*args, **kwargs))

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


class _Stream(httpcore.NetworkStream):
    def __init__(self, inner: httpcore.NetworkStream) -> None:
        self._inner = inner
        self._sock: socket.socket | None = inner.get_extra_info("socket")

    def _track(self) -> None:
        if self._sock is not None:
            with _lock:
                _sockets[threading.get_ident()] = self._sock

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        self._track()
        return self._inner.read(max_bytes, timeout)

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._track()
        self._inner.write(buffer, timeout)

    def close(self) -> None:
        self._inner.close()

    def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.NetworkStream:
        return _Stream(self._inner.start_tls(ssl_context, server_hostname, timeout))

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)
