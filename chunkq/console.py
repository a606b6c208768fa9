"""The command line's own messages: one ``chunkq:`` line each, on stderr, so that stdout
carries only results (the JSON a script pipes into ``jq``)."""

from __future__ import annotations

import sys


def say(message: str) -> None:
    """Print ``chunkq: message`` on stderr at once (a supervisor's log must not lag)."""
    print(f"chunkq: {message}", file=sys.stderr, flush=True)
