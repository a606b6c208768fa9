"""The analysis a model must reply with: its JSON Schema, and the check of a reply against it.

The same schema is sent to the server (as structured output, so a grammar holds even a small
model to it) and checked here, so a reply is accepted exactly when it matches. Only harmless
noise is tolerated: surrounding whitespace and one Markdown code fence.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from schema.merging import SENTIMENTS

# The score's steps. An enum, not a number with minimum/maximum: llama.cpp's grammar ignores
# numeric bounds (a 135M model was seen to answer 2.098), but it holds a reply to an enum.
SCORES = (-1, -0.75, -0.5, -0.25, 0, 0.25, 0.5, 0.75, 1)
SCHEMA_NAME = "chunk_analysis"

# Bounded, so a small model held to it by a grammar cannot run on until max_tokens: a small
# model tends to write up to each maxLength, and at a 512-token context the reply must leave
# room for the prompt.
ANALYSIS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "summary": {"type": "string", "minLength": 1, "maxLength": 400},
        "sentiment": {"type": "string", "enum": list(SENTIMENTS)},
        "sentiment_score": {"type": "number", "enum": list(SCORES)},
        "key_points": {
            "type": "array",
            "items": {"type": "string", "minLength": 1, "maxLength": 120},
            "maxItems": 4,
        },
    },
    "required": ["summary", "sentiment", "sentiment_score", "key_points"],
    "additionalProperties": False,
}

_FENCE = re.compile(r"\A```[A-Za-z]*[ \t]*\n(.*?)\n?```\Z", re.DOTALL)
_QUOTE_CHARS = 300


class BadReply(Exception):
    """A reply that is not a schema-valid analysis; ``reply`` is its text, for quoting."""

    def __init__(self, reason: str, reply: str) -> None:
        super().__init__(f"{reason}: {quote(reply)}")
        self.reason = reason
        self.reply = reply


def parse_reply(content: Any, schema: dict[str, Any] = ANALYSIS_SCHEMA) -> dict[str, Any]:
    """The analysis in a reply's text content, or BadReply saying what is wrong with it."""
    if not isinstance(content, str) or not content.strip():
        raise BadReply("reply has no text content", str(content or ""))
    text = content.strip()
    fenced = _FENCE.match(text)
    if fenced is not None:
        text = fenced.group(1).strip()
    try:
        data = json.loads(text, parse_constant=_no_constant)
    except ValueError as exc:
        raise BadReply(f"reply is not valid JSON ({exc})", content) from exc
    problems = validate(data, schema)
    if problems:
        raise BadReply("reply does not match the analysis schema: " + "; ".join(problems), content)
    return dict(data)


def validate(value: Any, schema: dict[str, Any], path: str = "$") -> list[str]:
    """Where ``value`` breaks ``schema`` (the keywords ANALYSIS_SCHEMA uses); [] if nowhere."""
    kind = schema.get("type")
    if kind is not None and not _is_type(value, kind):
        return [f"{path} should be {kind}, got {_kind(value)}"]
    problems: list[str] = []
    if "enum" in schema and value not in schema["enum"]:
        problems.append(f"{path} should be one of {schema['enum']}, got {value!r}")
    if isinstance(value, str):
        if len(value.strip()) < schema.get("minLength", 0):
            problems.append(f"{path} should not be empty")
        if len(value) > schema.get("maxLength", math.inf):
            problems.append(f"{path} is longer than {schema['maxLength']} characters")
    low, high = schema.get("minimum", -math.inf), schema.get("maximum", math.inf)
    if _is_type(value, "number") and not low <= value <= high:
        problems.append(f"{path} should be within [{schema['minimum']}, {schema['maximum']}]")
    if isinstance(value, list):
        if len(value) > schema.get("maxItems", math.inf):
            problems.append(f"{path} has more than {schema['maxItems']} items")
        for i, item in enumerate(value):
            problems += validate(item, schema.get("items", {}), f"{path}[{i}]")
    if isinstance(value, dict):
        properties = schema.get("properties", {})
        problems += [f"{path}.{k} is missing" for k in schema.get("required", ()) if k not in value]
        if schema.get("additionalProperties") is False:
            problems += [f"{path}.{k} is not allowed" for k in value if k not in properties]
        for key, sub in properties.items():
            if key in value:
                problems += validate(value[key], sub, f"{path}.{key}")
    return problems


def quote(text: str) -> str:
    """A reply shown in an error: whitespace squashed, cut to a few hundred characters."""
    text = " ".join(text.split())
    return repr(text[:_QUOTE_CHARS] + ("…" if len(text) > _QUOTE_CHARS else ""))


def _is_type(value: Any, kind: str) -> bool:
    if kind == "number":
        return isinstance(value, int | float) and not isinstance(value, bool)
    if kind == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    types = {"string": str, "object": dict, "array": list, "boolean": bool}
    return isinstance(value, types[kind]) if kind in types else value is None


def _kind(value: Any) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean"}.get(
        type(value), "null" if value is None else "number"
    )


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")
