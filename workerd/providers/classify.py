"""What an OpenAI-compatible server's failure means for the chunk: retry, pause, split or fail.

A failure is an error answer, a request that got no answer, or a reply cut off mid-way.

Classified as OpenAI's and Anthropic's Python SDKs do, plus what real servers were seen to
answer (llama.cpp rejects an unknown ``response_format`` with a 500 that names it).
"""

from __future__ import annotations

import json
import math
import re
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import httpx

from workerd.providers.base import (
    ContextOverflow,
    PermanentError,
    ProviderError,
    ProviderUnavailable,
    RetryableError,
)
from workerd.providers.completions import Completion
from workerd.providers.replies import BadReply

_QUOTE_CHARS = 200  # of a body we cannot read
_MESSAGE_CHARS = 1000  # of a server's error message

# What servers say when the input does not fit the model's context (OpenAI, vLLM, llama.cpp,
# Ollama, TGI, Anthropic-style proxies); matched against the message, type and code.
_OVERFLOW = re.compile(
    r"context[ _-]length|maximum context|context window|too many tokens|input is too long"
    r"|prompt is too long|exceeds? the model'?s? (?:maximum )?context|exceed_context_size"
    r"|exceeds the available context size|input length exceeds",
    re.IGNORECASE,
)
_QUOTA = re.compile(r"insufficient_quota", re.IGNORECASE)
# A request the server refused because of its response_format (a field it does not know).
_FORMAT = re.compile(r"response_format|json_schema", re.IGNORECASE)


class FormatRejected(PermanentError):
    """The server does not accept the structured-output format asked for; try a simpler one."""


def classify(response: httpx.Response, *, retry_after_cap_s: float = 300.0) -> ProviderError:
    """The exception for a non-2xx reply.

    - 400/422/500 that names ``response_format``: FormatRejected (the caller falls back);
    - 4xx saying the input is too long: ContextOverflow (the caller splits);
    - 5xx: ProviderUnavailable (retried; counted by the circuit);
    - 408, 409, 429: RetryableError with the server's Retry-After, except a 429 whose type
      or code is ``insufficient_quota`` (no wait fixes billing), which is permanent;
    - everything else: PermanentError.

    An ``x-should-retry: true|false`` header from the server overrides retryability.
    """
    status = response.status_code
    message, kind, code, param = _error_fields(response)
    extras = ", ".join(
        f"{k}={v}" for k, v in (("type", kind), ("code", code), ("param", param)) if v
    )
    text = f"HTTP {status}: {message}" + (f" ({extras})" if extras else "")
    haystack = " ".join(str(v) for v in (message, kind, code) if v)
    if status in (400, 422, 500) and _FORMAT.search(f"{haystack} {param or ''}"):
        return FormatRejected(text)
    should_retry = response.headers.get("x-should-retry", "").strip().lower()
    if should_retry in ("true", "false"):
        retryable = should_retry == "true"
    elif status == 429 and _QUOTA.search(haystack):
        retryable = False
    else:
        retryable = status in (408, 409, 429) or status >= 500
    if retryable:
        cls = ProviderUnavailable if status >= 500 else RetryableError
        return cls(text, retry_after=retry_after(response.headers, retry_after_cap_s))
    if status in (400, 413, 422) and _OVERFLOW.search(haystack):
        return ContextOverflow(text)
    return PermanentError(text)


def retry_after(headers: httpx.Headers, cap_s: float) -> float | None:
    """The server's wait hint in seconds, capped at ``cap_s``: ``retry-after-ms``, then
    ``Retry-After`` as seconds or an HTTP date; None when absent or unreadable."""
    seconds: float | None = None
    try:
        if "retry-after-ms" in headers:
            seconds = float(headers["retry-after-ms"]) / 1000
    except ValueError:
        seconds = None
    raw = headers.get("retry-after", "").strip()
    if seconds is None and raw:
        try:
            seconds = float(raw)
        except ValueError:
            try:
                when = parsedate_to_datetime(raw)
            except (TypeError, ValueError, IndexError, OverflowError):
                return None
            if when.tzinfo is None:  # RFC 9110 dates are GMT
                when = when.replace(tzinfo=UTC)
            seconds = (when - datetime.now(UTC)).total_seconds()
    if seconds is None or not math.isfinite(seconds):
        return None
    return min(max(seconds, 0.0), cap_s)


def transport_error(exc: httpx.HTTPError, url: str) -> ProviderError:
    """The exception for a request that got no HTTP answer. Refused, reset or dropped
    connections say the server is down (ProviderUnavailable); a read that timed out says it
    is slow, which is retried but does not open the circuit."""
    text = f"{type(exc).__name__} calling {url}: {exc}"
    if isinstance(exc, httpx.ReadTimeout | httpx.WriteTimeout | httpx.PoolTimeout):
        return RetryableError(text)
    if isinstance(exc, httpx.TransportError):
        return ProviderUnavailable(text)
    return RetryableError(text)


def cut_off(reply: Completion, max_tokens: int) -> ContextOverflow | BadReply | None:
    """The exception for a reply that stopped for lack of room (``finish_reason`` "length"),
    None for one that was not cut off: ContextOverflow when the prompt must shrink, BadReply
    when the reply used all of ``max_tokens``."""
    if reply.finish_reason != "length":
        return None
    usage = reply.usage
    got = usage["completion_tokens"]
    if got < max_tokens:
        # The server gave the reply less room than max_tokens (llama.cpp does so when
        # prompt + max_tokens exceed its context): the prompt must shrink.
        return ContextOverflow(
            f"reply cut off after {got} tokens of max_tokens={max_tokens}"
            f" (prompt {usage['prompt_tokens']} tokens): prompt and reply exceed the"
            " model's context"
        )
    return BadReply(
        f"reply cut off at max_tokens={max_tokens} (raise CHUNKQ_MAX_TOKENS)", reply.content
    )


def _error_fields(response: httpx.Response) -> tuple[str, Any, Any, Any]:
    """(message, type, code, param) from any error-body shape servers send.

    OpenAI ``{"error": {"message", "type", "param", "code"}}``, vLLM flat ``{"object":
    "error", "message", ...}`` and nested with an integer code, llama.cpp ``{"error":
    {"code", "message", "type"}}``, Ollama ``{"error": "..."}``, FastAPI ``{"detail": ...}``;
    anything else (an HTML page from a proxy) is quoted.
    """
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        error = body.get("error", body)
        if isinstance(error, str) and error.strip():
            return _squash(error)[:_MESSAGE_CHARS], None, None, None
        if isinstance(error, dict):
            message = error.get("message") or error.get("detail") or body.get("detail")
            if message:
                if not isinstance(message, str):
                    message = json.dumps(message)
                return (
                    _squash(message)[:_MESSAGE_CHARS],
                    error.get("type"),
                    error.get("code"),
                    error.get("param"),
                )
    text = _squash(response.text) or response.reason_phrase or "no body"
    return text[:_QUOTE_CHARS], None, None, None


def _squash(text: str) -> str:
    return " ".join(text.split())
