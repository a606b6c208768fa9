"""A scriptable OpenAI-compatible chat-completions server on loopback, for tests and benchmarks.

A real HTTP/1.1 server (``ThreadingHTTPServer`` on port 0, keep-alive) in a thread. Each test
scripts it: ``serve(*replies)`` queues replies (a ``Reply`` or a callable taking the
``Request``) to answer in order; once the queue is empty, ``fallback`` answers (by default a
valid JSON analysis derived from the chunk in the prompt). It counts chat-completion
requests, those in flight and the most ever in flight at once, and can ``pause()`` answering
so a test can hold many requests open and look. Standalone, for benchmarks::

    python -m tests.mock_openai --port 8123 --latency-ms 300
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import re
import select
import signal
import socket
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType
from typing import Any

import pytest

CHAT_PATH = "/v1/chat/completions"
MODELS_PATH = "/v1/models"
# The default prompt puts the chunk on lines of its own between these tags.
_CHUNK = re.compile(r"<chunk>\n(.*)\n</chunk>", re.DOTALL)
_WORD = re.compile(r"\w+")
_POSITIVE = {"good", "great", "happy", "love", "excellent", "wonderful", "delightful"}
_NEGATIVE = {"bad", "awful", "terrible", "hate", "broken", "sad", "slow"}
_ids = itertools.count(1)


@dataclass(frozen=True)
class Request:
    """One request as the server saw it; header names are lower-case."""

    method: str
    path: str
    headers: dict[str, str]
    body: Any

    @property
    def user_text(self) -> str:
        """The content of the last user message ("" if none)."""
        messages = self.body.get("messages") if isinstance(self.body, dict) else None
        for message in reversed(messages or []):
            if isinstance(message, dict) and message.get("role") == "user":
                return str(message.get("content") or "")
        return ""

    @property
    def chunk_text(self) -> str:
        """The chunk between ``<chunk>`` and ``</chunk>`` lines (the default prompt), else the
        whole user text."""
        found = _CHUNK.search(self.user_text)
        return found.group(1) if found else self.user_text


@dataclass
class Reply:
    """What to answer: status, body (dict/list sent as JSON, str/bytes as is), headers.

    ``status=0`` closes the connection without answering. ``latency_s`` overrides the
    server's latency for this reply. ``trickle_s``: after the headers, send the body one
    byte every that many seconds (a server that never quite finishes). A 200 completion to
    a request that asked for ``stream`` is sent as server-sent events, as real servers do,
    unless ``stream`` is False.
    """

    status: int = 200
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    latency_s: float | None = None
    trickle_s: float | None = None
    stream: bool | None = None


Responder = Callable[[Request], Reply]


# -- canned replies ------------------------------------------------------------------------


def analysis(text: str) -> dict[str, Any]:
    """A deterministic analysis of ``text``: what a well-behaved model would send back."""
    words = [w.casefold() for w in _WORD.findall(text)]
    pos = sum(w in _POSITIVE for w in words)
    neg = sum(w in _NEGATIVE for w in words)
    # The schema's steps of a quarter.
    score = 0.0 if pos + neg == 0 else round(4 * (pos - neg) / (pos + neg)) / 4
    if pos and neg:
        label = "mixed"
    elif pos or neg:
        label = "positive" if pos else "negative"
    else:
        label = "neutral"
    sentences = [s.strip() for s in re.split(r"(?<=[.!?])\s+", text) if s.strip()]
    return {
        "summary": f"{len(text)} chars: {' '.join(text.split())[:60].rstrip()}",
        "sentiment": label,
        "sentiment_score": score,
        "key_points": [s[:80].strip() for s in sentences[:3]],
    }


def completion(
    content: dict[str, Any] | str,
    *,
    finish_reason: str = "stop",
    model: str = "mock-model",
    usage: dict[str, int] | None = None,
) -> Reply:
    """A 200 chat-completions reply whose message content is ``content`` (a dict is JSON)."""
    text = content if isinstance(content, str) else json.dumps(content)
    if usage is None:
        usage = {"prompt_tokens": 10, "completion_tokens": math.ceil(len(text) / 4)}
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
    return Reply(
        200,
        {
            "id": f"chatcmpl-mock-{next(_ids)}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": finish_reason,
                }
            ],
            "usage": usage,
        },
    )


def analysis_reply(request: Request) -> Reply:
    """The default: a valid analysis of the chunk in the prompt, echoing the model asked for."""
    content = analysis(request.chunk_text)
    prompt = math.ceil(len(request.user_text) / 4)
    done = math.ceil(len(json.dumps(content)) / 4)
    model = request.body.get("model") if isinstance(request.body, dict) else None
    return completion(
        content,
        model=model or "mock-model",
        usage={"prompt_tokens": prompt, "completion_tokens": done, "total_tokens": prompt + done},
    )


def error_reply(
    status: int,
    message: str,
    shape: str = "openai",
    *,
    kind: str | None = "invalid_request_error",
    code: str | int | None = None,
    headers: dict[str, str] | None = None,
) -> Reply:
    """An error in one of the body shapes real servers send.

    ``openai``: {"error": {message, type, param, code}}; ``vllm_flat``: {"object": "error",
    message, type, param, code: <status>}; ``vllm_nested``: {"error": {message, type, code:
    <status>}}; ``llamacpp``: {"error": {code: <status>, message, type}}; ``ollama``:
    {"error": message}; ``html``: a proxy's HTML page; ``text``: plain text.
    """
    body: Any
    if shape == "openai":
        body = {"error": {"message": message, "type": kind, "param": None, "code": code}}
    elif shape == "vllm_flat":
        body = {
            "object": "error",
            "message": message,
            "type": kind,
            "param": None,
            "code": status if code is None else code,
        }
    elif shape == "vllm_nested":
        body = {
            "error": {"message": message, "type": kind, "code": status if code is None else code}
        }
    elif shape == "llamacpp":
        body = {
            "error": {"code": status if code is None else code, "message": message, "type": kind}
        }
    elif shape == "ollama":
        body = {"error": message}
    elif shape == "html":
        body = (
            f"<html><head><title>{status}</title></head><body><center><h1>{message}</h1>"
            "</center><hr><center>nginx</center></body></html>"
        )
    elif shape == "text":
        body = message
    else:
        raise ValueError(f"unknown error shape {shape!r}")
    return Reply(status, body, dict(headers or {}))


def rate_limited(retry_after: str | None = "2", **headers: str) -> Reply:
    """429 rate limit (OpenAI's body) with a ``Retry-After`` header unless None."""
    extra = {"Retry-After": retry_after} if retry_after is not None else {}
    return error_reply(
        429,
        "Rate limit reached for requests. Please try again later.",
        kind="requests",
        code="rate_limit_exceeded",
        headers={**extra, **{k.replace("_", "-"): v for k, v in headers.items()}},
    )


def quota_exhausted() -> Reply:
    """429 that no wait fixes: OpenAI's insufficient_quota."""
    return error_reply(
        429,
        "You exceeded your current quota, please check your plan and billing details.",
        kind="insufficient_quota",
        code="insufficient_quota",
    )


def server_error(status: int = 500) -> Reply:
    return error_reply(
        status,
        "The server had an error while processing your request. Sorry about that!",
        kind="server_error",
    )


def cut_off() -> Reply:
    """A reply truncated at max_tokens."""
    return completion('{"summary": "The text begins by', finish_reason="length")


def not_json() -> Reply:
    """A reply whose content is prose, not JSON."""
    return completion("Sure! The text is mostly positive and talks about queues.")


def disconnect() -> Reply:
    """Close the connection without answering."""
    return Reply(status=0)


CONTEXT_ERRORS: dict[str, tuple[str, str | None, str | int | None]] = {
    # shape -> (message, type, code) as each server words a context overflow
    "openai": (
        "This model's maximum context length is 8192 tokens. However, your messages "
        "resulted in 9000 tokens. Please reduce the length of the messages.",
        "invalid_request_error",
        "context_length_exceeded",
    ),
    "vllm_flat": (
        "This model's maximum context length is 2048 tokens. However, you requested 2100 "
        "tokens (1076 in the messages, 1024 in the completion).",
        "BadRequestError",
        None,
    ),
    "llamacpp": (
        "the request exceeds the available context size, try increasing it",
        "exceed_context_size_error",
        None,
    ),
    "ollama": ("the input length exceeds the context length", None, None),
}


def context_limit(max_chars: int, shape: str = "openai") -> Responder:
    """Reject (400, as server ``shape`` does) user content over ``max_chars``; else analyse."""
    message, kind, code = CONTEXT_ERRORS[shape]

    def respond(request: Request) -> Reply:
        if len(request.user_text) > max_chars:
            return error_reply(400, message, shape, kind=kind, code=code)
        return analysis_reply(request)

    return respond


# -- the server ----------------------------------------------------------------------------


class MockOpenAI:
    """The server. ``base_url`` is ``http://127.0.0.1:PORT/v1``; counters are thread-safe."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        latency_s: float = 0.0,
        fallback: Responder = analysis_reply,
        models: tuple[str, ...] | None = ("mock-model",),
    ) -> None:
        self.latency_s = latency_s
        self.fallback = fallback
        self.models = models  # what GET /v1/models lists; None answers 404
        self.requests: deque[Request] = deque(maxlen=10_000)  # the latest, oldest first
        self._script: deque[Reply | Responder] = deque()
        self._lock = threading.Condition()
        self._total = 0
        self._in_flight = 0
        self._max_in_flight = 0
        self.finished = 0  # replies whose sending ended (sent, or cut off by the client)
        self.abandoned = 0  # requests whose client hung up while the reply was being "generated"
        self._open = threading.Event()  # cleared by pause(): requests wait to be answered
        self._open.set()
        self._closing = threading.Event()
        self._server = _Server((host, port), _Handler)
        self._server.mock = self
        self._thread: threading.Thread | None = None
        self.base_url = f"http://{host}:{self._server.server_address[1]}/v1"

    # scripting

    def serve(self, *replies: Reply | Responder) -> None:
        """Answer the next requests with ``replies``, in order, then go back to ``fallback``."""
        with self._lock:
            self._script.extend(replies)

    def pause(self) -> None:
        """Hold every request (counted as in flight) until ``resume()``."""
        self._open.clear()

    def resume(self) -> None:
        self._open.set()

    # counters

    @property
    def total_requests(self) -> int:
        with self._lock:
            return self._total

    @property
    def in_flight(self) -> int:
        with self._lock:
            return self._in_flight

    @property
    def max_in_flight(self) -> int:
        with self._lock:
            return self._max_in_flight

    def reset_counters(self) -> None:
        with self._lock:
            self._total = 0
            self._max_in_flight = self._in_flight

    def wait_for(self, predicate: Callable[[MockOpenAI], bool], timeout: float = 10.0) -> bool:
        """Wait until ``predicate(self)`` holds (checked whenever a counter moves)."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while not predicate(self):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._lock.wait(left)
            return True

    # lifecycle

    def start(self) -> MockOpenAI:
        self._thread = threading.Thread(
            # A short poll interval keeps close() (shutdown) quick.
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.02},
            name="mock-openai",
            daemon=True,
        )
        self._thread.start()
        return self

    def close(self) -> None:
        self._closing.set()
        self._open.set()
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join()
        self._server.server_close()

    def __enter__(self) -> MockOpenAI:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # serving

    def _handle(self, handler: _Handler) -> None:
        if self._closing.is_set():
            # Closed: a request on a kept-alive connection gets it dropped, as from a server
            # that went away (new connections are refused: the listening socket is gone).
            handler.close_connection = True
            return
        length = int(handler.headers.get("Content-Length") or 0)
        raw = handler.rfile.read(length) if length else b""
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        request = Request(
            handler.command,
            handler.path,
            {k.lower(): v for k, v in handler.headers.items()},
            body,
        )
        # The counters are of chat completions: what a provider cap limits.
        chat = handler.path == CHAT_PATH and handler.command == "POST"
        with self._lock:
            self.requests.append(request)
            self._total += chat
            self._in_flight += chat
            self._max_in_flight = max(self._max_in_flight, self._in_flight)
            self._lock.notify_all()
            source: Reply | Responder | None = None
            if chat:
                source = self._script.popleft() if self._script else self.fallback
            elif handler.path == MODELS_PATH and handler.command == "GET" and self.models:
                listed = [{"id": m, "object": "model", "owned_by": "me"} for m in self.models]
                source = Reply(200, {"object": "list", "data": listed})
        try:
            self._open.wait()
            if source is None:
                reply = error_reply(404, f"no route {handler.command} {handler.path}")
            else:
                reply = source(request) if callable(source) else source
            latency = self.latency_s if reply.latency_s is None else reply.latency_s
            if latency > 0 and request.path == CHAT_PATH and self._client_left(handler, latency):
                with self._lock:
                    self.abandoned += 1
                    self._lock.notify_all()
                handler.close_connection = True
                return
        finally:
            # Out of flight before the answer is written: once a client has its answer it may
            # send the next request, and that must not count as overlapping this one.
            with self._lock:
                self._in_flight -= chat
                self._lock.notify_all()
        streamed = isinstance(request.body, dict) and bool(request.body.get("stream"))
        try:
            _send(handler, reply, streamed, self._closing)
        except OSError:
            handler.close_connection = True  # the client left (aborted or timed out)
        finally:
            with self._lock:
                self.finished += 1
                self._lock.notify_all()

    def _client_left(self, handler: _Handler, seconds: float) -> bool:
        """Wait ``seconds`` (the reply's generation), True as soon as the client hangs up,
        as a real server notices a closed connection and stops generating."""
        deadline = time.monotonic() + seconds
        conn = handler.connection
        while (left := deadline - time.monotonic()) > 0 and not self._closing.is_set():
            ready, _, _ = select.select([conn], [], [], min(left, 0.05))
            if ready:
                try:
                    if conn.recv(1, socket.MSG_PEEK) == b"":
                        return True
                except OSError:
                    return True
        return False


def _events(body: dict[str, Any]) -> bytes:
    """A completion body as the server-sent events of a stream: one event per few characters
    of content, the finish reason in the last, usage in a final event, then [DONE]."""
    choice = body["choices"][0]
    content = choice["message"]["content"] or ""
    base = {k: body[k] for k in ("id", "created", "model") if k in body}
    base["object"] = "chat.completion.chunk"
    events = [{**base, "choices": [{"index": 0, "delta": {"role": "assistant"}}]}]
    for i in range(0, len(content), 4):
        delta = {"content": content[i : i + 4]}
        events.append({**base, "choices": [{"index": 0, "delta": delta}]})
    events.append(
        {
            **base,
            "choices": [{"index": 0, "delta": {}, "finish_reason": choice.get("finish_reason")}],
        }
    )
    if "usage" in body:
        events.append({**base, "choices": [], "usage": body["usage"]})
    lines = [f"data: {json.dumps(e)}\n\n" for e in events] + ["data: [DONE]\n\n"]
    return "".join(lines).encode()


def _send(handler: _Handler, reply: Reply, streamed: bool, closing: threading.Event) -> None:
    if reply.status == 0:
        handler.close_connection = True
        return
    headers = {k.lower(): v for k, v in reply.headers.items()}
    completion_body = isinstance(reply.body, dict) and "choices" in reply.body
    if (
        reply.status == 200
        and completion_body
        and (reply.stream or (streamed and reply.stream is None))
    ):
        data = _events(reply.body)
        headers["content-type"] = "text/event-stream"
    elif isinstance(reply.body, dict | list):
        data = json.dumps(reply.body).encode()
        headers.setdefault("content-type", "application/json")
    elif isinstance(reply.body, bytes):
        data = reply.body
    else:
        data = str(reply.body or "").encode()
        kind = "text/html" if data.lstrip().startswith(b"<") else "text/plain"
        headers.setdefault("content-type", f"{kind}; charset=utf-8")
    handler.send_response(reply.status)
    for name, value in headers.items():
        handler.send_header(name, value)
    handler.send_header("Content-Length", str(len(data)))
    handler.end_headers()
    if reply.trickle_s is None:
        handler.wfile.write(data)
        return
    handler.wfile.flush()
    for i in range(len(data)):
        if closing.wait(reply.trickle_s):
            return
        handler.wfile.write(data[i : i + 1])
        handler.wfile.flush()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 1024  # benchmarks open many connections at once
    mock: MockOpenAI

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that hung up (timeout tests) is expected; anything else is a mock bug.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, so the client's connection pool is exercised
    # Headers and body leave in one write, with no Nagle/delayed-ACK stall between them.
    wbufsize = -1
    disable_nagle_algorithm = True
    server: _Server

    def do_POST(self) -> None:
        self.server.mock._handle(self)

    do_GET = do_POST

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(name="mock_openai")
def mock_openai_fixture() -> Iterator[MockOpenAI]:
    """A running mock server for one test; import this function to use the fixture."""
    with MockOpenAI() as server:
        yield server


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.mock_openai", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--latency-ms", type=float, default=0.0, help="time each reply takes")
    parser.add_argument(
        "--context-limit", type=int, default=None, help="reject user content over N chars"
    )
    args = parser.parse_args(argv)
    fallback = analysis_reply if args.context_limit is None else context_limit(args.context_limit)
    stop = threading.Event()

    def on_signal(_signum: int, _frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    with MockOpenAI(args.host, args.port, latency_s=args.latency_ms / 1000, fallback=fallback) as m:
        print(f"mock OpenAI serving at {m.base_url}", flush=True)
        while not stop.wait(1.0):
            pass
        print(f"served {m.total_requests} requests, at most {m.max_in_flight} at once", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
