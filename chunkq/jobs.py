"""``chunkq jobs``: the caller's jobs, newest first, as a table for people or JSON for scripts.

The API gives at most a page of 100; a longer ``--limit`` follows ``next_cursor``, which is a
keyset cursor, so jobs submitted meanwhile neither repeat nor push others off the list.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from chunkq.client import api_key_for, make_client, request
from chunkq.console import say
from chunkq.exits import EXIT_OK, CommandError

PAGE = 100  # the API's largest page of jobs
METADATA_WIDTH = 40
COLUMNS = ("ID", "STATUS", "PROGRESS", "CHUNKS", "FAILED", "AGE", "METADATA")


def fetch_jobs(
    url: str,
    api_key: str | None,
    *,
    statuses: list[str],
    metadata: dict[str, str],
    limit: int,
) -> list[dict[str, Any]]:
    """Up to ``limit`` of the key's jobs, newest first, a page at a time."""
    found: list[dict[str, Any]] = []
    params: dict[str, Any] = {f"metadata[{key}]": value for key, value in metadata.items()}
    if statuses:
        params["status"] = ",".join(statuses)
    with make_client(url, api_key_for(url, api_key)) as client:
        cursor = None
        while len(found) < limit:
            page_params = {**params, "limit": min(PAGE, limit - len(found))}
            if cursor:
                page_params["cursor"] = cursor
            page = request(client, "GET", "/v1/analyze", params=page_params)
            found += page.get("data") or []
            cursor = page.get("next_cursor")
            if not cursor:
                break
    return found[:limit]


def list_jobs(
    *,
    url: str,
    api_key: str | None,
    statuses: list[str],
    metadata: dict[str, str],
    limit: int,
    as_json: bool,
) -> int:
    """The ``jobs`` command: print the jobs; a failure is one message and its exit code."""
    try:
        found = fetch_jobs(url, api_key, statuses=statuses, metadata=metadata, limit=limit)
    except CommandError as exc:
        say(str(exc))
        return exc.code
    if as_json:
        print(json.dumps(found, indent=2, ensure_ascii=False), flush=True)
    elif found:
        print(table(found, now=datetime.now(UTC)), flush=True)
    else:
        print("no jobs" + (" with status " + " or ".join(statuses) if statuses else ""))
    return EXIT_OK


def table(jobs: list[dict[str, Any]], *, now: datetime) -> str:
    """The jobs as aligned columns under a header, one line each."""
    rows = [COLUMNS] + [_row(job, now) for job in jobs]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )


def _row(job: dict[str, Any], now: datetime) -> tuple[str, ...]:
    total = int(job.get("chunks_total") or 0)
    done = int(job.get("chunks_completed") or 0)
    return (
        str(job.get("job_id")),
        str(job.get("status")),
        f"{float(job.get('percent') or 0):.0f}%",
        f"{done}/{total}",
        str(int(job.get("chunks_failed") or 0)),
        age(job.get("created_at"), now),
        _metadata(job.get("metadata")),
    )


def age(created_at: Any, now: datetime) -> str:
    """How long ago ``created_at`` (an ISO timestamp) was: ``42s``, ``5m``, ``3h``, ``12d``."""
    try:
        seconds = (now - datetime.fromisoformat(created_at)).total_seconds()
    except (TypeError, ValueError):
        return "?"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{max(int(seconds), 0)}s"


def _metadata(metadata: Any) -> str:
    """``key=value`` pairs, cut to METADATA_WIDTH characters; ``-`` for none."""
    if not isinstance(metadata, dict) or not metadata:
        return "-"
    text = " ".join(" ".join(f"{k}={v}" for k, v in metadata.items()).split())
    return text if len(text) <= METADATA_WIDTH else text[: METADATA_WIDTH - 1] + "…"
