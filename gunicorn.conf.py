"""Read by ``gunicorn 'web:create_app()'`` from the working directory (Procfile, compose)."""

from web.gunicorn_conf import *  # noqa: F403
