"""Structured logs (CHUNKQ_LOG_FORMAT): the formatter itself, a real burst worker and a real
gunicorn in json and text, a bad value refused, and each job's lifecycle logged once."""

from __future__ import annotations

import io
import json
import logging
import signal
import subprocess
import sys
import threading
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from schema import logs
from tests import processes
from tests.mock_openai import MockOpenAI, mock_openai_fixture  # noqa: F401 - the fixture
from tests.support import submit
from tests.test_cli import TEXT as LONG_TEXT
from tests.test_cli import chunkq_up, cli_env, submit_and_finish

REQUIRED = {"time", "level", "logger", "message", "pid"}
CONTEXT = {"job_id", "chunk", "attempt", "worker_id"}
# Chunks of 20 characters at most; the one saying POISON fails on every attempt.
TEXT = "First part is fine. Second is good. This is POISON here. Fourth ends well."


def _record(message: str, *args: Any, **attrs: Any) -> logging.LogRecord:
    record = logging.LogRecord("chunkq.test", logging.WARNING, __file__, 1, message, args, None)
    for key, value in attrs.items():
        setattr(record, key, value)
    return record


def json_lines(output: str) -> list[dict[str, Any]]:
    """Every line of ``output`` parsed as one JSON object (a line that is not fails)."""
    lines = []
    for line in output.splitlines():
        try:
            lines.append(json.loads(line))
        except json.JSONDecodeError:
            pytest.fail(f"a log line is not JSON: {line!r}")
    return lines


def run_burst(database_url: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "workerd", "--burst", "--concurrency", "4"],
        cwd=processes.ROOT,
        env=processes.environment(database_url, CHUNKQ_PROVIDER="simulated", **env),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


# -- the formatter -------------------------------------------------------------------------


def test_json_formatter__puts_an_exception_in_one_line_as_exc() -> None:
    try:
        raise ValueError("bad\nthing")
    except ValueError:
        record = _record("it broke: %s", "here")
        record.exc_info = sys.exc_info()
    line = logs.JsonFormatter().format(record)
    assert "\n" not in line
    parsed = json.loads(line)
    assert parsed["message"] == "it broke: here" and parsed["level"] == "WARNING"
    assert "Traceback" in parsed["exc"] and "ValueError: bad\nthing" in parsed["exc"]


def test_json_formatter__keeps_non_ascii_readable_and_time_in_utc_milliseconds() -> None:
    line = logs.JsonFormatter().format(_record("résumé, naïve 日本語 %s", "✓"))
    assert "résumé, naïve 日本語 ✓" in line
    parsed = json.loads(line)
    assert parsed["message"] == "résumé, naïve 日本語 ✓"
    assert parsed["time"].endswith("Z") and len(parsed["time"]) == len("2026-01-01T00:00:00.000Z")
    assert datetime.fromisoformat(parsed["time"]).utcoffset() is not None


def test_configure__adds_bound_and_process_fields_and_extra_wins() -> None:
    out = io.StringIO()
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    hooks = (sys.excepthook, threading.excepthook)
    job = uuid.uuid4()
    try:
        logs.configure("json", stream=out)
        logs.set_process_fields(worker_id="w-1")
        with logs.bound(job_id=job, chunk=3, attempt=2):
            logging.getLogger("chunkq.test").info("inside")
            logging.getLogger("chunkq.test").info("own", extra={"chunk": 9})
        logging.getLogger("chunkq.test").info("outside")
    finally:
        logs._process_fields.clear()
        root.handlers[:], root.level = saved
        sys.excepthook, threading.excepthook = hooks
        logging.captureWarnings(False)
    inside, own, outside = json_lines(out.getvalue())
    assert inside["job_id"] == str(job) and (inside["chunk"], inside["attempt"]) == (3, 2)
    assert own["chunk"] == 9
    assert outside["worker_id"] == "w-1" and "job_id" not in outside


def test_configure_json__an_uncaught_exception_is_one_json_line() -> None:
    code = (
        "import threading; from schema import logs; logs.configure('json');"
        "t = threading.Thread(target=lambda: 1 / 0, name='side'); t.start(); t.join();"
        "raise ValueError('bad\\nthing')"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=processes.ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1
    side, main = json_lines(done.stderr)
    assert side["message"] == "uncaught exception in thread side"
    assert "ZeroDivisionError" in side["exc"] and side["level"] == "CRITICAL"
    assert main["message"] == "uncaught exception" and "ValueError: bad\nthing" in main["exc"]


def test_text_formatter__is_readable_with_the_context_after_the_message() -> None:
    line = logs.TextFormatter().format(_record("lease lost", job_id="j1", chunk=4, worker_id="w"))
    assert "WARNING chunkq.test[" in line and line.endswith("lease lost job_id=j1 chunk=4")
    # What the message says already is not repeated.
    line = logs.TextFormatter().format(_record("job j1 failed 2 times", job_id="j1", attempt=2))
    assert line.endswith("job j1 failed 2 times attempt=2")
    with pytest.raises(json.JSONDecodeError):
        json.loads(line)


def test_log_format__refuses_anything_but_text_or_json() -> None:
    assert logs.log_format({}) == "text" and logs.log_format({logs.ENV: "JSON"}) == "json"
    with pytest.raises(ValueError, match=r"CHUNKQ_LOG_FORMAT must be one of text, json"):
        logs.log_format({logs.ENV: "xml"})


# -- a real worker ---------------------------------------------------------------------------


@pytest.mark.slow
def test_worker_json__every_line_json_retries_in_context_lifecycle_once(
    database_url: str, db: psycopg.Connection[Any]
) -> None:
    job_id = submit(db, TEXT, 20)
    total = db.execute("SELECT chunks_total FROM jobs WHERE id = %s", (job_id,)).fetchone()
    assert total is not None and total[0] >= 4
    done = run_burst(
        database_url,
        CHUNKQ_LOG_FORMAT="json",
        CHUNKQ_SIM_FAIL_PATTERN="POISON",
        CHUNKQ_MAX_ATTEMPTS="2",
        CHUNKQ_BACKOFF_BASE_S="0.01",
        CHUNKQ_BACKOFF_MAX_S="0.02",
    )
    assert done.returncode == 0, done.stderr
    lines = json_lines(done.stderr)
    assert lines and all(line.keys() >= REQUIRED for line in lines), lines
    worker_id = lines[0]["worker_id"]
    assert all(line["worker_id"] == worker_id for line in lines)

    failed = [line for line in lines if line["level"] == "WARNING" and "chunk" in line]
    assert [line["attempt"] for line in failed] == [1, 2], failed
    assert all(line.keys() >= CONTEXT and line["job_id"] == str(job_id) for line in failed)
    assert "retry in" in failed[0]["message"] and "failed for good" in failed[1]["message"]

    about_job = [line for line in lines if line["level"] == "INFO" and "job_id" in line]
    first, end = about_job  # exactly two: no INFO line per chunk
    assert "first claim" in first["message"] and first["job_id"] == str(job_id)
    assert "finalized" in end["message"] and end["job_id"] == str(job_id)
    assert (end["status"], end["succeeded"], end["failed"]) == ("PARTIAL_SUCCESS", total[0] - 1, 1)
    assert end["cancelled"] == 0 and end["duration_s"] >= 0
    assert not [line for line in lines if line["level"] == "INFO" and "chunk" in line]


@pytest.mark.slow
@pytest.mark.parametrize("level", ["INFO", "DEBUG"])
def test_worker_json__a_real_provider_adds_no_info_line_per_chunk(
    database_url: str, db: psycopg.Connection[Any], mock_openai: MockOpenAI, level: str
) -> None:
    # httpx logs every request at INFO: a provider call per chunk would be a line per chunk.
    # At DEBUG those lines are wanted, and seeing them there shows this check can see them.
    job_id = submit(db, TEXT, 20)
    done = subprocess.run(
        [sys.executable, "-m", "workerd", "--burst", "--log-level", level],
        cwd=processes.ROOT,
        env=processes.environment(
            database_url,
            CHUNKQ_LOG_FORMAT="json",
            CHUNKQ_PROVIDER="openai",
            OPENAI_BASE_URL=mock_openai.base_url,
            OPENAI_API_KEY="sk-test",
            CHUNKQ_MODEL="mock-model",
        ),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    status = db.execute("SELECT status FROM jobs WHERE id = %s", (job_id,)).fetchone()
    assert status == ("COMPLETED",)
    lines = json_lines(done.stderr)
    per_chunk = [line for line in lines if line["level"] == "INFO" and "chunk" in line]
    requests = [line for line in per_chunk if line["logger"] == "httpx"]
    if level == "INFO":
        assert per_chunk == []
    else:
        assert len(requests) >= mock_openai.total_requests > 0


@pytest.mark.slow
def test_worker_text__stays_readable_not_json(
    database_url: str, db: psycopg.Connection[Any]
) -> None:
    job_id = submit(db, "one short text.", 100)
    done = run_burst(database_url)
    assert done.returncode == 0, done.stderr
    lines = done.stderr.splitlines()
    assert lines and not any(line.startswith("{") for line in lines), lines
    finalized = [line for line in lines if "finalized" in line]
    assert len(finalized) == 1 and f"job {job_id} finalized: COMPLETED" in finalized[0]
    assert " INFO workerd.jobs[" in finalized[0] and "job_id=" not in finalized[0]


def test_worker__refuses_a_bad_log_format_with_exit_2(database_url: str) -> None:
    done = run_burst(database_url, CHUNKQ_LOG_FORMAT="yaml")
    assert done.returncode == 2
    assert "CHUNKQ_LOG_FORMAT must be one of text, json, got 'yaml'" in done.stderr


def test_worker_json__a_refusal_at_start_is_a_json_line_too(database_url: str) -> None:
    done = run_burst(database_url, CHUNKQ_LOG_FORMAT="json", CHUNKQ_MAX_ATTEMPTS="zero")
    assert done.returncode == 2
    [line] = json_lines(done.stderr)
    assert line["level"] == "ERROR" and "CHUNKQ_MAX_ATTEMPTS" in line["message"], line


# -- a real gunicorn -----------------------------------------------------------------------


@pytest.mark.slow
def test_gunicorn_json__startup_accepted_and_cancelled_lines_are_json(
    database_url: str, tmp_path: Path
) -> None:
    log = tmp_path / "gunicorn.log"
    env = {"CHUNKQ_LOG_FORMAT": "json"}
    with processes.gunicorn_process(
        database_url, workers=1, log=log, env=env, log_level="info"
    ) as (base, _master):
        reply = httpx.post(f"{base}/v1/analyze", json={"raw_text": TEXT, "max_chunk_chars": 20})
        assert reply.status_code == 202
        job_id = reply.json()["job_id"]
        assert httpx.post(f"{base}/v1/analyze/{job_id}/cancel").status_code == 200
        processes.wait_for(lambda: "cancelled" in log.read_text(), 10, "the cancelled line")
    lines = json_lines(log.read_text())
    assert all(line.keys() >= REQUIRED for line in lines), lines
    assert any(line["logger"] == "gunicorn.error" for line in lines)
    assert any("Listening at" in line["message"] for line in lines)
    [accepted] = [line for line in lines if "accepted" in line["message"]]
    assert accepted["job_id"] == job_id and accepted["level"] == "INFO"
    total = reply.json()["chunks_total"]
    assert (accepted["chunks"], accepted["size"]) == (total, len(TEXT))
    [cancelled] = [line for line in lines if "cancelled" in line["message"]]
    assert cancelled["job_id"] == job_id and cancelled["status"] == "CANCELLED"
    assert (cancelled["succeeded"], cancelled["failed"], cancelled["cancelled"]) == (0, 0, total)


@pytest.mark.slow
def test_gunicorn_text__startup_lines_stay_readable(database_url: str, tmp_path: Path) -> None:
    log = tmp_path / "gunicorn.log"
    with processes.gunicorn_process(database_url, workers=1, log=log, log_level="info"):
        pass
    lines = log.read_text().splitlines()
    assert any("INFO gunicorn.error[" in line and "Listening at" in line for line in lines)
    assert not any(line.startswith("{") for line in lines), lines


def test_gunicorn__refuses_to_start_with_a_bad_log_format(database_url: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "gunicorn", "--bind", "127.0.0.1:0", "web:create_app()"],
        cwd=processes.ROOT,
        env=processes.environment(database_url, CHUNKQ_LOG_FORMAT="xml"),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode != 0
    assert "CHUNKQ_LOG_FORMAT must be one of text, json, got 'xml'" in done.stderr


# -- chunkq up ---------------------------------------------------------------------------------


@pytest.mark.slow
def test_up_json__its_own_messages_and_its_childrens_are_json(
    database_url: str, tmp_path: Path
) -> None:
    env = cli_env(
        DATABASE_URL=database_url,
        CHUNKQ_PROVIDER="simulated",
        CHUNKQ_HOME=str(tmp_path),
        CHUNKQ_AUTH="off",
        CHUNKQ_LOG_FORMAT="json",
    )
    banner: list[str] = []
    with chunkq_up(env, "--workers", "1", "--web-workers", "1", banner=banner) as (up, base, log):
        job = submit_and_finish(base, LONG_TEXT)
        up.send_signal(signal.SIGTERM)
        assert up.wait(60) == 0
    assert "chunkq is up" in banner[0]  # the banner, for people, on stdout
    lines = json_lines("".join(log))
    loggers = {line["logger"] for line in lines}
    assert {"chunkq", "gunicorn.error", "workerd", "workerd.jobs"} <= loggers, loggers
    ours = [line["message"] for line in lines if line["logger"] == "chunkq"]
    assert any(m.startswith("worker-1 started (pid") for m in ours) and "stopping" in ours
    ends = [line for line in lines if line.get("status") == job["status"]]
    assert [line["job_id"] for line in ends] == [job["job_id"]]


def test_up__refuses_a_bad_log_format_before_starting_anything(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "chunkq", "up", "--port", "0"],
        cwd=processes.ROOT,
        env=cli_env(CHUNKQ_HOME=str(tmp_path), CHUNKQ_LOG_FORMAT="loud"),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    assert "CHUNKQ_LOG_FORMAT must be one of text, json, got 'loud'" in done.stderr
    assert "started" not in done.stderr and not (tmp_path / "data").exists()
