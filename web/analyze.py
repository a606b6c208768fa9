"""The ``/v1/analyze`` blueprint: submit a text, read a job, cancel a job."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from flask import Blueprint, Response, current_app, request
from sqlalchemy import Engine

from schema import queue
from schema.chunking import split_text
from schema.db import bound, deadline_s, watchdog
from schema.errors import InvalidRequest, JobNotFound
from schema.reads import report_json
from web.problems import ValidationFailed
from web.validation import parse_submission

bp = Blueprint("analyze", __name__, url_prefix="/v1/analyze")


@contextmanager
def _connection(*, write: bool) -> Iterator[psycopg.Connection[Any]]:
    """A pooled connection for this request only, returned to the pool when it ends.

    For writes, the block is one transaction: committed on success, rolled back on any error.
    """
    engine: Engine = current_app.extensions["chunkq.engine"]
    with engine.begin() if write else engine.connect() as conn:
        driver = conn.connection.driver_connection
        lease_s = current_app.config["LEASE_S"]
        try:
            # A server that hangs cannot enforce its statement timeout: bound it here too.
            with watchdog.guard(driver, deadline_s(lease_s)):
                bound(driver, lease_s)  # type: ignore[arg-type]
                yield driver  # type: ignore[misc]
        except psycopg.OperationalError:
            # SQLAlchemy did not see this error (it came through the raw connection), so
            # tell it the connection is gone rather than let the pool try to reset it.
            if conn.connection.driver_connection.broken:  # type: ignore[union-attr]
                conn.invalidate()
            raise


@bp.post("")
def submit() -> tuple[dict[str, Any], int, dict[str, str]]:
    """Accept a text: chunk it, write the job and its chunks in one transaction, answer 202."""
    cfg = current_app.config
    sub = parse_submission(
        request,
        default_chars=cfg["DEFAULT_CHUNK_CHARS"],
        min_chars=cfg["MIN_CHUNK_CHARS"],
        max_chars=cfg["MAX_CHUNK_CHARS"],
        max_bytes=cfg["MAX_CONTENT_LENGTH"],
        default_reduce=cfg["REDUCE"],
    )
    limit = cfg["MAX_CHUNKS_PER_JOB"]
    # No chunk is longer than max_chunk_chars, so this many chunks is the least there can be:
    # refuse before splitting, or a tiny max_chunk_chars would make the refusal itself slow.
    fewest = -(-len(sub.raw_text) // sub.max_chunk_chars)
    spans = split_text(sub.raw_text, sub.max_chunk_chars) if fewest <= limit else []
    if fewest > limit or len(spans) > limit:
        need = -(-len(sub.raw_text) // limit)
        raise ValidationFailed(
            [
                InvalidRequest(
                    "max_chunk_chars",
                    f"splits this text into at least {max(fewest, len(spans))} chunks, more"
                    f" than the limit of {limit} per job; use max_chunk_chars of at least"
                    f" about {need}, or submit the text in parts",
                )
            ]
        )
    job_id = uuid.uuid4()
    options = {"reduce": True} if sub.reduce else {}
    with _connection(write=True) as conn:
        queue.enqueue(
            conn, job_id, sub.raw_text, spans, max_chunk_chars=sub.max_chunk_chars, options=options
        )
    location = f"/v1/analyze/{job_id}"
    body = {
        "job_id": str(job_id),
        "status": "PENDING",
        "chunks_total": len(spans),
        "max_chunk_chars": sub.max_chunk_chars,
        "status_url": location,
    }
    return body, 202, {"Location": location}


@bp.get("/<job_id>")
def status(job_id: str) -> Response:
    """Report a job's progress, every failed attempt, and its result once terminal.

    ``?chunks=false`` leaves out ``analysis_result.chunks`` (one entry per chunk, megabytes
    for a big job), for clients that only want progress and the summary.
    """
    key = _parse_id(job_id)
    chunks = _flag_arg("chunks", default=True)
    with _connection(write=False) as conn:
        body = report_json(conn, key, chunks=chunks)
    if body is None:
        raise JobNotFound(job_id)
    return Response(body, mimetype="application/json")


@bp.post("/<job_id>/cancel")
def cancel(job_id: str) -> Response:
    """Cancel a job that has not finished; 409 if it already has.

    Answers with the job's report without ``analysis_result.chunks``, whatever the job's
    size: Location points at the full report.
    """
    key = _parse_id(job_id)
    merge = current_app.extensions["chunkq.merge"]()
    with _connection(write=True) as conn:
        queue.cancel(conn, key, merge)
        # In the same transaction: what the cancel left.
        body = report_json(conn, key, chunks=False)
    assert body is not None
    return Response(body, mimetype="application/json", headers={"Location": f"/v1/analyze/{key}"})


def _flag_arg(name: str, *, default: bool) -> bool:
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


def _parse_id(job_id: str) -> uuid.UUID:
    try:
        return uuid.UUID(job_id)
    except ValueError as exc:
        raise JobNotFound(job_id) from exc
