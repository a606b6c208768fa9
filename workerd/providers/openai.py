"""The ``openai`` provider: chunk analysis by any OpenAI-compatible chat-completions server.

Speaks to OpenAI and to the servers that copy its API (vLLM, Ollama, llama.cpp, LiteLLM).
HTTP failures are classified as OpenAI's and Anthropic's Python SDKs do (``classify``), so
the worker retries what another attempt can fix and fails the rest at once. A chunk the
model's context cannot hold is split in two at a natural boundary (``analyze``).
"""

from __future__ import annotations

import functools
import json
import logging
import math
import re
from collections import Counter
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

import httpx

from web.chunking import split_text
from workerd.providers.base import PermanentError, ProviderError, RetryableError

log = logging.getLogger("workerd.openai")

SENTIMENTS = ("positive", "negative", "neutral", "mixed")
MAX_SPLIT_DEPTH = 4
MIN_SPLIT_CHARS = 50
SUMMARY_KEY_POINTS = 20
_QUOTE_CHARS = 200  # of a reply or body we cannot read
_MESSAGE_CHARS = 1000  # of a server's error message

SYSTEM_PROMPT = (
    "You are a careful text analyst. Reply with one JSON object and nothing else: "
    "no prose, no code fences."
)
# The user message; ``{text}`` is replaced by the chunk (plain replacement, not str.format,
# so a custom template may show literal JSON braces). CHUNKQ_PROMPT_FILE overrides it.
DEFAULT_PROMPT = """\
Analyse the text between <chunk> and </chunk>. Reply with a JSON object with these keys:
- "summary": one to three sentences summarising the text, in the text's language
- "sentiment": the overall sentiment, one of "positive", "negative", "neutral", "mixed"
- "sentiment_score": a number from -1 (most negative) to 1 (most positive)
- "key_points": a list of short strings, the main points in the order they appear

<chunk>
{text}
</chunk>"""

# The reduce step's user message; ``{sections}`` is replaced by the ordered chunk analyses.
REDUCE_PROMPT = """\
Below are analyses of consecutive parts of one document, in order. Combine them into an
analysis of the whole document. Reply with a JSON object with these keys:
- "summary": three to six sentences summarising the whole document, in its language
- "sentiment": the overall sentiment, one of "positive", "negative", "neutral", "mixed"
- "sentiment_score": a number from -1 (most negative) to 1 (most positive)
- "key_points": a list of short strings, the document's main points in order

{sections}"""
REDUCE_BUDGET_CHARS = 24_000  # about 6,000 tokens of input

# What servers say when the input does not fit the model's context (OpenAI, vLLM, llama.cpp,
# Ollama, TGI, Anthropic-style proxies); matched against the message, type and code.
_OVERFLOW = re.compile(
    r"context[ _-]length|maximum context|context window|too many tokens|input is too long"
    r"|prompt is too long|exceeds? the model'?s? (?:maximum )?context|exceed_context_size"
    r"|exceeds the available context size|input length exceeds",
    re.IGNORECASE,
)
_QUOTA = re.compile(r"insufficient_quota", re.IGNORECASE)
_FENCE = re.compile(r"```(?:json|JSON)?\s*\n?(.*?)```", re.DOTALL)


# Building an SSL context (loading the CA bundle) takes ~0.1 s; one is shared by every client.
_ssl_context = functools.cache(httpx.create_ssl_context)


class ContextOverflow(PermanentError):
    """The server said the input is too long for the model; permanent unless split."""


def load_prompt_template(path: str | None) -> str | None:
    """The user-prompt template in file ``path`` (None for none); it must contain ``{text}``."""
    if not path:
        return None
    try:
        template = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ValueError(f"CHUNKQ_PROMPT_FILE={path!r} cannot be read: {exc}") from exc
    if "{text}" not in template:
        raise ValueError(f"CHUNKQ_PROMPT_FILE={path!r} must contain the placeholder {{text}}")
    return template


class OpenAIProvider:
    """Analyses chunks with a chat-completions model; safe to call from many threads.

    One ``httpx.Client`` (thread-safe, pooled keep-alive connections) serves every thread.
    """

    name = "openai"

    def __init__(
        self,
        # Defaults as in Settings, so make_provider("openai") works where only ``summarize``
        # is wanted (the web app's merge on cancellation).
        base_url: str = "https://api.openai.com/v1",
        api_key: str | None = None,
        model: str = "gpt-4o-mini",
        *,
        timeout_connect: float = 5.0,
        timeout_read: float = 120.0,
        prompt_template: str | None = None,
        max_tokens: int = 1024,
        retry_after_cap_s: float = 300.0,
        max_split_depth: int = MAX_SPLIT_DEPTH,
        reduce_budget_chars: int = REDUCE_BUDGET_CHARS,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        url = httpx.URL(base_url.rstrip("/"))
        if url.scheme not in ("http", "https") or not url.host:
            raise ValueError(f"OPENAI_BASE_URL must be an http(s) URL, got {base_url!r}")
        if prompt_template is not None and "{text}" not in prompt_template:
            raise ValueError("the prompt template must contain the placeholder {text}")
        if not model:
            raise ValueError("CHUNKQ_MODEL must name a model")
        if max_tokens < 1 or max_split_depth < 0:
            raise ValueError("need max_tokens >= 1 and max_split_depth >= 0")
        self.base_url = str(url)
        self.model = model
        self.max_tokens = max_tokens
        self.retry_after_cap_s = retry_after_cap_s
        self.max_split_depth = max_split_depth
        self.reduce_budget_chars = reduce_budget_chars
        self.prompt_template = prompt_template or DEFAULT_PROMPT
        headers = {"User-Agent": "chunkq"}
        if api_key and api_key.strip():  # Ollama and vLLM run without one
            headers["Authorization"] = f"Bearer {api_key.strip()}"
        self._client = httpx.Client(
            headers=headers,
            # connect bounds the TCP/TLS handshake; read/write/pool each wait up to timeout_read.
            timeout=httpx.Timeout(timeout_read, connect=timeout_connect),
            # No cap on connections: the worker's concurrency (and any provider cap) bounds
            # them; idle ones are kept for reuse.
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=64),
            verify=_ssl_context(),
            transport=transport,
        )
        self._endpoint = f"{self.base_url}/chat/completions"

    def close(self) -> None:
        """Close the pooled connections."""
        self._client.close()

    def __enter__(self) -> OpenAIProvider:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- one chunk -----------------------------------------------------------------------

    def analyze(self, text: str) -> dict[str, Any]:
        """The model's analysis of one chunk, or a RetryableError / PermanentError.

        If the server says the chunk overflows the model's context, the chunk is cut in two
        at its best natural boundary and each piece is analysed (recursively, up to
        ``max_split_depth`` levels, one piece after the other). The result then combines the
        pieces and lists them in ``parts``: ``[{"start", "end", **piece_result}, ...]`` in
        order, offsets relative to the chunk, tiling it (``text[start:end]`` is the piece).
        """
        pieces = self._analyze_pieces(text, 0, 0)
        if len(pieces) == 1:
            return pieces[0][2]
        return _combine(pieces)

    def _analyze_pieces(
        self, text: str, offset: int, depth: int
    ) -> list[tuple[int, int, dict[str, Any]]]:
        """Analyse ``text`` (which starts at ``offset`` in the chunk) as one or more pieces."""
        try:
            return [(offset, offset + len(text), self._complete(text))]
        except ContextOverflow as exc:
            if len(text) < MIN_SPLIT_CHARS or depth >= self.max_split_depth:
                raise ContextOverflow(
                    f"{exc.message} [a piece of {len(text)} chars still overflows after "
                    f"{depth} split(s); giving up]"
                ) from exc
        # The first chunk split_text would make at half the size: the best boundary between
        # a quarter and a half of the text.
        cut = split_text(text, math.ceil(len(text) / 2))[0][1]
        log.info("%d chars overflow the model's context; splitting at %d", len(text), cut)
        return self._analyze_pieces(text[:cut], offset, depth + 1) + self._analyze_pieces(
            text[cut:], offset + cut, depth + 1
        )

    def _complete(self, text: str) -> dict[str, Any]:
        """One chat-completions call for ``text``, parsed and validated."""
        return self._chat(self.prompt_template.replace("{text}", text))

    def _chat(self, user_content: str) -> dict[str, Any]:
        """One chat-completions call with this user message, parsed and validated."""
        payload = {
            "model": self.model,
            "messages": [
                {"role": "system", "content": SYSTEM_PROMPT},
                {"role": "user", "content": user_content},
            ],
            "response_format": {"type": "json_object"},
            "temperature": 0,
            "max_tokens": self.max_tokens,
        }
        try:
            response = self._client.post(self._endpoint, json=payload)
        except httpx.HTTPError as exc:  # timeouts, refused, reset, DNS, protocol errors
            raise RetryableError(f"{type(exc).__name__} calling {self._endpoint}: {exc}") from exc
        if not response.is_success:
            raise classify(response, retry_after_cap_s=self.retry_after_cap_s)
        return self._parse(response)

    def _parse(self, response: httpx.Response) -> dict[str, Any]:
        try:
            body = response.json()
            choice = body["choices"][0]
            content = choice["message"].get("content")
            finish_reason = choice.get("finish_reason")
        except (ValueError, LookupError, TypeError, AttributeError) as exc:
            raise RetryableError(
                f"malformed chat-completions reply: {_quote(response.text)}"
            ) from exc
        if finish_reason == "length":
            raise RetryableError("reply cut off at max_tokens (finish_reason=length)")
        analysis = parse_analysis(content, finish_reason)
        usage = body.get("usage") if isinstance(body.get("usage"), dict) else {}
        return {
            **analysis,
            "model": body.get("model") or self.model,
            "finish_reason": finish_reason,
            "usage": _usage(usage),
        }

    # -- the document --------------------------------------------------------------------

    def reduce(self, analyses: list[dict[str, Any]]) -> dict[str, Any]:
        """One more call that turns the ordered chunk analyses into a document-level analysis.

        The input is each chunk's summary and key points, in order, within
        ``reduce_budget_chars`` (about four characters a token): when they do not fit, each
        chunk keeps an equal share, key points dropped first, and ``truncated`` says so.
        """
        sections, truncated = _reduce_input(analyses, self.reduce_budget_chars)
        result = self._chat(REDUCE_PROMPT.replace("{sections}", sections))
        return {**result, "chunks": len(analyses), "truncated": truncated}

    def summarize(self, results: list[tuple[int, dict[str, Any]]]) -> dict[str, Any]:
        """Chunk count, length-weighted sentiment, first key points, token totals, summaries."""
        results = [(n, r) for n, r in results if isinstance(r, dict)]
        points = [r.get("key_points") for _, r in results]
        return {
            "chunks": len(results),
            "sentiment": _merge_sentiment(results),
            "key_points": _dedupe(
                [p for ps in points if isinstance(ps, list) for p in ps], SUMMARY_KEY_POINTS
            ),
            "usage": _sum_usage([r.get("usage") or {} for _, r in results]),
            "summaries": [r.get("summary", "") for _, r in results],
        }


# -- errors --------------------------------------------------------------------------------


def classify(response: httpx.Response, *, retry_after_cap_s: float = 300.0) -> ProviderError:
    """The exception for a non-2xx reply: RetryableError or PermanentError (or ContextOverflow).

    Retryable: 408, 409, 429 and 5xx; permanent: everything else, and a 429 whose error
    type or code is ``insufficient_quota`` (no wait fixes billing). An ``x-should-retry:
    true|false`` header from the server overrides both. A context overflow (4xx whose text
    says the input is too long) is ContextOverflow, which ``analyze`` splits.
    """
    status = response.status_code
    message, kind, code, param = _error_fields(response)
    extras = ", ".join(
        f"{k}={v}" for k, v in (("type", kind), ("code", code), ("param", param)) if v
    )
    text = f"HTTP {status}: {message}" + (f" ({extras})" if extras else "")
    should_retry = response.headers.get("x-should-retry", "").strip().lower()
    haystack = " ".join(str(v) for v in (message, kind, code) if v)
    if should_retry in ("true", "false"):
        retryable = should_retry == "true"
    elif status == 429 and _QUOTA.search(haystack):
        retryable = False
    else:
        retryable = status in (408, 409, 429) or status >= 500
    if retryable:
        return RetryableError(text, retry_after=retry_after(response.headers, retry_after_cap_s))
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


# -- parsing and merging -------------------------------------------------------------------


def parse_analysis(content: Any, finish_reason: Any = None) -> dict[str, Any]:
    """Validate the model's JSON reply; coerce small slips, RetryableError on garbage."""
    if not isinstance(content, str) or not content.strip():
        raise RetryableError(f"reply has no text content (finish_reason={finish_reason})")
    data = _load_json(content)
    if not isinstance(data, dict):
        raise RetryableError(f"reply is not a JSON object: {_quote(content)}")
    summary = data.get("summary")
    if not isinstance(summary, str) or not summary.strip():
        raise RetryableError(f"reply has no string 'summary': {_quote(content)}")
    label, score = _sentiment(data)
    if label is None:
        raise RetryableError(f"reply has no valid 'sentiment': {_quote(content)}")
    points = data.get("key_points", [])
    if isinstance(points, str):
        points = [points]
    if not isinstance(points, list) or not all(
        isinstance(p, str) or (isinstance(p, int | float) and not isinstance(p, bool))
        for p in points
    ):
        raise RetryableError(f"reply's 'key_points' is not a list of strings: {_quote(content)}")
    return {
        "summary": summary.strip(),
        "sentiment": label,
        "sentiment_score": score,
        "key_points": [str(p).strip() for p in points if str(p).strip()],
    }


def _load_json(content: str) -> Any:
    try:
        return json.loads(content)
    except ValueError:
        pass
    fenced = _FENCE.search(content)
    if fenced is not None:
        try:
            return json.loads(fenced.group(1))
        except ValueError:
            pass
    raise RetryableError(f"reply is not valid JSON: {_quote(content)}")


def _sentiment(data: dict[str, Any]) -> tuple[str | None, float]:
    """(label, score in [-1, 1]) from ``sentiment`` (a label, or {"label", "score"}) and
    ``sentiment_score``; a missing half is inferred from the other, a bad label is None."""
    raw: Any = data.get("sentiment")
    score: Any = data.get("sentiment_score")
    if isinstance(raw, dict):
        raw, score = raw.get("label"), raw.get("score", score)
    if isinstance(score, str):
        try:
            score = float(score)
        except ValueError:
            score = None
    if isinstance(score, bool) or not isinstance(score, int | float) or not math.isfinite(score):
        score = None
    label = raw.strip().lower() if isinstance(raw, str) else None
    if label is not None and label not in SENTIMENTS:
        return None, 0.0
    if label is None:
        if score is None:
            return None, 0.0
        label = "positive" if score > 0.25 else "negative" if score < -0.25 else "neutral"
    if score is None:
        score = {"positive": 0.5, "negative": -0.5}.get(label, 0.0)
    return label, round(min(1.0, max(-1.0, float(score))), 4)


def _combine(pieces: list[tuple[int, int, dict[str, Any]]]) -> dict[str, Any]:
    """One chunk result from the results of its consecutive pieces."""
    results = [r for _, _, r in pieces]
    sentiment = _merge_sentiment([(end - start, r) for start, end, r in pieces])
    reasons = [r["finish_reason"] for r in results]
    return {
        "summary": " ".join(r["summary"] for r in results),
        "sentiment": sentiment["label"] if sentiment else "neutral",
        "sentiment_score": sentiment["score"] if sentiment else 0.0,
        "key_points": [p for r in results for p in r["key_points"]],
        "model": results[0]["model"],
        "finish_reason": next((x for x in reasons if x != "stop"), reasons[0]),
        "usage": _sum_usage([r["usage"] for r in results]),
        "parts": [{"start": start, "end": end, **r} for start, end, r in pieces],
    }


def _merge_sentiment(results: list[tuple[int, dict[str, Any]]]) -> dict[str, Any] | None:
    """Length-weighted mean score and the label most results carry; None if nothing to merge.

    A tie for most results between positive and negative (or involving mixed) is "mixed";
    any other tie goes to the label covering more text.
    """
    scored = [
        (max(n, 0), r["sentiment"], _number(r.get("sentiment_score")))
        for n, r in results
        if r.get("sentiment") in SENTIMENTS
    ]
    if not scored:
        return None
    total = sum(n for n, _, _ in scored)
    if total > 0:
        score = sum(n * s for n, _, s in scored) / total
    else:
        score = sum(s for _, _, s in scored) / len(scored)
    counts = Counter(label for _, label, _ in scored)
    length = Counter[str]()
    for n, label, _ in scored:
        length[label] += n
    most = max(counts.values())
    top = {x for x in counts if counts[x] == most}
    if len(top) > 1 and ("mixed" in top or {"positive", "negative"} <= top):
        label = "mixed"
    else:
        label = max(top, key=lambda x: (length[x], -SENTIMENTS.index(x)))
    return {"label": label, "score": round(score, 4), "labels": dict(counts)}


def _number(value: Any) -> float:
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    return float(value) if ok else 0.0


def _usage(usage: dict[str, Any]) -> dict[str, int]:
    def count(key: str) -> int:
        value = usage.get(key)
        return value if isinstance(value, int) and not isinstance(value, bool) else 0

    prompt, completion = count("prompt_tokens"), count("completion_tokens")
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": count("total_tokens") or prompt + completion,
    }


def _sum_usage(usages: list[dict[str, Any]]) -> dict[str, int]:
    parts = [_usage(u) if isinstance(u, dict) else _usage({}) for u in usages]
    return {key: sum(u[key] for u in parts) for key in _usage({})}


def _dedupe(points: list[Any], limit: int) -> list[str]:
    """The first ``limit`` distinct points, compared without case or extra whitespace."""
    seen: set[str] = set()
    kept: list[str] = []
    for point in points:
        if not isinstance(point, str):
            continue
        key = " ".join(point.casefold().split())
        if key and key not in seen:
            seen.add(key)
            kept.append(point)
            if len(kept) == limit:
                break
    return kept


def _squash(text: str) -> str:
    return " ".join(text.split())


def _quote(text: str) -> str:
    text = _squash(text)
    return repr(text[:_QUOTE_CHARS] + ("…" if len(text) > _QUOTE_CHARS else ""))


def _reduce_input(analyses: list[dict[str, Any]], budget: int) -> tuple[str, bool]:
    """The reduce prompt's sections, in order, cut to ``budget`` characters in all."""

    def section(entry: dict[str, Any], points: bool, limit: int | None) -> str:
        result = entry.get("result") or {}
        body = str(result.get("summary", ""))
        if points and result.get("key_points"):
            body += "\nKey points: " + "; ".join(str(p) for p in result["key_points"])
        if limit is not None and len(body) > limit:
            body = body[: max(0, limit - 1)] + "…"
        return f"<part index={entry.get('index')}>\n{body}\n</part>"

    full = "\n".join(section(a, True, None) for a in analyses)
    if len(full) <= budget:
        return full, False
    share = max(40, budget // max(1, len(analyses)) - 30)
    return "\n".join(section(a, False, share) for a in analyses), True
