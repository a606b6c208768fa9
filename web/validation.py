"""Strict validation of a submission: every problem is named by field, nothing is guessed."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from flask import Request

from schema.errors import InvalidRequest
from web.body import parse_json, read_body
from web.problems import ValidationFailed

FIELDS = ("raw_text", "max_chunk_chars", "reduce")


@dataclass(frozen=True, slots=True)
class Submission:
    raw_text: str
    max_chunk_chars: int
    reduce: bool


def parse_submission(
    request: Request,
    *,
    default_chars: int,
    min_chars: int,
    max_chars: int,
    max_bytes: int,
    default_reduce: bool = False,
) -> Submission:
    """Read, parse and check a POST body, raising ValidationFailed with every finding."""
    if not request.is_json:
        raise ValidationFailed(
            [
                InvalidRequest(
                    "Content-Type",
                    f"must be application/json, got {request.mimetype or 'nothing'!r}",
                    status=400,
                )
            ]
        )
    body: Any = parse_json(read_body(request.environ, max_bytes))
    if not isinstance(body, dict):
        raise ValidationFailed(
            [InvalidRequest("body", f"must be a JSON object, got {_kind(body)}", status=400)]
        )

    errors: list[InvalidRequest] = []
    for name in body:
        if name not in FIELDS:
            errors.append(
                InvalidRequest(name, f"is not a known field (known: {', '.join(FIELDS)})")
            )

    raw_text = body.get("raw_text")
    if "raw_text" not in body:
        errors.append(InvalidRequest("raw_text", "is required"))
    elif not isinstance(raw_text, str):
        errors.append(InvalidRequest("raw_text", f"must be a string, got {_kind(raw_text)}"))
    elif not raw_text.strip():
        errors.append(InvalidRequest("raw_text", "must contain some non-whitespace text"))
    elif "\x00" in raw_text:
        at = raw_text.index("\x00")
        errors.append(
            InvalidRequest(
                "raw_text",
                f"contains a NUL character (U+0000) at offset {at}, which cannot be stored",
            )
        )
    elif (bad := _lone_surrogate(raw_text)) is not None:
        errors.append(
            InvalidRequest(
                "raw_text",
                f"contains a lone surrogate (U+{ord(raw_text[bad]):04X}) at offset {bad}, which"
                " is not a Unicode character; escape a character outside the BMP as a"
                " surrogate pair",
            )
        )

    max_chunk_chars = body.get("max_chunk_chars", default_chars)
    if isinstance(max_chunk_chars, bool) or not isinstance(max_chunk_chars, int):
        errors.append(
            InvalidRequest("max_chunk_chars", f"must be an integer, got {_kind(max_chunk_chars)}")
        )
    elif not min_chars <= max_chunk_chars <= max_chars:
        errors.append(
            InvalidRequest(
                "max_chunk_chars",
                f"must be between {min_chars} and {max_chars}, got {max_chunk_chars}",
            )
        )

    reduce = body.get("reduce", default_reduce)
    if not isinstance(reduce, bool):
        errors.append(InvalidRequest("reduce", f"must be true or false, got {_kind(reduce)}"))

    if errors:
        raise ValidationFailed(errors)
    assert isinstance(raw_text, str)  # every other case appended an error above
    return Submission(raw_text, max_chunk_chars, reduce)


def _lone_surrogate(text: str) -> int | None:
    """Offset of the first lone surrogate (a JSON escape such as \\ud800 makes one), or None.

    An ASCII string has none, and ``isascii`` is free; otherwise one encode finds it in C.
    """
    if text.isascii():
        return None
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        return int(exc.start)
    return None


def _kind(value: Any) -> str:
    """A JSON type name for messages: clients think in JSON, not Python."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number with a fraction" if not value.is_integer() else "a number (float)"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"
