"""The ``openai`` provider's HTTP client: pooled connections to one chat-completions server.

Every POST is held to its attempt's deadline, and the worker's abort shuts its connection
down; failures leave here already classified (``classify``).
"""

from __future__ import annotations

import functools
import math
import threading
from typing import Any

import httpx

from workerd.providers.abortable import AbortableTransport, abort_thread, forget_thread
from workerd.providers.base import Call
from workerd.providers.classify import classify, transport_error
from workerd.providers.completions import Completion, from_body, from_events

# Building an SSL context (loading the CA bundle) takes ~0.1 s; one is shared by every client.
_ssl_context = functools.cache(httpx.create_ssl_context)


class ChatClient:
    """Talks to one OpenAI-compatible server; safe to call from many threads.

    One ``httpx.Client`` (thread-safe, pooled keep-alive connections) serves every thread.
    """

    def __init__(
        self,
        base_url: str,
        api_key: str | None,
        *,
        timeout_connect: float,
        timeout_read: float | None,
        retry_after_cap_s: float,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.base_url = base_url
        self.timeout_connect = timeout_connect
        self.timeout_read = timeout_read
        self.retry_after_cap_s = retry_after_cap_s
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
        self.endpoint = f"{self.base_url}/chat/completions"

    def close(self) -> None:
        """Close the pooled connections."""
        self._client.close()

    def check_model(self, model: str) -> list[str]:
        """Ask ``GET /models`` whether the server serves ``model``; warnings for the operator."""
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
        if model not in ids:
            served = ", ".join(ids[:10]) or "none"
            return [
                f"CHUNKQ_MODEL={model!r} is not among the models {self.base_url} serves"
                f" ({served}); replies may come from another model"
            ]
        return []

    def post(self, payload: dict[str, Any], call: Call) -> Completion:
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
                    "POST", self.endpoint, json=payload, timeout=timeout
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
            raise transport_error(exc, self.endpoint) from exc
        finally:
            forget_thread(ident)
