"""gunicorn settings: the top-level gunicorn.conf.py (read from the working directory by
``gunicorn 'web:create_app()'``) imports them, and ``chunkq up`` names this module with
``-c python:web.gunicorn_conf`` so they apply from any directory.

gunicorn binds to ``0.0.0.0:$PORT`` by itself when PORT is set (Heroku-style platforms) and
reads WEB_CONCURRENCY for its worker count; everything else here is a deliberate choice.
"""

import sys

from schema.logs import log_format

# gunicorn 23+ opens a control socket at one path per user; several servers on one machine
# (scaled web processes, tests, `chunkq up` next to a compose stack) would fight over it.
control_socket_disable = True

# gevent: each connection is a greenlet, so a client that sends its request a byte at a
# time, or opens a connection and sends nothing, costs a few kilobytes instead of one of a
# handful of threads (with gthread, 40 such clients left /healthz answering 1 time in 12).
# Requests still overlap while they wait on PostgreSQL: psycopg 3 waits cooperatively once
# gevent has patched the standard library (web/gevent_worker.py checks it was imported
# after), and SQLAlchemy's pool queues on patched locks.
worker_class = "web.gevent_worker.GeventWorker"
worker_connections = 1000

# With gevent, this bounds the wait for a request's headers as well as for the next request
# on a kept-alive connection: a client trickling its headers is dropped after 5 s. It also
# lets `chunkq submit --wait` and other pollers reuse one connection.
keepalive = 5

# The master kills a worker silent this long. A request that holds the CPU (parsing and
# chunking a 30 MB text) keeps its worker from reporting in meanwhile; leave it room.
timeout = 120

# gunicorn's error log and the app's loggers in CHUNKQ_LOG_FORMAT (web/gunicorn_logging.py).
# A bad value stops the server here, before it binds or forks.
logger_class = "web.gunicorn_logging.Logger"
try:
    log_format()
except ValueError as _exc:
    sys.exit(f"gunicorn: {_exc}")
