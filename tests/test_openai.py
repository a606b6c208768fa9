"""The openai provider through real HTTP to the mock server: parsing, error classification,
retry hints, context-overflow splitting, threads, and the worker's retries on a real database."""

from __future__ import annotations

import datetime as dt
import functools
import socket
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from email.utils import format_datetime
from itertools import pairwise
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from schema.db import connect
from tests.mock_openai import (
    MockOpenAI,
    Reply,
    analysis,
    completion,
    context_limit,
    cut_off,
    disconnect,
    error_reply,
    mock_openai_fixture,  # noqa: F401 - the mock_openai fixture
    not_json,
    quota_exhausted,
    rate_limited,
    server_error,
)
from tests.support import chunk_rows, job_row, submit
from workerd.providers import (
    PermanentError,
    Provider,
    ProviderError,
    RetryableError,
    make_provider,
    provider_from_settings,
)
from workerd.providers.openai import DEFAULT_PROMPT, OpenAIProvider, retry_after
from workerd.settings import Settings
from workerd.worker import Worker

TEXT = "The queue is durable. Workers claim rows and the results are great."
GOOD = {
    "summary": "Workers claim rows from a durable queue.",
    "sentiment": "positive",
    "sentiment_score": 0.6,
    "key_points": ["durable queue", "workers claim rows"],
}


@pytest.fixture
def provider(mock_openai: MockOpenAI) -> Iterator[OpenAIProvider]:
    with OpenAIProvider(mock_openai.base_url, "sk-test", "gpt-test", timeout_read=10) as p:
        yield p


def failure(provider: OpenAIProvider, text: str = TEXT) -> ProviderError:
    """The exception ``analyze`` raises (failing the test if it returns)."""
    with pytest.raises((RetryableError, PermanentError)) as info:
        provider.analyze(text)
    return info.value


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --- requests and good replies ------------------------------------------------------------


def test_openai__good_reply_is_parsed_with_model_finish_reason_and_usage(
    mock_openai: MockOpenAI, provider: OpenAIProvider
) -> None:
    usage = {"prompt_tokens": 120, "completion_tokens": 30, "total_tokens": 150}
    mock_openai.serve(completion(GOOD, model="gpt-test-2024", usage=usage))
    assert provider.analyze(TEXT) == {
        **GOOD,
        "model": "gpt-test-2024",
        "finish_reason": "stop",
        "usage": usage,
    }
    [request] = mock_openai.requests
    assert (request.method, request.path) == ("POST", "/v1/chat/completions")
    body = request.body
    assert body["model"] == "gpt-test"
    assert [m["role"] for m in body["messages"]] == ["system", "user"]
    assert body["messages"][1]["content"] == DEFAULT_PROMPT.replace("{text}", TEXT)
    assert body["response_format"] == {"type": "json_object"}
    assert (body["temperature"], body["max_tokens"]) == (0, 1024)


def test_openai__default_mock_reply_analyses_the_chunk_sent(provider: OpenAIProvider) -> None:
    result = provider.analyze(TEXT)
    assert {k: result[k] for k in GOOD} == analysis(TEXT)
    assert result["model"] == "gpt-test" and result["usage"]["total_tokens"] > 0


@pytest.mark.parametrize(
    ("key", "expected"), [("sk-secret", "Bearer sk-secret"), (None, None), ("", None)]
)
def test_openai__authorization_header_sent_only_with_a_key(
    mock_openai: MockOpenAI, key: str | None, expected: str | None
) -> None:
    # A trailing slash on the base URL must not give "//chat/completions".
    with OpenAIProvider(mock_openai.base_url + "/", key, "llama3") as provider:
        provider.analyze(TEXT)
    [request] = mock_openai.requests
    assert request.path == "/v1/chat/completions"
    assert request.headers.get("authorization") == expected


def test_openai__fenced_json_and_small_slips_are_accepted(
    mock_openai: MockOpenAI, provider: OpenAIProvider
) -> None:
    fenced = 'Here it is:\n```json\n{"summary": " S ", "sentiment": "Negative",\n'
    fenced += '"sentiment_score": "-0.5", "key_points": "one point"}\n```'
    nested = {"summary": "S", "sentiment": {"label": "mixed", "score": 7}, "key_points": [1, ""]}
    mock_openai.serve(completion(fenced), completion(nested))
    first, second = provider.analyze(TEXT), provider.analyze(TEXT)
    assert (first["summary"], first["sentiment"], first["sentiment_score"]) == (
        "S",
        "negative",
        -0.5,
    )
    assert first["key_points"] == ["one point"]
    assert (second["sentiment"], second["sentiment_score"], second["key_points"]) == (
        "mixed",
        1.0,
        ["1"],
    )


@pytest.mark.parametrize(
    ("content", "complaint"),
    [
        ('["a", "list"]', "not a JSON object"),
        ('{"sentiment": "positive", "key_points": []}', "no string 'summary'"),
        ('{"summary": "s", "sentiment": "ecstatic", "key_points": []}', "no valid 'sentiment'"),
        ('{"summary": "s", "sentiment": "neutral", "key_points": {"a": 1}}', "'key_points'"),
    ],
)
def test_openai__wrong_shape_is_retryable_and_quotes_the_reply(
    mock_openai: MockOpenAI, provider: OpenAIProvider, content: str, complaint: str
) -> None:
    mock_openai.serve(completion(content))
    error = failure(provider)
    assert isinstance(error, RetryableError)
    assert complaint in str(error) and content[:20] in str(error)


def test_openai__non_json_content_is_retryable_and_quoted(
    mock_openai: MockOpenAI, provider: OpenAIProvider
) -> None:
    mock_openai.serve(not_json())
    error = failure(provider)
    assert isinstance(error, RetryableError)
    assert "not valid JSON" in str(error) and "Sure! The text is mostly positive" in str(error)


def test_openai__long_bad_content_is_quoted_to_200_chars(
    mock_openai: MockOpenAI, provider: OpenAIProvider
) -> None:
    mock_openai.serve(completion("x" * 5000))
    message = str(failure(provider))
    assert "x" * 200 + "…" in message and "x" * 201 not in message


def test_openai__finish_reason_length_is_retryable(
    mock_openai: MockOpenAI, provider: OpenAIProvider
) -> None:
    mock_openai.serve(cut_off())
    error = failure(provider)
    assert isinstance(error, RetryableError)
    assert str(error) == "reply cut off at max_tokens (finish_reason=length)"


def test_openai__200_with_a_non_json_body_is_retryable(
    mock_openai: MockOpenAI, provider: OpenAIProvider
) -> None:
    mock_openai.serve(Reply(200, "<html>captive portal</html>"))
    error = failure(provider)
    assert isinstance(error, RetryableError) and "captive portal" in str(error)


# --- error classification -----------------------------------------------------------------


@pytest.mark.parametrize("status", [408, 409, 429, 500, 502, 503, 504])
def test_openai__retryable_statuses_raise_retryable_error(
    mock_openai: MockOpenAI, provider: OpenAIProvider, status: int
) -> None:
    mock_openai.serve(error_reply(status, "try again later", kind="server_error"))
    error = failure(provider)
    assert type(error) is RetryableError
    assert str(error) == f"HTTP {status}: try again later (type=server_error)"


@pytest.mark.parametrize("status", [400, 401, 403, 404, 422])
def test_openai__client_errors_raise_permanent_error(
    mock_openai: MockOpenAI, provider: OpenAIProvider, status: int
) -> None:
    mock_openai.serve(error_reply(status, "you sent something wrong", code="invalid_value"))
    error = failure(provider)
    assert type(error) is PermanentError
    assert str(error) == (
        f"HTTP {status}: you sent something wrong (type=invalid_request_error, code=invalid_value)"
    )


def test_openai__quota_429_is_permanent(mock_openai: MockOpenAI, provider: OpenAIProvider) -> None:
    mock_openai.serve(quota_exhausted())
    error = failure(provider)
    assert type(error) is PermanentError
    assert str(error).startswith("HTTP 429: You exceeded your current quota")
    assert "code=insufficient_quota" in str(error)


@pytest.mark.parametrize(
    ("reply", "header", "expected"),
    [
        (error_reply(400, "bad"), "true", RetryableError),
        (server_error(500), "false", PermanentError),
        (rate_limited("1"), "false", PermanentError),
        (quota_exhausted(), "true", RetryableError),
    ],
)
def test_openai__x_should_retry_header_overrides_the_status(
    mock_openai: MockOpenAI,
    provider: OpenAIProvider,
    reply: Reply,
    header: str,
    expected: type,
) -> None:
    reply.headers["x-should-retry"] = header
    mock_openai.serve(reply)
    assert type(failure(provider)) is expected


@pytest.mark.parametrize(
    ("shape", "status", "kind", "code", "suffix"),
    [
        (
            "openai",
            400,
            "invalid_request_error",
            "bad_temp",
            " (type=invalid_request_error, code=bad_temp)",
        ),
        ("vllm_flat", 400, "BadRequestError", None, " (type=BadRequestError, code=400)"),
        ("vllm_nested", 400, "BadRequestError", None, " (type=BadRequestError, code=400)"),
        ("llamacpp", 400, "invalid_request_error", None, " (type=invalid_request_error, code=400)"),
        ("ollama", 400, None, None, ""),
    ],
)
def test_openai__each_error_body_shape_gives_a_readable_message(
    mock_openai: MockOpenAI,
    provider: OpenAIProvider,
    shape: str,
    status: int,
    kind: str | None,
    code: str | None,
    suffix: str,
) -> None:
    mock_openai.serve(error_reply(status, "temperature must be  <= 2", shape, kind=kind, code=code))
    error = failure(provider)
    assert type(error) is PermanentError
    assert str(error) == f"HTTP {status}: temperature must be <= 2{suffix}"


def test_openai__html_error_body_gives_status_and_its_first_200_chars(
    mock_openai: MockOpenAI, provider: OpenAIProvider
) -> None:
    mock_openai.serve(error_reply(502, "502 Bad Gateway " + "padding " * 50, "html"))
    error = failure(provider)
    assert type(error) is RetryableError
    message = str(error)
    assert message.startswith("HTTP 502: <html><head><title>502</title>")
    assert "502 Bad Gateway" in message and len(message) == len("HTTP 502: ") + 200


def test_openai__empty_error_body_falls_back_to_the_reason_phrase(
    mock_openai: MockOpenAI, provider: OpenAIProvider
) -> None:
    mock_openai.serve(Reply(503, b""))
    assert str(failure(provider)) == "HTTP 503: Service Unavailable"


# --- retry hints --------------------------------------------------------------------------


def test_openai__retry_after_seconds_is_passed_on(
    mock_openai: MockOpenAI, provider: OpenAIProvider
) -> None:
    mock_openai.serve(rate_limited("7"), rate_limited("0.5"), rate_limited(None))
    assert [failure(provider).retry_after for _ in range(3)] == [7.0, 0.5, None]


def test_openai__retry_after_http_date_is_parsed(
    mock_openai: MockOpenAI, provider: OpenAIProvider
) -> None:
    when = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=30)
    past = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=30)
    mock_openai.serve(
        rate_limited(format_datetime(when, usegmt=True)),
        rate_limited(format_datetime(past, usegmt=True)),
    )
    hint = failure(provider).retry_after
    assert hint is not None and 25 < hint <= 30
    assert failure(provider).retry_after == 0.0


def test_openai__retry_after_ms_wins_over_retry_after(
    mock_openai: MockOpenAI, provider: OpenAIProvider
) -> None:
    mock_openai.serve(rate_limited("9", retry_after_ms="1500"))
    assert failure(provider).retry_after == 1.5


def test_openai__retry_after_is_capped(mock_openai: MockOpenAI) -> None:
    later = format_datetime(dt.datetime.now(dt.UTC) + dt.timedelta(days=1), usegmt=True)
    mock_openai.serve(
        rate_limited("86400"), rate_limited(None, retry_after_ms="600000"), rate_limited(later)
    )
    with OpenAIProvider(mock_openai.base_url, None, "m", retry_after_cap_s=60) as provider:
        hints = [failure(provider).retry_after for _ in range(3)]
    assert hints == [60.0, 60.0, 60.0]


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"retry-after": "soon"}, None),
        ({"retry-after": "nan"}, None),
        ({"retry-after": "-5"}, 0.0),
        ({"retry-after-ms": "junk", "retry-after": "3"}, 3.0),
        ({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}, 0.0),
    ],
)
def test_openai__unreadable_retry_after_is_ignored(
    headers: dict[str, str], expected: float | None
) -> None:
    assert retry_after(httpx.Headers(headers), 300.0) == expected


# --- transport failures -------------------------------------------------------------------


def test_openai__connection_refused_is_retryable() -> None:
    with OpenAIProvider(f"http://127.0.0.1:{free_port()}/v1", None, "m") as provider:
        error = failure(provider)
    assert type(error) is RetryableError and "ConnectError" in str(error)


def test_openai__read_timeout_is_retryable(mock_openai: MockOpenAI) -> None:
    mock_openai.latency_s = 30.0  # cut short when the mock closes
    with OpenAIProvider(mock_openai.base_url, None, "m", timeout_read=0.2) as provider:
        started = time.monotonic()
        error = failure(provider)
    assert time.monotonic() - started < 5
    assert type(error) is RetryableError and "ReadTimeout" in str(error)


def test_openai__dropped_connection_is_retryable(
    mock_openai: MockOpenAI, provider: OpenAIProvider
) -> None:
    mock_openai.serve(disconnect())
    error = failure(provider)
    assert type(error) is RetryableError and "RemoteProtocolError" in str(error)
    assert provider.analyze(TEXT)["summary"]  # the pool recovers


# --- context overflow ---------------------------------------------------------------------

PARAGRAPHS = "\n\n".join(
    " ".join([f"Paragraph {i} says the worker is {'great' if i % 2 else 'slow'} at step {i}."] * 3)
    for i in range(12)
)
OVERHEAD = len(DEFAULT_PROMPT) - len("{text}")


@pytest.mark.parametrize("shape", ["openai", "vllm_flat", "llamacpp", "ollama"])
def test_openai__context_overflow_splits_into_parts_that_tile_the_chunk(
    mock_openai: MockOpenAI, provider: OpenAIProvider, shape: str
) -> None:
    limit = OVERHEAD + 700
    mock_openai.fallback = context_limit(limit, shape)
    result = provider.analyze(PARAGRAPHS)
    parts = result["parts"]
    assert len(parts) >= 2
    assert parts[0]["start"] == 0 and parts[-1]["end"] == len(PARAGRAPHS)
    assert all(a["end"] == b["start"] for a, b in pairwise(parts))
    for part in parts:
        piece = PARAGRAPHS[part["start"] : part["end"]]
        # The mock analysed exactly this piece, so offsets and order are the real ones.
        assert {k: part[k] for k in ("summary", "sentiment", "key_points")} == {
            k: analysis(piece)[k] for k in ("summary", "sentiment", "key_points")
        }
        assert len(piece) <= 700
        if part is not parts[-1]:
            assert piece.endswith("\n\n")  # cut at a paragraph break
    assert result["summary"] == " ".join(p["summary"] for p in parts)
    assert result["key_points"] == [k for p in parts for k in p["key_points"]]
    assert result["usage"]["total_tokens"] == sum(p["usage"]["total_tokens"] for p in parts)
    assert result["sentiment"] in ("positive", "negative", "neutral", "mixed")
    rejected = sum(len(r.user_text) > limit for r in mock_openai.requests)
    assert rejected == len(mock_openai.requests) - len(parts) > 0


def test_openai__context_overflow_of_a_tiny_piece_is_permanent(
    mock_openai: MockOpenAI, provider: OpenAIProvider
) -> None:
    mock_openai.fallback = context_limit(10)  # even the prompt alone is too long
    error = failure(provider, PARAGRAPHS)
    assert isinstance(error, PermanentError) and not error.retryable
    assert "maximum context length" in str(error) and "still overflows" in str(error)
    assert mock_openai.total_requests <= 2 ** (4 + 1) - 1  # at most a full tree of depth 4


def test_openai__context_overflow_split_depth_is_limited(mock_openai: MockOpenAI) -> None:
    mock_openai.fallback = context_limit(OVERHEAD + 200)
    with OpenAIProvider(mock_openai.base_url, None, "m", max_split_depth=1) as provider:
        error = failure(provider, PARAGRAPHS)
    assert isinstance(error, PermanentError) and "after 1 split(s)" in str(error)
    assert mock_openai.total_requests == 2  # the whole, then the first half; no deeper


def test_openai__bad_request_that_is_not_an_overflow_is_not_split(
    mock_openai: MockOpenAI, provider: OpenAIProvider
) -> None:
    mock_openai.serve(error_reply(400, "Invalid value for 'temperature'"))
    assert type(failure(provider, PARAGRAPHS)) is PermanentError
    assert mock_openai.total_requests == 1


# --- configuration ------------------------------------------------------------------------


def test_openai__prompt_file_override_is_used(
    mock_openai: MockOpenAI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    template = 'Return JSON like {"summary": "..."} for:\n{text}\n(end)'
    path = tmp_path / "prompt.txt"
    path.write_text(template, encoding="utf-8")
    monkeypatch.setenv("CHUNKQ_PROMPT_FILE", str(path))
    settings = Settings(provider="openai", openai_base_url=mock_openai.base_url, model="m1")
    provider = provider_from_settings(settings)
    assert isinstance(provider, OpenAIProvider)
    try:
        provider.analyze(TEXT)
    finally:
        provider.close()
    [request] = mock_openai.requests
    assert request.user_text == template.replace("{text}", TEXT)
    assert request.body["model"] == "m1" and "authorization" not in request.headers


def test_openai__prompt_file_without_placeholder_is_rejected(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "prompt.txt"
    path.write_text("Analyse this text as JSON.", encoding="utf-8")
    monkeypatch.setenv("CHUNKQ_PROMPT_FILE", str(path))
    with pytest.raises(ValueError, match=r"\{text\}"):
        provider_from_settings(Settings(provider="openai"))
    monkeypatch.setenv("CHUNKQ_PROMPT_FILE", str(tmp_path / "missing.txt"))
    with pytest.raises(ValueError, match="cannot be read"):
        provider_from_settings(Settings(provider="openai"))


def test_openai__registered_as_a_provider(mock_openai: MockOpenAI) -> None:
    provider = make_provider("openai", base_url=mock_openai.base_url, api_key="k", model="m")
    assert isinstance(provider, OpenAIProvider) and isinstance(provider, Provider)
    provider.close()
    assert provider.name == "openai" and provider.base_url == mock_openai.base_url
    with pytest.raises(ValueError, match="http"):
        OpenAIProvider("localhost:11434", None, "m")


# --- threads ------------------------------------------------------------------------------


def test_openai__sixteen_threads_share_one_provider(
    mock_openai: MockOpenAI, provider: OpenAIProvider
) -> None:
    texts = [f"Chunk number {i} is good." for i in range(16)]
    mock_openai.pause()
    with ThreadPoolExecutor(16) as pool:
        futures = [pool.submit(provider.analyze, text) for text in texts]
        try:
            # All 16 are open at the server at once: the client does not serialise them.
            assert mock_openai.wait_for(lambda m: m.in_flight == 16, timeout=10)
        finally:
            mock_openai.resume()
        results = [f.result(timeout=10) for f in futures]
    assert [r["summary"] for r in results] == [analysis(t)["summary"] for t in texts]
    assert mock_openai.max_in_flight == 16 and mock_openai.total_requests == 16


# --- summarize ----------------------------------------------------------------------------


def chunk_result(summary: str, label: str, score: float, points: list[str]) -> dict[str, Any]:
    usage = {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}
    return {
        "summary": summary,
        "sentiment": label,
        "sentiment_score": score,
        "key_points": points,
        "usage": usage,
    }


def test_openai__summarize_merges_chunks_in_order(provider: OpenAIProvider) -> None:
    results = [
        (300, chunk_result("first", "positive", 0.8, ["Queues", "locks"])),
        (100, chunk_result("second", "negative", -0.4, ["queues ", "leases"])),
        (100, chunk_result("third", "positive", 0.2, [f"p{i}" for i in range(30)])),
    ]
    merged = provider.summarize(results)
    assert merged["chunks"] == 3
    assert merged["summaries"] == ["first", "second", "third"]
    assert merged["sentiment"] == {
        "label": "positive",
        "score": round((300 * 0.8 - 100 * 0.4 + 100 * 0.2) / 500, 4),
        "labels": {"positive": 2, "negative": 1},
    }
    assert merged["key_points"] == ["Queues", "locks", "leases"] + [f"p{i}" for i in range(17)]
    assert merged["usage"] == {"prompt_tokens": 30, "completion_tokens": 15, "total_tokens": 45}
    tie = provider.summarize(results[:2])["sentiment"]
    assert tie["label"] == "mixed"
    assert provider.summarize([])["sentiment"] is None


# --- through the worker, on a real database ------------------------------------------------


class FakeClock:
    """The worker's "now": starts a minute ahead of the database, moves only when told."""

    def __init__(self) -> None:
        self.now = dt.datetime.now(dt.UTC) + dt.timedelta(minutes=1)

    def __call__(self) -> dt.datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += dt.timedelta(seconds=seconds)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def worker_for(database_url: str, provider: OpenAIProvider, clock: FakeClock) -> Iterator[Any]:
    workers: list[Worker] = []

    def make(settings: Settings) -> Worker:
        connect_db = functools.partial(connect, database_url, autocommit=True)
        workers.append(Worker(settings, provider, connect_db, clock=clock))
        return workers[-1]

    yield make
    for worker in workers:
        worker.close()


def attempts_logged(db: psycopg.Connection[Any]) -> list[tuple[Any, ...]]:
    return db.execute(
        "SELECT seq, attempt, error_class, error, at FROM chunk_attempts ORDER BY seq, attempt"
    ).fetchall()


def test_worker__500_then_success_completes_with_one_error_logged(
    mock_openai: MockOpenAI, db: psycopg.Connection[Any], worker_for: Any, clock: FakeClock
) -> None:
    mock_openai.serve(server_error(500))
    job_id = submit(db, TEXT, 1000)
    worker = worker_for(Settings(backoff_base_s=0.01, backoff_max_s=0.05))
    for _ in range(10):
        worker.run_once()
        clock.advance(1)
        if job_row(db, job_id)["status"] not in ("PENDING", "PROCESSING"):
            break
    row = job_row(db, job_id)
    assert row["status"] == "COMPLETED"
    [(seq, attempt, error_class, error, _)] = attempts_logged(db)
    assert (seq, attempt, error_class) == (0, 1, "RetryableError")
    assert error.startswith("HTTP 500: The server had an error")
    assert chunk_rows(db, job_id)[0]["attempts"] == 2
    [entry] = row["analysis_result"]["chunks"]
    assert entry["status"] == "succeeded"
    assert entry["result"]["summary"] == analysis(TEXT)["summary"]
    assert row["analysis_result"]["summary"]["summaries"] == [entry["result"]["summary"]]
    assert mock_openai.total_requests == 2


def test_worker__429_retry_after_delays_the_next_attempt(
    mock_openai: MockOpenAI, db: psycopg.Connection[Any], worker_for: Any, clock: FakeClock
) -> None:
    mock_openai.serve(rate_limited("2"))
    job_id = submit(db, TEXT, 1000)
    # backoff_max_s bounds every wait, the server's hint included: leave room for 2 s.
    worker = worker_for(Settings(backoff_base_s=0.01, backoff_max_s=10))
    step = worker.run_once()
    assert (step.claimed, step.recorded) == (1, 1)
    [chunk] = chunk_rows(db, job_id)
    [(_, _, error_class, error, failed_at)] = attempts_logged(db)
    assert (chunk["status"], chunk["attempts"], error_class) == ("pending", 1, "RetryableError")
    assert error.startswith("HTTP 429: Rate limit reached")
    assert chunk["next_attempt_at"] - failed_at >= dt.timedelta(seconds=2)
    clock.advance(1.9)
    assert worker.run_once().claimed == 0
    clock.advance(0.1)
    assert worker.run_once().claimed == 1
    assert job_row(db, job_id)["status"] == "COMPLETED"


def test_worker__permanent_401_fails_the_chunk_after_one_attempt(
    mock_openai: MockOpenAI, db: psycopg.Connection[Any], worker_for: Any, clock: FakeClock
) -> None:
    mock_openai.serve(
        error_reply(401, "Incorrect API key provided: sk-test.", code="invalid_api_key")
    )
    job_id = submit(db, TEXT, 1000)
    worker = worker_for(Settings(backoff_base_s=0.01, backoff_max_s=0.05, max_attempts=3))
    worker.run_once()
    [chunk] = chunk_rows(db, job_id)
    assert (chunk["status"], chunk["attempts"]) == ("failed", 1)
    assert chunk["error"].startswith("HTTP 401: Incorrect API key provided")
    assert job_row(db, job_id)["status"] == "FAILED"
    assert [row[2] for row in attempts_logged(db)] == ["PermanentError"]
    clock.advance(3600)
    assert worker.run_once().claimed == 0
    assert mock_openai.total_requests == 1


def test_reduce__one_more_call_summarises_the_ordered_chunk_analyses(
    mock_openai: MockOpenAI, db: psycopg.Connection[Any], worker_for: Any
) -> None:
    text = "First part of the story. " * 8 + "\n\n" + "Second part, the ending. " * 8
    job_id = submit(db, text, 220, reduce=True)
    worker = worker_for(Settings(backoff_base_s=0.01, backoff_max_s=0.05))
    for _ in range(10):
        if not worker.run_once().busy:
            break
    result = job_row(db, job_id)["analysis_result"]
    reduce = result["reduce"]
    assert reduce["status"] == "succeeded" and reduce["attempts"] == 1
    assert reduce["result"]["chunks"] == len(result["chunks"]) == 2
    assert reduce["result"]["truncated"] is False
    assert reduce["result"]["summary"] and reduce["result"]["usage"]["total_tokens"] > 0
    last = mock_openai.requests[-1]
    prompt = last.user_text
    first, second = (c["result"]["summary"] for c in result["chunks"])
    assert prompt.index(first) < prompt.index(second)
    assert mock_openai.total_requests == 3


def test_reduce__failure_is_reported_and_keeps_every_chunk_result(
    mock_openai: MockOpenAI, db: psycopg.Connection[Any], worker_for: Any
) -> None:
    job_id = submit(db, TEXT, 1000, reduce=True)
    mock_openai.serve(completion(analysis(TEXT)), error_reply(401, "Incorrect API key"))
    worker = worker_for(Settings(backoff_base_s=0.01, backoff_max_s=0.05))
    for _ in range(10):
        if not worker.run_once().busy:
            break
    row = job_row(db, job_id)
    assert row["status"] == "COMPLETED"
    reduce = row["analysis_result"]["reduce"]
    assert reduce["status"] == "failed" and "Incorrect API key" in reduce["error"]
    [entry] = row["analysis_result"]["chunks"]
    assert entry["status"] == "succeeded" and entry["result"]["summary"]
    assert row["chunks_completed"] == 1


def test_reduce__input_is_cut_to_the_budget_keeping_every_part_in_order() -> None:
    from workerd.providers.openai import _reduce_input

    analyses = [
        {"index": i, "result": {"summary": f"summary {i} " + "x" * 500, "key_points": ["p"]}}
        for i in range(20)
    ]
    sections, truncated = _reduce_input(analyses, 4000)
    assert truncated and len(sections) <= 4000 + 20 * 40
    positions = [sections.index(f"summary {i} ") for i in range(20)]
    assert positions == sorted(positions)
    small, cut = _reduce_input(analyses[:2], 100_000)
    assert not cut and "Key points: p" in small


@pytest.mark.slow
def test_shared_cap__three_worker_processes_never_exceed_three_requests_at_once(
    mock_openai: MockOpenAI, database_url: str, db: psycopg.Connection[Any], tmp_path: Path
) -> None:
    from tests.processes import start_worker, stop, wait_for

    mock_openai.latency_s = 0.1
    text = "\n\n".join(f"Paragraph {i} of a document that needs analysing." for i in range(40))
    env = {
        "CHUNKQ_PROVIDER": "openai",
        "OPENAI_BASE_URL": mock_openai.base_url,
        "CHUNKQ_PROVIDER_CONCURRENCY": "3",
    }
    workers = [
        start_worker(database_url, "--concurrency", "16", log=tmp_path / f"w{i}.log", **env)
        for i in range(3)
    ]
    try:
        job_id = submit(db, text, 60)
        total = job_row(db, job_id)["chunks_total"]
        assert total >= 30
        wait_for(
            lambda: job_row(db, job_id)["status"] == "COMPLETED",
            60,
            "the job to finish",
            interval=0.1,
        )
    finally:
        codes = [stop(w) for w in workers]
    assert codes == [0, 0, 0]
    assert mock_openai.total_requests == total
    assert mock_openai.max_in_flight == 3
    owners = db.execute("SELECT count(DISTINCT worker_id) FROM chunks").fetchone()[0]  # type: ignore[index]
    assert owners >= 2
