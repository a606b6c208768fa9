"""The chunkq HTTP API: ``gunicorn 'web:create_app()'``."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Mapping
from typing import Any

from flask import Flask

DEFAULTS: dict[str, Any] = {
    "DATABASE_URL": None,
    # Set: DATABASE_URL goes through a transaction-pooling PgBouncer (schema.db.direct_url);
    # the API needs no direct connection of its own, only to know that its pool is pooled.
    "DATABASE_DIRECT_URL": None,
    "PROVIDER": "builtin",
    # A 10 MB text is about 10 MB of JSON; leave room for escapes.
    "MAX_CONTENT_LENGTH": 32 * 1024 * 1024,
    "DEFAULT_CHUNK_CHARS": 2000,
    "MIN_CHUNK_CHARS": 1,
    "MAX_CHUNK_CHARS": 1_000_000,
    "MAX_CHUNKS_PER_JOB": 100_000,
    "DB_POOL_SIZE": 5,
    # The workers' lease (CHUNKQ_LEASE_S): the session timeouts are sized to it.
    "LEASE_S": 30.0,
    "REDUCE": False,
    # CHUNKQ_AUTH: every /v1 route needs an API key; off: one anonymous tenant.
    "AUTH": True,
    "WEBHOOK_ALLOW_PRIVATE": False,
}


def _flag(value: str) -> bool:
    if value.strip().lower() in ("1", "true", "yes", "on"):
        return True
    if value.strip().lower() in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"expected a boolean (1/0, true/false), got {value!r}")


# Environment variable -> (config key, type).
ENVIRONMENT: dict[str, tuple[str, Callable[[str], Any]]] = {
    "DATABASE_URL": ("DATABASE_URL", str),
    "DATABASE_DIRECT_URL": ("DATABASE_DIRECT_URL", str),
    "CHUNKQ_PROVIDER": ("PROVIDER", str),
    "CHUNKQ_MAX_BODY_BYTES": ("MAX_CONTENT_LENGTH", int),
    "CHUNKQ_MAX_CHUNKS_PER_JOB": ("MAX_CHUNKS_PER_JOB", int),
    "CHUNKQ_DB_POOL_SIZE": ("DB_POOL_SIZE", int),
    "CHUNKQ_LEASE_S": ("LEASE_S", float),
    "CHUNKQ_REDUCE": ("REDUCE", _flag),
    "CHUNKQ_AUTH": ("AUTH", _flag),
    "CHUNKQ_WEBHOOK_ALLOW_PRIVATE": ("WEBHOOK_ALLOW_PRIVATE", _flag),
}


def create_app(config: Mapping[str, Any] | None = None) -> Flask:
    """Build the app: defaults, then the environment, then ``config`` (tests)."""
    # Imported here, not at the top: gunicorn's master imports this package with its config
    # (web.gunicorn_conf), and psycopg must first be imported after gevent's patching.
    from schema.db import make_engine, resolve_url
    from schema.logs import log_format

    # gunicorn's config applies the format (web.gunicorn_conf); a bad value must stop any
    # other server too, rather than leave the lines in a format nobody asked for.
    log_format()

    app = Flask(__name__)
    app.config.update(DEFAULTS)
    for var, (key, cast) in ENVIRONMENT.items():
        if os.environ.get(var):
            app.config[key] = cast(os.environ[var])
    app.config.update(config or {})
    app.json.sort_keys = False  # type: ignore[attr-defined]

    url = app.config["DATABASE_URL"] or resolve_url()
    app.config["DATABASE_URL"] = url
    size = app.config["DB_POOL_SIZE"]
    app.extensions["chunkq.engine"] = make_engine(
        url,
        lease_s=app.config["LEASE_S"],
        pooled=bool(app.config["DATABASE_DIRECT_URL"]),
        # Requests open a transaction where they need one (web.database).
        isolation_level="AUTOCOMMIT",
        pool_size=size,
        max_overflow=size,
    )
    app.extensions["chunkq.merge"] = functools.cache(lambda: _merge(app.config["PROVIDER"]))

    from web import analyze, auth, compress, docs, health, listing, openapi, problems, ui, webhooks
    from web.metrics import register_metrics

    problems.register(app)
    auth.register(app)
    compress.register(app)
    app.register_blueprint(analyze.bp)
    app.register_blueprint(listing.bp)
    app.register_blueprint(health.bp)
    app.register_blueprint(webhooks.bp)
    app.register_blueprint(openapi.bp)
    app.register_blueprint(docs.bp)
    app.register_blueprint(ui.bp)
    register_metrics(app)
    return app


def _merge(provider: str) -> Any:
    """Each provider's merge by name, for summaries written by the web app (cancellation):
    results recorded without a provider's name are merged as ``provider``'s."""
    from schema import merging

    return merging.by_name(provider)
