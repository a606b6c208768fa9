"""Alembic environment: migrates the database named by DATABASE_DIRECT_URL when it is set (a
direct connection, DATABASE_URL going through a transaction pooler), else DATABASE_URL
(``chunkq migrate`` also reaches the embedded one, by passing its URL as ``sqlalchemy.url``)."""

from __future__ import annotations

from alembic import context
from sqlalchemy import pool

from schema.db import make_engine, migration_url
from schema.models import metadata

config = context.config


def _url() -> str:
    return config.get_main_option("sqlalchemy.url") or migration_url()


def run_migrations_offline() -> None:
    context.configure(url=_url(), target_metadata=metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    # Migrations may run long (an index on a big table): no statement limit, but lock waits
    # stay bounded so a migration never queues all traffic behind a held lock for long. The
    # URL is a direct one (migration_url), so the limits travel as a startup parameter.
    engine = make_engine(_url(), poolclass=pool.NullPool, statements=False, pooled=False)
    with engine.connect() as connection:
        context.configure(connection=connection, target_metadata=metadata)
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
