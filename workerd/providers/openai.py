"""The ``openai`` provider: chunk analysis by any OpenAI-compatible chat-completions server.

Speaks to OpenAI and to the servers that copy its API (vLLM, Ollama, llama.cpp, LiteLLM):

- asks for the analysis schema as structured output, falling back to simpler formats when
  a server rejects one, and checks every reply against the schema (``replies``);
- splits a chunk the model's context cannot hold, keeping the pieces that succeeded;
- reduces a document in a tree when its analyses do not fit one call;
- bounds every call by its attempt's deadline, and lets the worker cut a call off (with
  ``stream``, closing the connection also makes the server stop generating).
"""

from __future__ import annotations

import functools
import hashlib
import logging
import math
import threading
from typing import Any

import httpx

from schema.chunking import split_text
from schema.merging import combine, summarize_analyses, usage_of
from workerd.providers.abortable import AbortableTransport, abort_thread, forget_thread
from workerd.providers.base import Call, ContextOverflow, InvalidReply, ProviderError
from workerd.providers.classify import FormatRejected, classify, transport_error
from workerd.providers.completions import Completion, from_body, from_events
from workerd.providers.prompts import DEFAULT_PROMPT, REDUCE_PROMPT, SYSTEM_PROMPT
from workerd.providers.replies import ANALYSIS_SCHEMA, SCHEMA_NAME, BadReply, parse_reply, quote

log = logging.getLogger("workerd.openai")

MAX_SPLIT_DEPTH = 6
MIN_SPLIT_CHARS = 50
REDUCE_BUDGET_CHARS = 24_000  # at most this much input per reduce call (~6,000 tokens)
MAX_REDUCE_DEPTH = 12
# Structured-output formats, best first: OpenAI/vLLM/Ollama take json_schema; llama.cpp's
# server takes a schema inside json_object; then any JSON; then the prompt alone.
FORMATS = ("json_schema", "json_object+schema", "json_object", "prompt")
# The sampling of the one extra try after a reply that fails the schema.
RETRY_TEMPERATURE = 0.7

# Building an SSL context (loading the CA bundle) takes ~0.1 s; one is shared by every client.
_ssl_context = functools.cache(httpx.create_ssl_context)


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
        timeout_read: float | None = None,
        attempt_timeout_s: float = 300.0,
        prompt_template: str | None = None,
        reduce_template: str | None = None,
        max_tokens: int = 1024,
        stream: bool = False,
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
        if reduce_template is not None and "{sections}" not in reduce_template:
            raise ValueError("the reduce template must contain the placeholder {sections}")
        if not model:
            raise ValueError("CHUNKQ_MODEL must name a model")
        if max_tokens < 1 or max_split_depth < 0:
            raise ValueError("need max_tokens >= 1 and max_split_depth >= 0")
        self.base_url = str(url)
        self.model = model
        self.max_tokens = max_tokens
        self.stream = stream
        self.timeout_connect = timeout_connect
        self.timeout_read = timeout_read
        self.attempt_timeout_s = attempt_timeout_s
        self.retry_after_cap_s = retry_after_cap_s
        self.max_split_depth = max_split_depth
        self.reduce_budget_chars = reduce_budget_chars
        self.prompt_template = prompt_template or DEFAULT_PROMPT
        self.reduce_template = reduce_template or REDUCE_PROMPT
        headers = {"User-Agent": "chunkq"}
        if api_key and api_key.strip():  # Ollama and vLLM run without one
            headers["Authorization"] = f"Bearer {api_key.strip()}"
        self._client = httpx.Client(
            headers=headers,
            # No cap on connections: the worker's concurrency (and any provider cap) bounds
            # them; idle ones are kept for reuse.
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=64),
            transport=transport or AbortableTransport(verify=_ssl_context()),
        )
        self._endpoint = f"{self.base_url}/chat/completions"
        # The circuit breaker's key: workers calling the same server share one circuit.
        self.endpoint = f"openai {self.base_url} {self.model}"
        # Index into FORMATS of the best format this server accepted; only moves forward.
        self._format = 0
        self._format_lock = threading.Lock()

    def close(self) -> None:
        """Close the pooled connections."""
        self._client.close()

    def __enter__(self) -> OpenAIProvider:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def response_format(self) -> str:
        """The structured-output format requests use now (one of FORMATS)."""
        return FORMATS[self._format]

    # -- the server ----------------------------------------------------------------------

    def check_server(self) -> list[str]:
        """Ask ``GET /models`` which models the server serves; warnings for the operator.

        Servers that serve one model often answer any name with it (llama.cpp echoes the
        name asked for), so this is the only place a wrong CHUNKQ_MODEL shows.
        """
        try:
            response = self._client.get(
                f"{self.base_url}/models", timeout=httpx.Timeout(5.0, connect=3.0)
            )
        except httpx.HTTPError as exc:
            return [f"cannot list the models at {self.base_url}/models: {exc!r}"]
        if response.status_code == 404:
            return []  # the server has no model list; nothing to check against
        try:
            ids = [str(m["id"]) for m in response.json()["data"]]
        except (ValueError, LookupError, TypeError):
            return [f"GET {self.base_url}/models answered {response.status_code}, not a list"]
        if self.model not in ids:
            served = ", ".join(ids[:10]) or "none"
            return [
                f"CHUNKQ_MODEL={self.model!r} is not among the models {self.base_url} serves"
                f" ({served}); replies may come from another model"
            ]
        return []

    # -- one chunk -----------------------------------------------------------------------

    def analyze(self, text: str, call: Call | None = None) -> dict[str, Any]:
        """The model's analysis of one chunk.

        A chunk whose prompt and reply do not fit the model's context (an HTTP 400, or a
        reply cut off below ``max_tokens``) is cut in two at its best natural boundary and
        each piece is analysed, recursively, up to ``max_split_depth`` levels. The result
        then combines the pieces and lists them in ``parts`` (offsets relative to the chunk,
        tiling it). Pieces finished by an earlier attempt (``call.parts``) are not asked
        again; pieces this attempt finishes go to ``call.finished``, so a failure keeps them.
        """
        call = call or Call(self.attempt_timeout_s)
        done = {(p["start"], p["end"]): p for p in call.parts}
        pieces = self._pieces(text, 0, 0, done, call)
        if len(pieces) == 1 and not done:
            return {k: v for k, v in pieces[0].items() if k not in ("start", "end")}
        return combine(pieces)

    def _pieces(
        self,
        text: str,
        offset: int,
        depth: int,
        done: dict[tuple[int, int], dict[str, Any]],
        call: Call,
    ) -> list[dict[str, Any]]:
        """Analyse ``text`` (at ``offset`` in the chunk) as one or more pieces."""
        span = (offset, offset + len(text))
        if span in done:
            return [done[span]]
        # A finished piece inside this span means an earlier attempt split it already.
        split_before = any(span[0] <= s and e <= span[1] for s, e in done)
        if not split_before:
            try:
                result = self._ask(self.prompt_template.replace("{text}", text), call)
            except ContextOverflow as exc:
                if len(text) < MIN_SPLIT_CHARS or depth >= self.max_split_depth:
                    raise ContextOverflow(
                        f"{exc.message} [a piece of {len(text)} chars still overflows after "
                        f"{depth} split(s); giving up]"
                    ) from exc
            else:
                piece = {"start": span[0], "end": span[1], **result}
                call.finished.append(piece)
                return [piece]
        # The first chunk split_text would make at half the size: the best boundary between
        # a quarter and a half of the text.
        cut = split_text(text, math.ceil(len(text) / 2))[0][1]
        log.info("%d chars overflow the model's context; splitting at %d", len(text), cut)
        return self._pieces(text[:cut], offset, depth + 1, done, call) + self._pieces(
            text[cut:], offset + cut, depth + 1, done, call
        )

    # -- the document --------------------------------------------------------------------

    def reduce(self, analyses: list[dict[str, Any]], call: Call | None = None) -> dict[str, Any]:
        """A document-level analysis from the ordered chunk analyses, in a tree of calls.

        The leaves are the chunks' summaries and key points, grouped in order so that each
        group fits ``reduce_budget_chars``; each group is reduced, then the groups' results
        are reduced the same way, until one remains. A group the model's context cannot
        hold is halved; a single part that alone overflows is shortened (``truncated``).
        """
        call = call or Call(self.attempt_timeout_s)
        leaves = [_section(a.get("index"), a.get("result") or {}) for a in analyses]
        tree = _Tree()
        level = leaves
        while True:
            results = [self._reduce_group(g, 0, call, tree) for g in self._groups(level)]
            tree.levels += 1
            if len(results) == 1:
                break
            level = [_section(f"g{i}", r) for i, r in enumerate(results)]
        top = results[0]
        return {
            **top,
            "usage": tree.usage,
            "chunks": len(analyses),
            "levels": tree.levels,
            "calls": tree.calls,
            "truncated": tree.truncated,
        }

    def _groups(self, sections: list[str]) -> list[list[str]]:
        """Consecutive sections, as few groups as fit the budget (at least one per group)."""
        groups: list[list[str]] = [[]]
        size = 0
        for section in sections:
            if groups[-1] and size + len(section) > self.reduce_budget_chars:
                groups.append([])
                size = 0
            groups[-1].append(section)
            size += len(section) + 1
        return groups

    def _reduce_group(
        self, sections: list[str], depth: int, call: Call, tree: _Tree
    ) -> dict[str, Any]:
        try:
            tree.calls += 1
            result = self._ask(
                self.reduce_template.replace("{sections}", "\n".join(sections)), call
            )
            tree.add(result)
            return result
        except ContextOverflow:
            if depth >= MAX_REDUCE_DEPTH:
                raise
        if len(sections) > 1:
            half = len(sections) // 2
            parts = [
                self._reduce_group(sections[:half], depth + 1, call, tree),
                self._reduce_group(sections[half:], depth + 1, call, tree),
            ]
            return self._reduce_group(
                [_section(f"h{i}", r) for i, r in enumerate(parts)], depth + 1, call, tree
            )
        tree.truncated = True
        [section] = sections
        return self._reduce_group([_shorten(section)], depth + 1, call, tree)

    def summarize(self, results: list[tuple[int, dict[str, Any]]]) -> dict[str, Any]:
        """Chunk count, length-weighted sentiment, first key points, token totals, summaries."""
        return summarize_analyses(results)

    # -- one request ---------------------------------------------------------------------

    def _ask(self, user_content: str, call: Call) -> dict[str, Any]:
        """One analysis for this user message: a schema-valid reply, or an error.

        A reply that fails the schema is asked once more with a changed sampling (at
        temperature 0 the same request gives the same reply); a second bad reply fails the
        chunk for good, as InvalidReply quoting it.
        """
        try:
            return self._complete(user_content, call, retry=False)
        except BadReply as first:
            log.info("reply failed the schema (%s); asking once more", first.reason)
            try:
                return self._complete(user_content, call, retry=True)
            except BadReply as second:
                same = " (the same reply again)" if second.reply == first.reply else ""
                raise InvalidReply(
                    f"invalid reply twice{same}: {second.reason}: {quote(second.reply)}"
                ) from second

    def _complete(self, user_content: str, call: Call, *, retry: bool) -> dict[str, Any]:
        """One chat-completions request, in the best format the server accepts."""
        while True:
            index = self._format
            payload: dict[str, Any] = {
                "model": self.model,
                "messages": [
                    {"role": "system", "content": SYSTEM_PROMPT},
                    {"role": "user", "content": user_content},
                ],
                "temperature": RETRY_TEMPERATURE if retry else 0,
                "max_tokens": self.max_tokens,
            }
            if self.stream:
                payload["stream"] = True
                payload["stream_options"] = {"include_usage": True}
            if retry:
                payload["seed"] = int(hashlib.sha256(user_content.encode()).hexdigest()[:8], 16)
            response_format = response_format_body(FORMATS[index])
            if response_format is not None:
                payload["response_format"] = response_format
            try:
                return self._parse(self._post(payload, call))
            except FormatRejected as exc:
                if not self._fall_back(index, exc):
                    raise

    def _fall_back(self, index: int, exc: ProviderError) -> bool:
        """Move on from format ``index`` after the server rejected it; False at the last."""
        with self._format_lock:
            if self._format == index:
                if index + 1 >= len(FORMATS):
                    return False
                self._format = index + 1
                log.warning(
                    "%s rejected response_format %s (%s); using %s from now on",
                    self.base_url,
                    FORMATS[index],
                    exc.message[:200],
                    FORMATS[index + 1],
                )
        return True

    def _post(self, payload: dict[str, Any], call: Call) -> Completion:
        """POST within the call's deadline; the worker's abort shuts the connection down.

        The reply is read piece by piece and the deadline checked between pieces, so a server
        that trickles bytes is cut off on time (httpx's own read timeout is per read).
        """
        call.check()
        left = call.remaining()
        read = left if self.timeout_read is None else min(self.timeout_read, left)
        # A Call without a deadline leaves only the read timeout, if any (None: no limit).
        timeout = httpx.Timeout(
            None if math.isinf(read) else read, connect=min(self.timeout_connect, left)
        )
        ident = threading.get_ident()

        def abort() -> None:
            abort_thread(ident)

        try:
            with (
                call.abortable(abort),
                self._client.stream(
                    "POST", self._endpoint, json=payload, timeout=timeout
                ) as response,
            ):
                kind = response.headers.get("content-type", "")
                if response.is_success and kind.startswith("text/event-stream"):
                    return from_events(response.iter_raw(), call.check)
                body = bytearray()
                for piece in response.iter_raw():
                    body += piece
                    call.check()
                if not response.is_success:
                    plain = httpx.Response(
                        response.status_code,
                        headers=response.headers,
                        content=bytes(body),
                        request=response.request,
                    )
                    raise classify(plain, retry_after_cap_s=self.retry_after_cap_s)
                return from_body(bytes(body))
        except httpx.HTTPError as exc:  # timeouts, refused, reset, DNS, protocol errors
            call.check()  # cut off by the deadline or the worker: say so, not "read error"
            raise transport_error(exc, self._endpoint) from exc
        finally:
            forget_thread(ident)

    def _parse(self, reply: Completion) -> dict[str, Any]:
        """The analysis in a reply; ContextOverflow when it was cut off for lack of room."""
        usage = reply.usage
        if reply.finish_reason == "length":
            got = usage["completion_tokens"]
            if got < self.max_tokens:
                # The server gave the reply less room than max_tokens (llama.cpp does so when
                # prompt + max_tokens exceed its context): the prompt must shrink.
                raise ContextOverflow(
                    f"reply cut off after {got} tokens of max_tokens={self.max_tokens}"
                    f" (prompt {usage['prompt_tokens']} tokens): prompt and reply exceed the"
                    " model's context"
                )
            raise BadReply(
                f"reply cut off at max_tokens={self.max_tokens} (raise CHUNKQ_MAX_TOKENS)",
                reply.content,
            )
        analysis = parse_reply(reply.content)
        return {
            **analysis,
            "model": reply.model or self.model,
            "finish_reason": reply.finish_reason,
            "usage": usage,
        }


class _Tree:
    """What one reduce did: calls, levels, tokens, and whether any input was shortened."""

    def __init__(self) -> None:
        self.calls = 0
        self.levels = 0
        self.truncated = False
        self.usage = usage_of({})

    def add(self, result: dict[str, Any]) -> None:
        for key, value in usage_of(result.get("usage")).items():
            self.usage[key] += value


def response_format_body(name: str) -> dict[str, Any] | None:
    """The request's ``response_format`` for format ``name`` (of FORMATS); None: none."""
    if name == "json_schema":
        return {
            "type": "json_schema",
            "json_schema": {"name": SCHEMA_NAME, "schema": ANALYSIS_SCHEMA, "strict": True},
        }
    if name == "json_object+schema":
        return {"type": "json_object", "schema": ANALYSIS_SCHEMA}
    if name == "json_object":
        return {"type": "json_object"}
    return None


def _section(label: Any, result: dict[str, Any]) -> str:
    """One part of the reduce prompt: an analysis's summary and key points."""
    body = str(result.get("summary", ""))
    if result.get("key_points"):
        body += "\nKey points: " + "; ".join(str(p) for p in result["key_points"])
    return f"<part index={label}>\n{body}\n</part>"


def _shorten(section: str) -> str:
    """A section cut to about half its length at a word boundary, still closed by its tag."""
    head, _, rest = section.partition("\n")
    body = rest.removesuffix("\n</part>")
    keep = body[: max(1, len(body) // 2)].rsplit(" ", 1)[0]
    return f"{head}\n{keep}…\n</part>"
