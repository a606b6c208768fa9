"""The openai provider through real HTTP to the mock server: parsing, error classification,
retry hints, context-overflow splitting, threads, and the worker's retries on a real database."""

from __future__ import annotations

import datetime as dt
import functools
import json
import random
import socket
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from email.utils import format_datetime
from itertools import pairwise
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from schema.db import connect
from schema.reads import job_report
from tests.mock_openai import (
    MockOpenAI,
    Reply,
    analysis,
    analysis_reply,
    completion,
    context_limit,
    disconnect,
    error_reply,
    mock_openai_fixture,  # noqa: F401 - the mock_openai fixture
    not_json,
    quota_exhausted,
    rate_limited,
    server_error,
)
from tests.support import chunk_rows, job_row, run_until_idle, submit
from workerd.providers import (
    AttemptAborted,
    AttemptTimeout,
    Call,
    InvalidReply,
    PermanentError,
    Provider,
    ProviderError,
    ProviderUnavailable,
    RetryableError,
    make_provider,
    provider_from_settings,
)
from workerd.providers.classify import retry_after
from workerd.providers.openai import FORMATS, OpenAIProvider
from workerd.providers.prompts import DEFAULT_PROMPT, REDUCE_PROMPT
from workerd.providers.replies import ANALYSIS_SCHEMA
from workerd.settings import Settings
from workerd.worker import Worker

TEXT = "The queue is durable. Workers claim rows and the results are great."
GOOD = {
    "summary": "Workers claim rows from a durable queue.",
    "sentiment": "positive",
    "sentiment_score": 0.5,
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


@contextmanager
def refusing_port() -> Iterator[int]:
    """A loopback port that refuses connections: bound (so nobody else can take it while the
    test runs) but never listening."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield int(sock.getsockname()[1])


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
    assert body["response_format"]["type"] == "json_schema"
    assert (body["temperature"], body["max_tokens"]) == (0, 1024)
    assert "stream" not in body  # llama.cpp cuts streams short under concurrency


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


def test_openai__fenced_json_and_surrounding_whitespace_are_accepted(
    mock_openai: MockOpenAI, provider: OpenAIProvider
) -> None:
    fenced = "\n ```json\n" + json.dumps(GOOD) + "\n```\n "
    mock_openai.serve(completion(fenced), completion("  " + json.dumps(GOOD) + "\n"))
    for _ in range(2):
        assert {k: v for k, v in provider.analyze(TEXT).items() if k in GOOD} == GOOD
    assert mock_openai.total_requests == 2  # neither needed another try


@pytest.mark.parametrize(
    ("content", "complaint"),
    [
        ('["a", "list"]', "$ should be object, got array"),
        ('{"sentiment": "positive", "key_points": []}', "$.summary is missing"),
        (
            '{"summary": "s", "sentiment": "ecstatic", "sentiment_score": 0, "key_points": []}',
            "$.sentiment should be one of",
        ),
        (
            '{"summary": "s", "sentiment": "Neutral", "sentiment_score": 0, "key_points": []}',
            "$.sentiment should be one of",
        ),
        (
            '{"summary": "s", "sentiment": "neutral", "sentiment_score": "0.5", "key_points": []}',
            "$.sentiment_score should be number, got string",
        ),
        (
            '{"summary": "s", "sentiment": "mixed", "sentiment_score": 2.1, "key_points": []}',
            "$.sentiment_score should be one of [-1, -0.75",
        ),
        (
            '{"summary": "s", "sentiment": "neutral", "sentiment_score": 0, "key_points": "a"}',
            "$.key_points should be array",
        ),
        (
            '{"summary": "s", "sentiment": "neutral", "sentiment_score": 0, "key_points": [],'
            ' "extra": 1}',
            "$.extra is not allowed",
        ),
        ('Here it is: {"summary": "s"}', "not valid JSON"),
    ],
)
def test_openai__off_schema_reply_twice_is_a_permanent_invalid_reply_quoting_it(
    mock_openai: MockOpenAI, provider: OpenAIProvider, content: str, complaint: str
) -> None:
    mock_openai.serve(completion(content), completion(content))
    error = failure(provider)
    assert type(error) is InvalidReply and not error.retryable
    assert complaint in str(error) and content[:20] in str(error)
    assert "(the same reply again)" in str(error)
    first, second = (r.body for r in mock_openai.requests)
    # The second try changes the sampling: at temperature 0 the same request gives the same
    # reply, so asking again unchanged cannot help.
    assert (first["temperature"], "seed" in first) == (0, False)
    assert second["temperature"] > 0 and isinstance(second["seed"], int)
    assert first["messages"] == second["messages"]


def test_openai__off_schema_reply_then_a_good_one_succeeds_in_the_same_attempt(
    mock_openai: MockOpenAI, provider: OpenAIProvider
) -> None:
    mock_openai.serve(completion({"summary": {"key_points": ["x"]}}), completion(GOOD))
    result = provider.analyze(TEXT)
    assert {k: result[k] for k in GOOD} == GOOD
    assert mock_openai.total_requests == 2


def test_openai__two_different_bad_replies_quote_the_last(
    mock_openai: MockOpenAI, provider: OpenAIProvider
) -> None:
    mock_openai.serve(not_json(), completion("x" * 5000))
    message = str(failure(provider))
    assert "same reply again" not in message
    assert "x" * 300 + "…" in message and "x" * 301 not in message


def test_openai__reply_cut_at_max_tokens_is_an_invalid_reply(mock_openai: MockOpenAI) -> None:
    usage = {"prompt_tokens": 50, "completion_tokens": 64, "total_tokens": 114}
    cut = completion('{"summary": "The text begins by', finish_reason="length", usage=usage)
    mock_openai.serve(cut, cut)
    with OpenAIProvider(mock_openai.base_url, None, "m", max_tokens=64) as provider:
        error = failure(provider)
    assert type(error) is InvalidReply and "raise CHUNKQ_MAX_TOKENS" in str(error)


def test_openai__200_with_a_body_that_is_no_completion_is_retryable(
    mock_openai: MockOpenAI, provider: OpenAIProvider
) -> None:
    mock_openai.serve(Reply(200, "<html>captive portal</html>"))
    error = failure(provider)
    assert type(error) is RetryableError and "captive portal" in str(error)
    assert mock_openai.total_requests == 1  # not the model's reply: no second sampling


@pytest.fixture
def streaming(mock_openai: MockOpenAI) -> Iterator[OpenAIProvider]:
    with OpenAIProvider(mock_openai.base_url, None, "gpt-test", stream=True) as p:
        yield p


def test_openai__streamed_and_plain_replies_read_the_same(
    mock_openai: MockOpenAI, streaming: OpenAIProvider
) -> None:
    usage = {"prompt_tokens": 12, "completion_tokens": 30, "total_tokens": 42}
    streamed = completion(GOOD, usage=usage)
    plain = completion(GOOD, usage=usage)
    plain.stream = False  # a server that ignores "stream"
    mock_openai.serve(streamed, plain)
    first, second = streaming.analyze(TEXT), streaming.analyze(TEXT)
    assert first == second and first["usage"] == usage
    assert all(r.body["stream"] is True for r in mock_openai.requests)
    assert all(r.body["stream_options"] == {"include_usage": True} for r in mock_openai.requests)


def test_openai__stream_cut_short_without_a_finish_reason_is_retryable(
    mock_openai: MockOpenAI, streaming: OpenAIProvider
) -> None:
    # What llama.cpp sends when another request interrupts the stream: [DONE], no finish.
    events = [{"choices": [{"index": 0, "delta": {"content": '{"summary": "The'}}]}]
    text = "".join(f"data: {json.dumps(e)}\n\n" for e in events) + "data: [DONE]\n\n"
    mock_openai.serve(Reply(200, text, {"content-type": "text/event-stream"}))
    error = failure(streaming)
    assert type(error) is RetryableError and "interrupt_requests" in str(error)
    assert mock_openai.total_requests == 1  # not the model's reply: no second sampling


def test_openai__stream_without_usage_counts_the_reply_tokens(
    mock_openai: MockOpenAI, streaming: OpenAIProvider
) -> None:
    reply = completion(GOOD)
    del reply.body["usage"]  # llama.cpp's stream carries no usage
    mock_openai.serve(reply)
    usage = streaming.analyze(TEXT)["usage"]
    # The mock streams four characters an event, about what one token is.
    assert usage["completion_tokens"] == -(-len(json.dumps(GOOD)) // 4)


# --- structured outputs -------------------------------------------------------------------

LLAMACPP_FORMAT_ERROR = (
    "1 validation error:\n  {'type': 'literal_error', 'loc': ('body', 'response_format', "
    "'type'), 'msg': \"Input should be 'text' or 'json_object'\", 'input': 'json_schema'}"
)


def only_formats(*accepted: str) -> Any:
    """A server that takes only these response_format variants (as llama.cpp's 500 says)."""

    def respond(request: Any) -> Reply:
        wanted = request.body.get("response_format")
        name = "prompt" if wanted is None else wanted["type"]
        if name == "json_object" and "schema" in wanted:
            name = "json_object+schema"
        if name not in accepted:
            return error_reply(500, LLAMACPP_FORMAT_ERROR, kind="internal_server_error")
        return analysis_reply(request)

    return respond


def test_openai__asks_for_the_analysis_schema_itself(
    mock_openai: MockOpenAI, provider: OpenAIProvider
) -> None:
    provider.analyze(TEXT)
    [request] = mock_openai.requests
    assert request.body["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "chunk_analysis", "schema": ANALYSIS_SCHEMA, "strict": True},
    }


@pytest.mark.parametrize(
    ("accepted", "settles_on"),
    [
        (("json_object+schema", "json_object"), "json_object+schema"),
        (("json_object",), "json_object"),
        (("prompt",), "prompt"),
    ],
)
def test_openai__rejected_format_falls_back_once_and_is_remembered(
    mock_openai: MockOpenAI, provider: OpenAIProvider, accepted: tuple[str, ...], settles_on: str
) -> None:
    mock_openai.fallback = only_formats(*accepted)
    first = provider.analyze(TEXT)
    assert provider.response_format == settles_on
    tried = mock_openai.total_requests
    assert tried == 1 + FORMATS.index(settles_on)
    second = provider.analyze(TEXT)
    assert first == second and mock_openai.total_requests == tried + 1  # remembered
    last = mock_openai.requests[-1].body
    if settles_on == "prompt":
        assert "response_format" not in last
    elif settles_on == "json_object+schema":
        assert last["response_format"] == {"type": "json_object", "schema": ANALYSIS_SCHEMA}


def test_openai__a_500_that_does_not_name_the_format_is_no_fallback(
    mock_openai: MockOpenAI, provider: OpenAIProvider
) -> None:
    mock_openai.serve(server_error(500))
    assert type(failure(provider)) is ProviderUnavailable
    assert provider.response_format == "json_schema"


# --- error classification -----------------------------------------------------------------


@pytest.mark.parametrize("status", [408, 409, 429, 500, 502, 503, 504])
def test_openai__retryable_statuses_raise_retryable_error(
    mock_openai: MockOpenAI, provider: OpenAIProvider, status: int
) -> None:
    mock_openai.serve(error_reply(status, "try again later", kind="server_error"))
    error = failure(provider)
    # 5xx says the provider is down: retried, and counted by the circuit breaker.
    assert type(error) is (ProviderUnavailable if status >= 500 else RetryableError)
    assert error.unavailable == (status >= 500)
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
    assert type(error) is ProviderUnavailable
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


def test_openai__connection_refused_is_provider_unavailable() -> None:
    with refusing_port() as port, OpenAIProvider(f"http://127.0.0.1:{port}/v1", None, "m") as p:
        error = failure(p)
    assert type(error) is ProviderUnavailable and "ConnectError" in str(error)


def test_openai__read_timeout_is_retryable_but_not_unavailable(mock_openai: MockOpenAI) -> None:
    mock_openai.latency_s = 30.0  # cut short when the mock closes
    # No wall-clock bound: without the read timeout the call would get its reply after 30 s
    # and raise nothing, and only the read timeout raises ReadTimeout.
    with OpenAIProvider(mock_openai.base_url, None, "m", timeout_read=0.2) as provider:
        error = failure(provider)
    assert type(error) is RetryableError and "ReadTimeout" in str(error)


def test_openai__dropped_connection_is_provider_unavailable(
    mock_openai: MockOpenAI, provider: OpenAIProvider
) -> None:
    mock_openai.serve(disconnect())
    error = failure(provider)
    assert type(error) is ProviderUnavailable and "RemoteProtocolError" in str(error)
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


def test_openai__prompt_file_override_is_used(mock_openai: MockOpenAI, tmp_path: Path) -> None:
    template = 'Return JSON like {"summary": "..."} for:\n{text}\n(end)'
    path = tmp_path / "prompt.txt"
    path.write_text(template, encoding="utf-8")
    settings = Settings.from_env(
        {
            "CHUNKQ_PROVIDER": "openai",
            "OPENAI_BASE_URL": mock_openai.base_url,
            "CHUNKQ_MODEL": "m1",
            "CHUNKQ_PROMPT_FILE": str(path),
        }
    )
    provider = provider_from_settings(settings)
    assert isinstance(provider, OpenAIProvider)
    try:
        provider.analyze(TEXT)
    finally:
        provider.close()
    [request] = mock_openai.requests
    assert request.user_text == template.replace("{text}", TEXT)
    assert request.body["model"] == "m1" and "authorization" not in request.headers


def test_openai__prompt_files_without_their_placeholder_are_rejected(tmp_path: Path) -> None:
    path = tmp_path / "prompt.txt"
    path.write_text("Analyse this text as JSON.", encoding="utf-8")
    with pytest.raises(ValueError, match=r"CHUNKQ_PROMPT_FILE=.*\{text\}"):
        provider_from_settings(Settings(provider="openai", prompt_file=str(path)))
    with pytest.raises(ValueError, match=r"CHUNKQ_REDUCE_PROMPT_FILE=.*\{sections\}"):
        provider_from_settings(Settings(provider="openai", reduce_prompt_file=str(path)))
    with pytest.raises(ValueError, match="cannot be read"):
        provider_from_settings(Settings(provider="openai", prompt_file=str(tmp_path / "no")))


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
    assert (seq, attempt, error_class) == (0, 1, "ProviderUnavailable")
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
    # The server's word wins over a backoff cap shorter than its hint.
    worker = worker_for(Settings(backoff_base_s=0.01, backoff_max_s=0.5))
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


def test_worker__a_split_chunk_keeps_its_finished_pieces_when_a_later_piece_fails(
    mock_openai: MockOpenAI, db: psycopg.Connection[Any], worker_for: Any, clock: FakeClock
) -> None:
    limit = OVERHEAD + 700
    fits = context_limit(limit)
    answered: list[str] = []

    def respond(request: Any) -> Reply:
        if len(request.user_text) <= limit:
            answered.append(request.chunk_text)
            if len(answered) == 3:  # the third piece: the server stumbles once
                return server_error(503)
        return fits(request)

    mock_openai.fallback = respond
    job_id = submit(db, PARAGRAPHS, len(PARAGRAPHS))
    worker = worker_for(Settings(backoff_base_s=0.01, backoff_max_s=0.05))
    worker.run_once()
    [chunk] = chunk_rows(db, job_id)
    assert (chunk["status"], chunk["attempts"]) == ("pending", 1)
    kept = db.execute("SELECT parts FROM chunks WHERE job_id = %s", (job_id,)).fetchone()[0]  # type: ignore[index]
    assert [PARAGRAPHS[p["start"] : p["end"]] for p in kept] == answered[:2]
    asked_first = len(mock_openai.requests)
    clock.advance(1)
    worker.run_once()
    row = job_row(db, job_id)
    assert row["status"] == "COMPLETED"
    [chunk] = chunk_rows(db, job_id)
    assert chunk["attempts"] == 2  # one attempt per try, however many pieces
    second = [r.chunk_text for r in list(mock_openai.requests)[asked_first:]]
    # The second attempt asked neither the whole chunk again nor the pieces already done.
    assert PARAGRAPHS not in second and not set(answered[:2]) & set(second)
    assert answered.count(answered[2]) == 2  # only the piece that failed was asked twice
    parts = row["analysis_result"]["chunks"][0]["result"]["parts"]
    assert "".join(PARAGRAPHS[p["start"] : p["end"]] for p in parts) == PARAGRAPHS
    assert db.execute("SELECT parts FROM chunks").fetchone()[0] is None  # type: ignore[index]


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


def reduce_inputs(n: int, chars: int = 500) -> list[dict[str, Any]]:
    return [
        {
            "index": i,
            "start": i * chars,
            "end": (i + 1) * chars,
            "result": {"summary": f"summary {i} " + "x" * chars, "key_points": [f"p{i}"]},
        }
        for i in range(n)
    ]


def test_reduce__analyses_over_the_budget_are_reduced_in_a_tree_in_order(
    mock_openai: MockOpenAI,
) -> None:
    with OpenAIProvider(mock_openai.base_url, None, "m", reduce_budget_chars=4000) as provider:
        result = provider.reduce(reduce_inputs(20))
    requests = [r.user_text for r in mock_openai.requests]
    *groups, top = requests
    assert len(groups) == 3 and result["calls"] == 4 and result["levels"] == 2
    assert result["chunks"] == 20 and result["truncated"] is False
    # Every leaf went to exactly one group call, in order, and the top call saw the groups.
    seen = [i for g in groups for i in range(20) if f"summary {i} " in g]
    assert seen == list(range(20))
    assert all(len(g) < 4000 + len(REDUCE_PROMPT) for g in groups)
    assert top.index("<part index=g0>") < top.index("<part index=g1>") < top.index("g2>")
    assert result["usage"]["total_tokens"] == sum(r["usage"]["total_tokens"] for r in [result]) > 0


def test_reduce__a_group_the_context_cannot_hold_is_halved(mock_openai: MockOpenAI) -> None:
    limit = len(REDUCE_PROMPT) + 1500
    mock_openai.fallback = context_limit(limit, "llamacpp")
    with OpenAIProvider(mock_openai.base_url, None, "m") as provider:
        result = provider.reduce(reduce_inputs(8, 300))
    answered = [r.user_text for r in mock_openai.requests if len(r.user_text) <= limit]
    assert result["summary"] and result["calls"] == len(mock_openai.requests)
    # Every leaf reached the model in some answered call.
    assert all(any(f"summary {i} " in t for t in answered) for i in range(8))
    assert result["truncated"] is False


def test_reduce__a_single_part_that_overflows_alone_is_shortened(mock_openai: MockOpenAI) -> None:
    limit = len(REDUCE_PROMPT) + 400
    mock_openai.fallback = context_limit(limit)
    with OpenAIProvider(mock_openai.base_url, None, "m") as provider:
        result = provider.reduce(reduce_inputs(1, 2000))
    assert result["truncated"] is True and result["summary"]
    assert len(mock_openai.requests[-1].user_text) <= limit


def test_reduce__prompt_file_sets_the_reduce_prompt(
    mock_openai: MockOpenAI, tmp_path: Path
) -> None:
    path = tmp_path / "reduce.txt"
    path.write_text("Merge these, as JSON:\n{sections}\n", encoding="utf-8")
    settings = Settings(
        provider="openai", openai_base_url=mock_openai.base_url, reduce_prompt_file=str(path)
    )
    provider = provider_from_settings(settings)
    try:
        provider.reduce(reduce_inputs(2, 10))  # type: ignore[attr-defined]
    finally:
        provider.close()  # type: ignore[attr-defined]
    [request] = mock_openai.requests
    assert request.user_text.startswith("Merge these, as JSON:\n<part index=0>")


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
        # Two slots each: no worker can fill the cap of 3 alone, so reaching 3 in flight takes
        # two processes, and going past it would be the cap failing across processes. (With 16
        # slots each, one worker could hold the whole cap and drain the job by itself.)
        start_worker(database_url, "--concurrency", "2", log=tmp_path / f"w{i}.log", **env)
        for i in range(3)
    ]
    try:
        # Every worker listening before the job arrives, so each hears of it.
        listening = """SELECT count(*) FROM pg_stat_activity
                       WHERE datname = current_database() AND query ILIKE 'LISTEN %%'"""
        wait_for(lambda: db.execute(listening).fetchone()[0] >= 3, 30, "3 workers to LISTEN")  # type: ignore[index]
        # The server holds every call until the cap is full. Two slots each are not enough
        # to fill it, and a worker whose calls are held cannot free a slot, so a second
        # process must take the third one: the cap is filled across processes however the
        # workers are scheduled (without the hold, one that ran alone for long enough could
        # drain the job by itself and "3 at once" would never be reached).
        mock_openai.pause()
        job_id = submit(db, text, 60)
        total = job_row(db, job_id)["chunks_total"]
        assert total >= 30
        assert mock_openai.wait_for(lambda m: m.in_flight == 3, timeout=30), "cap never filled"
        owners_at_cap = db.execute(
            "SELECT count(DISTINCT worker_id) FROM chunks WHERE status = 'running'"
        ).fetchone()[0]  # type: ignore[index]
        mock_openai.resume()
        wait_for(
            lambda: job_row(db, job_id)["status"] == "COMPLETED",
            60,
            "the job to finish",
            interval=0.1,
        )
    finally:
        codes = [stop(w) for w in workers]
    assert codes == [0, 0, 0]
    # Each worker asked GET /v1/models once at start; each chunk was asked once.
    paths = [r.path for r in mock_openai.requests]
    assert (paths.count("/v1/models"), paths.count("/v1/chat/completions")) == (3, total)
    assert mock_openai.max_in_flight == 3
    assert owners_at_cap >= 2


# --- the attempt's deadline ---------------------------------------------------------------


@pytest.mark.parametrize("stream", [True, False])
def test_openai__a_trickling_reply_is_cut_off_at_the_call_deadline(
    mock_openai: MockOpenAI, streaming: OpenAIProvider, stream: bool
) -> None:
    provider = streaming
    reply = completion(GOOD)
    reply.trickle_s, reply.stream = 0.2, stream  # ~100 s for the whole reply
    mock_openai.serve(reply)
    outcome: list[BaseException] = []

    def call() -> None:
        try:
            provider.analyze(TEXT, Call(1.0))
        except BaseException as exc:
            outcome.append(exc)

    # The whole reply would take ~100 s: ending within the join's 10 s, with AttemptTimeout
    # (raised only once the deadline has passed), is the deadline cutting it off. How close
    # to the deadline it ends is the benchmarks' business, not a wall-clock assertion here.
    thread = threading.Thread(target=call, daemon=True)
    thread.start()
    thread.join(10)
    assert not thread.is_alive(), "the call outlived its deadline"
    [error] = outcome
    assert type(error) is AttemptTimeout and "CHUNKQ_ATTEMPT_TIMEOUT_S=1" in str(error)
    assert mock_openai.wait_for(lambda m: m.finished == 1, timeout=5)  # the client hung up


def test_openai__abort_cuts_off_a_call_waiting_for_its_reply(
    mock_openai: MockOpenAI, provider: OpenAIProvider
) -> None:
    mock_openai.latency_s = 60.0  # nothing arrives until the reply is "generated"
    call = Call(300.0)
    outcome: list[BaseException] = []

    def run() -> None:
        try:
            provider.analyze(TEXT, call)
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert mock_openai.wait_for(lambda m: m.in_flight == 1, timeout=5)
    call.abort("lease lost")
    thread.join(5)
    assert not thread.is_alive()
    [error] = outcome
    assert type(error) is AttemptAborted and "lease lost" in str(error)
    # The server noticed the client leave (a real one stops generating).
    assert mock_openai.wait_for(lambda m: m.abandoned == 1, timeout=5)


def test_settings__the_ai_edge_is_set_from_the_environment() -> None:
    settings = Settings.from_env(
        {
            "CHUNKQ_ATTEMPT_TIMEOUT_S": "12.5",
            "CHUNKQ_MAX_TOKENS": "256",
            "CHUNKQ_RETRY_AFTER_MAX_S": "90",
            "CHUNKQ_STREAM": "on",
            "CHUNKQ_CIRCUIT_THRESHOLD": "5",
            "CHUNKQ_CIRCUIT_MAX_S": "30",
        }
    )
    assert (settings.attempt_timeout_s, settings.max_tokens, settings.retry_after_max_s) == (
        12.5,
        256,
        90.0,
    )
    assert (settings.stream, settings.circuit_threshold, settings.circuit_max_s) == (True, 5, 30)
    assert Settings.from_env({}).stream is False
    with pytest.raises(ValueError, match="CHUNKQ_STREAM='maybe' is not a boolean"):
        Settings.from_env({"CHUNKQ_STREAM": "maybe"})
    with pytest.raises(ValueError, match="CHUNKQ_ATTEMPT_TIMEOUT_S must be positive"):
        Settings.from_env({"CHUNKQ_ATTEMPT_TIMEOUT_S": "0"})


def test_retry_after__the_server_wins_over_a_smaller_backoff_cap_up_to_its_own() -> None:
    from workerd.retry import retry_delay

    def delay(hint: float) -> float | None:
        return retry_delay(
            1,
            retryable=True,
            max_attempts=3,
            base_s=1,
            max_s=2,
            rng=random.Random(0),
            hint_s=hint,
            hint_max_s=300,
        )

    assert delay(120) == 120.0  # not capped by CHUNKQ_BACKOFF_MAX_S=2
    assert delay(1000) == 300.0  # capped by CHUNKQ_RETRY_AFTER_MAX_S
    assert 0.5 <= (delay(0.1) or 0) <= 1.0  # a shorter hint leaves the backoff alone


def test_openai__a_call_without_a_deadline_is_limited_by_nothing_but_the_server(
    mock_openai: MockOpenAI,
) -> None:
    # No read timeout either: an infinite socket timeout would raise OverflowError.
    with OpenAIProvider(mock_openai.base_url, None, "m") as provider:
        assert provider.analyze(TEXT, Call())["summary"] == analysis(TEXT)["summary"]


def test_openai__a_jobs_report_sums_the_token_usage_of_its_chunks(
    provider: OpenAIProvider, database_url: str, db: psycopg.Connection[Any]
) -> None:
    job = submit(db, " ".join([TEXT] * 6), 140)
    run_until_idle(database_url, provider)
    report = job_report(db, job)
    assert report is not None and report["status"] == "COMPLETED"
    usages = [c["result"]["usage"] for c in report["analysis_result"]["chunks"]]
    assert len(usages) == report["chunks_total"] > 1
    assert report["usage"] == {
        "prompt_tokens": sum(u["prompt_tokens"] for u in usages),
        "completion_tokens": sum(u["completion_tokens"] for u in usages),
    }
    assert report["usage"]["prompt_tokens"] > 0 and report["usage"]["completion_tokens"] > 0
