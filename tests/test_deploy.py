"""How chunkq is deployed: the Procfile's processes, docker compose and the Dockerfile."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.processes import free_port

ROOT = Path(__file__).resolve().parent.parent


def env_without_database(home: Path) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("CHUNKQ_") and k not in ("DATABASE_URL", "DATABASE_DIRECT_URL")
    }
    env.update({"PYTHONUNBUFFERED": "1", "CHUNKQ_HOME": str(home)})
    return env


@pytest.fixture
def home() -> Iterator[Path]:
    """A CHUNKQ_HOME of the test's own; any server started under it is stopped afterwards."""
    path = Path(tempfile.mkdtemp(prefix="chunkq-deploy-home-"))
    try:
        yield path
    finally:
        from schema.embedded import EmbeddedPostgres

        EmbeddedPostgres(path / "pgdata").stop()  # a no-op unless something started one
        shutil.rmtree(path, ignore_errors=True)


# -- without DATABASE_URL, the Procfile's processes refuse to start -----------------------

PROCESSES = {
    "web": [sys.executable, "-m", "gunicorn", "--bind", "127.0.0.1:{port}", "web:create_app()"],
    "worker": [sys.executable, "-m", "workerd", "--burst"],
    "release": [sys.executable, "-m", "alembic", "upgrade", "head"],
}


@pytest.mark.slow
@pytest.mark.parametrize("process", sorted(PROCESSES))
def test_procfile_process__without_database_url_exits_naming_it(process: str, home: Path) -> None:
    argv = [arg.format(port=free_port()) for arg in PROCESSES[process]]
    try:
        done = subprocess.run(
            argv, cwd=ROOT, env=env_without_database(home), capture_output=True, text=True,
            timeout=60, check=False,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        pytest.fail(f"{process} kept running without DATABASE_URL")
    assert done.returncode != 0
    assert "DATABASE_URL is not set" in done.stderr, done.stderr
    # No embedded server of its own: nothing was created under CHUNKQ_HOME.
    assert list(home.iterdir()) == []
