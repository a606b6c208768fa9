"""The command line's own messages: one ``chunkq:`` line each, on stderr, so that stdout
carries only results (the JSON a script pipes into ``jq``). Under ``chunkq up`` with
CHUNKQ_LOG_FORMAT=json they are JSON log lines instead, like its children's."""

from __future__ import annotations

import logging
import sys

# Set by ``log_as_json``: the logger the messages go to instead of plain lines.
_log: logging.Logger | None = None


def say(message: str, *, level: int = logging.INFO) -> None:
    """Print ``chunkq: message`` on stderr at once (a supervisor's log must not lag)."""
    if _log is not None:
        _log.log(level, message)
        return
    print(f"chunkq: {message}", file=sys.stderr, flush=True)


def log_as_json() -> None:
    """From now on, ``say`` writes JSON log lines (``schema.logs``) on stderr."""
    from schema import logs

    global _log
    logs.configure("json")
    _log = logging.getLogger("chunkq")
