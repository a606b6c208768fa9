"""Chat-completions replies off the wire: a JSON body, or a stream of server-sent events.

With CHUNKQ_STREAM=1 chunkq asks for a stream: tokens arrive as they are generated, and
closing the connection makes the server stop generating (llama.cpp keeps generating for a
client that sent a plain request and left). It is off by default because llama.cpp's
server cuts a stream short whenever another request waits (its ``interrupt_requests``), and
reports a context overflow inside a stream only by dropping it. A server that ignores
``stream`` answers one JSON body, which reads the same way.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from schema.merging import usage_of
from workerd.providers.base import ProviderUnavailable, RetryableError
from workerd.providers.replies import quote


@dataclass(slots=True)
class Completion:
    """The first choice of one reply: its text, why it ended, token counts, model."""

    content: str = ""
    finish_reason: str | None = None
    usage: dict[str, int] = field(default_factory=lambda: usage_of({}))
    model: str | None = None
    # False when the server sent no usage and completion_tokens counts streamed deltas.
    usage_reported: bool = True


def from_body(raw: bytes) -> Completion:
    """A non-streamed reply, or BadReply when it is not a chat completion."""
    text = raw.decode("utf-8", "replace")
    try:
        body = json.loads(text)
        choice = body["choices"][0]
        content = choice["message"].get("content")
        finish_reason = choice.get("finish_reason")
    except (ValueError, LookupError, TypeError, AttributeError) as exc:
        # Not the model's words (a proxy's page, a broken server): worth another attempt,
        # not a second sampling.
        raise RetryableError(f"malformed chat-completions reply: {quote(text)}") from exc
    return Completion(
        content if isinstance(content, str) else "",
        finish_reason,
        usage_of(body.get("usage")),
        body.get("model") if isinstance(body.get("model"), str) else None,
        isinstance(body.get("usage"), dict),
    )


def from_events(pieces: Iterator[bytes], check: Callable[[], None]) -> Completion:
    """A streamed reply, read from raw byte pieces; ``check`` runs after every piece, so a
    deadline holds even against a server that trickles bytes inside one event."""
    reply = Completion(usage_reported=False)
    deltas = 0
    buffer = b""
    for piece in pieces:
        check()
        buffer += piece
        *lines, buffer = buffer.split(b"\n")
        for line in lines:
            data = _data(line)
            if data is None:
                continue
            if data == "[DONE]":
                if reply.finish_reason is None:
                    raise RetryableError(
                        "the server ended the stream before the reply finished (llama.cpp does"
                        " so when another request waits: start it with --interrupt_requests"
                        " False, or leave CHUNKQ_STREAM off)"
                    )
                return _finish(reply, deltas)
            deltas += _apply(reply, data)
    if buffer.strip():
        data = _data(buffer)
        if data is not None and data != "[DONE]":
            deltas += _apply(reply, data)
    if reply.finish_reason is None:
        raise RetryableError(f"the stream ended before the reply finished: {quote(reply.content)}")
    return _finish(reply, deltas)


def _data(line: bytes) -> str | None:
    text = line.decode("utf-8", "replace").strip()
    if not text.startswith("data:"):
        return None  # comments, event names, keep-alives
    return text[5:].strip()


def _apply(reply: Completion, data: str) -> int:
    """Fold one event into ``reply``; returns 1 if it carried content (about one token)."""
    try:
        event = json.loads(data)
    except ValueError:
        event = None
    if not isinstance(event, dict):
        raise RetryableError(f"malformed stream event: {quote(data)}")
    if "error" in event:
        raise ProviderUnavailable(f"the server reported an error mid-stream: {quote(data)}")
    if isinstance(event.get("model"), str):
        reply.model = event["model"]
    if isinstance(event.get("usage"), dict):
        reply.usage = usage_of(event["usage"])
        reply.usage_reported = True
    carried = 0
    for choice in event.get("choices") or []:
        if not isinstance(choice, dict) or choice.get("index", 0) != 0:
            continue
        delta = choice.get("delta") or {}
        text = delta.get("content") if isinstance(delta, dict) else None
        if isinstance(text, str) and text:
            reply.content += text
            carried = 1
        if choice.get("finish_reason"):
            reply.finish_reason = choice["finish_reason"]
    return carried


def _finish(reply: Completion, deltas: int) -> Completion:
    if not reply.usage_reported:
        reply.usage = usage_of({"completion_tokens": deltas})
    return reply
