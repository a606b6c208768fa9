"""The ``/v1/analyze`` blueprint: submit a text, read a job, cancel a job (lists and chunk
pages: ``web.listing``)."""

from __future__ import annotations

import json
import logging
import uuid
from typing import Any

from flask import Blueprint, Response, current_app, request

from schema import idempotency, queue, tenants
from schema.chunking import split_text
from schema.errors import InvalidRequest, JobNotFound
from schema.reads import report_json
from web import auth
from web.args import flag_arg, parse_id
from web.database import connection
from web.problems import ValidationFailed
from web.validation import parse_submission

bp = Blueprint("analyze", __name__, url_prefix="/v1/analyze")
log = logging.getLogger(__name__)


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
        "priority": sub.priority,
        "status_url": f"/v1/analyze/{job_id}",
    }
    # With no key to claim and no limit to check, the job is the request's one write: one
    # statement for all but big jobs (queue.enqueue), committed by itself.
    alone = key is None and not tenant.limited
    with connection(write=True, alone=alone) as conn:
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
                priority=sub.priority,
            )
    if not earlier:  # after the commit: a job that exists, logged once
        log.info(
            "job %s accepted: %d chunks, %d chars",
            job_id,
            len(spans),
            len(sub.raw_text),
            extra={
                "job_id": job_id,
                "chunks": len(spans),
                "size": len(sub.raw_text),
                "tenant": tenant.id if current_app.config["AUTH"] else None,
            },
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


@bp.get("/<job_id>")
def status(job_id: str) -> Response:
    """Report a job's progress, every failed attempt, and its result once terminal.

    ``?chunks=false`` leaves out ``analysis_result.chunks`` (one entry per chunk, megabytes
    for a big job), for clients that only want progress and the summary.
    """
    key = parse_id(job_id)
    chunks = flag_arg("chunks", default=True)
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
    key = parse_id(job_id)
    merge = current_app.extensions["chunkq.merge"]()
    with connection(write=True) as conn:
        queue.cancel(conn, key, merge, owner=auth.owner())
        # In the same transaction: what the cancel left.
        body = report_json(conn, key, chunks=False)
    assert body is not None
    _log_cancelled(key, body)
    return Response(body, mimetype="application/json", headers={"Location": f"/v1/analyze/{key}"})


def _log_cancelled(job_id: uuid.UUID, body: str) -> None:
    """The job's one lifecycle line for its cancel, with what it had done by then."""
    report = json.loads(body)
    total, completed = report["chunks_total"], report["chunks_completed"]
    failed = report["chunks_failed"]
    log.info(
        "job %s cancelled: %d succeeded, %d failed, %d cancelled",
        job_id,
        completed,
        failed,
        total - completed - failed,
        extra={
            "job_id": job_id,
            "status": "CANCELLED",
            "succeeded": completed,
            "failed": failed,
            "cancelled": total - completed - failed,
        },
    )
