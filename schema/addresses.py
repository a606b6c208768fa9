"""Where a webhook may go: an http(s) URL whose host is a public address.

A webhook makes the service send a request where a client says, so a target inside the
operator's network (loopback, private ranges, link-local cloud metadata) is refused unless
``CHUNKQ_WEBHOOK_ALLOW_PRIVATE=1``. The submit checks what it can without a lookup (the
URL's form, a literal address, ``localhost``); the worker resolves the name once, checks
every address, and connects to the one it checked, so a name cannot change its answer
between the check and the connection.
"""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

MAX_URL_CHARS = 2048
ALLOW_PRIVATE_VAR = "CHUNKQ_WEBHOOK_ALLOW_PRIVATE"


def refusal(address: str) -> str | None:
    """Why an IP address is not a webhook target (None: it may be one)."""
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip.is_loopback:
        return f"{address} is a loopback address"
    if ip.is_link_local:
        return f"{address} is a link-local address"
    if ip.is_unspecified or ip.is_multicast or ip.is_reserved:
        return f"{address} is not a unicast address"
    if not ip.is_global:
        return f"{address} is a private address"
    return None


def check_url(url: str, *, allow_private: bool) -> str | None:
    """Why ``url`` cannot be a webhook target, judged without a DNS lookup (None: it can)."""
    if len(url) > MAX_URL_CHARS:
        return f"must be at most {MAX_URL_CHARS} characters, got {len(url)}"
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        return f"is not a valid URL ({exc})"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "must be an absolute http:// or https:// URL"
    if parts.username or parts.password:
        return "must not carry a user name or password"
    if port == 0:
        return "must not name port 0"
    if any(c.isspace() or ord(c) < 0x20 for c in url):
        return "must not contain whitespace or control characters"
    if allow_private:
        return None
    host = parts.hostname
    if host == "localhost" or host.endswith(".localhost"):
        return f"{host} is a loopback name; set {ALLOW_PRIVATE_VAR}=1 to allow it"
    try:
        reason = refusal(host)
    except ValueError:
        return None  # a name: the worker resolves and checks it before connecting
    return None if reason is None else f"{reason}; set {ALLOW_PRIVATE_VAR}=1 to allow it"
