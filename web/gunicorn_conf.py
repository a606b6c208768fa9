"""gunicorn settings: the top-level gunicorn.conf.py (read from the working directory by
``gunicorn 'web:create_app()'``) imports them, and ``chunkq up`` names this module with
``-c python:web.gunicorn_conf`` so they apply from any directory.

gunicorn binds to ``0.0.0.0:$PORT`` by itself when PORT is set (Heroku-style platforms) and
reads WEB_CONCURRENCY for its worker count; everything else here is a deliberate choice.
"""

# gunicorn 23+ opens a control socket at one path per user; several servers on one machine
# (scaled web processes, tests, `chunkq up` next to a compose stack) would fight over it.
control_socket_disable = True

# A 10 MB submission is parsed, chunked and COPYed in well under a second, but a slow
# client uploading it may take longer than the default 30 s.
timeout = 120

# Keep-alive lets `chunkq submit --wait` and other pollers reuse one connection.
keepalive = 5

# Threads, so keep-alive works and one process serves several requests at once: a request
# spends most of its time waiting on PostgreSQL, and the engine's pool is thread-safe.
worker_class = "gthread"
threads = 4
