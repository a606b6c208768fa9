"""Alembic's configuration for a database: the checkout's alembic.ini when there is one, else
the migration scripts that ship inside ``schema`` (a non-editable install has no ini)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from schema.errors import ChunkqError

if TYPE_CHECKING:
    from alembic.config import Config

SCRIPTS = Path(__file__).resolve().parent / "migrations"
INI = SCRIPTS.parent.parent / "alembic.ini"


class MigrationsMissing(ChunkqError):
    """Neither alembic.ini nor the packaged migration scripts are where they should be."""


def alembic_config(url: str) -> Config:
    """The configuration that migrates ``url``."""
    from alembic.config import Config

    if INI.is_file():
        cfg = Config(str(INI))
    elif (SCRIPTS / "env.py").is_file():
        cfg = Config()
        cfg.set_main_option("script_location", str(SCRIPTS))
    else:
        raise MigrationsMissing(f"no migration scripts at {SCRIPTS}; is chunkq installed?")
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))  # configparser escaping
    return cfg


def upgrade(url: str) -> None:
    """``alembic upgrade head`` on ``url``."""
    from alembic import command

    command.upgrade(alembic_config(url), "head")
