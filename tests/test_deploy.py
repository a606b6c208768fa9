"""How chunkq is deployed: the Procfile's processes, docker compose and the Dockerfile."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import suppress
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import yaml

from schema import tenants
from tests.processes import free_port, wait_for

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
    if process == "worker":
        assert "Traceback" not in done.stderr  # one line that says what to do
    # No embedded server of its own: nothing was created under CHUNKQ_HOME.
    assert list(home.iterdir()) == []


# -- the Procfile, docker-compose.yml and the Dockerfile agree -----------------------------


def procfile(name: str) -> dict[str, list[str]]:
    """Process type -> argv, as honcho and foreman read it (other lines are ignored)."""
    processes = {}
    for line in (ROOT / name).read_text().splitlines():
        if match := re.fullmatch(r"([A-Za-z0-9_-]+):\s*(.+)", line):
            processes[match.group(1)] = shlex.split(match.group(2))
    return processes


def compose() -> dict[str, Any]:
    return dict(yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"])


def test_procfile__release_migrates_web_serves_the_app_worker_runs_workerd() -> None:
    assert procfile("Procfile") == {
        "release": ["alembic", "upgrade", "head"],
        "web": ["gunicorn", "web:create_app()"],
        "worker": ["python", "-m", "workerd"],
    }


def test_procfile_dev__has_web_and_worker_and_no_release_whose_exit_stops_all() -> None:
    main = procfile("Procfile")
    assert procfile("Procfile.dev") == {"web": main["web"], "worker": main["worker"]}


def test_compose__each_service_runs_its_procfile_command() -> None:
    services, processes = compose(), procfile("Procfile")
    assert services["migrate"]["command"] == processes["release"]
    assert services["web"]["command"] == processes["web"]
    # Extra flags are fine (--concurrency), as long as the Procfile's command leads.
    worker = services["worker"]["command"]
    assert worker[: len(processes["worker"])] == processes["worker"]
    for name in ("migrate", "web", "worker"):
        assert services[name]["environment"]["DATABASE_URL"].startswith("postgresql://")


def test_compose__long_running_services_restart_and_the_migration_runs_once() -> None:
    services = compose()
    assert services["web"]["restart"] == "unless-stopped"
    assert services["worker"]["restart"] == "unless-stopped"
    assert services["migrate"]["restart"] == "no"  # quoted in the file: a bare no is False
    for name in ("web", "worker"):
        assert services[name]["depends_on"]["migrate"] == {
            "condition": "service_completed_successfully"
        }
    # The web container listens where gunicorn binds by itself: 0.0.0.0:$PORT.
    port = services["web"]["environment"]["PORT"]
    assert f"{port}:{port}" in services["web"]["ports"]
    assert f"127.0.0.1:{port}/readyz" in " ".join(services["web"]["healthcheck"]["test"])


@pytest.mark.skipif(
    not (shutil.which("docker-compose") or shutil.which("docker")), reason="no compose tool"
)
def test_compose__file_is_valid_for_compose() -> None:
    for argv in (["docker", "compose"], ["docker-compose"]):
        if shutil.which(argv[0]) is None:
            continue
        done = subprocess.run(
            [*argv, "config", "-q"], cwd=ROOT, capture_output=True, text=True, check=False
        )
        if "unknown" in done.stderr or "is not a docker command" in done.stderr:
            continue  # the docker CLI without its compose plugin
        assert done.returncode == 0, done.stderr
        return
    pytest.skip("no working compose tool")


def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    steps = []
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            instruction, _, rest = line.strip().partition(" ")
            steps.append((instruction.upper(), rest.strip()))
    return steps


def test_dockerfile__runs_as_non_root_without_an_editable_install() -> None:
    steps = dockerfile()
    users = [rest for instruction, rest in steps if instruction == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    runs = [rest for instruction, rest in steps if instruction == "RUN"]
    assert not any(re.search(r"pip install\b.*(\s-e\s|--editable)", run) for run in runs)
    # The final user comes after every install, so nothing is installed as it.
    last_user = max(i for i, (instruction, _) in enumerate(steps) if instruction == "USER")
    assert all("pip install" not in rest for _, rest in steps[last_user:])


def test_dockerfile__installs_dependencies_before_copying_the_source() -> None:
    steps = dockerfile()
    copies = [(i, rest) for i, (instruction, rest) in enumerate(steps) if instruction == "COPY"]
    source = next(i for i, rest in copies if rest.split()[0] == ".")
    spec = next(i for i, rest in copies if "setup.cfg" in rest.split()[:-1])
    deps = next(
        i
        for i, (instruction, rest) in enumerate(steps)
        if instruction == "RUN" and "pip install -r" in rest
    )
    assert spec < deps < source
    package = next(
        i
        for i, (instruction, rest) in enumerate(steps)
        if instruction == "RUN" and "pip install --no-deps ." in rest
    )
    assert package > source


def test_dockerignore__leaves_out_history_environments_caches_data_and_builds() -> None:
    ignored = {
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    wanted = {".git", ".venv", ".chunkq", "**/__pycache__", ".pytest_cache", "build", "dist"}
    assert wanted <= ignored, wanted - ignored
    assert {"*.egg-info", "**/*.egg-info"} & ignored


# -- honcho runs Procfile.dev until it is stopped ------------------------------------------


@pytest.mark.slow
def test_honcho__procfile_dev_serves_on_its_port_and_finishes_a_job(database_url: str) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHUNKQ_") and k != "PORT"}
    env.update(DATABASE_URL=database_url, CHUNKQ_PROVIDER="simulated", PYTHONUNBUFFERED="1")
    # Procfile.dev names bare commands (gunicorn): find this interpreter's, activated or not.
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    proc = subprocess.Popen(
        [sys.executable, "-m", "honcho", "start", "-f", "Procfile.dev", "-p", str(port)],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"  # honcho gives the first process type the base port
    try:

        def ready() -> bool:
            assert proc.poll() is None, "honcho stopped"
            try:
                return httpx.get(f"{base}/readyz", timeout=2).status_code == 200
            except httpx.TransportError:
                return False

        wait_for(ready, 60, "gunicorn under honcho")
        # Auth is on, as it is by default.
        with psycopg.connect(database_url, autocommit=True) as conn:
            key = tenants.create_key(conn, "honcho").key
        posted = httpx.post(
            f"{base}/v1/analyze",
            json={"raw_text": "one. two. three."},
            headers={"Authorization": f"Bearer {key}"},
        )
        assert posted.status_code == 202, posted.text
        job = f"{base}{posted.headers['Location']}"

        def finished() -> bool:
            report = httpx.get(job, timeout=5, headers={"Authorization": f"Bearer {key}"})
            return bool(report.json()["status"] == "COMPLETED")

        wait_for(finished, 60, "the worker under honcho to finish the job")
        assert proc.poll() is None
    finally:
        with suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)  # honcho passes it on to its processes
        try:
            proc.wait(40)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
