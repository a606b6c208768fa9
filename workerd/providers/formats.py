"""Structured-output formats a chat-completions server may take, best first, and the fallback.

Servers differ in the ``response_format`` they accept, so the ``openai`` provider starts at
the best one and moves down the list, for good, each time its server rejects one.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from workerd.providers.base import ProviderError
from workerd.providers.replies import ANALYSIS_SCHEMA, SCHEMA_NAME

log = logging.getLogger("workerd.openai")

# Best first: OpenAI/vLLM/Ollama take json_schema; llama.cpp's server takes a schema inside
# json_object; then any JSON; then the prompt alone.
FORMATS = ("json_schema", "json_object+schema", "json_object", "prompt")


def response_format_body(name: str) -> dict[str, Any] | None:
    """The request's ``response_format`` for format ``name`` (of FORMATS); None: none."""
    if name == "json_schema":
        return {
            "type": "json_schema",
            "json_schema": {"name": SCHEMA_NAME, "schema": ANALYSIS_SCHEMA, "strict": True},
        }
    if name == "json_object+schema":
        return {"type": "json_object", "schema": ANALYSIS_SCHEMA}
    if name == "json_object":
        return {"type": "json_object"}
    return None


class FormatChoice:
    """The best format one server accepted so far; it only moves down, shared by threads."""

    def __init__(self, server: str) -> None:
        self.server = server  # named in the warning when it falls back
        self.index = 0  # into FORMATS
        self._lock = threading.Lock()

    @property
    def name(self) -> str:
        """The format requests use now (one of FORMATS)."""
        return FORMATS[self.index]

    def fall_back(self, index: int, exc: ProviderError) -> bool:
        """Move on from format ``index`` after the server rejected it; False at the last.

        A request that was sent in an older format than the current one changes nothing, so
        threads that saw the same rejection move the choice down only once.
        """
        with self._lock:
            if self.index == index:
                if index + 1 >= len(FORMATS):
                    return False
                self.index = index + 1
                log.warning(
                    "%s rejected response_format %s (%s); using %s from now on",
                    self.server,
                    FORMATS[index],
                    exc.message[:200],
                    FORMATS[index + 1],
                )
        return True
