"""The command line for people: ``--wait``'s summary on a terminal and its JSON on a pipe,
``chunkq jobs``, a server outage said once, and a wait that lasts through the reduce step.

Terminals are real pseudo-terminals and the client a real ``python -m chunkq`` process,
against a real gunicorn, real workers and a real PostgreSQL."""

from __future__ import annotations

import fcntl
import io
import json
import os
import re
import select
import socket
import struct
import subprocess
import sys
import tempfile
import termios
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from chunkq.jobs import age, table
from chunkq.progress import Outage, Progress
from chunkq.report import describe
from tests import test_cli
from tests.processes import ROOT, gunicorn, gunicorn_process, wait_for
from tests.test_cli import TEXT, chunkq, cli_env, drain, finished_job, invoke, stop_tree

JOB = "0f0e0d0c-0b0a-4908-8706-050403020100"


# The same real API and workers as test_cli's (fixtures are found by their module names).
api = test_cli.api
start_worker = test_cli.start_worker


def on_terminal(*args: str, stderr_too: bool = True, timeout: float = 120) -> tuple[int, str, str]:
    """Run ``python -m chunkq ARGS`` with stdout (and stderr, with ``stderr_too``) on a real
    pseudo-terminal 120 columns wide; returns its exit code, what the terminal showed (line
    ends as written, not as the terminal translates them) and stderr when it was a file."""
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    with tempfile.TemporaryFile() as errors:
        try:
            proc = subprocess.Popen(
                [sys.executable, "-m", "chunkq", *args],
                cwd=ROOT,
                env=cli_env(),
                stdin=subprocess.DEVNULL,
                stdout=slave,
                stderr=slave if stderr_too else errors,
            )
        finally:
            os.close(slave)
        shown = bytearray()
        deadline = time.monotonic() + timeout
        try:
            while True:
                if time.monotonic() > deadline:
                    raise AssertionError(f"chunkq {args} still running after {timeout}s: {shown!r}")
                ready, _, _ = select.select([master], [], [], 0.2)
                if not ready:
                    continue
                try:
                    data = os.read(master, 65536)
                except OSError:  # EIO: every process holding the terminal has closed it
                    break
                if not data:
                    break
                shown += data
            code = proc.wait(timeout)
        finally:
            os.close(master)
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        errors.seek(0)
        stderr = errors.read().decode()
    return code, shown.decode().replace("\r\n", "\n"), stderr


def report_json(base: str, job_id: str, key: str | None = None) -> str:
    """The job's report as ``print_report`` writes it: the bytes a pipe must get."""
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    report = httpx.get(f"{base}/v1/analyze/{job_id}", headers=headers, timeout=10).json()
    return json.dumps(report, indent=2, ensure_ascii=False) + "\n"


def post(base: str, text: str, key: str | None = None, **fields: Any) -> str:
    """Submit ``text`` (with ``key``, if given, and more fields); returns the job's id."""
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    response = httpx.post(
        f"{base}/v1/analyze", json={"raw_text": text, **fields}, headers=headers, timeout=10
    )
    assert response.status_code == 202, response.text
    return str(response.json()["job_id"])


# -- the summary for people, the JSON for scripts ------------------------------------------


@pytest.mark.slow
def test_submit_wait__on_a_terminal_ends_with_a_summary_for_people(
    database_url: str, start_worker: Callable[..., Any], tmp_path: Path
) -> None:
    start_worker(CHUNKQ_PROVIDER="builtin")
    path = tmp_path / "text.txt"
    path.write_text(TEXT, encoding="utf-8")
    with gunicorn(database_url, workers=1) as base:
        args = ("--url", base, "--max-chunk-chars", "300", "--interval", "0.1")
        code, shown, _ = on_terminal("submit", str(path), "--wait", *args)
        assert code == 0, shown
        job_id = re.search(r"submitted job (\S+) \((\d+) chunks\)", shown)
        assert job_id, shown
        report = finished_job(base, job_id.group(1))
    # The bar is one line redrawn in place, with the job's id on it.
    assert f"\rjob {job_id.group(1)[:8]}  [" in shown and "\x1b[K" in shown
    assert re.search(r"100\.0%  \d+ done, 0 failed of \d+ chunks  COMPLETED", shown), shown
    summary = shown.rsplit("\x1b[K", 1)[1]
    assert "{" not in summary, summary  # no JSON
    assert f"job       {report['job_id']}" in summary
    assert "status    COMPLETED" in summary
    total = report["chunks_total"]
    assert total > 5 and f"chunks    {total} of {total} succeeded" in summary
    assert "failed    0" in summary and re.search(r"duration  \d+\.\d s", summary)
    keywords = [k["keyword"] for k in report["analysis_result"]["summary"]["keywords"]]
    assert f"keywords  {', '.join(keywords[:8])}" in summary, summary


@pytest.mark.slow
def test_submit_wait__piped_prints_the_report_byte_for_byte(
    api: str, start_worker: Callable[..., Any]
) -> None:
    start_worker()
    args = ("--url", api, "--max-chunk-chars", "300", "--interval", "0.1")
    done = chunkq("submit", "-", "--wait", *args, input=TEXT)
    assert done.returncode == 0, done.stderr
    job_id = json.loads(done.stdout)["job_id"]
    assert done.stdout == report_json(api, job_id)
    # stderr is not a terminal either: plain lines, no redraws.
    assert "\r" not in done.stderr and f"job {job_id}: COMPLETED 100.0%" in done.stderr


@pytest.mark.slow
def test_submit_wait__json_on_a_terminal_prints_the_report(
    api: str, start_worker: Callable[..., Any], tmp_path: Path
) -> None:
    start_worker()
    path = tmp_path / "text.txt"
    path.write_text(TEXT, encoding="utf-8")
    args = ("--url", api, "--interval", "0.1")
    code, shown, stderr = on_terminal(
        "submit", str(path), "--wait", "--json", "--max-chunk-chars", "300", *args, stderr_too=False
    )
    assert code == 0, stderr
    report = json.loads(shown)
    assert shown == report_json(api, report["job_id"])
    # The control: the same on a terminal without --json is the summary, not JSON.
    code, shown, _ = on_terminal("status", report["job_id"], "--wait", *args, stderr_too=False)
    assert code == 0 and shown.startswith(f"job       {report['job_id']}\n"), shown


# -- chunkq jobs -------------------------------------------------------------------------


def listed(*args: str, **env: str) -> list[dict[str, Any]]:
    done = invoke("jobs", "--json", *args, **env)
    assert done.exit_code == 0, done.stderr
    return list(json.loads(done.stdout))


@pytest.mark.slow
def test_jobs__lists_newest_first_filters_and_shows_a_table(api: str) -> None:
    # No worker: the jobs stay PENDING, but for the one cancelled.
    first = post(api, "the first text", metadata={"doc": "a"})
    second = post(api, "the second text", metadata={"doc": "b", "team": "x" * 60})
    third = post(api, "the third text. " * 30, max_chunk_chars=100)
    assert httpx.post(f"{api}/v1/analyze/{second}/cancel", timeout=10).status_code == 200

    every = listed("--url", api)
    assert [job["job_id"] for job in every] == [third, second, first]
    assert all("analysis_result" not in job for job in every)
    assert [job["job_id"] for job in listed("--url", api, "--status", "cancelled")] == [second]
    for statuses in (
        ("--status", "PENDING,CANCELLED"),
        ("--status", "pending", "--status", "CANCELLED"),
    ):
        assert [job["job_id"] for job in listed("--url", api, *statuses)] == [third, second, first]
    assert [job["job_id"] for job in listed("--url", api, "--status", "COMPLETED")] == []
    assert [job["job_id"] for job in listed("--url", api, "--metadata", "doc=a")] == [first]
    assert [job["job_id"] for job in listed("--url", api, "--limit", "2")] == [third, second]

    shown = invoke("jobs", CHUNKQ_URL=api)
    assert shown.exit_code == 0, shown.stderr
    header, *rows = shown.stdout.splitlines()
    assert header.split() == ["ID", "STATUS", "PROGRESS", "CHUNKS", "FAILED", "AGE", "METADATA"]
    assert [row.split()[:2] for row in rows] == [
        [third, "PENDING"],
        [second, "CANCELLED"],
        [first, "PENDING"],
    ]
    assert rows[0].split()[2:6] == ["0%", f"0/{every[0]['chunks_total']}", "0", rows[0].split()[5]]
    assert re.fullmatch(r"\d+[smhd]", rows[0].split()[5]), rows[0]
    assert rows[0].rstrip().endswith("-") and rows[2].rstrip().endswith("doc=a")
    assert len(rows[1].split(None, 6)[6]) == 40 and rows[1].endswith("…")

    none = invoke("jobs", "--status", "FAILED", CHUNKQ_URL=api)
    assert (none.exit_code, none.stdout) == (0, "no jobs with status FAILED\n")


@pytest.mark.slow
def test_jobs__a_limit_past_one_page_follows_the_cursor(api: str) -> None:
    with httpx.Client(base_url=api, timeout=10) as http:
        for i in range(105):
            assert http.post("/v1/analyze", json={"raw_text": f"text {i}"}).status_code == 202
        pages = [http.get("/v1/analyze", params={"limit": 100}).json()]
        cursor = pages[0]["next_cursor"]
        pages.append(http.get("/v1/analyze", params={"limit": 100, "cursor": cursor}).json())
    expected = [job["job_id"] for page in pages for job in page["data"]]
    assert len(expected) == 105
    assert [job["job_id"] for job in listed("--url", api, "--limit", "103")] == expected[:103]
    assert [job["job_id"] for job in listed("--url", api, "--limit", "1000")] == expected
    assert [job["job_id"] for job in listed("--url", api)] == expected[:20]  # the default


def test_jobs__bad_options_are_usage_errors() -> None:
    for args in (
        ["--status", "DONE"],
        ["--status", "PENDING,"],
        ["--limit", "0"],
        ["--metadata", "doc"],
    ):
        done = invoke("jobs", *args, CHUNKQ_URL="http://127.0.0.1:9")
        assert done.exit_code == 2, (args, done.stderr)
        assert "Invalid value for '--" in done.stderr and done.stdout == ""


def test_jobs__a_server_not_listening_says_not_reachable_and_exits_1() -> None:
    with socket.socket() as sock:  # bound, never listening: connections are refused
        sock.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        done = invoke("jobs", "--url", url)
    assert done.exit_code == 1 and done.stdout == ""
    assert f"not reachable at {url}" in done.stderr


@pytest.mark.slow
def test_jobs__with_auth_lists_only_the_keys_jobs_and_a_401_exits_2(
    database_url: str, tmp_path: Path
) -> None:
    keys = [
        json.loads(invoke("keys", "create", "--json", DATABASE_URL=database_url).stdout)["key"]
        for _ in range(2)
    ]
    home = str(tmp_path)  # no api_key kept there: only what the test passes is sent
    with gunicorn(database_url, workers=1, CHUNKQ_AUTH="on") as base:
        mine = post(base, "mine", keys[0])
        post(base, "theirs", keys[1])
        jobs = listed("--url", base, "--api-key", keys[0], CHUNKQ_HOME=home)
        assert [job["job_id"] for job in jobs] == [mine]
        assert listed("--url", base, CHUNKQ_API_KEY=keys[0], CHUNKQ_HOME=home)[0]["job_id"] == mine
        none = invoke("jobs", "--url", base, CHUNKQ_HOME=home)
        assert none.exit_code == 2 and none.stdout == ""
        assert f"{base} needs an API key (401)" in none.stderr
        bad = invoke("jobs", "--url", base, "--api-key", "cq_0_wrong", CHUNKQ_HOME=home)
        assert bad.exit_code == 2
        assert "refused the API key from --api-key / CHUNKQ_API_KEY (401)" in bad.stderr


# -- a server that goes away, a reduce still to run -----------------------------------------


@contextmanager
def dropping_connections(port: int) -> Iterator[Callable[[], int]]:
    """Listen on ``port`` and close every connection unanswered, as a server on its way down
    does; yields how many connections it has dropped so far."""
    server = socket.create_server(("127.0.0.1", port))
    server.settimeout(0.1)
    dropped = [0]
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            conn.close()
            dropped[0] += 1

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield lambda: dropped[0]
    finally:
        stop.set()
        thread.join(5)
        server.close()


@pytest.mark.slow
def test_status_wait__a_server_that_stays_down_is_reported_once_and_its_return_too(
    database_url: str, start_worker: Callable[..., Any]
) -> None:
    lines: list[str] = []
    env = {"CHUNKQ_PROVIDER": "simulated"}
    started: list[subprocess.Popen[str]] = []
    try:
        with gunicorn_process(database_url, workers=1, env=env) as (base, _master):
            port = int(base.rsplit(":", 1)[1])
            job_id = post(base, TEXT, max_chunk_chars=300)  # no worker yet: it stays PENDING
            proc = subprocess.Popen(
                [sys.executable, "-m", "chunkq", "status", job_id, "--wait", "--url", base],
                cwd=ROOT,
                env=cli_env(),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            started.append(proc)
            assert proc.stderr is not None and proc.stdout is not None
            threading.Thread(target=drain, args=(proc.stderr, lines.append), daemon=True).start()
            wait_for(lambda: any(f"job {job_id}: PENDING" in x for x in lines), 30, "progress")
        # gunicorn is gone (the block above stopped it); it answers nothing for several polls.
        with dropping_connections(port) as dropped:
            wait_for(lambda: dropped() >= 4, 30, "four polls to fail", interval=0.05)
        with gunicorn_process(database_url, workers=1, env=env, port=port):
            start_worker()
            assert proc.wait(60) == 0, "".join(lines)
        out = proc.stdout.read()  # a report of a few kB: the pipe held it while we waited
    finally:
        for each in started:
            stop_tree(each)
    text = "".join(lines)
    down = [line for line in lines if "not answering" in line]
    assert len(down) == 1, text
    assert down[0].startswith(f"chunkq: server at {base} not answering (")
    assert down[0].endswith("still trying for up to 60 s…\n")
    back = [line for line in lines if "answering again" in line]
    assert len(back) == 1 and back[0].startswith(f"chunkq: server at {base} answering again")
    assert text.index("not answering") < text.index("answering again")
    assert json.loads(out)["status"] == "COMPLETED"


@pytest.mark.slow
def test_submit_wait__waits_for_the_reduce_step(
    database_url: str, start_worker: Callable[..., Any]
) -> None:
    # Each call takes a second, so the reduce is certainly still to run when the job ends.
    start_worker(CHUNKQ_SIM_LATENCY_MS="1000")
    with gunicorn(database_url, workers=1, CHUNKQ_REDUCE="on", CHUNKQ_PROVIDER="simulated") as base:
        done = chunkq("submit", "-", "--wait", "--url", base, "--interval", "0.1", input="a text")
        assert done.returncode == 0, done.stderr
        report = json.loads(done.stdout)
        assert report["analysis_result"]["reduce"]["status"] == "succeeded", report
        assert report["analysis_result"]["reduce"]["result"]["chunks"] == 1
        assert f"job {report['job_id']} finished; waiting for its reduce step" in done.stderr
        assert done.stdout == report_json(base, report["job_id"])


# -- the summary's lines, the table's cells ------------------------------------------------


def finished(summary: Any, **extra: Any) -> dict[str, Any]:
    return {
        "job_id": JOB,
        "status": "PARTIAL_SUCCESS",
        "chunks_total": 4,
        "chunks_completed": 3,
        "chunks_failed": 1,
        "chunk_errors": [{"chunk_index": 2, "error": "simulated failure:\n  boom"}],
        "created_at": "2026-01-01T10:00:00+00:00",
        "finished_at": "2026-01-01T10:03:07.500000+00:00",
        "analysis_result": {"chunks": [], "summary": summary, **extra},
    }


def test_describe__builtin_summary_with_a_failed_chunk() -> None:
    summary = {
        "chunks": 3,
        "chars": 900,
        "words": 150,
        "sentences": 9,
        "sentiment": {"neg": 0.1, "neu": 0.6, "pos": 0.3, "compound": 0.4567},
        "keywords": [{"keyword": f"k{i}", "relevance": 0.5, "chunks": 1} for i in range(12)],
    }
    assert describe(finished(summary)).splitlines() == [
        f"job       {JOB}",
        "status    PARTIAL_SUCCESS",
        "chunks    3 of 4 succeeded",
        "failed    1  first: chunk 2: simulated failure: boom",
        "duration  3m 08s",
        "text      900 chars, 150 words, 9 sentences",
        "sentiment +0.46 (compound; -1 negative .. +1 positive)",
        "keywords  k0, k1, k2, k3, k4, k5, k6, k7",
    ]


def test_describe__a_models_summary_and_its_reduce() -> None:
    summary = {
        "chunks": 3,
        "sentiment": {"label": "negative", "score": -0.25, "labels": {"negative": 3}},
        "key_points": [f"point {i}" for i in range(7)],
        "summaries": ["a", "b", "c"],
    }
    reduce = {"status": "succeeded", "result": {"summary": "x " * 80, "key_points": ["p"]}}
    lines = describe(finished(summary, reduce=reduce)).splitlines()
    assert lines[5:] == [
        "sentiment negative (-0.25)",
        "key points",
        *[f"  - point {i}" for i in range(5)],
        "reduce    succeeded",
        "  " + ("x " * 50)[:99] + "…",
        "  - p",
    ]


@pytest.mark.parametrize(
    ("summary", "reduce", "tail"),
    [
        ({"error": "merge broke"}, None, ["summary   could not be made: merge broke"]),
        (None, {"status": "failed", "error": "gave up"}, ["reduce    failed: gave up"]),
        (None, {"status": "skipped"}, ["reduce    skipped"]),
        (
            {"chunks": 3, "chars": 9},
            {"status": "succeeded", "result": {"chunks": 3}},
            ["text      9 chars", "reduce    succeeded", '  {"chunks": 3}'],
        ),
        ({"odd": [1]}, None, ['summary   {"odd": [1]}']),
        (
            {"providers": [{"provider": "builtin", "chunks": 2, "summary": {"words": 5}}]},
            None,
            ["provider  builtin (2 chunks)", "  text      5 words"],
        ),
    ],
)
def test_describe__every_summary_shape_and_reduce_outcome(
    summary: Any, reduce: Any, tail: list[str]
) -> None:
    extra = {"reduce": reduce} if reduce else {}
    assert describe(finished(summary, **extra)).splitlines()[5:] == tail


def test_describe__a_job_without_times_or_result_says_what_it_has() -> None:
    lines = describe({"job_id": JOB, "status": "CANCELLED", "chunks_total": 2}).splitlines()
    assert lines == [
        f"job       {JOB}",
        "status    CANCELLED",
        "chunks    0 of 2 succeeded",
        "failed    0",
    ]


def test_age__in_the_largest_whole_unit() -> None:
    now = datetime(2026, 1, 2, tzinfo=UTC)
    for delta, shown in [
        (timedelta(seconds=5), "5s"),
        (timedelta(minutes=3, seconds=59), "3m"),
        (timedelta(hours=2), "2h"),
        (timedelta(days=40), "40d"),
        (timedelta(seconds=-3), "0s"),  # a server clock a little ahead
    ]:
        assert age((now - delta).isoformat(), now) == shown
    assert age(None, now) == "?"


def test_table__aligns_columns_under_the_header() -> None:
    now = datetime(2026, 1, 2, tzinfo=UTC)
    jobs = [
        {
            "job_id": JOB,
            "status": "PROCESSING",
            "percent": 42.5,
            "chunks_total": 200,
            "chunks_completed": 80,
            "chunks_failed": 5,
            "created_at": (now - timedelta(minutes=7)).isoformat(),
            "metadata": {"doc": "q3"},
        }
    ]
    header, row = table(jobs, now=now).splitlines()
    assert row.split() == [JOB, "PROCESSING", "42%", "80/200", "5", "7m", "doc=q3"]
    assert [header.index(name) for name in ("STATUS", "AGE")] == [
        row.index("PROCESSING"),
        row.index("7m"),
    ]


def test_outage__said_once_given_up_past_its_tolerance_and_its_end_said_once() -> None:
    shown = io.StringIO()
    outage = Outage("http://h:1", Progress(shown), tolerance_s=60)
    assert outage.failed(100.0, "ConnectError") and outage.failed(101.0, "ReadError")
    assert outage.failed(160.0, "ConnectError")  # 60 s in: still within the tolerance
    assert not outage.failed(160.5, "ConnectError")
    outage.answered(161.0)
    outage.answered(162.0)  # no outage any more: nothing to say
    assert shown.getvalue().splitlines() == [
        "chunkq: server at http://h:1 not answering (ConnectError); still trying for up to 60 s…",
        "chunkq: server at http://h:1 answering again after 61 s",
    ]
    assert outage.failed(200.0, "ConnectError")  # a new outage starts its own count
    assert shown.getvalue().count("not answering") == 2
