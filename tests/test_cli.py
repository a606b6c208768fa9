"""The ``chunkq`` command line: in process through click's runner where a process buys nothing,
as real processes where it does (signals, pipes, start-up imports, ``up``'s children), against
HTTP on loopback and a real PostgreSQL."""

from __future__ import annotations

import importlib.metadata
import itertools
import json
import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import click
import httpx
import psutil
import pytest
from click.testing import CliRunner, Result

from chunkq.cli import cli, main
from tests import processes
from tests.processes import ROOT, gunicorn, wait_for

TEXT = "\n\n".join(
    # Non-ASCII on purpose: offsets are in characters, not bytes.
    f"Paragraph {i}: the caf\u00e9\u2019s queue grew \u2014 slowly, then all at once. Was it? "
    "Yes! Every chunk must keep its place, even the last one." * 3
    for i in range(12)
)


def cli_env(**extra: str) -> dict[str, str]:
    """The test's environment without any chunkq setting that could leak in from outside."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("CHUNKQ_") and k not in ("DATABASE_URL", "PORT")
    }
    env.update({"PYTHONUNBUFFERED": "1", "CHUNKQ_SHUTDOWN_GRACE_S": "5"}, **extra)
    return env


def invoke(*args: str, input: str | None = None, **env: str) -> Result:
    """Run the CLI in this process, under the environment ``cli_env`` would give a child.

    Exceptions are not caught: a bug fails the test with its traceback instead of looking
    like exit 1."""
    unset: dict[str, str | None] = {k: None for k in os.environ if k not in cli_env()}
    return CliRunner().invoke(
        cli, list(args), input=input, env={**unset, **cli_env(**env)}, catch_exceptions=False
    )


def chunkq(*args: str, env: dict[str, str] | None = None, **kwargs: Any) -> Any:
    """Run the CLI as a subprocess and return the completed process (text mode)."""
    return subprocess.run(
        [sys.executable, "-m", "chunkq", *args],
        cwd=ROOT,
        env=env or cli_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        **kwargs,
    )


def healthy(base: str) -> bool:
    try:
        return httpx.get(f"{base}/healthz", timeout=2).status_code == 200
    except httpx.TransportError:
        return False


def bearer(key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"} if key else {}


def finished_job(
    base: str, job_id: str, timeout: float = 60, key: str | None = None
) -> dict[str, Any]:
    """Poll the API (with ``key``, if given) until the job is terminal; returns its report."""

    def terminal() -> dict[str, Any] | None:
        report = httpx.get(f"{base}/v1/analyze/{job_id}", headers=bearer(key), timeout=5).json()
        return report if report["status"] not in ("PENDING", "PROCESSING") else None

    return dict(wait_for(terminal, timeout, f"job {job_id} to finish"))


def stop_tree(proc: subprocess.Popen[Any], also: list[psutil.Process] | None = None) -> None:
    """Teardown for anything a test started: SIGTERM it, then SIGKILL it and every descendant
    (``also``: ones it had earlier, which may have been orphaned since)."""
    descendants = list(also or [])
    with suppress(psutil.NoSuchProcess):
        descendants += psutil.Process(proc.pid).children(recursive=True)
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(40)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    for child in descendants:
        with suppress(psutil.NoSuchProcess):
            child.kill()
    for stream in (proc.stdout, proc.stderr):
        if stream is not None:
            stream.close()


def alive(processes: list[psutil.Process]) -> list[psutil.Process]:
    """The ones still running (is_running() compares start times too: a reused pid is not)."""
    result = []
    for proc in processes:
        try:
            if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                result.append(proc)
        except psutil.NoSuchProcess:
            pass
    return result


@pytest.fixture
def api(database_url: str) -> Iterator[str]:
    """gunicorn serving the API (simulated provider) on a free loopback port."""
    with gunicorn(database_url, workers=1, CHUNKQ_PROVIDER="simulated") as base:
        yield base


@pytest.fixture
def start_worker(database_url: str) -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    """Start ``python -m workerd`` (simulated provider) with extra environment; stopped after."""
    started: list[subprocess.Popen[bytes]] = []

    def start(**extra: str) -> subprocess.Popen[bytes]:
        env = {"CHUNKQ_PROVIDER": "simulated", "CHUNKQ_SHUTDOWN_GRACE_S": "5", **extra}
        started.append(processes.start_worker(database_url, "--concurrency", "4", **env))
        return started[-1]

    try:
        yield start
    finally:
        for proc in started:
            stop_tree(proc)


@pytest.fixture
def chunkq_home() -> Iterator[tuple[Path, Path]]:
    """A fresh $CHUNKQ_HOME and its embedded data directory; any server left there is stopped.

    mkdtemp, not tmp_path: the server runs as another user when we are root, and pytest makes
    its own temp root 0700."""
    from schema.embedded import EmbeddedPostgres

    home = Path(tempfile.mkdtemp(prefix="chunkq-cli-home-"))
    datadir = (home / "pgdata").resolve()
    try:
        yield home, datadir
    finally:
        EmbeddedPostgres(datadir).stop()  # a no-op unless a failed test left it running
        shutil.rmtree(home, ignore_errors=True)


# -- help, version, options -------------------------------------------------------------

COMMANDS = ["up", "submit", "status", "jobs", "keys", "migrate", "down", "prune"]
KEYS_COMMANDS = ["create", "list", "revoke", "limits"]


def test_help__lists_every_command_on_one_line_with_its_summary() -> None:
    done = invoke("--help")
    assert done.exit_code == 0, done.stderr
    block = done.stdout.split("Commands:\n", 1)[1].split("\n\n", 1)[0]
    # A summary that wraps adds a line, one that click shortened ends in "...".
    assert [line.split()[0] for line in block.splitlines()] == COMMANDS, block
    assert "..." not in block
    assert "exit codes of submit and status" in done.stdout


@pytest.mark.parametrize("command", COMMANDS)
def test_help__of_each_command_documents_every_option(command: str) -> None:
    for flag in ("--help", "-h"):
        done = invoke(command, flag)
        assert done.exit_code == 0, done.stderr
        assert done.stdout.startswith(f"Usage: chunkq {command} "), done.stdout
    options = [p for p in cli.commands[command].params if isinstance(p, click.Option)]
    for option in options:
        assert option.help, f"{command} {option.opts[0]} has no help"
        assert option.opts[0] in done.stdout


@pytest.mark.parametrize("command", KEYS_COMMANDS)
def test_help__of_each_keys_command_documents_every_option(command: str) -> None:
    done = invoke("keys", command, "--help")
    assert done.exit_code == 0, done.stderr
    assert done.stdout.startswith(f"Usage: chunkq keys {command} "), done.stdout
    group = cli.commands["keys"]
    assert isinstance(group, click.Group)
    for option in (p for p in group.commands[command].params if isinstance(p, click.Option)):
        assert option.help, f"keys {command} {option.opts[0]} has no help"
        assert option.opts[0] in done.stdout
    listed = invoke("keys", "--help")
    block = listed.stdout.split("Commands:\n", 1)[1].split("\n\n", 1)[0]
    assert [line.split()[0] for line in block.splitlines()] == KEYS_COMMANDS, block


def test_help__summary_says_it_waits() -> None:
    for command in ("submit", "status"):
        text = " ".join(invoke(command, "--help").stdout.split())
        assert "--summary Wait for the job to finish (implies --wait)" in text, text


def test_version__is_the_installed_distributions() -> None:
    expected = f"chunkq {importlib.metadata.version('chunkq')}\n"
    assert invoke("--version").stdout == expected
    # The console script's own way in: python -m chunkq, and the entry point it is built from.
    assert chunkq("--version").stdout == expected
    (script,) = importlib.metadata.entry_points(group="console_scripts", name="chunkq")
    assert script.value == "chunkq.cli:main"


@pytest.mark.parametrize(
    "args",
    [
        [],
        ["nope"],
        ["submit"],
        ["status"],
        ["up", "--nope"],
        *(["status", "J", "--interval", bad] for bad in ("nan", "inf", "-1", "1e9")),
    ],
)
def test_usage_errors__exit_2_and_say_what_is_wrong(args: list[str]) -> None:
    done = invoke(*args)
    assert done.exit_code == 2
    assert "Error:" in done.stderr and "Usage: chunkq" in done.stderr
    assert done.stdout == ""


def test_up__defaults_and_port_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[dict[str, int]] = []
    monkeypatch.setattr("chunkq.up.run_up", lambda **kw: calls.append(kw) or 7)
    assert invoke("up").exit_code == 7  # whatever the command returns is the exit code
    assert invoke("up", PORT="9123").exit_code == 7
    assert invoke("up", PORT="").exit_code == 7  # empty is unset, as before
    flags = ("--port", "0", "--workers", "0", "--concurrency", "3", "--web-workers", "4")
    assert invoke("up", *flags, PORT="9123").exit_code == 7
    default = {"workers": 2, "concurrency": 8, "port": 8000, "web_workers": 2}
    assert calls == [
        default,
        {**default, "port": 9123},
        default,
        {"workers": 0, "concurrency": 3, "port": 0, "web_workers": 4},
    ]


def test_options__an_unambiguous_prefix_of_a_long_option_still_works(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ups: list[dict[str, int]] = []
    files: list[str] = []
    monkeypatch.setattr("chunkq.up.run_up", lambda **kw: ups.append(kw) or 0)
    monkeypatch.setattr("chunkq.client.submit_file", lambda f, **kw: files.append(f) or 0)
    assert invoke("up", "--work", "3", "--conc=2", "--p", "0", "--web", "1").exit_code == 0
    assert ups == [{"workers": 3, "concurrency": 2, "port": 0, "web_workers": 1}]
    assert invoke("submit", "--", "--wait").exit_code == 0  # after --, a file named --wait
    assert files == ["--wait"]
    assert invoke("prune", "--older=nan").exit_code == 2  # expanded, then refused as before

    ambiguous = invoke("up", "--w", "1")
    assert ambiguous.exit_code == 2
    assert "--w is ambiguous: --workers or --web-workers?" in ambiguous.stderr
    assert len(ups) == 1


@pytest.mark.parametrize(
    ("args", "env"),
    [
        (["--workers", "-1"], {}),
        (["--concurrency", "0"], {}),
        (["--web-workers", "0"], {}),
        (["--port", "eighty"], {}),
        (["--workers", "1.5"], {}),
        ([], {"PORT": "eighty"}),
    ],
)
def test_up__bad_count_or_port_is_an_argument_error(
    monkeypatch: pytest.MonkeyPatch, args: list[str], env: dict[str, str]
) -> None:
    monkeypatch.setattr("chunkq.up.run_up", lambda **kw: pytest.fail(f"ran with {kw}"))
    done = invoke("up", *args, **env)
    assert done.exit_code == 2
    assert "Invalid value for '--" in done.stderr


def test_submit_and_status__defaults_and_url_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[tuple[str, dict[str, Any]]] = []
    monkeypatch.setattr("chunkq.client.submit_file", lambda f, **kw: calls.append((f, kw)) or 3)
    monkeypatch.setattr("chunkq.client.show_status", lambda j, **kw: calls.append((j, kw)) or 4)
    assert invoke("submit", "-").exit_code == 3
    flags = ("--wait", "--max-chunk-chars", "300", "--interval", "0.1")
    assert invoke("submit", "t.txt", *flags, CHUNKQ_URL="http://h:1").exit_code == 3
    assert invoke("status", "J", CHUNKQ_URL="").exit_code == 4
    assert (
        invoke("status", "--wait", "J", "--url", "http://x:2", CHUNKQ_URL="http://h:1").exit_code
        == 4
    )
    assert invoke("status", "J", "--summary", CHUNKQ_API_KEY="cq_env").exit_code == 4
    assert invoke("submit", "-", "--api-key", "cq_flag", CHUNKQ_API_KEY="cq_env").exit_code == 3
    assert invoke("status", "J", "--wait", "--json").exit_code == 4
    local, follow = "http://127.0.0.1:8000", {"wait": True, "interval": 0.1}
    plain = {"api_key": None, "summary": False, "as_json": False}
    assert calls == [
        ("-", {"url": local, "max_chunk_chars": 2000, "wait": False, "interval": 0.5, **plain}),
        ("t.txt", {"url": "http://h:1", "max_chunk_chars": 300, **follow, **plain}),
        ("J", {"url": local, "wait": False, "interval": 0.5, **plain}),
        ("J", {"url": "http://x:2", "wait": True, "interval": 0.5, **plain}),
        (
            "J",
            {
                "url": local,
                "wait": False,
                "interval": 0.5,
                **plain,
                "api_key": "cq_env",
                "summary": True,
            },
        ),
        (
            "-",
            {
                "url": local,
                "max_chunk_chars": 2000,
                "wait": False,
                "interval": 0.5,
                "api_key": "cq_flag",
                "summary": False,
                "as_json": False,
            },
        ),
        ("J", {"url": local, "wait": True, "interval": 0.5, **plain, "as_json": True}),
    ]


def test_main__returns_exit_codes_and_ends_ctrl_c_with_130(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def interrupted() -> int:
        raise KeyboardInterrupt

    monkeypatch.setattr("chunkq.database.run_migrate", interrupted)
    previous = signal.getsignal(signal.SIGINT)
    try:
        assert main(["--version"]) == 0
        assert main(["prune", "--older-than", "soon"]) == 2
        assert main(["migrate"]) == 130
    finally:
        signal.signal(signal.SIGINT, previous)
    out, err = capsys.readouterr()
    assert out.startswith("chunkq ")
    assert "not an age: 'soon'" in err
    assert err.rstrip().endswith("chunkq: interrupted") and "Traceback" not in err


# -- start-up cost and layering ------------------------------------------------------------

HEAVY = {"flask", "werkzeug", "sqlalchemy", "psycopg", "httpx", "gevent", "alembic"}
LOADED = """
import contextlib, io, json, sys
from chunkq.cli import main

for argv in json.loads(sys.argv[1]):
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(argv) == 0, argv
before = sorted({name.partition(".")[0] for name in sys.modules})
import chunkq.up  # what a command that runs does import: the control
after = sorted({name.partition(".")[0] for name in sys.modules})
print(json.dumps([before, after]))
"""


def test_help_and_version__import_no_web_framework_database_or_http_library() -> None:
    argvs = [["--help"], ["--version"]] + [[command, "--help"] for command in COMMANDS]
    done = subprocess.run(
        [sys.executable, "-c", LOADED, json.dumps(argvs)],
        cwd=ROOT,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    before, after = (set(names) for names in json.loads(done.stdout))
    assert "click" in before
    assert before & (HEAVY | {"web", "workerd", "schema"}) == set()
    assert "httpx" in after  # the check does see an import when there is one


# -- a reader that goes away ---------------------------------------------------------------


def with_closed_stdout(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """Run ``python -m chunkq`` writing into a pipe whose reader has already gone, as
    ``| head -c 10`` is once head has its bytes: every write meets EPIPE, the first included."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        return subprocess.run(
            [sys.executable, "-m", "chunkq", *args],
            cwd=ROOT,
            env=cli_env(**env),
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
            check=False,
        )
    finally:
        os.close(write_end)


@pytest.mark.parametrize("args", [["--help"], ["--version"], ["status", "-h"], ["prune", "-h"]])
def test_closed_stdout__help_exits_141_without_a_traceback(args: list[str]) -> None:
    done = with_closed_stdout(*args)
    assert (done.returncode, done.stderr) == (141, "")


def test_closed_stdout__a_line_left_in_the_buffer_exits_141_too(tmp_path: Path) -> None:
    # Buffered output (no PYTHONUNBUFFERED) that `down` prints without flushing: the write that
    # fails is the flush after the command, not a print inside it.
    done = with_closed_stdout("down", CHUNKQ_HOME=str(tmp_path), PYTHONUNBUFFERED="")
    assert (done.returncode, done.stderr) == (141, "")


@pytest.mark.slow
def test_closed_stdout__status_exits_141_without_a_traceback(api: str) -> None:
    response = httpx.post(f"{api}/v1/analyze", json={"raw_text": "some text"}, timeout=10)
    job_id = response.json()["job_id"]
    # The control: with a reader, the same command prints the report and succeeds.
    shown = chunkq("status", job_id, "--url", api)
    assert shown.returncode == 0 and json.loads(shown.stdout)["job_id"] == job_id, shown.stderr
    done = with_closed_stdout("status", job_id, "--url", api)
    assert (done.returncode, done.stderr) == (141, "")


# -- submit and status -------------------------------------------------------------------


@pytest.mark.slow
def test_submit_wait__completes_and_chunks_tile_the_text(
    api: str, start_worker: Callable[..., Any], tmp_path: Path
) -> None:
    start_worker()
    path = tmp_path / "text.txt"
    path.write_text(TEXT, encoding="utf-8")
    args = ("--url", api, "--max-chunk-chars", "300", "--interval", "0.1")
    done = invoke("submit", str(path), "--wait", *args)
    assert done.exit_code == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["status"] == "COMPLETED"
    chunks = report["analysis_result"]["chunks"]
    assert len(chunks) == report["chunks_total"] > 5
    assert [c["index"] for c in chunks] == list(range(len(chunks)))
    assert chunks[0]["start"] == 0 and chunks[-1]["end"] == len(TEXT)
    assert all(a["end"] == b["start"] for a, b in itertools.pairwise(chunks))
    assert "".join(TEXT[c["start"] : c["end"]] for c in chunks) == TEXT
    # Not a terminal, so progress comes as plain lines, the last one terminal.
    assert re.search(r"COMPLETED 100\.0% \(\d+ done, 0 failed", done.stderr), done.stderr

    shown = invoke("status", report["job_id"], "--url", api)
    assert shown.exit_code == 0, shown.stderr
    assert json.loads(shown.stdout)["analysis_result"] == report["analysis_result"]

    queued = invoke("submit", "-", "--url", api, input="from stdin")
    assert queued.exit_code == 0, queued.stderr
    accepted = json.loads(queued.stdout)
    assert accepted["status"] == "PENDING" and accepted["chunks_total"] == 1
    assert finished_job(api, accepted["job_id"])["status"] == "COMPLETED"


@pytest.mark.slow
def test_submit__rejected_request_prints_the_problem_and_exits_2(api: str, tmp_path: Path) -> None:
    path = tmp_path / "text.txt"
    path.write_text("some text", encoding="utf-8")
    done = invoke("submit", str(path), "--max-chunk-chars", "0", "--url", api)
    assert done.exit_code == 2
    assert "Invalid request (422)" in done.stderr
    assert "max_chunk_chars:" in done.stderr
    assert done.stdout == ""


@pytest.mark.slow
def test_status__unknown_job_is_a_rejected_request_and_exits_2(api: str) -> None:
    done = invoke("status", "00000000-0000-0000-0000-000000000000", "--url", api)
    assert done.exit_code == 2
    assert "(404)" in done.stderr and done.stdout == ""


@pytest.mark.slow
def test_submit_wait__a_failed_chunk_keeps_its_place_and_exits_3(
    api: str, start_worker: Callable[..., Any]
) -> None:
    start_worker(
        CHUNKQ_SIM_FAIL_PATTERN="POISON", CHUNKQ_MAX_ATTEMPTS="1", CHUNKQ_BACKOFF_BASE_S="0"
    )
    text = "good text. " * 30 + "POISON here. " + "more good text. " * 30
    args = ("--url", api, "--max-chunk-chars", "100", "--interval", "0.1")
    done = invoke("submit", "-", "--wait", *args, input=text)
    assert done.exit_code == 3, done.stderr
    report = json.loads(done.stdout)
    assert report["status"] == "PARTIAL_SUCCESS"
    chunks = report["analysis_result"]["chunks"]
    failed = [c for c in chunks if c["status"] == "failed"]
    assert len(failed) == 1 and "POISON" in text[failed[0]["start"] : failed[0]["end"]]
    assert "".join(text[c["start"] : c["end"]] for c in chunks) == text


@contextmanager
def sigint_for_children(handler: Any) -> Iterator[None]:
    """Set our SIGINT handler while children are started, so they inherit a known
    disposition: SIG_IGN stays ignored across exec, a handled signal becomes SIG_DFL."""
    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


@pytest.mark.slow
@pytest.mark.parametrize(
    "inherited",
    # A terminal's SIG_DFL, and the SIG_IGN that CI runners and `cmd &` in scripts leave.
    [signal.default_int_handler, signal.SIG_IGN],
    ids=["sigint-default", "sigint-ignored"],
)
def test_submit_wait__ctrl_c_exits_130_and_names_the_job(api: str, inherited: Any) -> None:
    # No worker: the job stays PENDING, so the client is certainly still waiting.
    with sigint_for_children(inherited):
        proc = subprocess.Popen(
            [sys.executable, "-m", "chunkq", "submit", "-", "--wait", "--url", api],
            cwd=ROOT,
            env=cli_env(),
            stdin=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
    try:
        assert proc.stdin is not None and proc.stderr is not None
        proc.stdin.write("waiting for nobody")
        proc.stdin.close()
        first = proc.stderr.readline()  # blocks until the submit went through
        job_id = re.search(r"submitted job (\S+)", first)
        assert job_id, first
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 130
        rest = proc.stderr.read()
        assert f"chunkq status {job_id.group(1)} --wait" in rest
    finally:
        stop_tree(proc)


def test_submit__missing_file_is_a_clear_error() -> None:
    done = invoke("submit", "/nonexistent/text.txt")
    assert done.exit_code == 2
    assert "no such file: /nonexistent/text.txt" in done.stderr


def test_submit__non_utf8_file_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "latin1.txt"
    path.write_bytes("caf\xe9".encode("latin-1"))
    done = invoke("submit", str(path))
    assert done.exit_code == 2
    assert "not UTF-8" in done.stderr and "offset 3" in done.stderr


def test_submit__closed_port_says_not_reachable(tmp_path: Path) -> None:
    with socket.socket() as sock:  # a port nobody listens on: bound, never listening
        sock.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        path = tmp_path / "text.txt"
        path.write_text("some text", encoding="utf-8")
        done = invoke("submit", str(path), "--wait", CHUNKQ_URL=url)
    assert done.exit_code == 1
    assert f"not reachable at {url}" in done.stderr
    assert "chunkq up" in done.stderr


# -- keys on the client's side -------------------------------------------------------------


def test_local_key__is_sent_unasked_only_to_a_server_on_this_machine(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from chunkq.client import api_key_for

    monkeypatch.setenv("CHUNKQ_HOME", str(tmp_path))
    assert api_key_for("http://127.0.0.1:8000", None) is None  # no file yet
    (tmp_path / "api_key").write_text("cq_kept_key\n")
    for url in (
        "http://127.0.0.1:8000",
        "http://localhost:1",
        "http://127.9.9.9",
        "http://[::1]:80",
    ):
        found = api_key_for(url, None)
        assert found is not None and found.key == "cq_kept_key", url
        assert found.source == str(tmp_path / "api_key")
    for url in ("http://example.com", "https://10.0.0.1:8000", "http://localhost.example.com"):
        assert api_key_for(url, None) is None, url
    given = api_key_for("http://example.com", " cq_given ")
    assert given is not None and given.key == "cq_given"


@pytest.mark.slow
def test_submit__api_key_and_its_401s_against_a_server_with_auth(
    database_url: str, start_worker: Callable[..., Any], tmp_path: Path
) -> None:
    start_worker()
    made = invoke("keys", "create", "--json", DATABASE_URL=database_url)
    key = json.loads(made.stdout)["key"]
    path = tmp_path / "text.txt"
    path.write_text(TEXT, encoding="utf-8")
    home = tmp_path / "home"  # no api_key in it: only what the test passes is sent
    with gunicorn(database_url, workers=1, CHUNKQ_AUTH="on", CHUNKQ_PROVIDER="simulated") as base:
        args = ("--url", base, "--interval", "0.1")
        done = invoke("submit", str(path), "--wait", *args, "--api-key", key, CHUNKQ_HOME=str(home))
        assert done.exit_code == 0, done.stderr
        report = json.loads(done.stdout)
        assert report["status"] == "COMPLETED"
        shown = invoke("status", report["job_id"], *args, CHUNKQ_API_KEY=key, CHUNKQ_HOME=str(home))
        assert shown.exit_code == 0, shown.stderr
        assert json.loads(shown.stdout)["job_id"] == report["job_id"]

        none = invoke("submit", str(path), *args, CHUNKQ_HOME=str(home))
        assert none.exit_code == 2 and none.stdout == ""
        assert f"{base} needs an API key (401)" in none.stderr
        assert "--api-key KEY or set CHUNKQ_API_KEY" in none.stderr

        for status_args in ([], ["--wait"], ["--summary"]):
            bad = invoke("status", report["job_id"], *status_args, *args, "--api-key", "cq_0_wrong")
            assert bad.exit_code == 2 and bad.stdout == "", bad.stderr
            assert "refused the API key from --api-key / CHUNKQ_API_KEY (401)" in bad.stderr

        home.mkdir()
        (home / "api_key").write_text("cq_0_revoked_long_ago\n")
        stale = invoke("submit", str(path), *args, CHUNKQ_HOME=str(home))
        assert stale.exit_code == 2
        assert f"refused the API key from {home / 'api_key'} (401)" in stale.stderr
        assert "unknown or revoked" in stale.stderr


@pytest.mark.slow
def test_submit_summary__prints_only_the_summary(
    api: str, start_worker: Callable[..., Any]
) -> None:
    start_worker()
    args = ("--url", api, "--max-chunk-chars", "300", "--interval", "0.1")
    done = invoke("submit", "-", "--summary", *args, input=TEXT)
    assert done.exit_code == 0, done.stderr
    summary = json.loads(done.stdout)
    job_id = re.search(r"submitted job (\S+)", done.stderr)
    assert job_id, done.stderr
    report = finished_job(api, job_id.group(1))
    assert report["chunks_total"] > 5
    assert summary == report["analysis_result"]["summary"]
    assert re.search(r"COMPLETED 100\.0%", done.stderr), done.stderr

    shown = invoke("status", job_id.group(1), "--summary", "--url", api)
    assert shown.exit_code == 0, shown.stderr
    assert json.loads(shown.stdout) == summary


@pytest.mark.slow
def test_submit_summary__waits_for_the_reduce_step_and_prints_it_too(
    database_url: str, start_worker: Callable[..., Any]
) -> None:
    start_worker()
    with gunicorn(database_url, workers=1, CHUNKQ_REDUCE="on", CHUNKQ_PROVIDER="simulated") as base:
        args = ("--url", base, "--max-chunk-chars", "300", "--interval", "0.1")
        done = invoke("submit", "-", "--summary", *args, input=TEXT)
    assert done.exit_code == 0, done.stderr
    printed = json.loads(done.stdout)
    assert set(printed) == {"summary", "reduce"}
    assert printed["reduce"]["status"] == "succeeded", printed["reduce"]
    assert printed["reduce"]["result"]["chunks"] > 5


# -- migrate ----------------------------------------------------------------------------


def test_migrate__creates_the_schema(empty_database_url: str) -> None:
    done = invoke("migrate", DATABASE_URL=empty_database_url)
    assert done.exit_code == 0, done.stderr
    assert "the database is at the latest migration" in done.stdout
    import psycopg

    with psycopg.connect(empty_database_url) as conn:
        tables = {r[0] for r in conn.execute("SELECT tablename FROM pg_tables").fetchall()}
    assert {"jobs", "chunks"} <= tables


# -- prune ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "age", ["nan", "inf", "1e400", "-inf", "NaNd", "-1", "-5d", "1e12d", "soon", ""]
)
def test_prune__non_finite_negative_huge_or_garbled_age_is_an_argument_error(
    database_url: str, age: str
) -> None:
    done = invoke("prune", f"--older-than={age}", DATABASE_URL=database_url)
    assert done.exit_code == 2, done.stderr
    assert "--older-than" in done.stderr and repr(age) in done.stderr


@pytest.mark.parametrize(
    ("args", "seconds"),
    [
        ([], 7 * 86400),
        (["--older-than", "1.5d"], 129600),
        (["--older-than", "90m"], 5400),
        (["--older-than=3600"], 3600),
    ],
)
def test_prune__deletes_old_finished_jobs(database_url: str, args: list[str], seconds: int) -> None:
    done = invoke("prune", *args, DATABASE_URL=database_url)
    assert done.exit_code == 0, done.stderr
    assert f"deleted 0 finished jobs older than {seconds} s" in done.stdout


# -- keys -------------------------------------------------------------------------------


def authenticates(database_url: str, key: str) -> bool:
    import psycopg

    from schema import tenants

    with psycopg.connect(database_url) as conn:
        return tenants.authenticate(conn, key) is not None


def listed_keys(database_url: str) -> list[dict[str, Any]]:
    done = invoke("keys", "list", "--json", DATABASE_URL=database_url)
    assert done.exit_code == 0, done.stderr
    return list(json.loads(done.stdout))


@pytest.mark.slow
def test_keys__create_list_revoke_and_a_revoked_key_gets_401(database_url: str) -> None:
    made = invoke(
        "keys", "create", "--name", "ci", "--max-jobs-in-flight", "3", DATABASE_URL=database_url
    )
    assert made.exit_code == 0, made.stderr
    key = re.search(r"API key: +(cq_\S+)", made.stdout)
    secret = re.search(r"webhook signing secret: +(whsec_\S+)", made.stdout)
    key_id = re.search(r"key id: +(key_\S+)", made.stdout)
    assert key and secret and key_id, made.stdout
    assert "shown only now, never again" in made.stdout
    assert "database: DATABASE_URL" in made.stderr
    assert authenticates(database_url, key.group(1))

    scripted = invoke("keys", "create", "--json", DATABASE_URL=database_url)
    assert scripted.exit_code == 0, scripted.stderr
    second = json.loads(scripted.stdout)
    assert second["key"].startswith("cq_") and second["webhook_secret"].startswith("whsec_")
    assert (second["name"], second["max_jobs_in_flight"]) == ("unnamed", None)

    table = invoke("keys", "list", DATABASE_URL=database_url)
    assert table.exit_code == 0, table.stderr
    assert key.group(1) not in table.stdout and secret.group(1) not in table.stdout
    line = next(row for row in table.stdout.splitlines() if row.startswith(key_id.group(1)))
    assert line.split()[1:2] == ["ci"] and "active" in line and "3" in line.split()
    rows = listed_keys(database_url)
    assert [(r["id"], r["name"], r["active"]) for r in rows] == [
        (key_id.group(1), "ci", True),
        (second["id"], "unnamed", True),
    ]
    assert rows[0]["max_jobs_in_flight"] == 3 and rows[0]["max_queued_chunks"] is None
    assert "cq_" not in json.dumps(rows) and "whsec_" not in json.dumps(rows)

    with gunicorn(database_url, workers=1, CHUNKQ_AUTH="on") as base:
        # No such job: 404 for a key that opens the API, 401 for one that does not.
        jobs = f"{base}/v1/analyze/00000000-0000-0000-0000-000000000000"
        assert httpx.get(jobs, headers=bearer(key.group(1)), timeout=5).status_code == 404
        revoked = invoke("keys", "revoke", key_id.group(1), DATABASE_URL=database_url)
        assert revoked.exit_code == 0, revoked.stderr
        assert f"revoked key {key_id.group(1)}" in revoked.stdout
        refused = httpx.get(jobs, headers=bearer(key.group(1)), timeout=5)
        assert refused.status_code == 401
        assert refused.headers["WWW-Authenticate"].startswith("Bearer")
        assert httpx.get(jobs, headers=bearer(second["key"]), timeout=5).status_code == 404
    assert not authenticates(database_url, key.group(1))
    assert [r["active"] for r in listed_keys(database_url)] == [False, True]
    again = invoke("keys", "revoke", key_id.group(1), DATABASE_URL=database_url)
    assert again.exit_code == 0 and "already revoked" in again.stdout, again.stderr


def test_keys__revoke_or_limits_of_an_unknown_id_is_a_clear_error(database_url: str) -> None:
    for args in (["revoke", "key_0000"], ["limits", "key_0000", "--max-jobs-in-flight", "1"]):
        done = invoke("keys", *args, DATABASE_URL=database_url)
        assert done.exit_code == 2, done.stderr
        assert "no API key has the id 'key_0000'" in done.stderr
        assert "chunkq keys list" in done.stderr
    pasted = invoke("keys", "revoke", "cq_abc_def", DATABASE_URL=database_url)
    assert pasted.exit_code == 2 and "that is a key, not its id" in pasted.stderr


@pytest.mark.parametrize("bad", ["0", "-1", "many", "1.5", "", str(2**31)])
@pytest.mark.parametrize("option", ["--max-jobs-in-flight", "--max-queued-chunks"])
def test_keys__a_limit_that_is_not_a_positive_number_is_a_usage_error_and_writes_nothing(
    database_url: str, option: str, bad: str
) -> None:
    existing = json.loads(invoke("keys", "create", "--json", DATABASE_URL=database_url).stdout)
    for args in (["create", f"{option}={bad}"], ["limits", existing["id"], f"{option}={bad}"]):
        done = invoke("keys", *args, DATABASE_URL=database_url)
        assert done.exit_code == 2, done.stderr
        assert f"Invalid value for '{option}'" in done.stderr, done.stderr
        assert done.stdout == ""
    (only,) = listed_keys(database_url)
    assert (only["max_jobs_in_flight"], only["max_queued_chunks"]) == (None, None)


def test_keys_limits__sets_clears_and_keeps_what_is_not_given(database_url: str) -> None:
    made = json.loads(invoke("keys", "create", "--json", DATABASE_URL=database_url).stdout)

    def limits(*args: str) -> tuple[int | None, int | None]:
        done = invoke("keys", "limits", made["id"], *args, DATABASE_URL=database_url)
        assert done.exit_code == 0, done.stderr
        (row,) = listed_keys(database_url)
        return row["max_jobs_in_flight"], row["max_queued_chunks"]

    assert limits("--max-jobs-in-flight", "2", "--max-queued-chunks", "500") == (2, 500)
    assert limits("--max-queued-chunks", "none") == (2, None)
    assert limits("--max-jobs-in-flight", "NONE", "--max-queued-chunks", "7") == (None, 7)
    neither = invoke("keys", "limits", made["id"], DATABASE_URL=database_url)
    assert neither.exit_code == 2
    assert "give --max-jobs-in-flight, --max-queued-chunks or both" in neither.stderr


def test_keys_create__an_empty_name_is_a_usage_error(database_url: str) -> None:
    done = invoke("keys", "create", "--name", " ", DATABASE_URL=database_url)
    assert done.exit_code == 2 and "'--name'" in done.stderr
    assert listed_keys(database_url) == []


# -- up ---------------------------------------------------------------------------------


def drain(stream: Any, sink: Callable[[str], None]) -> None:
    for line in stream:
        sink(line)


@contextmanager
def chunkq_up(
    env: dict[str, str], *args: str, banner: list[str] | None = None
) -> Iterator[tuple[subprocess.Popen[str], str, list[str]]]:
    """Start ``chunkq up --port 0`` and yield it with its base URL once it says it is up, and
    the lines of its stderr (all of them once the block has ended); the banner's lines, from
    the one that says it is up to the one that says how to stop it, go into ``banner``."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "chunkq", "up", "--port", "0", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: queue.Queue[str] = queue.Queue()
    log: list[str] = []
    known: list[psutil.Process] = []
    # Drain both pipes so a chatty child can never block on a full one.
    out = threading.Thread(target=drain, args=(proc.stdout, lines.put), daemon=True)
    err = threading.Thread(target=drain, args=(proc.stderr, log.append), daemon=True)
    out.start()
    err.start()
    try:
        deadline = time.monotonic() + 90
        while True:
            assert time.monotonic() < deadline, "chunkq up never said it was up:\n" + "".join(log)
            try:
                line = lines.get(timeout=0.2)
            except queue.Empty:
                assert proc.poll() is None, "chunkq up exited:\n" + "".join(log)
                continue
            if match := re.search(r"chunkq is up: (http://\S+)", line):
                shown = banner if banner is not None else []
                shown.append(line)
                while "stop: Ctrl-C" not in shown[-1]:
                    shown.append(lines.get(timeout=10))
                break
        known = children(proc)
        yield proc, match.group(1), log
    finally:
        stop_tree(proc, also=known)
        out.join(5)
        err.join(5)


def children(proc: subprocess.Popen[Any]) -> list[psutil.Process]:
    return psutil.Process(proc.pid).children(recursive=True)


def kinds(processes: list[psutil.Process]) -> set[str]:
    found = set()
    for proc in processes:
        cmdline = " ".join(proc.cmdline())
        found |= {kind for kind in ("gunicorn", "workerd") if f"-m {kind}" in cmdline}
    return found


def submit_and_finish(base: str, text: str, key: str | None = None) -> dict[str, Any]:
    body = {"raw_text": text, "max_chunk_chars": 200}
    response = httpx.post(f"{base}/v1/analyze", json=body, headers=bearer(key))
    assert response.status_code == 202, response.text
    return finished_job(base, response.json()["job_id"], key=key)


def kept_key(home: Path) -> str:
    """The key ``chunkq up`` keeps under ``home``."""
    return (home / "api_key").read_text().strip()


@pytest.mark.slow
def test_up__serves_restarts_a_dead_child_and_stops_everything_on_sigterm(
    database_url: str, tmp_path: Path
) -> None:
    env = cli_env(DATABASE_URL=database_url, CHUNKQ_PROVIDER="simulated", CHUNKQ_HOME=str(tmp_path))
    with chunkq_up(env, "--workers", "1", "--web-workers", "1") as (up, base, log):
        seen = children(up)
        assert kinds(seen) == {"gunicorn", "workerd"}
        assert submit_and_finish(base, TEXT, kept_key(tmp_path))["status"] == "COMPLETED"

        # A dead gunicorn is replaced, and the API answers again, on the same port.
        master = next(p for p in psutil.Process(up.pid).children() if "gunicorn" in p.cmdline())
        master.kill()
        wait_for(lambda: master not in psutil.Process(up.pid).children(), 30, "restart")
        wait_for(lambda: healthy(base), 60, "the restarted API")
        seen += children(up)

        up.send_signal(signal.SIGTERM)
        assert up.wait(60) == 0
        assert alive(seen) == []
    # Every child stopped on its SIGTERM, none had to be killed when the stop timed out.
    assert "did not stop in time" not in "".join(log), "".join(log)
    assert "stopping" in "".join(log)


@pytest.mark.slow
def test_up__children_exit_when_the_supervisor_is_killed(database_url: str, tmp_path: Path) -> None:
    env = cli_env(DATABASE_URL=database_url, CHUNKQ_PROVIDER="simulated", CHUNKQ_HOME=str(tmp_path))
    with chunkq_up(env, "--workers", "1", "--web-workers", "1") as (up, _base, _log):
        seen = children(up)
        up.kill()  # no chance to clean up: the children must notice on their own
        up.wait()
        wait_for(lambda: alive(seen) == [], 40, "orphaned children to exit")


@pytest.mark.slow
def test_up__makes_a_key_once_reuses_it_and_replaces_a_revoked_one(
    database_url: str, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    env = cli_env(DATABASE_URL=database_url, CHUNKQ_PROVIDER="simulated", CHUNKQ_HOME=str(home))
    text = tmp_path / "README.md"
    text.write_text(TEXT, encoding="utf-8")
    kept = home / "api_key"

    banner: list[str] = []
    with chunkq_up(env, "--workers", "1", "--web-workers", "1", banner=banner) as (up, base, _):
        first = kept_key(home)
        assert first.startswith("cq_")
        assert any(f"API key: {first}" in line for line in banner), banner
        assert any(f"kept in {kept}" in line for line in banner), banner
        assert kept.stat().st_mode & 0o777 == 0o600
        # No flags: the loopback URL and the kept key are enough.
        done = invoke("submit", str(text), "--wait", CHUNKQ_URL=base, CHUNKQ_HOME=str(home))
        assert done.exit_code == 0, done.stderr
        assert json.loads(done.stdout)["status"] == "COMPLETED"
        up.send_signal(signal.SIGINT)
        assert up.wait(60) == 0

    banner.clear()
    with chunkq_up(env, "--workers", "0", "--web-workers", "1", banner=banner) as (up, base, _):
        assert kept_key(home) == first
        assert first not in "".join(banner), banner
        assert any(f"API key: kept in {kept}" in line for line in banner), banner
        done = invoke("submit", str(text), CHUNKQ_URL=base, CHUNKQ_HOME=str(home))
        assert done.exit_code == 0, done.stderr
        key_id = next(k["id"] for k in listed_keys(database_url) if k["name"] == "chunkq up")
        assert invoke("keys", "revoke", key_id, DATABASE_URL=database_url).exit_code == 0
        refused = invoke("submit", str(text), CHUNKQ_URL=base, CHUNKQ_HOME=str(home))
        assert refused.exit_code == 2 and f"from {kept} (401)" in refused.stderr
        up.send_signal(signal.SIGINT)
        assert up.wait(60) == 0

    banner.clear()
    with chunkq_up(env, "--workers", "0", "--web-workers", "1", banner=banner) as (up, base, log):
        second = kept_key(home)
        assert second != first and any(f"API key: {second}" in line for line in banner)
        assert "does not open this database" in "".join(log)
        assert invoke("submit", str(text), CHUNKQ_URL=base, CHUNKQ_HOME=str(home)).exit_code == 0
        up.send_signal(signal.SIGINT)
        assert up.wait(60) == 0
    assert [(k["name"], k["active"]) for k in listed_keys(database_url)] == [
        ("chunkq up", False),
        ("chunkq up", True),
    ]


@pytest.mark.slow
def test_up__with_auth_off_makes_no_key_and_says_so(database_url: str, tmp_path: Path) -> None:
    env = cli_env(DATABASE_URL=database_url, CHUNKQ_HOME=str(tmp_path), CHUNKQ_AUTH="off")
    banner: list[str] = []
    with chunkq_up(env, "--workers", "0", "--web-workers", "1", banner=banner) as (up, base, _):
        assert any("auth is off (CHUNKQ_AUTH=off)" in line for line in banner), banner
        assert not (tmp_path / "api_key").exists()
        # The API takes a request without a key.
        response = httpx.post(f"{base}/v1/analyze", json={"raw_text": "no key"}, timeout=10)
        assert response.status_code == 202, response.text
        up.send_signal(signal.SIGINT)
        assert up.wait(60) == 0
    assert listed_keys(database_url) == []


def test_up__a_garbled_auth_setting_fails_fast() -> None:
    done = invoke("up", "--port", "0", CHUNKQ_AUTH="maybe", DATABASE_URL="postgresql://unused/x")
    assert done.exit_code == 2
    assert "CHUNKQ_AUTH" in done.stderr and "'maybe'" in done.stderr


def test_up__port_in_use_fails_fast_and_clearly() -> None:
    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = str(busy.getsockname()[1])
        done = invoke("up", "--port", port, DATABASE_URL="postgresql://unused/x")
    assert done.exit_code == 1
    assert f"cannot listen on 127.0.0.1:{port}" in done.stderr


def postgres_serving(datadir: Path) -> list[psutil.Process]:
    """postgres processes whose command line names this data directory."""
    found = []
    for proc in psutil.process_iter(["name", "cmdline"]):
        if proc.info["name"] == "postgres" and str(datadir) in " ".join(proc.info["cmdline"] or ()):
            found.append(proc)
    return found


@pytest.mark.slow
def test_up__embedded_database_stops_on_sigint_and_keeps_data_for_the_next_run(
    chunkq_home: tuple[Path, Path],
) -> None:
    home, datadir = chunkq_home
    env = cli_env(CHUNKQ_HOME=str(home), CHUNKQ_PROVIDER="simulated")
    with chunkq_up(env, "--workers", "1", "--web-workers", "1") as (up, base, _log):
        assert postgres_serving(datadir), "no embedded postgres serving the data dir"
        key = kept_key(home)
        report = submit_and_finish(base, TEXT, key)
        assert report["status"] == "COMPLETED"
        seen = children(up)
        up.send_signal(signal.SIGINT)
        assert up.wait(60) == 0
    assert alive(seen) == []
    assert postgres_serving(datadir) == []

    with chunkq_up(env, "--workers", "1", "--web-workers", "1") as (up, base, _log):
        again = httpx.get(f"{base}/v1/analyze/{report['job_id']}", headers=bearer(key), timeout=5)
        assert again.status_code == 200
        assert again.json()["analysis_result"] == report["analysis_result"]
        assert kept_key(home) == key
        up.send_signal(signal.SIGINT)
        assert up.wait(60) == 0
    assert postgres_serving(datadir) == []

    # `keys` starts the embedded server for itself, and stops it after.
    listed = invoke("keys", "list", "--json", CHUNKQ_HOME=str(home))
    assert listed.exit_code == 0, listed.stderr
    assert [(k["name"], k["active"]) for k in json.loads(listed.stdout)] == [("chunkq up", True)]
    assert "stopped the embedded PostgreSQL" in listed.stderr
    assert postgres_serving(datadir) == []


@pytest.mark.slow
def test_up__adopts_the_server_a_killed_up_left_running_and_stops_it_on_exit(
    chunkq_home: tuple[Path, Path],
) -> None:
    home, datadir = chunkq_home
    env = cli_env(CHUNKQ_HOME=str(home), CHUNKQ_PROVIDER="simulated")
    with chunkq_up(env, "--workers", "0", "--web-workers", "1") as (up, _base, _log):
        seen = children(up)
        up.kill()  # no cleanup at all: the embedded server stays behind
        up.wait()
        wait_for(lambda: alive(seen) == [], 40, "orphaned children to exit")
    assert postgres_serving(datadir), "the embedded server did not outlive the kill"

    with chunkq_up(env, "--workers", "0", "--web-workers", "1") as (up, base, _log):
        assert healthy(base)
        # While this run uses the server, `chunkq down` must leave it alone.
        busy = invoke("down", CHUNKQ_HOME=str(home))
        assert busy.exit_code == 1 and "in use by a running chunkq" in busy.stderr
        assert postgres_serving(datadir)
        up.send_signal(signal.SIGINT)
        assert up.wait(60) == 0
    assert postgres_serving(datadir) == []


@pytest.mark.slow
def test_up__banner_names_the_absolute_data_directory(chunkq_home: tuple[Path, Path]) -> None:
    home, datadir = chunkq_home
    # A relative CHUNKQ_HOME, resolved against the working directory.
    env = cli_env(CHUNKQ_HOME=os.path.relpath(home, ROOT), CHUNKQ_PROVIDER="simulated")
    banner: list[str] = []
    with chunkq_up(env, "--workers", "0", "--web-workers", "1", banner=banner) as (up, _, _log):
        assert f"data in {datadir}" in banner[0], banner
        up.send_signal(signal.SIGINT)
        assert up.wait(60) == 0


@pytest.mark.slow
def test_down__stops_a_left_over_server_and_says_so_when_none_runs(
    chunkq_home: tuple[Path, Path],
) -> None:
    from schema.embedded import EmbeddedPostgres

    home, datadir = chunkq_home
    EmbeddedPostgres(datadir, settings={"fsync": "off"}).start()  # as a crashed up leaves it
    assert postgres_serving(datadir)
    done = invoke("down", CHUNKQ_HOME=str(home))
    assert done.exit_code == 0, done.stderr
    assert f"stopped the embedded PostgreSQL under {datadir}" in done.stdout
    assert postgres_serving(datadir) == []

    again = invoke("down", CHUNKQ_HOME=str(home))
    assert again.exit_code == 0, again.stderr
    assert f"no embedded PostgreSQL is running under {datadir}" in again.stdout
