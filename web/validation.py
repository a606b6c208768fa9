"""Strict validation of a submission: every problem is named by field, nothing is guessed."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from flask import Request

from schema.addresses import check_url
from schema.errors import InvalidRequest
from schema.models import MAX_PRIORITY, MIN_PRIORITY
from web.body import parse_json, read_body
from web.problems import ValidationFailed

FIELDS = ("raw_text", "text", "max_chunk_chars", "reduce", "metadata", "webhook_url", "priority")
MAX_METADATA_KEYS = 16
MAX_METADATA_CHARS = 512


@dataclass(frozen=True, slots=True)
class Submission:
    raw_text: str
    max_chunk_chars: int
    reduce: bool
    metadata: dict[str, str] = field(default_factory=dict)
    webhook_url: str | None = None
    priority: int = 0

    def fingerprint(self) -> str:
        """A digest of what was asked, for ``Idempotency-Key``: the same request however its
        JSON was spelled (key order, spacing, ``text`` for ``raw_text``)."""
        digest = hashlib.sha256()
        for part in (
            json.dumps([self.max_chunk_chars, self.reduce, self.webhook_url, self.priority]),
            json.dumps(self.metadata, sort_keys=True),
            self.raw_text,
        ):
            digest.update(part.encode("utf-8"))
            digest.update(b"\x00")
        return digest.hexdigest()


def parse_submission(
    request: Request,
    *,
    default_chars: int,
    min_chars: int,
    max_chars: int,
    max_bytes: int,
    default_reduce: bool = False,
    allow_private_webhooks: bool = False,
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

    # ``text`` is the reference API's name for the same field.
    name = "text" if "text" in body and "raw_text" not in body else "raw_text"
    raw_text = body.get(name)
    if "text" in body and "raw_text" in body:
        errors.append(
            InvalidRequest("text", "is another name for raw_text; send one of them, not both")
        )
    elif name not in body:
        errors.append(InvalidRequest("raw_text", "is required (or its other name, text)"))
    elif not isinstance(raw_text, str):
        errors.append(InvalidRequest(name, f"must be a string, got {_kind(raw_text)}"))
    elif not raw_text.strip():
        errors.append(InvalidRequest(name, "must contain some non-whitespace text"))
    elif "\x00" in raw_text:
        at = raw_text.index("\x00")
        errors.append(
            InvalidRequest(
                name,
                f"contains a NUL character (U+0000) at offset {at}, which cannot be stored",
            )
        )
    elif (bad := _lone_surrogate(raw_text)) is not None:
        errors.append(
            InvalidRequest(
                name,
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

    metadata = body.get("metadata", {})
    errors.extend(_metadata_errors(metadata))

    webhook_url = body.get("webhook_url")
    if webhook_url is not None:
        if not isinstance(webhook_url, str):
            errors.append(
                InvalidRequest("webhook_url", f"must be a string, got {_kind(webhook_url)}")
            )
        elif (bad := _lone_surrogate(webhook_url)) is not None:
            errors.append(
                InvalidRequest(
                    "webhook_url",
                    f"contains a lone surrogate (U+{ord(webhook_url[bad]):04X}) at offset {bad},"
                    " which is not a Unicode character and cannot be stored",
                )
            )
        elif (why := check_url(webhook_url, allow_private=allow_private_webhooks)) is not None:
            errors.append(InvalidRequest("webhook_url", why))

    priority = body.get("priority", 0)
    if isinstance(priority, bool) or not isinstance(priority, int):
        errors.append(InvalidRequest("priority", f"must be an integer, got {_kind(priority)}"))
    elif not MIN_PRIORITY <= priority <= MAX_PRIORITY:
        errors.append(
            InvalidRequest(
                "priority",
                f"must be between {MIN_PRIORITY} and {MAX_PRIORITY} (higher runs first among"
                f" your jobs), got {priority}",
            )
        )

    if errors:
        raise ValidationFailed(errors)
    assert isinstance(raw_text, str)  # every other case appended an error above
    return Submission(raw_text, max_chunk_chars, reduce, metadata, webhook_url, priority)


def _metadata_errors(metadata: Any) -> list[InvalidRequest]:
    """What is wrong with a ``metadata`` object: at most 16 string keys to strings of at most
    512 characters (keys too), storable in PostgreSQL."""
    if not isinstance(metadata, dict):
        return [InvalidRequest("metadata", f"must be an object, got {_kind(metadata)}")]
    errors = []
    if len(metadata) > MAX_METADATA_KEYS:
        errors.append(
            InvalidRequest(
                "metadata", f"may have at most {MAX_METADATA_KEYS} keys, got {len(metadata)}"
            )
        )
    for key, value in metadata.items():
        where = f"metadata.{key}"
        if not key or len(key) > MAX_METADATA_CHARS:
            errors.append(
                InvalidRequest(
                    where, f"a key must have 1 to {MAX_METADATA_CHARS} characters, got {len(key)}"
                )
            )
        if not isinstance(value, str):
            errors.append(InvalidRequest(where, f"must be a string, got {_kind(value)}"))
        elif len(value) > MAX_METADATA_CHARS:
            errors.append(
                InvalidRequest(
                    where, f"must be at most {MAX_METADATA_CHARS} characters, got {len(value)}"
                )
            )
        for text in (key, value if isinstance(value, str) else ""):
            if "\x00" in text or _lone_surrogate(text) is not None:
                errors.append(
                    InvalidRequest(
                        where, "contains a NUL or a lone surrogate, which cannot be stored"
                    )
                )
                break
    return errors


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
