"""The ``openai`` provider: chunk analysis by any OpenAI-compatible chat-completions server.

Speaks to OpenAI and to the servers that copy its API (vLLM, Ollama, llama.cpp, LiteLLM):

- asks for the analysis schema as structured output, falling back to simpler formats when
  a server rejects one (``formats``), and checks every reply against the schema
  (``replies``);
- splits a chunk the model's context cannot hold, keeping the pieces that succeeded;
- reduces a document in a tree when its analyses do not fit one call (``reduce_tree``);
- bounds every call by its attempt's deadline, and lets the worker cut a call off (with
  ``stream``, closing the connection also makes the server stop generating; ``client``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from typing import Any

import httpx

from schema.chunking import split_text
from schema.merging import combine, summarize_analyses
from workerd.providers.base import Call, ContextOverflow, InvalidReply
from workerd.providers.classify import FormatRejected, cut_off
from workerd.providers.client import ChatClient
from workerd.providers.completions import Completion
from workerd.providers.formats import FORMATS, FormatChoice, response_format_body
from workerd.providers.prompts import DEFAULT_PROMPT, REDUCE_PROMPT, SYSTEM_PROMPT
from workerd.providers.reduce_tree import ReduceTree
from workerd.providers.replies import ANALYSIS_SCHEMA, BadReply, parse_reply, quote

log = logging.getLogger("workerd.openai")

MAX_SPLIT_DEPTH = 6
MIN_SPLIT_CHARS = 50
REDUCE_BUDGET_CHARS = 24_000  # at most this much input per reduce call (~6,000 tokens)
# The sampling of the one extra try after a reply that fails the schema.
RETRY_TEMPERATURE = 0.7


class OpenAIProvider:
    """Analyses chunks with a chat-completions model; safe to call from many threads."""

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
        self._client = ChatClient(
            self.base_url,
            api_key,
            timeout_connect=timeout_connect,
            timeout_read=timeout_read,
            retry_after_cap_s=retry_after_cap_s,
            transport=transport,
        )
        # The circuit breaker's key: workers calling the same server share one circuit.
        self.endpoint = f"openai {self.base_url} {self.model}"
        # The result cache's key: the same server and model, asked the same way for the same
        # schema, answers a text alike (a server may serve any model under one name).
        self.cache_identity = "openai/1 " + json.dumps(
            [
                self.base_url,
                self.model,
                self.max_tokens,
                self.max_split_depth,
                SYSTEM_PROMPT,
                self.prompt_template,
                ANALYSIS_SCHEMA,
            ],
            sort_keys=True,
        )
        self._formats = FormatChoice(self.base_url)

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
        return self._formats.name

    def check_server(self) -> list[str]:
        """Ask ``GET /models`` which models the server serves; warnings for the operator.

        Servers that serve one model often answer any name with it (llama.cpp echoes the
        name asked for), so this is the only place a wrong CHUNKQ_MODEL shows.
        """
        return self._client.check_model(self.model)

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
        log.debug("%d chars overflow the model's context; splitting at %d", len(text), cut)
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
        tree = ReduceTree(
            lambda content: self._ask(content, call),
            self.reduce_template,
            self.reduce_budget_chars,
        )
        return tree.run(analyses)

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
            log.debug("reply failed the schema (%s); asking once more", first.reason)
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
            index = self._formats.index
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
                return self._parse(self._client.post(payload, call))
            except FormatRejected as exc:
                if not self._formats.fall_back(index, exc):
                    raise

    def _parse(self, reply: Completion) -> dict[str, Any]:
        """The analysis in a reply; ContextOverflow when it was cut off for lack of room."""
        error = cut_off(reply, self.max_tokens)
        if error is not None:
            raise error
        analysis = parse_reply(reply.content)
        return {
            **analysis,
            "model": reply.model or self.model,
            "finish_reason": reply.finish_reason,
            "usage": reply.usage,
        }
