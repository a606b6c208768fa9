"""Query-string and path arguments: each checked, and a bad one a 400 (or 404) naming it."""

from __future__ import annotations

import uuid

from flask import request

from schema.errors import InvalidRequest, JobNotFound
from web.problems import ValidationFailed


def int_arg(name: str, *, default: int, most: int) -> int:
    """A whole-number query parameter from 1 to ``most``; anything else is a 400 naming it."""
    value = request.args.get(name)
    if value is None:
        return default
    if not (value.isascii() and value.isdigit()) or not 1 <= int(value) <= most:
        raise ValidationFailed(
            [
                InvalidRequest(
                    name, f"must be a whole number from 1 to {most}, got {value!r}", status=400
                )
            ]
        )
    return int(value)


def flag_arg(name: str, *, default: bool) -> bool:
    """A true/false query parameter; anything else is a 400 problem naming it."""
    value = request.args.get(name)
    if value is None:
        return default
    if value.lower() in ("true", "1"):
        return True
    if value.lower() in ("false", "0"):
        return False
    raise ValidationFailed(
        [InvalidRequest(name, f"must be true or false, got {value!r}", status=400)]
    )


def parse_id(job_id: str) -> uuid.UUID:
    try:
        return uuid.UUID(job_id)
    except ValueError as exc:
        raise JobNotFound(job_id) from exc
