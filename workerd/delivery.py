"""One webhook delivery attempt: sign the event (Standard Webhooks), resolve its host once,
refuse a private address, and POST to the very address that was checked.

Connecting to the checked address, not to the name, is what makes the check hold: a name
resolved a second time by the HTTP client could answer a private address the second time
(DNS rebinding). The request keeps the name in its ``Host`` header and, for https, as the
TLS server name, so the certificate is verified against the name the client gave.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from typing import Any

import httpx

from schema.addresses import ALLOW_PRIVATE_VAR, refusal
from schema.webhooks import ClaimedEvent

USER_AGENT = "chunkq-webhooks/1 (+https://www.standardwebhooks.com)"


@dataclass(frozen=True, slots=True)
class Attempt:
    """What one attempt came to: ``error`` None means delivered (a 2xx answer); ``retry``
    False means the target must not be tried again (refused)."""

    status_code: int | None
    error: str | None
    duration_ms: int
    retry: bool = True


class Refused(Exception):
    """The target is not one a webhook may go to; trying again would not change that."""


def sign(secret: str, event_id: str, timestamp: int, body: str) -> str:
    """The ``webhook-signature`` header: ``v1,`` and the base64 HMAC-SHA256 of
    ``{id}.{timestamp}.{body}`` keyed with the secret's bytes (after ``whsec_``)."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = f"{event_id}.{timestamp}.{body}".encode()
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()


def headers(event: ClaimedEvent, timestamp: int) -> dict[str, str]:
    """The headers of one attempt: the same ``webhook-id`` on every attempt, signed now."""
    return {
        "webhook-id": event.id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(event.secret, event.id, timestamp, event.body),
        "content-type": "application/json",
        "user-agent": USER_AGENT,
    }


def resolve(host: str, port: int, timeout_s: float) -> list[str]:
    """The addresses ``host`` resolves to, looked up once within ``timeout_s``.

    getaddrinfo cannot be interrupted, so it runs in a thread of its own that is left
    behind (it ends by itself) when the deadline passes first.
    """
    found: list[list[str]] = []
    failed: list[BaseException] = []

    def lookup() -> None:
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            found.append(list(dict.fromkeys(str(info[4][0]) for info in infos)))
        except BaseException as exc:
            failed.append(exc)

    thread = threading.Thread(target=lookup, name="chunkq-webhook-dns", daemon=True)
    thread.start()
    thread.join(timeout_s)
    if failed:
        raise failed[0]
    if not found:
        raise TimeoutError(f"resolving {host} took more than {timeout_s:g}s")
    return found[0]


def target(url: str, timeout_s: float, *, allow_private: bool) -> tuple[httpx.URL, str, str]:
    """Where to connect for ``url``: the URL with the checked address as its host, the
    ``Host`` header, and the host name (for TLS). Raises Refused for a private address."""
    parsed = httpx.URL(url)
    host = parsed.raw_host.decode("ascii")
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    addresses = resolve(host, port, timeout_s)
    if not addresses:
        raise OSError(f"{host} resolves to no address")
    if not allow_private:
        for address in addresses:
            reason = refusal(address)
            if reason is not None:
                said = reason if address == host else f"{host} resolves to {_as_clause(reason)}"
                raise Refused(f"refused: {said}; set {ALLOW_PRIVATE_VAR}=1 to allow it")
    return parsed.copy_with(host=addresses[0]), parsed.netloc.decode("ascii"), host


def _as_clause(reason: str) -> str:
    """'10.0.0.1 is a private address' -> '10.0.0.1, a private address'."""
    address, _, rest = reason.partition(" is ")
    return f"{address}, {rest}" if rest else reason


def deliver(
    event: ClaimedEvent,
    *,
    timeout_s: float,
    allow_private: bool,
    verify: ssl.SSLContext | bool = True,
) -> Attempt:
    """Make one attempt to deliver ``event``, within ``timeout_s`` seconds in all.
    ``verify``: how https certificates are checked (default: the public CAs)."""
    started = time.monotonic()

    def took() -> int:
        return round((time.monotonic() - started) * 1000)

    try:
        url, host_header, host = target(event.url, timeout_s, allow_private=allow_private)
    except Refused as exc:
        return Attempt(None, str(exc), took(), retry=False)
    except TimeoutError as exc:
        return Attempt(None, f"timeout: {exc}", took())
    except (OSError, UnicodeError) as exc:
        return Attempt(None, f"could not resolve the host of {event.url}: {exc}", took())
    except httpx.InvalidURL as exc:
        return Attempt(None, f"invalid URL: {exc}", took(), retry=False)
    remaining = max(0.1, timeout_s - (time.monotonic() - started))
    sent = headers(event, int(time.time()))
    sent["host"] = host_header
    extensions: dict[str, Any] = {"sni_hostname": host} if url.scheme == "https" else {}
    try:
        with (
            httpx.Client(
                timeout=remaining, follow_redirects=False, trust_env=False, verify=verify
            ) as client,
            client.stream(
                "POST", url, content=event.body.encode(), headers=sent, extensions=extensions
            ) as response,
        ):
            code = response.status_code
    except httpx.TimeoutException as exc:
        kind = type(exc).__name__
        return Attempt(None, f"timeout: no answer within {timeout_s:g}s ({kind})", took())
    except httpx.HTTPError as exc:
        detail = str(exc) or type(exc).__name__
        return Attempt(None, f"connection error: {detail}", took())
    if 200 <= code < 300:
        return Attempt(code, None, took())
    return Attempt(code, f"HTTP {code} {response.reason_phrase}".rstrip(), took())
