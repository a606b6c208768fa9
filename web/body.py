"""A JSON request body, read and parsed strictly: all of it or nothing, UTF-8, one value per key.

werkzeug's own reading trusts the server's stream: a body cut short by a client that
half-closes reads as a shorter body, and a chunked body over the limit is cut at the limit.
Both would be parsed as if whole; here they are refused.
"""

from __future__ import annotations

import codecs
import json
from typing import Any

from werkzeug.exceptions import RequestEntityTooLarge

from schema.errors import InvalidRequest
from web.problems import ValidationFailed

# Read the body in pieces of this size; a server's stream may return less than asked.
PIECE = 1 << 20


def read_body(environ: dict[str, Any], limit: int) -> bytes:
    """The whole body: exactly Content-Length bytes, or a terminated stream of at most ``limit``.

    Raises 413 (werkzeug's RequestEntityTooLarge) past the limit and ValidationFailed (400)
    for a body that ends before its Content-Length or that the server cannot read.
    """
    declared = _content_length(environ)
    stream = environ["wsgi.input"]
    if declared is not None and declared > limit:
        _drain(stream, min(declared, 2 * limit))
        raise RequestEntityTooLarge()
    if declared is None and not environ.get("wsgi.input_terminated"):
        return b""  # no length and a server that does not frame the stream: nothing to read
    # With no Content-Length (a chunked body), one byte past the limit tells "over" from "at".
    want = declared if declared is not None else limit + 1
    pieces: list[bytes] = []
    got = 0
    while got < want:
        try:
            piece = stream.read(min(want - got, PIECE))
        except Exception as exc:  # the server's stream: gunicorn has its own parse errors
            raise _bad_body(f"could not be read to its end ({exc or type(exc).__name__})") from exc
        if not piece:
            break
        pieces.append(piece)
        got += len(piece)
    if declared is not None and got < declared:
        raise _bad_body(f"ended after {got} of the {declared} bytes its Content-Length announced")
    if got > limit:
        _drain(stream, limit)
        raise RequestEntityTooLarge()
    return b"".join(pieces)


def _drain(stream: Any, most: int) -> None:
    """Read and drop up to ``most`` more bytes of a refused body.

    A server that closes a connection with unread bytes in it makes the kernel answer with a
    reset, and a client then sees "connection reset" instead of the 413; a body up to twice
    the limit is read out so that its client gets the answer. Errors end the draining.
    """
    left = most
    while left > 0:
        try:
            piece = stream.read(min(left, PIECE))
        except Exception:  # the refusal stands whatever the stream does now
            return
        if not piece:
            return
        left -= len(piece)


def parse_json(data: bytes) -> Any:
    """The JSON value of a UTF-8 body; ValidationFailed (400) for anything that is not one.

    Beyond ``json.loads``: the body must be UTF-8 (RFC 8259 section 8.1; a leading byte order
    mark is ignored), no object may repeat a key, NaN and Infinity are not numbers, and nesting
    deeper than the interpreter's recursion limit is refused rather than crashing the request.
    """
    skip = len(codecs.BOM_UTF8) if data.startswith(codecs.BOM_UTF8) else 0
    try:
        text = str(memoryview(data)[skip:], "utf-8")
    except UnicodeDecodeError as exc:
        at = skip + exc.start
        raise _bad_body(
            f"is not valid UTF-8: {exc.reason} at byte {at} ({data[at : at + 1]!r})"
        ) from exc
    repeated: list[str] = []

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        obj = dict(items)
        if len(obj) < len(items):
            seen: set[str] = set()
            for key, _ in items:
                if key in seen and key not in repeated:
                    repeated.append(key)
                seen.add(key)
        return obj

    try:
        value = json.loads(text, object_pairs_hook=pairs, parse_constant=_not_constant)
    except ValueError as exc:
        raise _bad_body(f"is not valid JSON: {exc}") from exc
    except RecursionError as exc:
        raise _bad_body("is not valid JSON here: it is nested too deeply") from exc
    if repeated:
        raise ValidationFailed(
            [
                InvalidRequest(key, "appears more than once in an object; send it once", status=400)
                for key in repeated
            ]
        )
    return value


def _content_length(environ: dict[str, Any]) -> int | None:
    if environ.get("HTTP_TRANSFER_ENCODING", "").lower() == "chunked":
        return None
    value = environ.get("CONTENT_LENGTH")
    if not value:
        return None
    try:
        length = int(value)
    except ValueError as exc:
        raise _bad_body(f"has a Content-Length that is not a number: {value!r}") from exc
    if length < 0:
        raise _bad_body(f"has a negative Content-Length: {length}")
    return length


def _not_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON value")


def _bad_body(detail: str) -> ValidationFailed:
    return ValidationFailed([InvalidRequest("body", detail, status=400)])
