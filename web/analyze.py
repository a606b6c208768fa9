"""The ``/v1/analyze`` blueprint: submit a text, read a job, cancel a job."""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Iterator
from typing import Any

from flask import Blueprint, Response, current_app, request, stream_with_context

from schema import idempotency, listing, queue, reads, tenants
from schema.chunking import split_text
from schema.errors import InvalidRequest, JobNotFound
from schema.reads import report_json
from schema.states import JobStatus
from web import auth
from web.database import connection
from web.problems import ValidationFailed
from web.validation import parse_submission

bp = Blueprint("analyze", __name__, url_prefix="/v1/analyze")


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
        allow_private_webhooks=cfg["WEBHOOK_ALLOW_PRIVATE"],
    )
    key = _idempotency_key()
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
    tenant = auth.tenant()
    body: dict[str, Any] = {
        "job_id": str(job_id),
        "status": "PENDING",
        "chunks_total": len(spans),
        "max_chunk_chars": sub.max_chunk_chars,
        "metadata": sub.metadata,
        "status_url": f"/v1/analyze/{job_id}",
    }
    with connection(write=True) as conn:
        # First the key: a concurrent request with the same key waits here for this one.
        earlier = key and idempotency.claim(conn, tenant.id, key, sub.fingerprint(), job_id, body)
        if earlier:
            body = earlier
        else:
            tenants.admit(conn, tenant, len(spans))
            queue.enqueue(
                conn,
                job_id,
                sub.raw_text,
                spans,
                max_chunk_chars=sub.max_chunk_chars,
                options=options,
                owner=tenant.id,
                metadata=sub.metadata,
                webhook_url=sub.webhook_url,
            )
    return body, 202, {"Location": body["status_url"]}


def _idempotency_key() -> str | None:
    key = request.headers.get("Idempotency-Key")
    if key is None:
        return None
    why = idempotency.key_problem(key)
    if why is not None:
        raise ValidationFailed([InvalidRequest("Idempotency-Key", why, status=400)])
    return key


@bp.get("")
def list_jobs() -> Response:
    """The caller's jobs, newest first, a page at a time: ``?status=&limit=&cursor=`` and
    ``metadata[KEY]=VALUE`` filters; each job's report without ``analysis_result``."""
    metadata: dict[str, str] = {}
    errors: list[InvalidRequest] = []
    for name in request.args:
        if match := _METADATA_ARG.fullmatch(name):
            metadata[match.group(1)] = request.args[name]
        elif name not in ("status", "limit", "cursor"):
            errors.append(
                InvalidRequest(
                    name,
                    "is not a known parameter (known: status, limit, cursor, metadata[KEY])",
                    status=400,
                )
            )
    statuses = None
    if "status" in request.args:
        statuses = request.args["status"].split(",")
        unknown = [s for s in statuses if s not in JobStatus.__members__.values()]
        if unknown:
            known = ", ".join(JobStatus)
            errors.append(
                InvalidRequest(
                    "status", f"{unknown[0]!r} is not a job status (known: {known})", status=400
                )
            )
    if errors:
        raise ValidationFailed(errors)
    limit = _int_arg("limit", default=20, most=listing.MAX_JOBS_PAGE)
    with connection(write=False) as conn:
        page = _paged(
            lambda cursor: listing.jobs(
                conn,
                owner=auth.owner(),
                statuses=statuses,
                metadata=metadata,
                limit=limit,
                cursor=cursor,
            )
        )
    return Response(page.json(), mimetype="application/json")


@bp.get("/<job_id>/chunks")
def chunks(job_id: str) -> Response:
    """A job's chunks in order, each with its result or last error, a page at a time
    (``?cursor=&limit=``), or all of them as NDJSON (``Accept: application/x-ndjson``)."""
    key = _parse_id(job_id)
    ndjson = request.accept_mimetypes.best_match(["application/json", NDJSON]) == NDJSON
    limit = _int_arg(
        "limit", default=listing.MAX_CHUNKS_PAGE if ndjson else 100, most=listing.MAX_CHUNKS_PAGE
    )
    with connection(write=False) as conn:
        if not reads.exists(conn, key, owner=auth.owner()):
            raise JobNotFound(job_id)
        page = _paged(lambda cursor: listing.chunks(conn, key, limit=limit, cursor=cursor))
    if not ndjson:
        return Response(page.json(), mimetype="application/json")

    def lines(page: listing.Page) -> Iterator[str]:
        # A page per short read, the connection back in the pool between them: a slow
        # reader holds no connection and no snapshot.
        while True:
            yield from (f"{item}\n" for item in page.items)
            if page.next_cursor is None:
                return
            with connection(write=False) as conn:
                page = listing.chunks(conn, key, limit=limit, cursor=page.next_cursor)

    return Response(stream_with_context(lines(page)), mimetype=NDJSON)


@bp.get("/<job_id>")
def status(job_id: str) -> Response:
    """Report a job's progress, every failed attempt, and its result once terminal.

    ``?chunks=false`` leaves out ``analysis_result.chunks`` (one entry per chunk, megabytes
    for a big job), for clients that only want progress and the summary.
    """
    key = _parse_id(job_id)
    chunks = _flag_arg("chunks", default=True)
    with connection(write=False) as conn:
        body = report_json(conn, key, chunks=chunks, owner=auth.owner())
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
    with connection(write=True) as conn:
        queue.cancel(conn, key, merge, owner=auth.owner())
        # In the same transaction: what the cancel left.
        body = report_json(conn, key, chunks=False)
    assert body is not None
    return Response(body, mimetype="application/json", headers={"Location": f"/v1/analyze/{key}"})


NDJSON = "application/x-ndjson"
_METADATA_ARG = re.compile(r"metadata\[(.+)\]")


def _paged(read: Callable[[str | None], listing.Page]) -> listing.Page:
    """``read(cursor)`` for this request's ``?cursor=``; a cursor we did not make is a 400."""
    cursor = request.args.get("cursor") or None
    try:
        return read(cursor)
    except listing.BadCursor as exc:
        raise ValidationFailed([InvalidRequest("cursor", str(exc), status=400)]) from exc


def _int_arg(name: str, *, default: int, most: int) -> int:
    """A whole-number query parameter from 1 to ``most``; anything else is a 400 naming it."""
    value = request.args.get(name)
    if value is None:
        return default
    if not value.isdigit() or not 1 <= int(value) <= most:
        raise ValidationFailed(
            [
                InvalidRequest(
                    name, f"must be a whole number from 1 to {most}, got {value!r}", status=400
                )
            ]
        )
    return int(value)


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
